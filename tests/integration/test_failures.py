"""Robustness against a real PostgreSQL: dead backends, clients that vanish mid-transaction,
and a server that is down, crashes or never answers.

Every check that counts server connections asks PostgreSQL itself (pg_stat_activity over a direct
superuser connection), never the proxy's own bookkeeping alone.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator

import asyncpg
import pytest

from pgpool_proxy.protocol import messages as m
from tests.support.chaos import ChaosRelay
from tests.support.pg import LocalPostgres
from tests.support.proxy import PASSWORDS, StartProxy
from tests.support.rawpg import RawClient, RawError, raw_login
from tests.support.robustness import (
    backends,
    one_value,
    proxy_client_count,
    settle,
)
from tests.support.waits import eventually, wait_for

# --- 6. dead backends ------------------------------------------------------------------------


async def test_backend_terminated_mid_transaction(
    start_proxy: StartProxy, admin: asyncpg.Connection
) -> None:
    proxy = start_proxy(pool={"default_pool_size": 3})
    await settle(admin, "alice")
    a = await raw_login(proxy)
    b = await raw_login(proxy)
    try:
        assert await a.simple_query("BEGIN") == []
        pid_a = int(await one_value(a, "select pg_backend_pid()") or 0)
        assert await b.simple_query("BEGIN") == []
        pid_b = int(await one_value(b, "select pg_backend_pid()") or 0)
        assert pid_a != pid_b
        assert await admin.fetchval("select pg_terminate_backend($1)", pid_a) is True
        # A learns at once, without sending anything: the server's FATAL, as the server sent
        # it, and then nothing of the proxy's own before the proxy closes it.
        err = await a.read_error(5)
        assert err["C"] == "57P01" and err["S"] == "FATAL", err
        with pytest.raises(asyncio.IncompleteReadError):
            await a.read_message(3)
        # B's transaction on another backend is untouched.
        assert await one_value(b, "select pg_backend_pid()") == str(pid_b)
        assert await b.simple_query("COMMIT") == []
        # New clients work, and the dead backend's slot was given back: three clients can hold
        # three backends at once again.
        holders = [await raw_login(proxy) for _ in range(3)]
        pids = set()
        for h in holders:
            assert await h.simple_query("BEGIN") == []
            pids.add(await one_value(h, "select pg_backend_pid()"))
        assert len(pids) == 3 and str(pid_a) not in pids
        assert proxy.pool_stats()["total"] == 3
        for h in holders:
            assert await h.simple_query("COMMIT") == []
            await h.close()
        total = proxy.pool_stats()["total"]
        assert total == await backends(admin, "alice") == 3
    finally:
        await a.close()
        await b.close()


async def test_idle_pooled_backend_terminated(
    start_proxy: StartProxy, admin: asyncpg.Connection
) -> None:
    proxy = start_proxy(pool={"default_pool_size": 1})
    c = await raw_login(proxy)
    try:
        pid = int(await one_value(c, "select pg_backend_pid()") or 0)
        assert await admin.fetchval("select pg_terminate_backend($1)", pid) is True
        gone, _ = await eventually(
            lambda: admin.fetchval("select count(*) from pg_stat_activity where pid = $1", pid),
            lambda n: n == 0,
            3,
        )
        assert gone == 0

        async def stats_now() -> dict[str, int]:
            return proxy.pool_stats()

        stats, _ = await eventually(stats_now, lambda s: s["total"] == 0, 2)
        assert stats["total"] == 0, stats
        # The client never held that backend across the kill: its next query just works.
        new_pid = await one_value(c, "select pg_backend_pid()")
        assert new_pid is not None and int(new_pid) != pid
    finally:
        await c.close()


async def test_backend_terminated_while_others_wait(
    start_proxy: StartProxy, admin: asyncpg.Connection
) -> None:
    """The only backend dies under A while B is queued for it: B gets a new backend."""
    proxy = start_proxy(pool={"default_pool_size": 1, "query_wait_timeout_s": 10})
    a = await raw_login(proxy)
    b = await raw_login(proxy)
    try:
        assert await a.simple_query("BEGIN") == []
        pid = int(await one_value(a, "select pg_backend_pid()") or 0)
        b_query = asyncio.create_task(b.simple_query("select pg_backend_pid()"))
        await wait_for(lambda: proxy.pool_stats()["waiting"] == 1, what="B to queue")
        assert not b_query.done()
        assert await admin.fetchval("select pg_terminate_backend($1)", pid) is True
        err = await a.read_error(5)
        assert err["C"] == "57P01", err
        rows = await asyncio.wait_for(b_query, 5)
        assert rows and rows[0][0] is not None and int(rows[0][0]) != pid
    finally:
        await a.close()
        await b.close()


# --- 7. clients that vanish mid-transaction --------------------------------------------------


@pytest.fixture
async def marker_table(admin: asyncpg.Connection) -> AsyncIterator[str]:
    await admin.execute(
        "DROP TABLE IF EXISTS robust_t7; CREATE TABLE robust_t7 (marker text);"
        "GRANT ALL ON robust_t7 TO PUBLIC"
    )
    yield "robust_t7"
    await admin.execute("DROP TABLE IF EXISTS robust_t7")


async def _idle_in_tx(admin: asyncpg.Connection, user: str) -> int:
    return int(
        await admin.fetchval(
            "select count(*) from pg_stat_activity where usename = $1 and datname = 'app' "
            "and state like 'idle in transaction%'",
            user,
        )
    )


async def _no_idle_in_tx(admin: asyncpg.Connection, user: str) -> bool:
    return await _idle_in_tx(admin, user) == 0


async def _rows(admin: asyncpg.Connection, marker: str) -> int:
    return int(await admin.fetchval("select count(*) from robust_t7 where marker = $1", marker))


@pytest.mark.parametrize("how", ["abort", "terminate_message", "mid_copy"])
async def test_client_vanishes_mid_transaction(
    start_proxy: StartProxy, admin: asyncpg.Connection, marker_table: str, how: str
) -> None:
    user = "carol"
    proxy = start_proxy(pool={"default_pool_size": 1, "query_wait_timeout_s": 5})
    a = await raw_login(proxy, user)
    assert await a.simple_query("BEGIN") == []
    pid = int(await one_value(a, "select pg_backend_pid()") or 0)
    assert await a.simple_query(f"INSERT INTO {marker_table} VALUES ('vanish-{how}')") == []
    if how == "mid_copy":
        a.send(m.query(f"COPY {marker_table} FROM STDIN"))
        t, _ = await a.read_message(5)
        assert t == b"G"  # CopyInResponse
        a.send(m.frame(b"d", f"copy-{how}\n".encode()))
        await a.writer.drain()
        # A chance for the CopyData to pass the proxy before the abort. Nothing shows when it
        # has (the proxy counts no bytes per client), and the outcome asserted is the same
        # either way: nothing of the transaction is kept.
        await asyncio.sleep(0.05)
    if how in ("abort", "mid_copy"):
        a.writer.transport.abort()
    else:
        a.send(m.TERMINATE)
        assert await a.closed(3)
        a.writer.close()
    # Rolled back when the client goes, not by a timer.
    await wait_for(
        lambda: _no_idle_in_tx(admin, user), timeout=3, what="the transaction rolled back"
    )
    gone, _ = await eventually(
        lambda: admin.fetchval("select count(*) from pg_stat_activity where pid = $1", pid),
        lambda n: n == 0,
        3,
    )
    assert gone == 0, "the backend of the vanished transaction was kept"
    assert await _rows(admin, f"vanish-{how}") == 0
    assert await _rows(admin, f"copy-{how}") == 0
    # The single pool slot is free again.
    c = await raw_login(proxy, user)
    try:
        assert await c.simple_query(f"INSERT INTO {marker_table} VALUES ('after-{how}')") == []
        assert await one_value(c, "select 'next'") == "next"
    finally:
        await c.close()
    assert await _rows(admin, f"after-{how}") == 1


async def test_client_vanishes_while_query_runs(
    start_proxy: StartProxy, admin: asyncpg.Connection
) -> None:
    proxy = start_proxy(pool={"default_pool_size": 1, "query_wait_timeout_s": 5})
    a = await raw_login(proxy, "carol")
    a.send(m.query("select pg_sleep(2) /* vanish-busy */"))
    sleeping = await wait_for(
        lambda: admin.fetchval(
            "select pid from pg_stat_activity where query like '%vanish-busy%' "
            "and state = 'active' and pid <> pg_backend_pid()"
        ),
        what="the query on the server",
    )
    a.writer.transport.abort()
    # The busy backend is not handed to the next client (its reply would go to the wrong
    # client): a new one is opened, so the next query does not wait for the sleep to end.
    c = await raw_login(proxy, "carol")
    try:
        assert await one_value(c, "select 'fresh'") == "fresh"
        assert await one_value(c, "select pg_backend_pid()") != str(sleeping)
    finally:
        await c.close()


# --- 9. the server is down -------------------------------------------------------------------


async def test_backend_down_gives_08001(start_proxy: StartProxy) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proxy = start_proxy(databases=[{"name": "app", "host": "127.0.0.1", "port": port}])
    for _ in range(2):  # the second attempt must not hang behind the first failure either
        client = await RawClient.connect(proxy.host, proxy.port)
        with pytest.raises(RawError) as err:
            await client.login("alice", PASSWORDS["alice"], "app")
        # A hang would end in client_login_timeout_s's error instead of this one.
        assert err.value.sqlstate == "08001", err.value.fields
        assert f"127.0.0.1:{port}" in err.value.fields["M"]
        assert await client.closed(3)
    assert await proxy_client_count(proxy, 0) == 0
    assert proxy.pool_stats().get("total", 0) == 0


async def test_server_crash_and_recovery(pg: LocalPostgres, start_proxy: StartProxy) -> None:
    relay = await ChaosRelay(pg.host, pg.port).start()
    proxy = start_proxy(
        databases=[{"name": "app", "host": "127.0.0.1", "port": relay.port}],
        pool={"default_pool_size": 2, "query_wait_timeout_s": 30},
    )
    try:
        idle = await raw_login(proxy)
        assert await one_value(idle, "select 'up'") == "up"
        busy = await raw_login(proxy)
        assert await busy.simple_query("BEGIN") == []
        await relay.cut()
        # Mid-transaction: told at once that the server connection is gone, then closed.
        err = await busy.read_error(5)
        assert err["C"] == "08006", err
        assert await busy.closed(3)
        # Idle: the next query cannot get a server; the client hears why (read_error's 5 s)
        # well before query_wait_timeout (30 s).
        idle.send(m.query("select 'down'"))
        err = await idle.read_error(5)
        assert err["C"] == "08001", err
        assert f"127.0.0.1:{relay.port}" in err["M"]
        # The server comes back on the same address: new clients are served again.
        await relay.start()

        async def served() -> bool:
            try:
                again = await raw_login(proxy)
            except RawError as exc:
                assert exc.sqlstate == "08001", exc.fields
                return False
            assert await one_value(again, "select 'back'") == "back"
            await again.close()
            return True

        # A login a poll: each failed one is a client the proxy logs and refuses.
        await wait_for(served, what="a login after the server came back", interval=0.2)
        assert proxy.pool_stats()["total"] <= 2
    finally:
        await relay.cut()


async def test_server_that_never_answers(pg: LocalPostgres, start_proxy: StartProxy) -> None:
    relay = await ChaosRelay(pg.host, pg.port).start()
    relay.blackhole = True
    proxy = start_proxy(
        databases=[{"name": "app", "host": "127.0.0.1", "port": relay.port}],
        pool={"server_connect_timeout_s": 1},
    )
    try:
        t0 = time.monotonic()
        client = await RawClient.connect(proxy.host, proxy.port)
        with pytest.raises(RawError) as err:
            await client.login("alice", PASSWORDS["alice"], "app")
        elapsed = time.monotonic() - t0
        assert err.value.sqlstate == "08001", err.value.fields
        assert "timed out" in err.value.fields["M"]
        # server_connect_timeout_s (1 s) is the behaviour: not before it, and within 5x it.
        assert 0.9 <= elapsed < 5, elapsed
        assert await client.closed(3)
    finally:
        await relay.cut()


async def test_failed_server_connects_are_paced(pg: LocalPostgres, start_proxy: StartProxy) -> None:
    relay = await ChaosRelay(pg.host, pg.port).start()
    proxy = start_proxy(
        databases=[{"name": "app", "host": "127.0.0.1", "port": relay.port}],
        pool={"default_pool_size": 2, "query_wait_timeout_s": 2},
    )
    try:
        a = await raw_login(proxy)
        assert await a.simple_query("BEGIN") == []  # one healthy backend stays in use
        relay.reject = True  # from now on every new server connection is reset at once
        relay.accepted = 0
        b = await raw_login(proxy)
        b.send(m.query("select 'b'"))  # needs a second backend, which cannot be had
        err = await b.read_error(6)
        assert err["C"] in ("57014", "08001", "08006"), err
        # Waiting 2 s for a server that refuses: a handful of attempts, not a busy loop.
        assert relay.accepted <= 20, f"{relay.accepted} server connection attempts in ~2 s"
        assert await a.simple_query("COMMIT") == []
    finally:
        await relay.cut()


async def test_server_refusing_the_proxys_login_says_so(
    pg: LocalPostgres, start_proxy: StartProxy
) -> None:
    """The client's own login succeeded; the server refused the proxy's (a wrong password the
    proxy holds). The client gets the server's 28P01 and a detail saying whose login it was."""
    proxy = start_proxy(
        databases=[
            {
                "name": "app",
                "host": pg.host,
                "port": pg.port,
                "user": "alice",
                "password": "not-alice-pw",
            }
        ],
    )
    with pytest.raises(asyncpg.InvalidPasswordError) as err:
        await asyncpg.connect(proxy.dsn(), statement_cache_size=0)
    assert "password authentication failed" in str(err.value)
    assert "proxy's own login to the server was refused" in (err.value.detail or "")
    assert "Check the credentials" in (err.value.detail or "")


async def test_server_without_the_entrys_database_points_at_dbname(
    pg: LocalPostgres, start_proxy: StartProxy
) -> None:
    """A [[databases]] entry naming a database the server does not have: the client gets the
    server's 3D000, and the detail sends the operator to the entry's dbname, not to the
    credentials (which the server never got to check)."""
    proxy = start_proxy(
        databases=[{"name": "app", "host": pg.host, "port": pg.port, "dbname": "no_such_db"}],
    )
    with pytest.raises(asyncpg.InvalidCatalogNameError) as err:
        await asyncpg.connect(proxy.dsn(), statement_cache_size=0)
    assert 'database "no_such_db" does not exist' in str(err.value)
    detail = err.value.detail or ""
    assert "proxy's own login to the server was refused" in detail, detail
    assert "dbname" in detail and "credentials" not in detail, detail
