"""Owns the caps on server connections that span pools: the whole process
(pool.max_server_connections), each database (pool.max_db_connections) and each server user
(pool.max_user_connections).

Many proxies behind a load balancer share one database's max_connections; the process cap is
each proxy's share, and the database and user caps are PgBouncer's max_db_connections and
max_user_connections. Usage is summed from the pools when a pool wants to grow (not per
message). A pool at a cap queues its clients (FIFO, bounded by query_wait_timeout_s); a pool
with clients waiting may close the longest-idle connection of another pool under the same cap
to make room.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from ..errors import DisconnectReason

if TYPE_CHECKING:
    from .backend import BackendConnection
    from .pool import Pool

from .spec import PoolState

# Scopes a cap applies to: every pool, the pools of one database, the pools of one server user.
_ALL = 0
_DB = 1
_USER = 2


class ServerBudget:
    """The caps across pools. The process-wide one is ``limit``; a database's and a server
    user's come with each pool's spec (the same for every pool of that database or user, as
    they are resolved from the same config entries)."""

    def __init__(self, limit: int, pools: Iterable[Pool]) -> None:
        self.limit = limit  # across every pool of the process (0: none)
        self._pools = pools  # a live view (the server's dict values)
        self.evictions = 0
        # Connections closed to make room whose servers have not gone yet: they still count.
        self._evicted: set[BackendConnection] = set()
        self._wake_pending = False

    def in_use(self) -> int:
        return sum(p.total for p in self._pools)

    def _caps(self, pool: Pool) -> list[tuple[int, int]]:
        """(scope, limit) of every cap on ``pool``, the narrow ones first: making room under
        one of them usually makes room under the process-wide cap too."""
        spec = pool.spec
        caps = []
        if spec.max_db_connections:
            caps.append((_DB, spec.max_db_connections))
        if spec.max_user_connections:
            caps.append((_USER, spec.max_user_connections))
        if self.limit:
            caps.append((_ALL, self.limit))
        return caps

    @staticmethod
    def _shares(scope: int, pool: Pool, other: Pool) -> bool:
        if scope == _DB:
            return other.spec.database == pool.spec.database
        if scope == _USER:
            return other.spec.user == pool.spec.user
        return True

    def _used(self, scope: int, pool: Pool) -> int:
        return sum(p.total for p in self._pools if self._shares(scope, pool, p))

    def full(self, pool: Pool) -> str | None:
        """The cap that keeps ``pool`` from opening one more connection now (named for
        messages), or None when there is room. Evicts nothing."""
        for scope, limit in self._caps(pool):
            if self._used(scope, pool) >= limit:
                return _describe(scope, limit, pool)
        return None

    def allows(self, pool: Pool) -> bool:
        """Whether ``pool`` may open one more connection now. At a full cap, the longest-idle
        connection of another pool under it is closed to make room: the room is there once
        that server has gone (BackendConnection.close with wait_exit), when the pools with
        clients queued are woken (released); nothing more is evicted meanwhile, and nothing
        at all when some full cap has no idle connection to give."""
        victims: list[BackendConnection] = []
        for scope, limit in self._caps(pool):
            used = self._used(scope, pool)
            if used < limit:
                continue
            if any(self._shares(scope, pool, b.pool) for b in self._evicted):
                return False  # room under this cap is on its way
            # Over a cap lowered live, one eviction may not be enough room.
            used -= sum(1 for v in victims if self._shares(scope, pool, v.pool))
            while used >= limit:
                victim = None
                for other in self._pools:
                    if other is pool or not other.idle or not self._shares(scope, pool, other):
                        continue
                    for b in other.idle:
                        if b not in victims and (
                            victim is None or b.idle_since < victim.idle_since
                        ):
                            victim = b
                if victim is None:
                    return False
                victims.append(victim)
                used -= 1
        if not victims:
            return True
        for victim in victims:
            self.evictions += 1
            self._evicted.add(victim)
            victim.close(DisconnectReason.BUDGET_EVICTED, wait_exit=True)
            if victim.leaving is None:
                self._evicted.discard(victim)  # its slot was freed at once
        return False

    def params_for(self, pool: Pool) -> dict[str, str] | None:
        """Server settings another pool of the same server and database has seen."""
        spec = pool.spec
        for other in self._pools:
            o = other.spec
            if (
                other is not pool
                and other.server_params is not None
                and (o.host, o.port, o.dbname) == (spec.host, spec.port, spec.dbname)
            ):
                return other.server_params
        return None

    def released(self, pool: Pool, backend: BackendConnection | None = None) -> None:
        """A connection's slot was freed somewhere: let pools with queued clients grow (soon,
        not inside the close that is running now)."""
        if backend is not None:
            self._evicted.discard(backend)
        if self._wake_pending:
            return
        self._wake_pending = True
        pool.loop.call_soon(self._wake)

    def _wake(self) -> None:
        self._wake_pending = False
        # The pool whose client has waited longest goes first: across pools sharing a cap, the
        # freed room goes in queue order, as it does within a pool.
        waiting = [p for p in self._pools if p.waiters and p.state is PoolState.OPEN]
        waiting.sort(key=lambda p: p.waiters[0].wait_since)
        for pool in waiting:
            pool.grow_for_waiters()


def _describe(scope: int, limit: int, pool: Pool) -> str:
    # The cap may come from [pool] or from the database's or user's own entry.
    if scope == _DB:
        return f"max_db_connections ({limit}) of database {pool.spec.database}"
    if scope == _USER:
        return f"max_user_connections ({limit}) of user {pool.spec.user}"
    return f"pool.max_server_connections ({limit})"
