"""Owns the admin console's SHOW results: columns (PgBouncer's names, order and meanings first,
then what only this proxy has) and the rows, read from live objects at call time.

Every builder returns a `Result`; nothing here does I/O. Counters are the plain ints the pools
keep; nothing is counted per message for these views.
"""

from __future__ import annotations

import os
import time
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from .. import __version__
from ..protocol.messages import OID_INT4, OID_INT8, OID_NUMERIC, OID_TEXT
from ..runtime.peers import PEER_POOL_SIZE
from ..session.client_state import ClientState

if TYPE_CHECKING:
    from ..pool.backend import BackendConnection
    from ..pool.pool import Pool
    from ..runtime.server import ProxyServer

T, I4, I8, NUM = OID_TEXT, OID_INT4, OID_INT8, OID_NUMERIC
Row = list[str | None]

# PgBouncer 1.18's SHOW POOLS, then ours.
POOLS_COLUMNS: Final = (
    ("database", T),
    ("user", T),
    ("cl_active", I4),
    ("cl_waiting", I4),
    ("cl_active_cancel_req", I4),
    ("cl_waiting_cancel_req", I4),
    ("sv_active", I4),
    ("sv_active_cancel", I4),
    ("sv_being_canceled", I4),
    ("sv_idle", I4),
    ("sv_used", I4),
    ("sv_tested", I4),
    ("sv_login", I4),
    ("maxwait", I4),
    ("maxwait_us", I4),
    ("pool_mode", T),
    # ours
    ("pinned", I4),
    ("prepared_statements", I4),
    ("server", T),
    ("failovers", I8),
    ("paused", I4),
    ("worker", I4),
)

_STATS_NAMES: Final = (
    "xact_count",
    "query_count",
    "received",
    "sent",
    "xact_time",
    "query_time",
    "wait_time",
)
_AVG_NAMES: Final = (
    "xact_count",
    "query_count",
    "recv",
    "sent",
    "xact_time",
    "query_time",
    "wait_time",
)
# numeric, as PgBouncer's (drivers hand out Decimals for them).
TOTALS_COLUMNS: Final = tuple((f"total_{n}", NUM) for n in _STATS_NAMES)
AVERAGES_COLUMNS: Final = tuple((f"avg_{n}", NUM) for n in _AVG_NAMES)
# PgBouncer 1.18's SHOW STATS, then ours.
STATS_COLUMNS: Final = (("database", T), *TOTALS_COLUMNS, *AVERAGES_COLUMNS, ("worker", I4))

# PgBouncer 1.18's SHOW CLIENTS / SHOW SERVERS, then newer PgBouncer's, then ours.
SOCKET_COLUMNS: Final = (
    ("type", T),
    ("user", T),
    ("database", T),
    ("state", T),
    ("addr", T),
    ("port", I4),
    ("local_addr", T),
    ("local_port", I4),
    ("connect_time", T),
    ("request_time", T),
    ("wait", I4),
    ("wait_us", I4),
    ("close_needed", I4),
    ("ptr", T),
    ("link", T),
    ("remote_pid", I4),
    ("tls", T),
    ("application_name", T),
    ("prepared_statements", I4),
    ("id", I8),
    # ours
    ("pinned", I4),
    ("worker", I4),
)

# PgBouncer 1.18's SHOW DATABASES, then ours.
DATABASES_COLUMNS: Final = (
    ("name", T),
    ("host", T),
    ("port", I4),
    ("database", T),
    ("force_user", T),
    ("pool_size", I4),
    ("min_pool_size", I4),
    ("reserve_pool", I4),
    ("pool_mode", T),
    ("max_connections", I4),
    ("current_connections", I4),
    ("paused", I4),
    ("disabled", I4),
    # ours
    ("writer", T),
    ("failovers", I8),
    ("worker", I4),
)

LISTS_COLUMNS: Final = (("list", T), ("items", I4))
STATE_COLUMNS: Final = (("key", T), ("value", T))
VERSION_COLUMNS: Final = (("version", T),)
NAME_VALUE_COLUMNS: Final = (("name", T), ("value", NUM))

# Current PgBouncer's SHOW USERS (1.18 had only name and pool_mode), then ours.
USERS_COLUMNS: Final = (
    ("name", T),
    ("pool_size", I4),
    ("reserve_pool_size", I4),
    ("pool_mode", T),
    ("max_user_connections", I4),
    ("current_connections", I4),
    ("max_user_client_connections", I4),
    ("current_client_connections", I4),
    # ours
    ("iam", I4),
    ("worker", I4),
)

# PgBouncer 1.19+'s SHOW PEERS, then ours: where the peer came from ("config" or "dns"), the
# cancels forwarded to it (done, failed, dropped over pool_size, in flight), this worker.
PEERS_COLUMNS: Final = (
    ("peer_id", I4),
    ("host", T),
    ("port", I4),
    ("pool_size", I4),
    # ours
    ("source", T),
    ("forwarded", I8),
    ("failed", I8),
    ("dropped", I8),
    ("in_flight", I4),
    ("worker", I4),
)

# PgBouncer's admin database is served by a pool of its own, in statement mode, whose user is
# the admin database's name; its rows in SHOW POOLS/STATS/DATABASES/USERS describe the console.
ADMIN_POOL_MODE: Final = "statement"

# Averages cover the time since a window start that moves on every STATS_PERIOD_S (so between
# one and two periods), as PgBouncer's cover its last stats_period.
STATS_PERIOD_S: Final = 15.0


@dataclass(slots=True)
class Result:
    """One SHOW result set."""

    columns: tuple[tuple[str, int], ...]
    rows: list[Row] = field(default_factory=list)


def _s(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def _split_addr(addr: str) -> tuple[str, str | None]:
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit():
        return addr, None
    return host.strip("[]"), port


def _wall(server: ProxyServer, loop_time: float) -> str:
    """A loop-clock instant as PgBouncer prints timestamps."""
    now_loop = _loop_now(server)
    when = time.time() - (now_loop - loop_time)
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(when))


def _loop_now(server: ProxyServer) -> float:
    for pool in server.pools.values():
        return pool.loop.time()
    import asyncio

    return asyncio.get_running_loop().time()


def _tls(endpoint: Any) -> str:
    transport = endpoint.transport
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    if ssl_object is None:
        return ""
    cipher = ssl_object.cipher()
    return f"{ssl_object.version()}/{cipher[0] if cipher else ''}"


def _db_of(pool: Pool, server: ProxyServer) -> tuple[str, str]:
    for key, p in server.pools.items():
        if p is pool:
            return key
    name, _, user = pool.name.partition("/")
    return name, user


# --- SHOW POOLS ------------------------------------------------------------------------------


def pool_server(pool: Pool) -> tuple[str, int]:
    """(server address, failovers) of a pool; a plain database's host:port and 0."""
    topology = getattr(pool, "topology", None)
    if topology is None:
        return f"{pool.spec.host}:{pool.spec.port}", 0
    failovers = int(getattr(topology, "failovers", 0))
    target = getattr(pool, "target", None)
    if target is not None:
        return f"{target[0]}:{target[1]}", failovers
    by_address = getattr(pool, "by_address", {})
    return ",".join(f"{h}:{p}" for h, p in sorted(by_address)), failovers


def _linked_by_pool(server: ProxyServer) -> dict[int, int]:
    linked: dict[int, int] = {}
    for client in server.all_clients():
        if client.backend is not None and client.pool is not None:
            linked[id(client.pool)] = linked.get(id(client.pool), 0) + 1
    return linked


def show_pools(server: ProxyServer) -> Result:
    now = _loop_now(server) if server.pools else 0.0
    linked = _linked_by_pool(server)
    worker = server.identity.index
    result = Result(POOLS_COLUMNS)
    for (db, user), pool in server.pools.items():
        waiting = [c for c in pool.waiters if c.is_waiting()]
        maxwait = max((now - c.wait_since for c in waiting), default=0.0)
        active = linked.get(id(pool), 0)
        idle = len(pool.idle)
        tested = max(0, pool.total - idle - pool.connecting - active)
        address, failovers = pool_server(pool)
        result.rows.append(
            [
                db,
                user,
                _s(max(0, pool.clients - len(waiting))),
                _s(len(waiting)),
                "0",
                "0",
                _s(active),
                "0",
                "0",
                _s(idle),
                "0",
                _s(tested),
                _s(pool.connecting),
                _s(int(maxwait)),
                _s(int((maxwait % 1) * 1_000_000)),
                pool.spec.mode.value,
                _s(pool.pinned),
                _s(len(pool.registry.by_key)),
                address,
                _s(failovers),
                _s(pool.paused),
                _s(worker),
            ]
        )
    admin_db = server.config.admin.database
    consoles = len(server.admin_sessions)
    # cl_active: the consoles; no waits, no server connections; then ours: no pinned clients
    # or statements, no server, no failovers.
    row: Row = [admin_db, admin_db, _s(consoles), *(["0"] * 12), ADMIN_POOL_MODE]
    row += ["0", "0", None, "0", _s(server.paused), _s(worker)]
    result.rows.append(row)
    return result


# --- SHOW STATS / TOTALS ---------------------------------------------------------------------


@dataclass(slots=True)
class _Snapshot:
    at: float
    # database -> (xacts, queries, xact_us, wait_us, waits)
    by_db: dict[str, tuple[int, int, int, int, int]]


class _StatsWindow:
    __slots__ = ("cur", "prev")

    def __init__(self, start: _Snapshot) -> None:
        self.prev = start
        self.cur = start


_windows: weakref.WeakKeyDictionary[Any, _StatsWindow] = weakref.WeakKeyDictionary()


def _totals(server: ProxyServer) -> dict[str, tuple[int, int, int, int, int]]:
    out: dict[str, tuple[int, int, int, int, int]] = {}
    for (db, _user), pool in server.pools.items():
        x, q, xu, wu, w = out.get(db, (0, 0, 0, 0, 0))
        out[db] = (
            x + pool.total_xacts,
            q + int(getattr(pool, "total_queries", 0)),
            xu + int(getattr(pool, "total_xact_s", 0.0) * 1_000_000),
            wu + int(pool.total_wait_s * 1_000_000),
            w + pool.wait_count,
        )
    # Each console command counts as one query and one transaction, as PgBouncer counts them.
    commands = server.counters.admin_commands
    out[server.config.admin.database] = (commands, commands, 0, 0, 0)
    return out


def _stats_rows(server: ProxyServer) -> list[tuple[str, list[int], list[int]]]:
    """(database, totals, averages) per database with a pool."""
    now = time.time()
    totals = _totals(server)
    window = _windows.get(server)
    if window is None:
        window = _StatsWindow(_Snapshot(server.started_at, {}))
        _windows[server] = window
    base = window.prev
    if now - window.cur.at >= STATS_PERIOD_S:
        window.prev, window.cur = window.cur, _Snapshot(now, totals)
    span = max(now - base.at, 1e-6)
    rows = []
    for db, (xacts, queries, xact_us, wait_us, waits) in totals.items():
        bx, bq, bxu, bwu, bw = base.by_db.get(db, (0, 0, 0, 0, 0))
        dx, dq, dw = xacts - bx, queries - bq, waits - bw
        tot = [xacts, queries, 0, 0, xact_us, 0, wait_us]
        avg = [
            int(dx / span),
            int(dq / span),
            0,
            0,
            (xact_us - bxu) // dx if dx > 0 else 0,
            0,
            (wait_us - bwu) // dw if dw > 0 else 0,
        ]
        rows.append((db, tot, avg))
    return rows


def show_stats(server: ProxyServer, which: str = "STATS") -> Result:
    worker = _s(server.identity.index)
    if which == "STATS_TOTALS":
        result = Result((("database", T), *TOTALS_COLUMNS, ("worker", I4)))
    elif which == "STATS_AVERAGES":
        result = Result((("database", T), *AVERAGES_COLUMNS, ("worker", I4)))
    else:
        result = Result(STATS_COLUMNS)
    for db, tot, avg in _stats_rows(server):
        values: list[int] = []
        if which != "STATS_AVERAGES":
            values += tot
        if which != "STATS_TOTALS":
            values += avg
        result.rows.append([db, *(_s(v) for v in values), worker])
    return result


def show_totals(server: ProxyServer) -> Result:
    rows = _stats_rows(server)
    names = [c for c, _ in TOTALS_COLUMNS] + [c for c, _ in AVERAGES_COLUMNS]
    sums = [0] * len(names)
    for _db, tot, avg in rows:
        for i, v in enumerate(tot + avg):
            sums[i] += v
    return Result(NAME_VALUE_COLUMNS, [[n, _s(v)] for n, v in zip(names, sums, strict=True)])


# --- SHOW CLIENTS / SERVERS ------------------------------------------------------------------

_CLIENT_STATES: Final = {
    ClientState.LOGIN: "login",
    ClientState.IDLE: "idle",
    ClientState.WAITING: "waiting",
    ClientState.REPLAYING: "active",
    ClientState.ACTIVE: "active",
    ClientState.PROBING: "active",
    ClientState.CHECKING: "active",
    ClientState.CLOSED: "closed",
}


def show_clients(server: ProxyServer) -> Result:
    now = _loop_now(server) if server.pools else 0.0
    local_addr, local_port = str(server.host), _s(server.port)
    worker = _s(server.identity.index)
    admin_db = server.config.admin.database
    result = Result(SOCKET_COLUMNS)
    for client in server.all_clients():
        if client.peer_channel:
            continue
        admin = client in server.admin_sessions
        state = "active" if admin else _CLIENT_STATES[client.state]
        waited = now - client.wait_since if client.state == ClientState.WAITING else 0.0
        host, port = _split_addr(client.addr)
        backend = client.backend
        result.rows.append(
            [
                "C",
                client.user or None,
                admin_db if admin else client.database or None,
                state,
                host,
                port,
                local_addr,
                local_port,
                None,
                None,
                _s(int(waited)),
                _s(int((waited % 1) * 1_000_000)),
                "0",
                hex(id(client)),
                hex(id(backend)) if backend is not None else "",
                "0",
                _tls(client),
                client.params.get("application_name", ""),
                _s(len(client.stmts)),
                _s(client.key_pid),
                _s(client.pinned),
                worker,
            ]
        )
    return result


def _backends(server: ProxyServer) -> Iterable[tuple[Pool, BackendConnection, str]]:
    """Every server connection that is idle in a pool or linked to a client (ones being
    connected or reset show only as counts in SHOW POOLS)."""
    for pool in server.pools.values():
        for backend in pool.idle:
            yield pool, backend, "idle"
    for client in server.all_clients():
        linked = client.backend
        if linked is not None and client.pool is not None:
            yield client.pool, linked, "active"


def show_servers(server: ProxyServer) -> Result:
    worker = _s(server.identity.index)
    result = Result(SOCKET_COLUMNS)
    for pool, backend, state in _backends(server):
        db, _user = _db_of(pool, server)
        host, port = getattr(backend, "address", pool.backend_address)
        transport = backend.transport
        sock = transport.get_extra_info("sockname") if transport is not None else None
        local_host, local_port = (sock[0], sock[1]) if isinstance(sock, tuple) else ("", None)
        client = backend.client
        result.rows.append(
            [
                "S",
                pool.spec.user,
                db,
                state,
                host,
                _s(port),
                local_host,
                _s(local_port),
                _wall(server, backend.created_at),
                None,
                "0",
                "0",
                _s(backend.generation != pool.generation),
                hex(id(backend)),
                hex(id(client)) if client is not None else "",
                _s(backend.pid),
                _tls(backend),
                client.params.get("application_name", "") if client is not None else "",
                _s(len(backend.stmts)),
                _s(id(backend)),
                _s(client is not None and client.pinned),
                worker,
            ]
        )
    return result


# --- SHOW DATABASES, LISTS, STATE, VERSION ---------------------------------------------------


def show_databases(server: ProxyServer) -> Result:
    cfg = server.config
    worker = _s(server.identity.index)
    topologies: dict[str, Any] = getattr(server, "topologies", {}) or {}
    result = Result(DATABASES_COLUMNS)
    for db in cfg.databases:
        pools = [p for (name, _u), p in server.pools.items() if name == db.name]
        topo = topologies.get(db.name)
        if topo is None:
            writer: str | None = f"{db.host}:{db.port}"
            failovers = 0
        else:
            state = getattr(topo, "writer", None)
            writer = getattr(state, "address", None) if state is not None else None
            failovers = int(getattr(topo, "failovers", 0))
        size = cfg.pool_size_for(db)
        result.rows.append(
            [
                db.name,
                db.host,
                _s(db.port),
                db.dbname or db.name,
                db.user,
                _s(size),
                _s(min(cfg.pool.min_pool_size, size)),
                _s(cfg.pool.reserve_pool_size),
                db.pool_mode.value if db.pool_mode is not None else None,
                "0",
                _s(sum(p.total for p in pools)),
                _s(server.paused or db.name in server.paused_dbs),
                "0",
                writer,
                _s(failovers),
                worker,
            ]
        )
    admin_db = cfg.admin.database
    # No server connections behind it: pool sizes 0 (PgBouncer shows its internal 2).
    row: Row = [admin_db, None, _s(server.port), admin_db, admin_db, "0", "0", "0"]
    row += [ADMIN_POOL_MODE, "0", "0", _s(server.paused), "0", None, "0", worker]
    result.rows.append(row)
    return result


def show_lists(server: ProxyServer) -> Result:
    clients = [c for c in server.all_clients() if not c.peer_channel]
    login = sum(
        1 for c in clients if c.state == ClientState.LOGIN and c not in server.admin_sessions
    )
    servers = sum(p.total for p in server.pools.values())
    # The admin database, its user and its pool count as one each, as in PgBouncer.
    items = (
        ("databases", len(server.config.databases) + 1),
        ("users", len(server.config.users) + 1),
        ("pools", len(server.pools) + 1),
        ("free_clients", 0),
        ("used_clients", len(clients)),
        ("login_clients", login),
        ("free_servers", 0),
        ("used_servers", servers),
        ("dns_names", 0),
        ("dns_zones", 0),
        ("dns_queries", 0),
        ("dns_pending", 0),
    )
    return Result(LISTS_COLUMNS, [[name, _s(n)] for name, n in items])


def show_users(server: ProxyServer) -> Result:
    """Each [[users]] entry, then the admin database's own user (as PgBouncer lists it)."""
    cfg = server.config
    worker = _s(server.identity.index)
    # Per-user limits are PgBouncer's max_user_connections / max_user_client_connections;
    # 0 means none, as there.
    servers: dict[str, int] = {}
    for (_db, name), pool in server.pools.items():
        servers[name] = servers.get(name, 0) + pool.total
    clients: dict[str, int] = {}
    for client in server.all_clients():
        if not client.peer_channel and client.user:
            clients[client.user] = clients.get(client.user, 0) + 1
    result = Result(USERS_COLUMNS)
    for user in cfg.users:
        result.rows.append(
            [
                user.name,
                None,
                None,
                user.pool_mode.value if user.pool_mode is not None else None,
                _s(cfg.max_user_connections_for(user.name)),
                _s(servers.get(user.name, 0)),
                "0",
                _s(clients.get(user.name, 0)),
                _s(user.iam),
                worker,
            ]
        )
    admin_db = cfg.admin.database
    result.rows.append([admin_db, None, None, ADMIN_POOL_MODE, "0", "0", "0", "0", "0", worker])
    return result


def show_peers(server: ProxyServer) -> Result:
    """The instances cancel requests are forwarded to ([[peers]] and proxy.peer_dns_name)."""
    worker = _s(server.identity.index)
    result = Result(PEERS_COLUMNS)
    for p in server.peering.peers():
        result.rows.append(
            [
                _s(p.peer_id),
                p.host,
                _s(p.port),
                _s(PEER_POOL_SIZE),
                p.source,
                _s(p.forwarded),
                _s(p.failed),
                _s(p.dropped),
                _s(p.in_flight),
                worker,
            ]
        )
    return result


def show_state(server: ProxyServer) -> Result:
    paused = server.paused
    rows: list[Row] = [
        ["active", "no" if paused or server.draining else "yes"],
        ["paused", "yes" if paused else "no"],
        ["paused_databases", ",".join(sorted(server.paused_dbs))],
        ["suspended", "no"],
        ["draining", "yes" if server.draining else "no"],
    ]
    return Result(STATE_COLUMNS, rows)


def version_string(server: ProxyServer) -> str:
    ident = server.identity
    return f"pgpool-proxy {__version__}, worker {ident.index} of {ident.count} (pid {os.getpid()})"


def show_version(server: ProxyServer) -> Result:
    return Result(VERSION_COLUMNS, [[version_string(server)]])
