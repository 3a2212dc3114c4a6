"""SHOW row builders and SET validation over real proxy objects (a ProxyServer that never
listens, real Pools and ClientConnections without sockets)."""

from __future__ import annotations

import pytest

from pgpool_proxy.admin import show_pools, show_result, show_setup
from pgpool_proxy.admin.commands import CommandError
from pgpool_proxy.admin.settings import set_setting, show_config
from pgpool_proxy.config import build_config
from pgpool_proxy.runtime.server import ProxyServer
from pgpool_proxy.session.client import ClientConnection
from pgpool_proxy.session.client_state import ClientState


def _server() -> ProxyServer:
    config = build_config(
        {
            "proxy": {"listen": "127.0.0.1:0"},
            "pool": {"default_pool_size": 4},
            "databases": [
                {"name": "app", "host": "10.0.0.1", "port": 5433, "pool_mode": "session"},
                {"name": "other", "user": "svc", "password": "pw"},
            ],
            "users": [{"name": "alice", "password": "a"}, {"name": "svc", "password": "pw"}],
            "admin": {"admin_users": ["alice"]},
        },
        env={},
    )
    return ProxyServer(config)


def _client(server: ProxyServer, state: ClientState, wait_since: float = 0.0) -> ClientConnection:
    client = ClientConnection(server)
    client.user, client.database, client.addr = "alice", "app", "127.0.0.1:40000"
    client.state = state
    client.wait_since = wait_since
    server._all_clients.add(client)
    return client


def _rows(result: show_result.Result) -> list[dict[str, str | None]]:
    names = [c for c, _ in result.columns]
    return [dict(zip(names, row, strict=True)) for row in result.rows]


async def test_pools_counts_clients_servers_and_waits() -> None:
    server = _server()
    db = server.config.database("app")
    assert db is not None
    pool = server.get_pool(db, server.config.user("alice"), "alice")
    pool.clients = 3
    pool.total, pool.connecting = 2, 1
    now = pool.loop.time()
    waiter = _client(server, ClientState.WAITING, now - 2.5)
    waiter.pool = pool
    pool.waiters.append(waiter)
    _client(server, ClientState.IDLE).pool = pool
    row, admin_row = _rows(show_pools.show_pools(server))
    assert [c for c, _ in show_pools.POOLS_COLUMNS][:3] == ["database", "user", "cl_active"]
    assert row["database"] == "app" and row["user"] == "alice"
    assert row["cl_active"] == "2" and row["cl_waiting"] == "1"
    assert row["sv_login"] == "1" and row["sv_idle"] == "0" and row["sv_tested"] == "1"
    assert row["maxwait"] == "2" and 400_000 <= int(row["maxwait_us"] or 0) < 600_000
    assert row["pool_mode"] == "session"
    assert row["server"] == "10.0.0.1:5433" and row["failovers"] == "0"
    assert row["paused"] == "0" and row["worker"] == "0"
    # The admin database's own pool, as PgBouncer shows it: its consoles are its clients.
    assert admin_row["database"] == "pgbouncer" and admin_row["user"] == "pgbouncer"
    assert admin_row["cl_active"] == "0" and admin_row["pool_mode"] == "statement"
    assert admin_row["sv_idle"] == "0" and admin_row["server"] is None
    server.admin_sessions.add(_client(server, ClientState.LOGIN))
    assert _rows(show_pools.show_pools(server))[1]["cl_active"] == "1"
    pool.pause()
    assert _rows(show_pools.show_pools(server))[0]["paused"] == "1"


async def test_stats_totals_and_averages() -> None:
    server = _server()
    db = server.config.database("app")
    assert db is not None
    pool = server.get_pool(db, None, "alice")
    pool.total_xacts, pool.total_wait_s, pool.wait_count = 100, 0.5, 10
    server.counters.admin_commands = 7
    row, admin_row = _rows(show_pools.show_stats(server))
    assert row["database"] == "app" and row["total_xact_count"] == "100"
    assert row["total_wait_time"] == "500000" and row["avg_wait_time"] == "50000"
    assert row["total_received"] == "0"  # not counted (it would cost per-message work)
    # Console commands are the admin database's queries and transactions, as in PgBouncer.
    assert admin_row["database"] == "pgbouncer"
    assert admin_row["total_xact_count"] == admin_row["total_query_count"] == "7"
    assert dict(show_pools.STATS_COLUMNS)["total_xact_count"] == 1700  # numeric, as PgBouncer's
    totals = {r["name"]: r["value"] for r in _rows(show_pools.show_totals(server))}
    assert totals["total_xact_count"] == "107"
    only_totals = show_pools.show_stats(server, "STATS_TOTALS")
    assert [c for c, _ in only_totals.columns][1] == "total_xact_count"
    assert not any(c.startswith("avg_") for c, _ in only_totals.columns)


async def test_clients_databases_lists_state_version() -> None:
    server = _server()
    waiting = _client(server, ClientState.WAITING, 0.0)
    admin = _client(server, ClientState.LOGIN)
    server.admin_sessions.add(admin)
    clients = _rows(show_pools.show_clients(server))
    states = sorted((c["database"], c["state"]) for c in clients)
    assert states == [("app", "waiting"), ("pgbouncer", "active")]
    assert {c["addr"] for c in clients} == {"127.0.0.1"} and {c["port"] for c in clients} == {
        "40000"
    }
    assert waiting.key_pid == 0
    dbs = {r["name"]: r for r in _rows(show_setup.show_databases(server))}
    assert dbs["app"]["pool_size"] == "4" and dbs["app"]["pool_mode"] == "session"
    assert dbs["other"]["force_user"] == "svc" and dbs["other"]["pool_mode"] is None
    assert dbs["app"]["writer"] == "10.0.0.1:5433"
    admin_db = dbs["pgbouncer"]
    assert admin_db["database"] == admin_db["force_user"] == "pgbouncer"
    assert admin_db["host"] is None and admin_db["pool_mode"] == "statement"
    assert admin_db["current_connections"] == "0"
    server.paused_dbs.add("other")
    assert _rows(show_setup.show_databases(server))[1]["paused"] == "1"
    lists = {r["list"]: r["items"] for r in _rows(show_setup.show_lists(server))}
    # The admin database, its user and its pool count, as in PgBouncer.
    assert lists["databases"] == "3" and lists["users"] == "3" and lists["pools"] == "1"
    assert lists["used_clients"] == "2"
    assert lists["login_clients"] == "0"
    state = {r["key"]: r["value"] for r in _rows(show_setup.show_state(server))}
    assert state["paused_databases"] == "other" and state["draining"] == "no"
    assert "worker 0 of 1" in show_setup.show_version(server).rows[0][0]  # type: ignore[operator]


def test_users_and_peers() -> None:
    server = _server()
    _client(server, ClientState.IDLE)
    users = {r["name"]: r for r in _rows(show_setup.show_users(server))}
    assert list(users) == ["alice", "svc", "pgbouncer"]
    assert [c for c, _ in show_setup.USERS_COLUMNS][:4] == [
        "name",
        "pool_size",
        "reserve_pool_size",
        "pool_mode",
    ]
    assert users["alice"]["current_client_connections"] == "1"
    assert users["alice"]["max_user_connections"] == "0" and users["alice"]["pool_mode"] is None
    assert users["pgbouncer"]["pool_mode"] == "statement"
    peers = show_setup.show_peers(server)
    assert [c for c, _ in peers.columns][:4] == ["peer_id", "host", "port", "pool_size"]
    assert peers.rows == []  # no peering configured


def test_config_uses_pgbouncer_names() -> None:
    server = _server()
    rows = show_config(server).rows
    config = {r[0]: r for r in rows}
    assert config["default_pool_size"][1:] == ["4", "20", "yes"]
    assert config["max_client_conn"][1:] == ["10000", "10000", "yes"]
    assert config["listen_addr"][1:] == ["127.0.0.1", "127.0.0.1", "no"]
    assert config["listen_port"][1:] == ["0", "6432", "no"]
    assert config["query_wait_timeout"][1:3] == ["120", "120"]
    assert config["tcp_user_timeout"][1] == "30000"  # milliseconds, as PgBouncer's
    assert config["tcp_keepalive"][1] == "1" and config["so_reuseport"][1] == "0"
    assert config["admin_users"][1] == "alice"
    assert config["auth_type"][1:] == ["scram-sha-256", "scram-sha-256", "no"]
    assert config["max_user_connections"][1] == "0"  # what prometheus-pgbouncer-exporter reads
    # The proxy's own settings keep their section names; none is shown twice.
    assert config["pool.statement_cache_bytes"][3] == "yes"
    assert config["proxy.workers"][3] == "no"
    for gone in ("pool.default_pool_size", "proxy.listen", "auth.type", "proxy.reuse_port"):
        assert gone not in config
    keys = [str(r[0]) for r in rows]
    assert len(keys) == len(set(keys))
    pgbouncer_named = [k for k in keys if "." not in k]
    assert pgbouncer_named == sorted(pgbouncer_named)
    assert keys[: len(pgbouncer_named)] == pgbouncer_named


def test_set_accepts_pgbouncer_names() -> None:
    server = _server()
    key, new = set_setting(server, "max_client_conn", "50")
    assert key == "proxy.max_client_conn" and new.proxy.max_client_conn == 50
    key, new = set_setting(server, "query_wait_timeout", "7.5")
    assert key == "pool.query_wait_timeout_s" and new.pool.query_wait_timeout_s == 7.5
    key, new = set_setting(server, "tcp_user_timeout", "2500")
    assert key == "pool.tcp_user_timeout_s" and new.pool.tcp_user_timeout_s == 2.5
    for word, flag in (("0", False), ("off", False), ("1", True), ("yes", True)):
        _, new = set_setting(server, "tcp_keepalive", word)
        assert new.pool.tcp_keepalive is flag
    _, new = set_setting(server, "stats_users", "svc")
    assert new.admin.stats_users == ("svc",)
    for key, value, state in [
        ("listen_port", "7000", "55P02"),
        ("listen_addr", "0.0.0.0", "55P02"),
        ("so_reuseport", "1", "55P02"),
        ("auth_type", "md5", "55P02"),
        ("tcp_user_timeout", "soon", "22023"),
        ("tcp_keepalive", "maybe", "22023"),
        ("max_client_conn", "0", "22023"),
    ]:
        with pytest.raises(CommandError) as exc:
            set_setting(server, key, value)
        assert exc.value.sqlstate == state, (key, exc.value.message)
    if not hasattr(server.config.pool, "max_user_connections"):
        with pytest.raises(CommandError) as exc:
            set_setting(server, "max_user_connections", "5")
        assert exc.value.sqlstate == "55P02" and "no such setting" in exc.value.message


def test_config_and_set() -> None:
    server = _server()
    config = {r[0]: r for r in show_config(server).rows}
    assert config["admin.database"][1] == "pgbouncer"
    key, new = set_setting(server, "default_pool_size", "9")
    assert key == "pool.default_pool_size" and new.pool.default_pool_size == 9
    _, new = set_setting(server, "proxy.log_level", "DEBUG")
    assert new.proxy.log_level == "debug"
    _, new = set_setting(server, "admin.stats_users", "svc, alice")
    assert new.admin.stats_users == ("svc", "alice")
    for key, value, state in [
        ("default_pool_size", "0", "22023"),
        ("pool.min_pool_size", "10", "22023"),
        ("query_wait_timeout_s", "soon", "22023"),
        ("admin.admin_users", "nobody", "22023"),
        ("proxy.workers", "2", "55P02"),
        ("listen", "1.2.3.4:5", "55P02"),
        ("nosuch", "1", "42704"),
        # auth.type changes with RELOAD only (which checks every password against it).
        ("auth.type", "md5", "55P02"),
        # An empty admin_users would lock every admin out of the console.
        ("admin.admin_users", "", "22023"),
        ("admin_users", ",", "22023"),
    ]:
        with pytest.raises(CommandError) as exc:
            set_setting(server, key, value)
        assert exc.value.sqlstate == state, (key, exc.value.message)
