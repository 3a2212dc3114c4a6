"""What a pool is made of: its spec (resolved from the config), where its credentials come from,
and its states."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol

from ..auth.scram import DEFAULT_MAX_SERVER_ITERATIONS
from ..config import PoolMode
from ..net.connect import DEFAULT_TCP, NO_TLS, ServerTls, TcpTuning


class PoolState(enum.Enum):
    OPEN = "open"  # hands out server connections
    # PAUSE, KILL, a drain: transactions queue, no server connection opens, released ones close.
    PAUSED = "paused"
    CLOSED = "closed"  # the process is stopping: nothing more, ever


# Which state may follow which (Pool._to); tests/unit/test_transitions.py checks it.
POOL_TRANSITIONS: dict[PoolState, frozenset[PoolState]] = {
    PoolState.OPEN: frozenset({PoolState.PAUSED, PoolState.CLOSED}),
    PoolState.PAUSED: frozenset({PoolState.OPEN, PoolState.CLOSED}),
    PoolState.CLOSED: frozenset(),
}


class CredentialSource(Protocol):
    """Server credentials that can change while the proxy runs (Secrets Manager rotation)."""

    async def current(self) -> tuple[str, str]:
        """(user, password) to log in with now; raises ProxyError when none is known."""
        ...

    async def after_auth_failure(self, failed_password: str) -> list[tuple[str, str]]:
        """Credentials to try after the server refused `failed_password` (refreshed)."""
        ...

    def note_success(self, user: str, password: str) -> None:
        """Credentials from after_auth_failure worked: use them until the secret moves on."""
        ...


@dataclass(frozen=True, slots=True)
class PoolSpec:
    """Everything a pool needs to open server connections, resolved from the config."""

    name: str  # "<database>/<server user>", for logs
    host: str
    port: int
    dbname: str
    user: str
    secret: str | None  # plaintext, md5 hash or SCRAM verifier
    size: int
    min_size: int
    mode: PoolMode
    query_wait_timeout_s: float
    idle_timeout_s: float
    lifetime_s: float
    connect_timeout_s: float
    login_retry_s: float
    reset_query: str
    max_prepared_statements: int
    tls: ServerTls = NO_TLS
    credentials: CredentialSource | None = None  # replaces user/secret when set
    # Multi-host databases (a Topology decides the server): see attach_topology.
    reader: bool = False  # replicas, balanced, instead of the writer
    reader_fallback: bool = True
    max_replica_lag_bytes: int = 0
    failover_timeout_s: float = 30.0
    max_scram_iterations: int = DEFAULT_MAX_SERVER_ITERATIONS
    # Silent servers (see Pool._watch) and kernel dead-peer detection (connect.TcpTuning).
    query_timeout_s: float = 0.0
    check_delay_s: float = 30.0
    check_timeout_s: float = 10.0
    check_query: str = ""
    # Connections beyond `size` once the oldest waiter has waited reserve_timeout_s.
    reserve_size: int = 0
    reserve_timeout_s: float = 5.0
    tcp: TcpTuning = DEFAULT_TCP
    # The [[databases]] entry (pool.max_db_connections counts per entry, as PgBouncer does)
    # and the caps across pools that apply to this one (0: none; see pool.budget).
    database: str = ""
    max_db_connections: int = 0
    max_user_connections: int = 0
    # Linked clients idle inside a transaction this long are closed (see pool.health; 0: off).
    idle_transaction_timeout_s: float = 0.0
