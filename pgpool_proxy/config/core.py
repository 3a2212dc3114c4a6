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
    "DEFAULT_AUTH_QUERY",
    "MAX_PEER_ID",
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
# Peer ids fit the 14 bits the cancel keys keep for them (PgBouncer's range; runtime.peers).
MAX_PEER_ID: Final = (1 << 14) - 1


# PgBouncer's documented default auth_query.
DEFAULT_AUTH_QUERY: Final = "SELECT usename, passwd FROM pg_shadow WHERE usename=$1"


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
    # Peering (runtime.peers): this instance's id in the cancel keys it hands out (0: none, or
    # a random one picked at startup when peers are configured), the DNS name whose A/AAAA
    # records are the peers (each asked for its id on peer_dns_port, 0: listen's port), how
    # often it is resolved again, and how long a forwarded cancel may take.
    peer_id: int = 0
    peer_dns_name: str = ""
    peer_dns_port: int = 0
    peer_dns_refresh_s: float = 30.0
    cancel_wait_timeout_s: float = 10.0


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
    # PgBouncer's max_db_connections / max_user_connections: server connections per
    # [[databases]] entry / per server user, across pools (0: no cap).
    max_db_connections: int = 0
    max_user_connections: int = 0
    # The most PBKDF2 iterations a server's SCRAM challenge may ask of the proxy (PostgreSQL's
    # default is 4096); a server asking more is refused rather than allowed to burn CPU.
    server_max_scram_iterations: int = 100_000
    # A server that owes a client a reply and sends nothing for this long is given up on: the
    # query is cancelled, the server connection closed, the client told 57014 (0: off).
    query_timeout_s: float = 0.0
    # PgBouncer's idle_transaction_timeout and client_idle_timeout (0: off): a client idle in a
    # transaction, or idle with no server connection, this long is closed.
    idle_transaction_timeout_s: float = 0.0
    client_idle_timeout_s: float = 0.0
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
    # PgBouncer's auth_query: users not in [[users]] are looked up in PostgreSQL by this query
    # ($1 is the client's user name), run as auth_user (a [[users]] entry) on a server
    # connection of auth_user's own pool, in auth_dbname (default: the client's database).
    # Empty auth_user: no look-up (a database's own auth_user still turns it on there).
    auth_user: str = ""
    auth_query: str = DEFAULT_AUTH_QUERY
    auth_dbname: str = ""
    # How long a looked-up verifier is trusted, and how long a "no such user" answer is; a
    # failed login refreshes a cached verifier at most once per auth_refresh_s.
    auth_cache_s: float = 60.0
    auth_negative_cache_s: float = 5.0
    auth_refresh_s: float = 1.0
    # The look-up's bound (the client waits for it within client_login_timeout_s).
    auth_query_timeout_s: float = 5.0


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
    # Peering: forwarding cancel requests between instances behind one load balancer.
    "peer_id": Key(Kind.INT, lo=0, hi=MAX_PEER_ID),
    "peer_dns_name": Key(Kind.STR),
    "peer_dns_port": Key(Kind.INT, lo=0, hi=65535),
    "peer_dns_refresh_s": Key(Kind.FLOAT, lo=1, hi=86400),
    "cancel_wait_timeout_s": Key(Kind.FLOAT, lo=0, lo_open=True, hi=3600),
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
    "max_db_connections": Key(Kind.INT, lo=0),
    "max_user_connections": Key(Kind.INT, lo=0),
    "server_max_scram_iterations": Key(Kind.INT, lo=1, hi=10_000_000),
    # Silent servers (pool.health._watch) and kernel dead-peer detection (net.connect).
    "query_timeout_s": Key(Kind.FLOAT, lo=0),
    # Idle clients (pool.health for transactions, session.idle for clients with no server).
    "idle_transaction_timeout_s": Key(Kind.FLOAT, lo=0),
    "client_idle_timeout_s": Key(Kind.FLOAT, lo=0),
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
    "auth_user": Key(Kind.STR),
    "auth_query": Key(Kind.STR, nonempty=True),
    "auth_dbname": Key(Kind.STR),
    "auth_cache_s": Key(Kind.FLOAT, lo=0),
    "auth_negative_cache_s": Key(Kind.FLOAT, lo=0),
    "auth_refresh_s": Key(Kind.FLOAT, lo=0),
    "auth_query_timeout_s": Key(Kind.FLOAT, lo=0, lo_open=True),
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
