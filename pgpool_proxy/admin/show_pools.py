"""Owns the admin console's SHOW results about pools and connections: POOLS, STATS, STATS_TOTALS,
STATS_AVERAGES, TOTALS, CLIENTS, SERVERS. Columns are PgBouncer's names, order and meanings
first, then what only this proxy has; rows are read from live objects at call time.

Nothing here does I/O. Counters are the plain ints the pools keep; nothing is counted per
message for these views.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from ..session.client_state import ClientState
from .show_result import ADMIN_POOL_MODE, I4, I8, NUM, Result, Row, T, cell

if TYPE_CHECKING:
    from ..pool.backend import BackendConnection
    from ..pool.pool import Pool
    from ..runtime.server import ProxyServer

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

NAME_VALUE_COLUMNS: Final = (("name", T), ("value", NUM))

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


# Averages cover the time since a window start that moves on every STATS_PERIOD_S (so between
# one and two periods), as PgBouncer's cover its last stats_period.
STATS_PERIOD_S: Final = 15.0


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
                cell(max(0, pool.clients - len(waiting))),
                cell(len(waiting)),
                "0",
                "0",
                cell(active),
                "0",
                "0",
                cell(idle),
                "0",
                cell(tested),
                cell(pool.connecting),
                cell(int(maxwait)),
                cell(int((maxwait % 1) * 1_000_000)),
                pool.spec.mode.value,
                cell(pool.pinned),
                cell(len(pool.registry.by_key)),
                address,
                cell(failovers),
                cell(pool.paused),
                cell(worker),
            ]
        )
    admin_db = server.config.admin.database
    consoles = len(server.admin_sessions)
    # cl_active: the consoles; no waits, no server connections; then ours: no pinned clients
    # or statements, no server, no failovers.
    row: Row = [admin_db, admin_db, cell(consoles), *(["0"] * 12), ADMIN_POOL_MODE]
    row += ["0", "0", None, "0", cell(server.paused), cell(worker)]
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
    worker = cell(server.identity.index)
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
        result.rows.append([db, *(cell(v) for v in values), worker])
    return result


def show_totals(server: ProxyServer) -> Result:
    rows = _stats_rows(server)
    names = [c for c, _ in TOTALS_COLUMNS] + [c for c, _ in AVERAGES_COLUMNS]
    sums = [0] * len(names)
    for _db, tot, avg in rows:
        for i, v in enumerate(tot + avg):
            sums[i] += v
    return Result(NAME_VALUE_COLUMNS, [[n, cell(v)] for n, v in zip(names, sums, strict=True)])


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
    local_addr, local_port = str(server.host), cell(server.port)
    worker = cell(server.identity.index)
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
                cell(int(waited)),
                cell(int((waited % 1) * 1_000_000)),
                "0",
                hex(id(client)),
                hex(id(backend)) if backend is not None else "",
                "0",
                _tls(client),
                client.params.get("application_name", ""),
                cell(len(client.stmts)),
                cell(client.key_pid),
                cell(client.pinned),
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
    worker = cell(server.identity.index)
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
                cell(port),
                local_host,
                cell(local_port),
                _wall(server, backend.created_at),
                None,
                "0",
                "0",
                cell(backend.generation != pool.generation),
                hex(id(backend)),
                hex(id(client)) if client is not None else "",
                cell(backend.pid),
                _tls(backend),
                client.params.get("application_name", "") if client is not None else "",
                cell(len(backend.stmts)),
                cell(id(backend)),
                cell(client is not None and client.pinned),
                worker,
            ]
        )
    return result
