"""Owns the admin console's SHOW results about the configuration and the process: DATABASES,
LISTS, USERS, PEERS, STATE, VERSION. Columns are PgBouncer's names, order and meanings first,
then what only this proxy has; rows are read from live objects at call time.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Final

from .. import __version__
from ..runtime.peers import PEER_POOL_SIZE
from ..session.client_state import ClientState
from ..speedups import implementation
from .show_result import ADMIN_POOL_MODE, I4, I8, Result, Row, T, cell

if TYPE_CHECKING:
    from ..runtime.server import ProxyServer

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

# --- SHOW DATABASES, LISTS, STATE, VERSION ---------------------------------------------------


def show_databases(server: ProxyServer) -> Result:
    cfg = server.config
    worker = cell(server.identity.index)
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
                cell(db.port),
                db.dbname or db.name,
                db.user,
                cell(size),
                cell(min(cfg.pool.min_pool_size, size)),
                cell(cfg.pool.reserve_pool_size),
                db.pool_mode.value if db.pool_mode is not None else None,
                "0",
                cell(sum(p.total for p in pools)),
                cell(server.paused or db.name in server.paused_dbs),
                "0",
                writer,
                cell(failovers),
                worker,
            ]
        )
    admin_db = cfg.admin.database
    # No server connections behind it: pool sizes 0 (PgBouncer shows its internal 2).
    row: Row = [admin_db, None, cell(server.port), admin_db, admin_db, "0", "0", "0"]
    row += [ADMIN_POOL_MODE, "0", "0", cell(server.paused), "0", None, "0", worker]
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
    return Result(LISTS_COLUMNS, [[name, cell(n)] for name, n in items])


def show_users(server: ProxyServer) -> Result:
    """Each [[users]] entry, then the admin database's own user (as PgBouncer lists it)."""
    cfg = server.config
    worker = cell(server.identity.index)
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
                cell(cfg.max_user_connections_for(user.name)),
                cell(servers.get(user.name, 0)),
                "0",
                cell(clients.get(user.name, 0)),
                cell(user.iam),
                worker,
            ]
        )
    admin_db = cfg.admin.database
    result.rows.append([admin_db, None, None, ADMIN_POOL_MODE, "0", "0", "0", "0", "0", worker])
    return result


def show_peers(server: ProxyServer) -> Result:
    """The instances cancel requests are forwarded to ([[peers]] and proxy.peer_dns_name)."""
    worker = cell(server.identity.index)
    result = Result(PEERS_COLUMNS)
    for p in server.peering.peers():
        result.rows.append(
            [
                cell(p.peer_id),
                p.host,
                cell(p.port),
                cell(PEER_POOL_SIZE),
                p.source,
                cell(p.forwarded),
                cell(p.failed),
                cell(p.dropped),
                cell(p.in_flight),
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
    return (
        f"pgpool-proxy {__version__} ({implementation()} hot path), "
        f"worker {ident.index} of {ident.count} (pid {os.getpid()})"
    )


def show_version(server: ProxyServer) -> Result:
    return Result(VERSION_COLUMNS, [[version_string(server)]])
