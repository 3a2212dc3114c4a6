"""A pool of server connections for one (database, server user): FIFO waiters, LIFO idle list."""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import ssl
from collections import deque
from collections.abc import Coroutine, Sequence
from typing import TYPE_CHECKING, Any, cast

from ..auth.server_login import BackendLoginError
from ..counters import WAIT_BOUNDS_S, disconnect_counts, wait_buckets
from ..errors import DisconnectReason, ProxyError, SqlState, internal_error
from ..link.prepared import StatementRegistry
from ..net.connect import open_server_transport
from ..protocol.constants import TX_IDLE
from . import health
from .backend import BackendConnection
from .backend_state import BackendState
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
        self._params_waiters: list[asyncio.Future[None]] = []
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
        self._connect_tasks: dict[asyncio.Task[Any], int] = {}  # connects under way, by generation
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
        if backend.state == BackendState.CLOSED:
            return
        # Texts of statements the registry forgot are let go here, not when next used.
        if backend.stmts.swept != self.registry.evictions:
            backend.stmts.sweep(self.registry)
        if backend.cancelling:
            # Reuse only after the cancel has reached the server, so it cannot hit the next client.
            if backend.state != BackendState.CANCELLING:
                backend.await_cancel()
            return
        now = self.loop.time()
        if backend.state != BackendState.IDLE:
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
        if backend.state != BackendState.IDLE:
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
        """Run `sql` with `params` on one of this pool's server connections (queued like a
        client's transaction, opening one if the pool may) and return its rows. Raises
        ProxyError when the server refuses the statement, no server connection can be had
        (the server's own login error when it refused this pool's login) or `timeout_s`
        passes."""
        if (
            not self.idle
            and self.connecting == 0
            and self.last_connect_error is not None
            and self.loop.time() - self.last_connect_failure_at < self.spec.login_retry_s
        ):
            # The server refused this pool just now: say so rather than wait out the pause.
            raise _copy(self.last_connect_error)
        borrower = _Borrower(self.loop.create_future())
        backend: BackendConnection | None = None
        answer: asyncio.Future[tuple[list[dict[str, str]], list[list[str | None]]] | None]
        answer = self.loop.create_future()

        def done(
            b: BackendConnection, errors: list[dict[str, str]], rows: list[list[str | None]]
        ) -> None:
            if b.is_closed():
                if not answer.done():
                    answer.set_result(None)
                return
            if b.state == BackendState.RESETTING and b.tx_status == TX_IDLE:
                b.to_idle()
                self.release(b)
            else:
                b.close(DisconnectReason.RESET_FAILED)
            if not answer.done():
                answer.set_result((errors, rows))

        try:
            async with asyncio.timeout(timeout_s):
                backend = self.acquire(cast(PoolClient, borrower))
                if backend is None:
                    backend = await borrower.assigned
                if backend.transport is None:
                    raise ProxyError(SqlState.CONNECTION_FAILURE, "server connection lost")
                backend.run_own_query(sql, params, done)
                result = await answer
        except BaseException:
            borrower.gone = True
            self.forget_waiter(cast(PoolClient, borrower))
            if backend is None and borrower.assigned.done() and not borrower.assigned.cancelled():
                if borrower.assigned.exception() is None:
                    self.release(borrower.assigned.result())  # handed over as we gave up
            elif backend is not None and not answer.done():
                # Its answer may still come: the connection's state is unknown.
                backend.close(DisconnectReason.RESET_FAILED)
            raise
        if result is None:
            raise ProxyError(SqlState.CONNECTION_FAILURE, "server connection lost")
        errors, rows = result
        if errors:
            fields = errors[0]
            raise ProxyError(
                fields.get("C") or SqlState.INTERNAL_ERROR,
                fields.get("M") or "the server refused the statement",
                detail=fields.get("D"),
                hint=fields.get("H"),
            )
        return rows

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
            # Not logged in: the slot is its connect's, to retry in or to free (_connect).
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
        self.spawn(self._connect(), "connect")

    async def _connect(self) -> None:
        """Open one server connection in the slot launch took.

        The slot is this task's until a backend has logged in (the backend owns it from then
        on, see backend_closed) or the task gives up: a login the server refuses and the retry
        with fresh credentials run in that one slot, so a rotation never opens more server
        connections than the pool's size, nor frees a slot for a login with the stale password.
        """
        task = asyncio.current_task()
        if task is not None:
            # retire() cancels connects of an older generation (a hung old writer must not
            # hold slots that the new one needs).
            self._connect_tasks[task] = self.generation
        try:
            backend = await self._log_in()
        except Exception as exc:
            self.connecting -= 1
            if not isinstance(exc, ProxyError):
                # A bug must not leave queued clients waiting for query_wait_timeout.
                exc = internal_error(log, "connecting a server for pool %s", self.name)
            self._connect_failed(exc)
            self._free_slot()
            return
        except BaseException:
            self.connecting -= 1
            self._free_slot()
            raise
        finally:
            if task is not None:
                self._connect_tasks.pop(task, None)
        self.connecting -= 1
        if backend.state == BackendState.CLOSED:
            return
        self.last_connect_error = None
        self.by_pid[backend.pid] = backend
        log.info("server connected: pool=%s pid=%s", self.name, backend.pid)
        if self.server_params is None:
            self.server_params = dict(backend.params)
        self._wake_params_waiters(None)
        self.release(backend)

    async def _log_in(self) -> BackendConnection:
        """A logged-in backend, retrying with refreshed credentials when the server refuses
        the password it was given."""
        spec = self.spec
        creds = spec.credentials
        if creds is None:
            return await self._attempt(spec.user, spec.secret)
        user, secret = await creds.current()
        try:
            return await self._attempt(user, secret)
        except BackendLoginError as exc:
            if exc.sqlstate != SqlState.INVALID_PASSWORD:
                raise
            refused = exc
        # Rotation: the password changed on the server before (AWSPENDING) or after
        # (AWSCURRENT) our cached copy; refresh and try those.
        for user, fresh in await creds.after_auth_failure(secret):
            log.info("server login: pool=%s: retrying with fresh credentials", self.name)
            try:
                backend = await self._attempt(user, fresh)
            except BackendLoginError as exc:
                if exc.sqlstate != SqlState.INVALID_PASSWORD:
                    raise
                refused = exc
                continue
            creds.note_success(user, fresh)
            return backend
        raise refused

    def _free_slot(self) -> None:
        self.total -= 1
        if self.budget is not None:
            self.budget.released(self)
        self.maybe_grow()

    async def _attempt(self, user: str, secret: str | None) -> BackendConnection:
        """Connect and log in one backend; on failure it is closed (the slot stays _connect's)."""
        spec = self.spec
        backend = BackendConnection(self, self.generation)
        if self.topology is not None:
            address = self.pick_address()
            if address is None:
                raise ProxyError(
                    SqlState.SQLCLIENT_UNABLE_TO_ESTABLISH,
                    f"no usable server for pool {self.name}: {self.topology.describe()}",
                )
            backend.address = address
            self.by_address[address] = self.by_address.get(address, 0) + 1
        self.backends.add(backend)
        host, port = backend.address
        try:
            try:
                async with asyncio.timeout(spec.connect_timeout_s):
                    await open_server_transport(lambda: backend, host, port, spec.tls, spec.tcp)
                    await backend.login(
                        user,
                        spec.dbname,
                        secret,
                        client_key=self.client_key,
                        server_key=self.server_key,
                    )
            except TimeoutError:
                raise ProxyError(
                    SqlState.SQLCLIENT_UNABLE_TO_ESTABLISH,
                    f"timed out connecting to the server at {host}:{port} "
                    f"after {spec.connect_timeout_s:g}s",
                ) from None
            except ssl.SSLError as exc:
                why = (
                    f"certificate verify failed: {exc.verify_message}"
                    if isinstance(exc, ssl.SSLCertVerificationError)
                    else exc.reason or str(exc)
                )
                raise ProxyError(
                    SqlState.SQLCLIENT_UNABLE_TO_ESTABLISH,
                    f"TLS to the server at {host}:{port} failed "
                    f"(server_tls.mode = {spec.tls.mode.value}): {why}",
                ) from None
            except OSError as exc:
                raise ProxyError(
                    SqlState.SQLCLIENT_UNABLE_TO_ESTABLISH,
                    f"could not connect to the server at {host}:{port}: {exc.strerror or exc}",
                ) from None
        except BaseException:
            # connection_lost may already have closed it.
            if backend.state != BackendState.CLOSED:
                backend.close(DisconnectReason.BACKEND_CONNECT_FAILED)
            raise
        return backend

    def _connect_failed(self, exc: ProxyError) -> None:
        log.warning(
            "server login failed: pool=%s: %s %s",
            self.name,
            exc.sqlstate,
            exc.message,
            extra={"event": "pool_error", "pool": self.name, "sqlstate": exc.sqlstate},
        )
        self.last_connect_error = exc
        self.last_connect_failure_at = self.loop.time()
        if self.topology is not None and not isinstance(exc, BackendLoginError):
            # The server may be failing over: queued clients (and logins waiting for the
            # server's settings) wait for the monitor to confirm a writer, bounded by
            # failover_timeout_s, rather than failing now.
            self._wake_params_waiters(None)
            self.topology.suspect()
            return
        self._wake_params_waiters(exc)
        # With no other server connection alive, nobody in the queue can be served soon: tell
        # them why now instead of letting them wait for query_wait_timeout.
        if self.total - 1 <= 0 or isinstance(exc, BackendLoginError):
            waiters = self.waiters
            self.waiters = deque()
            for client in waiters:
                if client.is_waiting():
                    client.pool_failed(exc)

    async def ensure_server_params(self) -> dict[str, str]:
        """The server's reported settings, connecting a first backend if none is known yet."""
        waited_s = 0.0
        while self.server_params is None:
            if self.state is PoolState.PAUSED:
                # PAUSE/KILL/drain: no server connection opens; the login waits like a queued
                # transaction would.
                timeout = self.spec.query_wait_timeout_s
                if timeout and waited_s >= timeout:
                    raise ProxyError(
                        SqlState.QUERY_CANCELED,
                        f"query_wait_timeout: pool {self.name} stayed paused for {timeout:g}s",
                    )
                await asyncio.sleep(0.05)
                waited_s += 0.05
                continue
            topo = self.topology
            if (
                topo is not None
                and self.connecting == 0
                and (
                    self.pick_address() is None
                    or self.loop.time() - self.last_connect_failure_at < self.spec.login_retry_s
                )
            ):
                # No server to ask yet (the first probes, or a failover): wait like a queued
                # transaction would, then say which servers were tried.
                if waited_s >= self.spec.failover_timeout_s:
                    raise ProxyError(
                        SqlState.SQLCLIENT_UNABLE_TO_ESTABLISH,
                        f"no usable server for pool {self.name} within "
                        f"{self.spec.failover_timeout_s:g}s (topology.failover_timeout_s); "
                        f"servers: {topo.describe()}",
                    )
                await asyncio.sleep(0.02)
                waited_s += 0.02
                continue
            budget = self.budget
            if self.connecting == 0 and budget is not None and not budget.allows(self):
                # No room for a first connection. Another pool of the same server already
                # knows what it reports (per-role settings aside): use that so the login
                # completes; the client's first query then queues like any other.
                sibling = budget.params_for(self)
                if sibling is not None:
                    self.server_params = dict(sibling)
                    break
                if waited_s >= self.spec.query_wait_timeout_s:
                    raise ProxyError(
                        SqlState.TOO_MANY_CONNECTIONS,
                        f"{budget.full(self) or 'the server connection caps'}: all in use",
                    )
                await asyncio.sleep(0.05)
                waited_s += 0.05
                continue
            fut: asyncio.Future[None] = self.loop.create_future()
            self._params_waiters.append(fut)
            if self.connecting == 0:
                if self.total >= self.spec.size:
                    raise ProxyError(SqlState.CONNECTION_FAILURE, "pool has no usable server")
                self.launch()
            await fut
        return self.server_params

    def _wake_params_waiters(self, exc: ProxyError | None) -> None:
        waiters, self._params_waiters = self._params_waiters, []
        for fut in waiters:
            if not fut.done():
                if exc is None:
                    fut.set_result(None)
                else:
                    fut.set_exception(
                        ProxyError(exc.sqlstate, exc.message, detail=exc.detail, hint=exc.hint)
                    )

    # --- janitor -----------------------------------------------------------------------------

    # --- silent servers ----------------------------------------------------------------------

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
        for task in list(self._connect_tasks):
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


def _copy(exc: ProxyError) -> ProxyError:
    return ProxyError(exc.sqlstate, exc.message, detail=exc.detail, hint=exc.hint)


class _Borrower:
    """The proxy itself in a pool's queue (Pool.own_query): what the pool and its janitor call
    on a queued client, answered with a future."""

    def __init__(self, assigned: asyncio.Future[BackendConnection]) -> None:
        self.assigned = assigned
        self.gone = False
        self.wait_since = 0.0

    def is_waiting(self) -> bool:
        return not self.gone and not self.assigned.done()

    def backend_assigned(self, backend: BackendConnection) -> None:
        self.assigned.set_result(backend)

    def pool_failed(self, err: ProxyError, reason: DisconnectReason | None = None) -> None:
        if not self.assigned.done():
            self.assigned.set_exception(_copy(err))

    def close(self, reason: DisconnectReason) -> None:
        if not self.assigned.done():
            self.assigned.set_exception(
                ProxyError(SqlState.CONNECTION_FAILURE, f"pool closed ({reason.value})")
            )
