"""A pool of server connections for one (database, server user): FIFO waiters, LIFO idle list."""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
from collections import deque
from collections.abc import Coroutine, Sequence
from typing import TYPE_CHECKING, Any

from ..counters import WAIT_BOUNDS_S, disconnect_counts, wait_buckets
from ..errors import DisconnectReason, ProxyError
from ..link.prepared import StatementRegistry
from . import connecting, health
from .backend import BackendConnection
from .backend_state import (
    BACKEND_CANCELLING,
    BACKEND_CLOSED,
    BACKEND_IDLE,
    BackendState,
)
from .ends import PoolClient
from .spec import POOL_TRANSITIONS, PoolSpec, PoolState

if TYPE_CHECKING:
    from .budget import ServerBudget
    from .topology import HostState, Topology

log = logging.getLogger("pgpool_proxy.pool")
_OPEN = PoolState.OPEN


class Pool:
    """Owns the server connections of one pool and hands them to clients.

    Acquire and release run synchronously on the hot path: a free backend is linked at once and a
    released one goes straight to the oldest waiter, with no task switch in between.
    """

    def __init__(self, spec: PoolSpec, spawn: Any) -> None:
        self.spec = spec
        self.name = spec.name
        self.backend_address = (spec.host, spec.port)
        self.connect_timeout_s = spec.connect_timeout_s
        self._spawn = spawn
        self.loop = asyncio.get_running_loop()
        self.idle: list[BackendConnection] = []
        # Every server connection this pool opened and has not closed (the janitor's watch).
        self.backends: set[BackendConnection] = set()
        # The logged-in ones by server pid: whose notification is it (pool.notify.notifier_pid).
        self.by_pid: dict[int, BackendConnection] = {}
        self.waiters: deque[PoolClient] = deque()
        self.total = 0  # connecting + idle + linked + resetting
        self.connecting = 0
        self.generation = 0
        self.server_params: dict[str, str] | None = None
        # Login ParameterStatus blocks by client settings signature (see session.login).
        self.welcome_cache: dict[tuple[object, ...], bytes] = {}
        # The server's spelling of startup settings, by (lower-case name, value as given): see
        # session.canon.
        self.learned_settings: dict[tuple[str, str], str] = {}
        self.params_waiters: list[asyncio.Future[None]] = []
        self.last_connect_error: ProxyError | None = None
        self.last_connect_failure_at = -1e9
        # SCRAM pass-through: a ClientKey recovered from a client's login, reused for the server.
        self.client_key: bytes | None = None
        self.server_key: bytes | None = None
        self.state = PoolState.OPEN
        # Named prepared statements shared by this pool's clients (transaction mode).
        self.registry = StatementRegistry(max(1000, 10 * spec.max_prepared_statements))
        self.pinned = 0  # clients holding a backend between transactions (session state)
        # Writer tracking: None for a single-host database (always spec.host:spec.port).
        self.topology: Topology | None = None
        self.target: tuple[str, int] | None = (spec.host, spec.port)
        self.by_address: dict[tuple[str, int], int] = {}  # live connections per server
        self._lagging: set[tuple[str, int]] = set()  # replicas over max_replica_lag_bytes
        self._retired: set[tuple[str, int]] = set()  # servers a reader pool stopped using
        self._usable_last: set[tuple[str, int]] = set()
        self.connect_tasks: dict[asyncio.Task[Any], int] = {}  # connects under way, by generation
        # Caps across pools (pool.max_server_connections, max_db/user_connections), if any.
        self.budget: ServerBudget | None = None
        # Plain counters, read at scrape time (never labelled per message).
        self.clients = 0
        self.total_xacts = 0
        self.total_xact_s = 0.0  # time backends spent linked to clients, summed at release
        self.total_queries = 0  # ReadyForQuery replies forwarded to clients
        self.total_wait_s = 0.0
        self.wait_count = 0
        # Waits of queued clients by WAIT_BOUNDS_S bucket; acquires that found an idle backend
        # are only counted (they belong in the lowest bucket, added at scrape time).
        self.wait_buckets = wait_buckets()
        self.instant_acquires = 0
        self.server_disconnects = disconnect_counts()

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        self._spawn(coro, f"{self.name}:{name}")

    # --- hot path ----------------------------------------------------------------------------

    def acquire(self, client: PoolClient) -> BackendConnection | None:
        """A backend for client now, or None after queueing client (FIFO) for the next one."""
        idle = self.idle
        if idle:
            self.instant_acquires += 1
            return idle.pop()
        client.wait_since = self.loop.time()
        self.waiters.append(client)
        self.maybe_grow()
        return None

    def release(self, backend: BackendConnection) -> None:
        """Take a backend back; the oldest live waiter gets it immediately."""
        if backend.state == BACKEND_CLOSED:
            return
        # Texts of statements the registry forgot are let go here, not when next used.
        if backend.stmts.swept != self.registry.evictions:
            backend.stmts.sweep(self.registry)
        if backend.cancelling:
            # Reuse only after the cancel has reached the server, so it cannot hit the next client.
            if backend.state != BACKEND_CANCELLING:
                backend.await_cancel()
            return
        now = self.loop.time()
        if backend.state != BACKEND_IDLE:
            # A client's transaction (or session) ends here; a fresh connection is no transaction.
            self.total_xacts += 1
            self.total_xact_s += now - backend.linked_at
        if backend.generation != self.generation or self.state is not _OPEN:
            backend.close(
                DisconnectReason.FAILOVER if self.state is _OPEN else DisconnectReason.POOL_CLOSED
            )
            return
        lifetime = self.spec.lifetime_s
        if lifetime and now - backend.created_at > lifetime:
            backend.close(DisconnectReason.LIFETIME)
            return
        if backend.state != BACKEND_IDLE:
            backend.to_idle()
        waiters = self.waiters
        while waiters:
            client = waiters.popleft()
            if client.is_waiting():
                waited = now - client.wait_since
                self.total_wait_s += waited
                self.wait_count += 1
                self.wait_buckets[bisect.bisect_left(WAIT_BOUNDS_S, waited)] += 1
                client.backend_assigned(backend)
                return
        backend.idle_since = now
        backend.parked = True  # see pool.notify.notifier_pid
        self.idle.append(backend)

    def forget_waiter(self, client: PoolClient) -> None:
        """Drop a departed waiter now rather than when it reaches the head of the queue."""
        with contextlib.suppress(ValueError):
            self.waiters.remove(client)

    # --- the proxy's own queries -------------------------------------------------------------

    async def own_query(
        self, sql: str, params: Sequence[str | None], timeout_s: float
    ) -> list[list[str | None]]:
        """Run `sql` with `params` on one of this pool's server connections and return its
        rows (pool.connecting.own_query)."""
        return await connecting.own_query(self, sql, params, timeout_s)

    # --- connections -------------------------------------------------------------------------

    def backend_closed(self, backend: BackendConnection, prev: BackendState) -> None:
        self.backends.discard(backend)
        if self.by_pid.get(backend.pid) is backend:
            del self.by_pid[backend.pid]
        if self.topology is not None:
            by_address = self.by_address
            left = by_address.get(backend.address, 0) - 1
            if left > 0:
                by_address[backend.address] = left
            else:
                by_address.pop(backend.address, None)
            if backend.close_reason == DisconnectReason.BACKEND_FAILED:
                # A server connection died: maybe its server did; look now, not in a second.
                self.topology.suspect()
        self.server_disconnects[backend.close_reason or DisconnectReason.BACKEND_FAILED] += 1
        if prev == BackendState.CONNECTING or prev == BackendState.LOGIN:
            # Not logged in: the slot is its connect task's (pool.connecting.connect).
            return
        if prev == BackendState.IDLE:
            with contextlib.suppress(ValueError):
                self.idle.remove(backend)
        if backend.leaving is None:
            self.slot_released()
        # else: the slot is freed once its server has gone (BackendConnection._gone)

    def slot_released(self, backend: BackendConnection | None = None) -> None:
        """A logged-in connection's slot is free: queued clients (here or, under a cap across
        pools, elsewhere) may get a new one."""
        self.total -= 1
        if self.budget is not None:
            self.budget.released(self, backend)
        self.maybe_grow()

    def maybe_grow(self) -> None:
        """Open a connection for queued clients, unless the server just refused one."""
        if (
            self.waiters
            and self.state is _OPEN
            and self.total < self.grow_limit()
            and self.loop.time() - self.last_connect_failure_at >= self.spec.login_retry_s
            and (self.topology is None or self.pick_address() is not None)
            and (self.budget is None or self.budget.allows(self))
        ):
            self.launch()

    def grow_limit(self) -> int:
        """The size the pool may grow to now: its size, plus the reserve once the oldest queued
        client has waited reserve_timeout_s (PgBouncer's reserve_pool_size/_timeout)."""
        spec = self.spec
        if not spec.reserve_size or not spec.reserve_timeout_s:
            return spec.size
        # The head is the oldest waiter (a departing client is dropped by forget_waiter; one
        # just queued by acquire is not WAITING yet, so is_waiting cannot filter here).
        waiters = self.waiters
        if waiters and self.loop.time() - waiters[0].wait_since >= spec.reserve_timeout_s:
            return spec.size + spec.reserve_size
        return spec.size

    def launch(self) -> None:
        self.total += 1
        self.connecting += 1
        self.spawn(connecting.connect(self), "connect")

    async def ensure_server_params(self) -> dict[str, str]:
        """The server's reported settings, connecting a first backend if none is known yet."""
        return await connecting.ensure_server_params(self)

    def _to(self, new: PoolState) -> None:
        if new not in POOL_TRANSITIONS[self.state]:
            raise RuntimeError(f"illegal pool transition {self.state.name} -> {new.name}")
        self.state = new

    @property
    def paused(self) -> bool:
        return self.state is PoolState.PAUSED

    def close(self) -> None:
        if self.state is PoolState.CLOSED:
            return
        self._to(PoolState.CLOSED)
        self.generation += 1
        for backend in list(self.idle):
            backend.close(DisconnectReason.POOL_CLOSED)
        if self.topology is not None:
            self.topology.unsubscribe(self._topology_changed)

    # --- writer tracking ---------------------------------------------------------------------

    def attach_topology(self, topology: Topology) -> None:
        """Let ``topology`` choose this pool's servers: the writer, or replicas for a reader."""
        self.topology = topology
        self.target = None
        topology.subscribe(self._topology_changed)
        self._topology_changed(topology)

    def retire(self, reason: DisconnectReason) -> None:
        """Stop using every current server connection: idle ones close now, busy ones when
        their client releases them (a transaction in flight is not cut), connects still under
        way are abandoned."""
        self.generation += 1
        for backend in list(self.idle):
            backend.close(reason)
        for task in list(self.connect_tasks):
            task.cancel()

    def pick_address(self) -> tuple[str, int] | None:
        """Where the next server connection goes; None while there is nowhere to go."""
        topo = self.topology
        if topo is None or not self.spec.reader:
            return self.target
        usable = self._usable_replicas(topo)
        if usable:
            # The replica this pool has the fewest connections to (ties: configured order).
            by_address = self.by_address
            return min(usable, key=lambda key: by_address.get(key, 0))
        if self.spec.reader_fallback and topo.writer is not None:
            return topo.writer.key
        return None

    def _usable_replicas(self, topo: Topology) -> list[tuple[str, int]]:
        bound = self.spec.max_replica_lag_bytes
        lagging = self._lagging
        usable = []
        for h in topo.replicas():
            key = h.key
            if bound:
                lag = h.lag_bytes
                # Hysteresis: out above the bound, back in only below half of it, so a replica
                # hovering at the bound does not retire the pool on every poll.
                # Unknown lag (no writer position yet, or Aurora, which has none) keeps the
                # replica's last verdict; only a measured lag over the bound excludes it.
                if lag is not None and lag > bound:
                    lagging.add(key)
                elif lag is not None and lag <= bound // 2:
                    lagging.discard(key)
                if key in lagging:
                    continue
            usable.append(key)
        return usable

    def _topology_changed(self, topo: Topology) -> None:
        if self.state is not _OPEN:
            return
        if not self.spec.reader:
            writer: HostState | None = topo.writer
            new = writer.key if writer is not None else None
            if new == self.target:
                return
            old, self.target = self.target, new
            if old is not None or self.total:
                self.retire(DisconnectReason.FAILOVER)
            if new is None:
                if old is None:
                    return  # attached while no writer is known yet
                log.warning(
                    "pool %s: writer lost (%s); holding new transactions",
                    self.name,
                    topo.describe(),
                    extra={"event": "failover", "pool": self.name, "writer": None},
                )
                return
            log.info(
                "pool %s: writer is now %s:%s",
                self.name,
                new[0],
                new[1],
                extra={"event": "failover", "pool": self.name, "writer": f"{new[0]}:{new[1]}"},
            )
        else:
            usable = set(self._usable_replicas(topo))
            if not usable and self.spec.reader_fallback and topo.writer is not None:
                usable.add(topo.writer.key)
            # Retire once per server leaving the set: its busy connections stay counted in
            # by_address until their transactions end, and must not retire newer ones again.
            retired = self._retired
            retired.intersection_update(self.by_address)
            retired.difference_update(usable)
            leaving = [key for key in self.by_address if key not in usable and key not in retired]
            if leaving:
                log.info("pool %s: servers now %s", self.name, sorted(usable) or "none")
                retired.update(leaving)
                self.retire(DisconnectReason.FAILOVER)
            if not usable or usable == self._usable_last:
                self._usable_last = usable
                return
            self._usable_last = usable
        # A server is known again: serve the queue now, not at the next retry pace.
        self.last_connect_failure_at = -1e9
        self.grow_for_waiters()

    def grow_for_waiters(self) -> None:
        """Open connections for as many queued clients as the limits allow."""
        for _ in range(len(self.waiters) - self.connecting):
            before = self.total
            self.maybe_grow()
            if self.total == before:
                break

    def tick(self, now: float) -> None:
        """The janitor's round (pool.health)."""
        health.tick(self, now)

    def stats(self) -> dict[str, int]:
        active = self.total - len(self.idle) - self.connecting
        return {
            "total": self.total,
            "idle": len(self.idle),
            "active": active,
            "connecting": self.connecting,
            "waiting": sum(1 for c in self.waiters if c.is_waiting()),
            "clients": self.clients,
            "pinned": self.pinned,
            "prepared_statements": len(self.registry.by_key),
        }

    # --- lifecycle: reload, PAUSE/RESUME (runtime.lifecycle, the admin console) ----------------

    def reconfigure(self, spec: PoolSpec) -> None:
        """Adopt a reloaded spec. When the server identity changed, current backends retire:
        idle ones close now, busy ones when their transaction ends."""
        old = self.spec
        self.spec = spec
        self.backend_address = (spec.host, spec.port)
        self.connect_timeout_s = spec.connect_timeout_s
        identity = ("host", "port", "dbname", "user", "secret", "credentials", "tls")
        if any(getattr(old, k) != getattr(spec, k) for k in identity):
            if self.topology is None:
                self.target = (spec.host, spec.port)
            self.welcome_cache.clear()
            self.learned_settings.clear()
            self.retire(DisconnectReason.POOL_CLOSED)
        else:
            # A smaller pool sheds idle connections now; busy ones above it close by lifetime.
            for backend in list(self.idle):
                if self.total <= spec.size:
                    break
                backend.close(DisconnectReason.POOL_CLOSED)
        if self.state is _OPEN:
            self.maybe_grow()  # a larger pool serves its queue at once

    def pause(self) -> None:
        """Stop handing out servers: idle ones close now, busy ones when released, and new
        transactions wait in the queue (bounded by query_wait_timeout_s)."""
        if self.state is not _OPEN:
            return
        self._to(PoolState.PAUSED)
        self.retire(DisconnectReason.POOL_CLOSED)

    def resume(self) -> None:
        if self.state is not PoolState.PAUSED:
            return  # open already, or closed for good
        self._to(PoolState.OPEN)
        self.last_connect_failure_at = -1e9
        if self.topology is not None:
            # Writer changes were ignored while paused (closed): catch up first.
            self._topology_changed(self.topology)
        for _ in range(len(self.waiters)):
            before = self.total
            self.maybe_grow()
            if self.total == before:
                break
