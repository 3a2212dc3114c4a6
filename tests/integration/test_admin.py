"""The admin console against a running proxy and a real PostgreSQL: every SHOW and command,
PgBouncer's column names, permissions, PAUSE/RESUME, KILL, RECONNECT, SET and RELOAD.

Clients are psycopg 3 (simple protocol: autocommit, no parameters), psql and asyncpg.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest

from pgpool_proxy import speedups
from pgpool_proxy.config import load_config
from pgpool_proxy.protocol import messages as m
from tests.support.pg import LocalPostgres
from tests.support.proxy import PASSWORDS, ProxyThread, StartProxy
from tests.support.proxyproc import write_config
from tests.support.rawpg import RawClient, RawError, raw_login
from tests.support.robustness import one_value
from tests.support.waits import eventually, wait_for

ADMIN = {"admin_users": ["alice"], "stats_users": ["bob"]}

# Column lists of PgBouncer 1.18 (read from a running PgBouncer); ours must start with them.
PGBOUNCER_COLUMNS = {
    "POOLS": "database user cl_active cl_waiting cl_active_cancel_req cl_waiting_cancel_req "
    "sv_active sv_active_cancel sv_being_canceled sv_idle sv_used sv_tested sv_login maxwait "
    "maxwait_us pool_mode",
    "STATS": "database total_xact_count total_query_count total_received total_sent "
    "total_xact_time total_query_time total_wait_time avg_xact_count avg_query_count avg_recv "
    "avg_sent avg_xact_time avg_query_time avg_wait_time",
    "CLIENTS": "type user database state addr port local_addr local_port connect_time "
    "request_time wait wait_us close_needed ptr link remote_pid tls application_name",
    "SERVERS": "type user database state addr port local_addr local_port connect_time "
    "request_time wait wait_us close_needed ptr link remote_pid tls application_name",
    "DATABASES": "name host port database force_user pool_size min_pool_size reserve_pool "
    "pool_mode max_connections current_connections paused disabled",
    "LISTS": "list items",
    "CONFIG": "key value default changeable",
    "VERSION": "version",
    # Current PgBouncer's (1.18 had name, pool_mode) and PgBouncer 1.19+'s.
    "USERS": "name pool_size reserve_pool_size pool_mode max_user_connections "
    "current_connections max_user_client_connections current_client_connections",
    "PEERS": "peer_id host port pool_size source forwarded failed dropped in_flight worker",
}


async def console(proxy: ProxyThread, user: str = "alice") -> psycopg.AsyncConnection[Any]:
    return await psycopg.AsyncConnection.connect(proxy.dsn(user, "pgbouncer"), autocommit=True)


async def show(
    conn: psycopg.AsyncConnection[Any], what: str
) -> tuple[list[str], list[dict[str, Any]]]:
    cur = await conn.execute(f"SHOW {what}")
    assert cur.description is not None
    cols = [d.name for d in cur.description]
    return cols, [dict(zip(cols, row, strict=True)) for row in await cur.fetchall()]


async def app(proxy: ProxyThread, user: str = "alice") -> asyncpg.Connection:
    return await asyncpg.connect(proxy.dsn(user, "app"))


async def db_paused(proxy: ProxyThread, db: str = "app") -> bool:
    """Whether SHOW DATABASES says `db` is paused (read on a console connection of its own)."""
    conn = await console(proxy)
    try:
        _, dbs = await show(conn, "DATABASES")
        return any(d["name"] == db and d["paused"] == 1 for d in dbs)
    finally:
        await conn.close()


async def test_show_commands_use_pgbouncer_columns(start_proxy: StartProxy) -> None:
    proxy = start_proxy(admin=ADMIN)
    conn = await app(proxy)
    admin = await console(proxy)
    try:
        for i in range(10):
            assert await conn.fetchval("SELECT $1::int", i) == i
        pid = await conn.fetchval("SELECT pg_backend_pid()")
        for what, expected in PGBOUNCER_COLUMNS.items():
            cols, _rows = await show(admin, what)
            assert cols[: len(expected.split())] == expected.split(), what
        _, pools = await show(admin, "POOLS")
        (pool,) = [p for p in pools if p["database"] == "app"]
        assert pool["user"] == "alice" and pool["pool_mode"] == "transaction"
        assert pool["cl_active"] == 1 and pool["cl_waiting"] == 0
        assert pool["sv_idle"] == 1 and pool["sv_active"] == 0
        assert pool["server"].endswith(f":{proxy.config.databases[0].port}")
        assert pool["worker"] == 0 and pool["paused"] == 0
        # The admin database's own pool, as in PgBouncer (its user is the database's name).
        (own,) = [p for p in pools if p["database"] == "pgbouncer"]
        assert own["user"] == "pgbouncer" and own["cl_active"] == 1
        assert own["pool_mode"] == "statement"
        _, stats = await show(admin, "STATS")
        st, admin_st = stats
        assert st["database"] == "app" and st["total_xact_count"] >= 11
        assert admin_st["database"] == "pgbouncer" and admin_st["total_query_count"] >= 3
        _, clients = await show(admin, "CLIENTS")
        by_db = {c["database"]: c for c in clients}
        assert by_db["app"]["user"] == "alice" and by_db["app"]["state"] == "idle"
        assert by_db["pgbouncer"]["state"] == "active"
        _, servers = await show(admin, "SERVERS")
        assert [s["remote_pid"] for s in servers] == [pid]
        assert servers[0]["state"] == "idle" and servers[0]["close_needed"] == 0
        _, dbs = await show(admin, "DATABASES")
        assert dbs[0]["name"] == "app" and dbs[0]["pool_size"] == 5
        assert dbs[0]["current_connections"] == 1 and dbs[0]["paused"] == 0
        assert dbs[1]["name"] == "pgbouncer" and dbs[1]["port"] == proxy.port
        _, lists = await show(admin, "LISTS")
        items = {r["list"]: r["items"] for r in lists}
        assert items["pools"] == 2 and items["used_clients"] == 2 and items["used_servers"] == 1
        _, users = await show(admin, "USERS")
        by_name = {u["name"]: u for u in users}
        assert by_name["alice"]["current_connections"] == 1
        assert by_name["alice"]["current_client_connections"] == 2
        assert set(by_name) == {"alice", "bob", "carol", "pgbouncer"}
        _, peers = await show(admin, "PEERS")
        assert peers == []
        _, version = await show(admin, "VERSION")
        assert "pgpool-proxy" in version[0]["version"] and "worker 0 of 1" in version[0]["version"]
        # Which hot path serves: what this process loaded (the proxy runs in-process here).
        assert f"({speedups.implementation()} hot path)" in version[0]["version"]
        _, config = await show(admin, "CONFIG")
        cfg = {r["key"]: r for r in config}
        assert cfg["default_pool_size"]["value"] == "5"
        assert cfg["default_pool_size"]["changeable"] == "yes"
        assert cfg["listen_port"]["value"] == str(proxy.config.proxy.listen_port)
        assert cfg["listen_port"]["changeable"] == "no"
        _, state = await show(admin, "STATE")
        assert {r["key"]: r["value"] for r in state}["paused"] == "no"
        _, totals = await show(admin, "TOTALS")
        assert {r["name"]: r["value"] for r in totals}["total_xact_count"] >= 11
        # Trailing semicolons, any case, several statements in one query.
        cur = await admin.execute("show version; Show Lists;")
        assert cur.statusmessage == "SHOW"
        notices: list[str] = []
        admin.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
        await admin.execute("SHOW HELP")
        assert notices == ["Console usage"]
    finally:
        await conn.close()
        await admin.close()


async def test_show_clients_names_a_consoles_application(start_proxy: StartProxy) -> None:
    """A console connection's application_name (psql sends its own) is in SHOW CLIENTS, as an
    application's is."""
    proxy = start_proxy(admin=ADMIN)
    conn = await asyncpg.connect(
        proxy.dsn("alice", "app"), server_settings={"application_name": "worker"}
    )
    admin = await psycopg.AsyncConnection.connect(
        proxy.dsn("alice", "pgbouncer"), autocommit=True, application_name="ops-console"
    )
    try:
        _, clients = await show(admin, "CLIENTS")
        by_db = {c["database"]: c["application_name"] for c in clients}
        assert by_db == {"app": "worker", "pgbouncer": "ops-console"}, clients
    finally:
        await conn.close()
        await admin.close()


async def test_psql_and_unknown_commands(start_proxy: StartProxy) -> None:
    proxy = start_proxy(admin=ADMIN)
    env = {**os.environ, "PGPASSWORD": PASSWORDS["alice"]}
    args = ["psql", "-h", proxy.host, "-p", str(proxy.port), "-U", "alice", "-d", "pgbouncer"]
    out = subprocess.run(
        [*args, "-A", "-c", "SHOW POOLS;"], env=env, capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("database|user|cl_active|cl_waiting|")
    bad = subprocess.run(
        [*args, "-c", "SHOW FOO"], env=env, capture_output=True, text=True, timeout=30
    )
    assert bad.returncode != 0 and "invalid command 'SHOW FOO'" in bad.stderr
    admin = await console(proxy)
    try:
        with pytest.raises(psycopg.errors.SyntaxError) as exc:
            await admin.execute("FROBNICATE now")
        assert "FROBNICATE" in str(exc.value)
        # The extended protocol gets a clear error, and the session goes on.
        with pytest.raises(psycopg.errors.FeatureNotSupported) as exc2:
            await admin.execute("SHOW POOLS", prepare=True)
        assert "simple query protocol" in str(exc2.value)
        # SHOW FDS serves PgBouncer's online restart: refused, saying so.
        with pytest.raises(psycopg.errors.FeatureNotSupported) as exc3:
            await admin.execute("SHOW FDS")
        assert "online restart" in str(exc3.value)
        assert "reuse_port" in (exc3.value.diag.message_hint or "")
        cols, _ = await show(admin, "LISTS")
        assert cols == ["list", "items"]
    finally:
        await admin.close()
    # asyncpg: execute() is simple protocol; fetch() is extended.
    conn = await asyncpg.connect(proxy.dsn("alice", "pgbouncer"))
    try:
        assert await conn.execute("RESUME") == "RESUME"
        with pytest.raises(asyncpg.FeatureNotSupportedError):
            await conn.fetch("SHOW POOLS")
    finally:
        await conn.close()


async def test_permissions(start_proxy: StartProxy) -> None:
    proxy = start_proxy(admin=ADMIN)
    stats = await console(proxy, "bob")
    try:
        cols, _ = await show(stats, "POOLS")
        assert cols[0] == "database"
        for command in ("PAUSE", "RESUME app", "RELOAD", "SHUTDOWN", "SET log_level = debug"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege) as exc:
                await stats.execute(command)
            assert "may only run SHOW" in str(exc.value)
        _, state = await show(stats, "STATE")
        assert {r["key"]: r["value"] for r in state}["paused"] == "no"
    finally:
        await stats.close()
    raw = await RawClient.connect(proxy.host, proxy.port)
    with pytest.raises(RawError) as denied:
        await raw.login("carol", PASSWORDS["carol"], "pgbouncer")
    assert denied.value.sqlstate == "42501"
    assert "not allowed to use the admin console" in denied.value.fields["M"]
    assert await raw.closed(5)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        await psycopg.AsyncConnection.connect(
            proxy.dsn("alice", "pgbouncer", password="wrong"), autocommit=True
        )


async def test_pause_waits_for_transactions_and_holds_new_ones(start_proxy: StartProxy) -> None:
    proxy = start_proxy(admin=ADMIN)
    a = await app(proxy)
    b = await app(proxy)
    admin = await console(proxy)
    try:
        # Not a temporary table: that would pin the session (and PAUSE would wait for it).
        await a.execute("CREATE TABLE IF NOT EXISTS pause_t (x int)")
        tx = a.transaction()
        await tx.start()
        await a.execute("INSERT INTO pause_t VALUES (0)")
        pause = asyncio.ensure_future(admin.execute("PAUSE app"))
        await wait_for(lambda: db_paused(proxy), what="PAUSE app to take effect")
        assert not pause.done(), "PAUSE returned while a transaction was still running"
        await a.execute("INSERT INTO pause_t VALUES (1)")
        await tx.commit()
        cur = await asyncio.wait_for(pause, 5)
        assert cur.statusmessage == "PAUSE"
        assert proxy.pool_stats()["total"] == 0
        held = asyncio.ensure_future(b.fetchval("SELECT 42"))
        await wait_for(lambda: proxy.pool_stats()["waiting"] == 1, what="the query to queue")
        assert not held.done(), "a transaction ran while the database was paused"
        assert not b.is_closed()
        _, dbs = await show(admin, "DATABASES")
        assert dbs[0]["paused"] == 1
        _, pools = await show(admin, "POOLS")
        assert pools[0]["cl_waiting"] == 1 and pools[0]["paused"] == 1
        assert pools[0]["maxwait_us"] > 0 or pools[0]["maxwait"] > 0
        assert (await admin.execute("RESUME app")).statusmessage == "RESUME"
        assert await asyncio.wait_for(held, 5) == 42
        assert await a.fetchval("SELECT 1") == 1
    finally:
        await a.close()
        await b.close()
        await admin.close()


async def test_pause_everything_then_resume(start_proxy: StartProxy) -> None:
    proxy = start_proxy(admin=ADMIN)
    admin = await console(proxy)
    a = await app(proxy)
    try:
        await admin.execute("PAUSE")
        _, state = await show(admin, "STATE")
        assert {r["key"]: r["value"] for r in state}["paused"] == "yes"
        # A pool created while paused starts paused too: a login that needs the server's
        # settings waits, and no server connection opens, until RESUME.
        login_b = asyncio.ensure_future(app(proxy, "bob"))
        # The pool exists once bob authenticated; the login then waits for the settings.
        await wait_for(lambda: proxy.pool_stats("app", "bob"), what="bob's pool to be created")
        assert not login_b.done()
        assert proxy.pool_stats("app", "bob")["total"] == 0
        await admin.execute("RESUME")
        b = await asyncio.wait_for(login_b, 5)
        assert await b.fetchval("SELECT 7") == 7
        assert await a.fetchval("SELECT 8") == 8
        await b.close()
        with pytest.raises(psycopg.errors.InvalidCatalogName):
            await admin.execute("PAUSE nosuchdb")
    finally:
        await a.close()
        await admin.close()


async def test_kill_drops_clients_and_holds_new_ones(
    start_proxy: StartProxy, pg: LocalPostgres
) -> None:
    proxy = start_proxy(admin=ADMIN)
    victims = [await raw_login(proxy) for _ in range(3)]
    admin = await console(proxy)
    direct = await asyncpg.connect(pg.dsn(dbname="app"))
    try:
        for v in victims:
            assert await one_value(v, "SELECT 1") == "1"
        assert (await admin.execute("KILL app")).statusmessage == "KILL"
        for v in victims:
            err = await v.read_error(5)
            assert err["C"] == "57P01" and "KILL" in err["M"], err
            assert await v.closed(5)
        n, _ = await eventually(
            lambda: direct.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE usename = 'alice' AND datname = 'app'"
            ),
            lambda n: n == 0,
            5,
        )
        assert n == 0
        _, clients = await show(admin, "CLIENTS")
        assert [c["database"] for c in clients] == ["pgbouncer"]
        # New clients log in, and wait until RESUME.
        late = await app(proxy)
        held = asyncio.ensure_future(late.fetchval("SELECT 3"))
        await wait_for(lambda: proxy.pool_stats()["waiting"] == 1, what="the query to queue")
        assert not held.done()
        await admin.execute("RESUME app")
        assert await asyncio.wait_for(held, 5) == 3
        await late.close()
    finally:
        for v in victims:
            await v.close()
        await admin.close()
        await direct.close()


async def test_reconnect_retires_servers(start_proxy: StartProxy) -> None:
    proxy = start_proxy(admin=ADMIN)
    a = await app(proxy)
    admin = await console(proxy)
    try:
        first = await a.fetchval("SELECT pg_backend_pid()")
        assert await a.fetchval("SELECT pg_backend_pid()") == first  # LIFO reuse
        tx = a.transaction()
        await tx.start()
        assert await a.fetchval("SELECT pg_backend_pid()") == first
        assert (await admin.execute("RECONNECT app")).statusmessage == "RECONNECT"
        _, servers = await show(admin, "SERVERS")
        assert [(s["remote_pid"], s["close_needed"]) for s in servers] == [(first, 1)]
        await tx.commit()  # the busy server closes when released, not before
        second = await a.fetchval("SELECT pg_backend_pid()")
        assert second != first
        await admin.execute("RECONNECT")
        assert await a.fetchval("SELECT pg_backend_pid()") not in (first, second)
    finally:
        await a.close()
        await admin.close()


async def test_set_changes_a_live_setting(start_proxy: StartProxy) -> None:
    proxy = start_proxy(admin=ADMIN)
    admin = await console(proxy)
    conns = [await app(proxy) for _ in range(3)]
    try:
        assert (await admin.execute("SET default_pool_size = 2")).statusmessage == "SET"
        _, config = await show(admin, "CONFIG")
        assert {r["key"]: r["value"] for r in config}["default_pool_size"] == "2"
        _, dbs = await show(admin, "DATABASES")
        assert dbs[0]["pool_size"] == 2
        # Three concurrent transactions share two server connections now.
        txs = [c.transaction() for c in conns[:2]]
        await txs[0].start()
        await txs[1].start()
        await conns[0].execute("SELECT 1")
        await conns[1].execute("SELECT 1")
        third = asyncio.ensure_future(conns[2].fetchval("SELECT 3"))
        await wait_for(lambda: proxy.pool_stats()["waiting"] == 1, what="the third to queue")
        assert not third.done()
        assert proxy.pool_stats()["total"] == 2
        await txs[0].commit()
        assert await asyncio.wait_for(third, 5) == 3
        await txs[1].commit()
        await admin.execute("SET pool.query_wait_timeout_s TO '7.5'")
        assert proxy.call(lambda: proxy.server.config.pool.query_wait_timeout_s) == 7.5  # type: ignore[union-attr]
        # PgBouncer's names and units: tcp_user_timeout is in milliseconds there.
        await admin.execute("SET query_wait_timeout = 9")
        await admin.execute("SET tcp_user_timeout = 4500")
        _, config = await show(admin, "CONFIG")
        values = {r["key"]: r["value"] for r in config}
        assert values["query_wait_timeout"] == "9" and values["tcp_user_timeout"] == "4500"
        assert proxy.call(lambda: proxy.server.config.pool.tcp_user_timeout_s) == 4.5  # type: ignore[union-attr]
        with pytest.raises(psycopg.errors.CantChangeRuntimeParam, match="listen_port"):
            await admin.execute("SET listen_port = 7000")
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="must be >= 1"):
            await admin.execute("SET default_pool_size = 0")
        with pytest.raises(psycopg.errors.UndefinedObject, match="nosuch"):
            await admin.execute("SET nosuch = 1")
        with pytest.raises(psycopg.errors.CantChangeRuntimeParam):
            await admin.execute("SET proxy.workers = 4")
    finally:
        for c in conns:
            await c.close()
        await admin.close()


async def test_reload_from_the_console(pg: LocalPostgres, tmp_path: Path) -> None:
    path = tmp_path / "proxy.toml"
    write_config(path, pg, 0, pool_size=5, users=("alice",))
    with ProxyThread(load_config(path, env={})) as proxy:
        admin = await console(proxy)
        try:
            with pytest.raises(asyncpg.InvalidPasswordError):
                await app(proxy, "bob")
            write_config(path, pg, 0, pool_size=3, users=("alice", "bob"))
            assert (await admin.execute("RELOAD")).statusmessage == "RELOAD"
            bob = await app(proxy, "bob")
            assert await bob.fetchval("SELECT current_user") == "bob"
            await bob.close()
            _, config = await show(admin, "CONFIG")
            assert {r["key"]: r["value"] for r in config}["default_pool_size"] == "3"
            # A change that needs a restart is reported, and the running value kept.
            path.write_text(path.read_text().replace("127.0.0.1:0", "127.0.0.1:1"))
            notices: list[str] = []
            admin.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
            await admin.execute("RELOAD")
            assert notices == ["proxy.listen changed; it takes effect after a restart"]
            # An invalid file: an error naming the problem, and the old config stays.
            path.write_text(
                path.read_text().replace("default_pool_size = 3", "default_pool_size = -1")
            )
            with pytest.raises(psycopg.errors.ConfigFileError) as exc:
                await admin.execute("RELOAD")
            assert "pool.default_pool_size" in (exc.value.diag.message_detail or "")
            _, config = await show(admin, "CONFIG")
            assert {r["key"]: r["value"] for r in config}["default_pool_size"] == "3"
        finally:
            await admin.close()


# --- limits, failures and races (review of the console, reload and pause) -----------------------


async def test_console_bounds_what_one_query_may_cost(
    start_proxy: StartProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pgpool_proxy.admin import console as console_module
    from pgpool_proxy.admin.console import MAX_ADMIN_MESSAGE, MAX_STATEMENTS

    # A low mark, so that a few replies exceed it whatever the kernel's socket buffers hold.
    high = 16 * 1024
    monkeypatch.setattr(console_module, "WRITE_BUFFER_HIGH", high)

    proxy = start_proxy(admin=ADMIN)
    stats = await RawClient.connect(proxy.host, proxy.port)
    await stats.login("bob", PASSWORDS["bob"], "pgbouncer")
    try:
        assert await stats.simple_query(";".join(["SHOW VERSION"] * MAX_STATEMENTS))
        with pytest.raises(RawError) as many:
            await stats.simple_query(";".join(["SHOW CLIENTS"] * (MAX_STATEMENTS + 1)))
        assert many.value.sqlstate == "54000" and "too many commands" in many.value.fields["M"]
        # A NUL byte inside the query is refused, not echoed into an error message.
        with pytest.raises(RawError) as nul:
            await stats.simple_query("SHOW\0 POOLS")
        assert nul.value.sqlstate == "42601" and "\0" not in nul.value.fields["M"]
        # A multi-line command is logged on one line.
        assert await stats.simple_query("SHOW\nVERSION")
    finally:
        await stats.close()
    # A query over the message cap ends the session with an error naming the limit.
    big = await RawClient.connect(proxy.host, proxy.port)
    await big.login("bob", PASSWORDS["bob"], "pgbouncer")
    big.send(m.query("SHOW CLIENTS;" * (MAX_ADMIN_MESSAGE // 12 + 1)))
    err = await big.read_error(5)
    assert err["C"] == "08P01" and str(MAX_ADMIN_MESSAGE) in err["M"], err
    assert await big.closed(5)

    # A stats user that does not read its replies: the console waits for the client instead
    # of buffering every reply, and other clients are served meanwhile.
    others = [await raw_login(proxy) for _ in range(60)]
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((proxy.host, proxy.port))
    sock.setblocking(False)
    reader, writer = await asyncio.open_connection(sock=sock)
    slow = RawClient(reader, writer)
    await slow.login("bob", PASSWORDS["bob"], "pgbouncer")

    def admin_buffer() -> int:
        assert proxy.server is not None
        sessions = [c for c in proxy.server.admin_sessions if c.transport is not None]
        for c in sessions:
            c.transport.get_extra_info("socket").setsockopt(  # type: ignore[union-attr]
                socket.SOL_SOCKET, socket.SO_SNDBUF, 4096
            )
        return max((c.transport.get_write_buffer_size() for c in sessions), default=0)  # type: ignore[union-attr]

    proxy.call(admin_buffer)
    slow.send(m.query(";".join(["SHOW CLIENTS"] * MAX_STATEMENTS)))

    async def settled_buffer() -> int:
        # Unchanged across another client's round trip: the console had its turns on the loop
        # meanwhile, and wrote no more (the test client's StreamReader takes up to 128 KB, so
        # how much stays in the proxy varies).
        before = proxy.call(admin_buffer)
        assert await one_value(others[1], "SELECT 1") == "1"
        after = proxy.call(admin_buffer)
        return after if after == before else 0

    buffered = await wait_for(settled_buffer, what="the console's buffer to stop growing")
    # At most the mark plus about one reply (each SHOW CLIENTS here is about 10 KB); without
    # the wait, every reply would be buffered (about 70 KB).
    assert 0 < buffered < high + 20 * 1024, buffered
    assert await one_value(others[0], "SELECT 1") == "1"
    for _ in range(MAX_STATEMENTS):
        t = b""
        while t != b"C":
            t, _body = await slow.read_message(10)
    assert await slow.read_until_ready(10) == ord("I")
    await slow.close()
    for c in others:
        await c.close()


async def test_unexpected_console_failures_are_reported(
    start_proxy: StartProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pgpool_proxy.admin import console as console_module
    from pgpool_proxy.runtime import lifecycle

    def broken(_server: object) -> object:
        raise RuntimeError("boom")

    monkeypatch.setitem(console_module._SHOW, "LISTS", broken)
    proxy = start_proxy(admin=ADMIN)
    raw = await RawClient.connect(proxy.host, proxy.port)
    await raw.login("alice", PASSWORDS["alice"], "pgbouncer")
    raw.send(m.query("SHOW LISTS"))
    err = await raw.read_error(5)
    assert err["C"] == "XX000" and "admin console" in err["M"]
    assert await raw.closed(5)
    # A failure while applying a SET is an error naming it; the session goes on.
    monkeypatch.setattr(lifecycle, "apply_config", lambda *_a: broken(None))
    admin = await console(proxy)
    try:
        with pytest.raises(psycopg.errors.InternalError_) as exc:
            await admin.execute("SET default_pool_size = 3")
        assert "SET failed while applying" in str(exc.value) and "boom" in str(exc.value)
        cols, _ = await show(admin, "VERSION")
        assert cols == ["version"]
        with pytest.raises(psycopg.errors.FeatureNotSupported, match="KILL does not apply"):
            await admin.execute("KILL pgbouncer")
    finally:
        await admin.close()


async def test_set_max_server_connections_applies(start_proxy: StartProxy) -> None:
    proxy = start_proxy(admin=ADMIN)
    admin = await console(proxy)
    a1, a2, b = await app(proxy), await app(proxy), await app(proxy, "bob")
    try:
        await admin.execute("SET pool.max_server_connections = 2")
        assert proxy.call(lambda: proxy.server.budget.limit) == 2  # type: ignore[union-attr]
        tx_a, tx_b = a1.transaction(), b.transaction()
        await tx_a.start()
        await tx_b.start()
        assert await a1.fetchval("SELECT 1") == 1
        assert await b.fetchval("SELECT 2") == 2
        # Two pools, two server connections: a third transaction waits for the cap.
        third = asyncio.ensure_future(a2.fetchval("SELECT 3"))
        await wait_for(lambda: proxy.pool_stats()["waiting"] == 1, what="the third to queue")
        assert not third.done(), "the new max_server_connections was not applied"
        await tx_a.commit()
        assert await asyncio.wait_for(third, 5) == 3
        await tx_b.commit()
        await admin.execute("SET pool.max_server_connections = 0")
        assert proxy.call(lambda: proxy.server.budget) is None  # type: ignore[union-attr]
    finally:
        for c in (a1, a2, b):
            await c.close()
        await admin.close()


def _config_text(pg: LocalPostgres, users: list[str], databases: dict[str, str]) -> str:
    """databases: name -> extra TOML lines for its entry."""
    user_lines = "".join(f'[[users]]\nname = "{u}"\npassword = "{PASSWORDS[u]}"\n\n' for u in users)
    db_lines = "".join(
        f'[[databases]]\nname = "{name}"\nhost = "{pg.host}"\nport = {pg.port}\n{extra}\n\n'
        for name, extra in databases.items()
    )
    return (
        '[proxy]\nlisten = "127.0.0.1:0"\n\n[pool]\nquery_wait_timeout_s = 5\n\n'
        f'[admin]\nadmin_users = ["alice"]\n\n{db_lines}{user_lines}'
    )


async def _login_racing(
    proxy: ProxyThread, user: str, db: str, meanwhile: Any
) -> dict[str, str] | None:
    """Log in with SCRAM, running `meanwhile()` while the proxy waits for the client's proof;
    the login's error fields, or None when it succeeded."""
    from pgpool_proxy.auth.scram_client import ScramClient

    raw = await RawClient.connect(proxy.host, proxy.port)
    try:
        raw.send(m.startup_message({"user": user, "database": db}))
        t, _body = await raw.read_message()
        assert t == b"R"
        scram = ScramClient(PASSWORDS[user])
        raw.send(m.sasl_initial_response("SCRAM-SHA-256", scram.client_first()))
        t, body = await raw.read_message()
        assert t == b"R"
        await meanwhile()
        raw.send(m.sasl_response(scram.handle_server_first(body[4:])))
        while True:
            t, body = await raw.read_message()
            if t == b"E":
                return m.parse_error_fields(body)
            if t == b"Z":
                return None
    finally:
        await raw.close()


async def test_reload_during_a_login_uses_the_new_config(pg: LocalPostgres, tmp_path: Path) -> None:
    path = tmp_path / "proxy.toml"
    both = {"app": "", "app2": 'dbname = "app"'}
    path.write_text(_config_text(pg, ["alice", "bob"], both))
    with ProxyThread(load_config(path, env={})) as proxy:
        admin = await console(proxy)
        try:

            async def reload(users: list[str], databases: dict[str, str]) -> None:
                path.write_text(_config_text(pg, users, databases))
                await admin.execute("RELOAD")

            err = await _login_racing(proxy, "bob", "app", lambda: reload(["alice"], both))
            assert err is not None and err["C"] == "28000" and "removed" in err["M"], err
            await reload(["alice", "bob"], both)
            err = await _login_racing(
                proxy, "bob", "app2", lambda: reload(["alice", "bob"], {"app": ""})
            )
            assert err is not None and err["C"] == "3D000", err
            assert proxy.call(lambda: [k for k in proxy.server.pools if k[0] == "app2"]) == []  # type: ignore[union-attr]
            # No racing action (a no-op coroutine): the login goes through.
            assert await _login_racing(proxy, "bob", "app", lambda: asyncio.sleep(0)) is None
        finally:
            await admin.close()


async def test_reload_keeps_a_databases_forced_user(pg: LocalPostgres, tmp_path: Path) -> None:
    path = tmp_path / "proxy.toml"
    path.write_text(_config_text(pg, ["alice", "bob"], {"app": 'user = "alice"'}))
    with ProxyThread(load_config(path, env={})) as proxy:
        admin = await console(proxy)
        conn = await app(proxy, "bob")
        try:
            assert await conn.fetchval("SELECT current_user") == "alice"
            path.write_text(_config_text(pg, ["alice", "bob"], {"app": 'user = "bob"'}))
            notices: list[str] = []
            admin.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
            await admin.execute("RELOAD")
            assert notices == ["databases.app.user changed; it takes effect after a restart"]
            # Old and new sessions still log in as the forced user of the running config.
            await admin.execute("RECONNECT app")
            assert await conn.fetchval("SELECT current_user") == "alice"
            late = await app(proxy, "bob")
            assert await late.fetchval("SELECT current_user") == "alice"
            await late.close()
            _, dbs = await show(admin, "DATABASES")
            assert dbs[0]["force_user"] == "alice"
        finally:
            await conn.close()
            await admin.close()


async def test_drain_holds_new_pools_and_refuses_resume(start_proxy: StartProxy) -> None:
    from pgpool_proxy.runtime import lifecycle

    proxy = start_proxy(admin=ADMIN, proxy={"shutdown_timeout_s": 10})
    busy = await app(proxy)
    tx = busy.transaction()
    await tx.start()
    assert await busy.fetchval("SELECT 1") == 1
    assert proxy.loop is not None and proxy.server is not None
    server = proxy.server
    drained: Any = None

    async def start_drain() -> None:
        nonlocal drained
        drained = asyncio.run_coroutine_threadsafe(lifecycle.drain(server, 10), proxy.loop)  # type: ignore[arg-type]
        await wait_for(lambda: proxy.call(lambda: server.draining), what="the drain to begin")

    # A login that authenticates once the drain has begun is refused, and gets no pool.
    err = await _login_racing(proxy, "bob", "app", start_drain)
    assert err is not None and err["C"] == "57P03", err
    # A pool created during the drain starts paused; RESUME leaves every pool paused.
    config = server.config
    db = config.database("app")
    assert db is not None
    pool = proxy.call(lambda: server.get_pool(db, config.user("carol"), "carol"))
    proxy.call(lambda: lifecycle.resume(server, None))
    assert proxy.call(lambda: [p.paused for p in server.pools.values()]) == [True, True]
    assert pool.paused
    await tx.commit()
    await asyncio.wait_for(asyncio.wrap_future(drained), 10)
    busy.terminate()
