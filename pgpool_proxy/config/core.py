"""Owns the core sections: ``[proxy]`` (the client-facing listener), ``[pool]`` (server
connection pools) and ``[auth]`` (client authentication): their dataclasses, key tables and
cross-key checks.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from .schema import BAD, Checker, Key, Kind, only_valid

__all__ = [
    "AUTH_KEYS",
    "POOL_KEYS",
    "PROXY_KEYS",
    "AuthSettings",
    "AuthType",
    "PoolMode",
    "PoolSettings",
    "ProxySettings",
    "build_auth",
    "build_pool",
    "build_proxy",
]

LOG_LEVELS: Final = ("debug", "info", "warning", "error")
LOG_FORMATS: Final = ("text", "json")
_MIB: Final = 1024 * 1024
_GIB: Final = 1024 * _MIB


class PoolMode(enum.Enum):
    """When a server connection goes back to the pool."""

    TRANSACTION = "transaction"
    SESSION = "session"


class AuthType(enum.Enum):
    """How clients prove who they are to the proxy."""

    SCRAM_SHA_256 = "scram-sha-256"
    MD5 = "md5"
    TRUST = "trust"


@dataclass(frozen=True, slots=True)
class ProxySettings:
    """The ``[proxy]`` section: the client-facing listener."""

    listen_host: str = "127.0.0.1"
    listen_port: int = 6432
    pool_mode: PoolMode = PoolMode.TRANSACTION
    max_client_conn: int = 10000
    client_login_timeout_s: float = 10.0
    max_message_size_bytes: int = 64 * 1024 * 1024
    # What the proxy keeps per client, bounded: texts of its named prepared statements (as big
    # as the largest message, so any one statement the proxy accepts can be named), and the
    # settings it changed (replayed on every server connection it uses).
    max_client_statement_bytes: int = 64 * 1024 * 1024
    max_client_settings_bytes: int = 1024 * 1024
    log_level: str = "info"
    log_format: str = "text"
    workers: int = 1
    # SIGTERM waits this long for transactions to finish before closing what is left.
    shutdown_timeout_s: float = 30.0
    # SO_REUSEPORT on a single-worker listener: lets a new proxy bind the port while this one
    # drains (rolling restarts).
    reuse_port: bool = False
    # Log a warning when the event loop was held this long (one callback, a blocking call, a
    # starved CPU); 0 turns the warning off (the lag histogram is always kept).
    loop_lag_warn_ms: int = 100
    # A Unix-socket listener beside TCP: <dir>/.s.PGSQL.<listen port>, as PostgreSQL names it
    # ("": none), with these permission bits.
    unix_socket_dir: str = ""
    unix_socket_mode: int = 0o777


@dataclass(frozen=True, slots=True)
class PoolSettings:
    """The ``[pool]`` section: server connection pools (one per database)."""

    default_pool_size: int = 20
    min_pool_size: int = 0
    query_wait_timeout_s: float = 120.0
    server_idle_timeout_s: float = 600.0
    server_lifetime_s: float = 3600.0
    server_connect_timeout_s: float = 15.0
    server_login_retry_s: float = 1.0
    server_reset_query: str = "DISCARD ALL"
    # Shared prepared statements each server connection keeps (transaction mode); 0 turns the
    # renaming of named statements off.
    max_prepared_statements: int = 200
    # Bytes of statement text each pool keeps for sharing (least recently used forgotten).
    statement_cache_bytes: int = 64 * 1024 * 1024
    # PgBouncer's reserve pool: a pool whose oldest queued client has waited
    # reserve_pool_timeout_s may open up to reserve_pool_size connections beyond its size
    # (0 for either: no reserve).
    reserve_pool_size: int = 0
    reserve_pool_timeout_s: float = 5.0
    # Server connections this proxy may hold across all pools (0: no cap beyond pool sizes);
    # with N proxies, N x this must fit the database's max_connections.
    max_server_connections: int = 0
    # The most PBKDF2 iterations a server's SCRAM challenge may ask of the proxy (PostgreSQL's
    # default is 4096); a server asking more is refused rather than allowed to burn CPU.
    server_max_scram_iterations: int = 100_000
    # A server that owes a client a reply and sends nothing for this long is given up on: the
    # query is cancelled, the server connection closed, the client told 57014 (0: off).
    query_timeout_s: float = 0.0
    # A pooled server connection idle this long is asked an empty query before more idle time;
    # one that stays silent for server_check_timeout_s (as does one silent on a reset or a
    # settings replay) is closed and replaced (0: no periodic check).
    server_check_delay_s: float = 30.0
    server_check_timeout_s: float = 10.0
    # What the idle check sends; empty: an empty query (EmptyQueryResponse, no parse, no
    # snapshot), the cheapest round trip PostgreSQL answers.
    server_check_query: str = ""
    # Kernel dead-peer detection on client and server sockets (see net.connect.TcpTuning).
    tcp_keepalive: bool = True
    tcp_keepidle_s: int = 15
    tcp_keepintvl_s: int = 5
    tcp_keepcnt: int = 3
    tcp_user_timeout_s: float = 30.0


@dataclass(frozen=True, slots=True)
class AuthSettings:
    """The ``[auth]`` section: client authentication."""

    type: AuthType = AuthType.SCRAM_SHA_256


PROXY_KEYS: Final[dict[str, Key]] = {
    "listen": Key(Kind.LISTEN),
    "pool_mode": Key(Kind.ENUM, enum_type=PoolMode),
    "max_client_conn": Key(Kind.INT, lo=1),
    "client_login_timeout_s": Key(Kind.FLOAT, lo=0, lo_open=True),
    "max_message_size_bytes": Key(Kind.INT, lo=_MIB, hi=_GIB),
    "max_client_statement_bytes": Key(Kind.INT, lo=1024, hi=64 * _GIB),
    "max_client_settings_bytes": Key(Kind.INT, lo=1024, hi=_GIB),
    "log_level": Key(Kind.CHOICE, choices=LOG_LEVELS),
    "log_format": Key(Kind.CHOICE, choices=LOG_FORMATS),
    "workers": Key(Kind.INT, lo=1, hi=64),
    # Lifecycle (runtime.lifecycle): SIGTERM drain bound; SO_REUSEPORT for rolling restarts.
    "shutdown_timeout_s": Key(Kind.FLOAT, lo=0),
    "reuse_port": Key(Kind.BOOL),
    # pgpool_proxy.loopwatch: warn when the event loop was held this long (0: never).
    "loop_lag_warn_ms": Key(Kind.INT, lo=0, hi=3_600_000),
    # runtime.workers.bind_unix_listener: the Unix-socket listener.
    "unix_socket_dir": Key(Kind.STR),
    "unix_socket_mode": Key(Kind.INT, lo=0, hi=0o777),
}

POOL_KEYS: Final[dict[str, Key]] = {
    "default_pool_size": Key(Kind.INT, lo=1),
    "min_pool_size": Key(Kind.INT, lo=0),
    "query_wait_timeout_s": Key(Kind.FLOAT, lo=0),
    "server_idle_timeout_s": Key(Kind.FLOAT, lo=0),
    "server_lifetime_s": Key(Kind.FLOAT, lo=0),
    "server_connect_timeout_s": Key(Kind.FLOAT, lo=0, lo_open=True),
    "server_login_retry_s": Key(Kind.FLOAT, lo=0, lo_open=True),
    "server_reset_query": Key(Kind.STR),
    "max_prepared_statements": Key(Kind.INT, lo=0, hi=100_000),
    "statement_cache_bytes": Key(Kind.INT, lo=0, hi=64 * _GIB),
    "reserve_pool_size": Key(Kind.INT, lo=0),
    "reserve_pool_timeout_s": Key(Kind.FLOAT, lo=0),
    "max_server_connections": Key(Kind.INT, lo=0),
    "server_max_scram_iterations": Key(Kind.INT, lo=1, hi=10_000_000),
    # Silent servers (pool.health._watch) and kernel dead-peer detection (net.connect).
    "query_timeout_s": Key(Kind.FLOAT, lo=0),
    "server_check_delay_s": Key(Kind.FLOAT, lo=0),
    "server_check_timeout_s": Key(Kind.FLOAT, lo=0, lo_open=True),
    "server_check_query": Key(Kind.STR),
    "tcp_keepalive": Key(Kind.BOOL),
    "tcp_keepidle_s": Key(Kind.INT, lo=1, hi=32767),
    "tcp_keepintvl_s": Key(Kind.INT, lo=1, hi=32767),
    "tcp_keepcnt": Key(Kind.INT, lo=1, hi=127),
    "tcp_user_timeout_s": Key(Kind.FLOAT, lo=0, hi=2_000_000),
}

AUTH_KEYS: Final[dict[str, Key]] = {
    "type": Key(Kind.ENUM, enum_type=AuthType),
}


def build_proxy(values: dict[str, Any]) -> ProxySettings:
    """The [proxy] section from its converted values (``listen`` becomes host and port)."""
    listen = values.pop("listen", None)
    if listen is not None and listen is not BAD:
        values["listen_host"], values["listen_port"] = listen
    return ProxySettings(**only_valid(values))


def build_pool(checker: Checker, values: Mapping[str, Any]) -> PoolSettings:
    """The [pool] section from its converted values, with its cross-key check."""
    pool = PoolSettings(**only_valid(values))
    if (
        values.get("min_pool_size") is not BAD
        and values.get("default_pool_size") is not BAD
        and pool.min_pool_size > pool.default_pool_size
    ):
        checker.add(
            "pool.min_pool_size",
            f"must not exceed pool.default_pool_size ({pool.default_pool_size}), "
            f"got {pool.min_pool_size}",
        )
    return pool


def build_auth(values: Mapping[str, Any]) -> tuple[AuthSettings, AuthType | None]:
    """The [auth] section, and its type when valid (None when not)."""
    # An invalid auth.type would otherwise cascade into a "password required" for every user.
    auth_type: AuthType | None = None
    if values.get("type") is not BAD:
        auth_type = values.get("type", AuthSettings().type)
    return AuthSettings(**only_valid(values)), auth_type
