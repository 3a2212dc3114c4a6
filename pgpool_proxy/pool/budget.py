"""Owns the per-proxy cap on server connections across all pools (pool.max_server_connections).

Many proxies behind a load balancer share one database's max_connections; this cap is each
proxy's share. Usage is summed from the pools when a pool wants to grow (not per message), and
a pool with clients waiting may close another pool's longest-idle connection to make room.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from ..errors import DisconnectReason

if TYPE_CHECKING:
    from .pool import Pool

from .spec import PoolState


class ServerBudget:
    def __init__(self, limit: int, pools: Iterable[Pool]) -> None:
        self.limit = limit
        self._pools = pools  # a live view (the server's dict values)
        self.evictions = 0
        self._wake_pending = False

    def in_use(self) -> int:
        return sum(p.total for p in self._pools)

    def allows(self, pool: Pool) -> bool:
        """Whether ``pool`` may open one more connection now, evicting an idle connection of
        another pool when that makes room."""
        if self.in_use() < self.limit:
            return True
        victim = None
        for other in self._pools:
            if other is pool or not other.idle:
                continue
            oldest = min(other.idle, key=lambda b: b.idle_since)
            if victim is None or oldest.idle_since < victim.idle_since:
                victim = oldest
        if victim is None:
            return False
        self.evictions += 1
        victim.close(DisconnectReason.BUDGET_EVICTED)
        return self.in_use() < self.limit

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

    def released(self, pool: Pool) -> None:
        """A connection closed somewhere: let pools with queued clients grow (soon, not inside
        the close that is running now)."""
        if self._wake_pending:
            return
        self._wake_pending = True
        pool.loop.call_soon(self._wake)

    def _wake(self) -> None:
        self._wake_pending = False
        for pool in list(self._pools):
            if pool.waiters and pool.state is PoolState.OPEN:
                pool.grow_for_waiters()
