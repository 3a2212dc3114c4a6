"""Session state in transaction mode (issue 4): settings follow their client from one server
connection to the next, and state that cannot be replayed pins the client until it is gone.

Settings tests share a pool of ONE server connection between clients with different settings
(transaction mode), so every switch between clients needs the proxy to replay the difference.
Pinning tests use a pool of two. Every test also runs in session mode (a server connection per
client), which checks the test's own expectations. The pinned-session count is read through an
API assumed for issue 4 (tests/support/extproto.py, `pinned`).
"""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

import asyncpg
import psycopg
import pytest

from tests.support import extproto as x
from tests.support.clients import MODES, apg, start
from tests.support.pg import LocalPostgres
from tests.support.proxy import PASSWORDS, ProxyThread, StartProxy

pytestmark = pytest.mark.timeout(120)

NAMES = ("work_mem", "statement_timeout", "lock_timeout", "random_page_cost", "search_path")
SETTINGS_SQL = "select " + ", ".join(f"current_setting('{n}')" for n in NAMES)


def proxy_for(start_proxy: StartProxy, mode: str, size: int, clients: int) -> ProxyThread:
    if mode == "session":
        size = max(size, clients)
    return start(start_proxy, mode, size=size, pool={"query_wait_timeout_s": 20})


def connect(dsn: str, **kwargs: Any) -> psycopg.Connection[Any]:
    # Unnamed statements only: these tests are about settings, not prepared statements.
    return psycopg.connect(
        dsn,
        autocommit=True,
        prepare_threshold=None,
        connect_timeout=10,
        sslmode="disable",
        **kwargs,
    )


def settings(conn: psycopg.Connection[Any]) -> dict[str, str]:
    row = conn.execute(SETTINGS_SQL).fetchone()
    assert row is not None
    return dict(zip(NAMES, row, strict=True))


@pytest.fixture
def defaults(pg: LocalPostgres) -> dict[str, str]:
    out = pg.psql(SETTINGS_SQL.replace("select ", "select concat_ws('|', ") + ")", dbname="app")
    return dict(zip(NAMES, out.split("|"), strict=True))


# --------------------------------------------------------------------------------------------
# Settings


@pytest.mark.parametrize("mode", ["direct", *MODES])
def test_set_reset_follow_the_client(
    pg: LocalPostgres, start_proxy: StartProxy, defaults: dict[str, str], mode: str
) -> None:
    """SET, SET SESSION, set_config(..., false), SET LOCAL, RESET, RESET ALL, DISCARD ALL and a
    startup `options=-c`, for three clients on one server connection. "direct" runs the same
    against PostgreSQL itself: what the proxy must reproduce."""
    if mode == "direct":
        dsn = pg.dsn(user="alice", password=PASSWORDS["alice"], dbname="app")
    else:
        dsn = proxy_for(start_proxy, mode, size=1, clients=3).dsn()
    start_a = {**defaults, "statement_timeout": "1234ms"}
    with (
        connect(dsn, options="-c statement_timeout=1234") as a,
        connect(dsn) as b,
        connect(dsn) as c,
    ):
        want_a, want_b = dict(start_a), dict(defaults)

        def check() -> None:
            # Interleaved: each client's statement runs right after another client's.
            for _ in range(2):
                assert settings(a) == want_a
                assert settings(b) == want_b
                assert settings(c) == defaults  # never sees anyone else's settings

        check()
        a.execute("SET work_mem = '3MB'")
        a.execute("SET SESSION lock_timeout = '2s'")
        a.execute("select set_config('random_page_cost', '9', false)")
        a.execute("SET search_path TO pg_catalog, public")
        want_a.update(
            work_mem="3MB",
            lock_timeout="2s",
            random_page_cost="9",
            search_path="pg_catalog, public",
        )
        b.execute("SET work_mem = '5MB'")
        b.execute("SET statement_timeout = '22s'")
        want_b.update(work_mem="5MB", statement_timeout="22s")
        check()

        # SET LOCAL and set_config(..., true) end with the transaction.
        with a.transaction():
            a.execute("SET LOCAL work_mem = '7MB'")
            a.execute("select set_config('lock_timeout', '7s', true)")
            assert settings(a) == {**want_a, "work_mem": "7MB", "lock_timeout": "7s"}
        check()
        # A SET in a transaction that rolls back is undone; one that commits stays.
        with pytest.raises(psycopg.errors.DivisionByZero), a.transaction():
            a.execute("SET work_mem = '8MB'")
            a.execute("select 1/0")
        check()
        with a.transaction():
            a.execute("SET work_mem = '9MB'")
        want_a["work_mem"] = "9MB"
        check()

        # The startup value is what RESET returns to.
        a.execute("SET statement_timeout = '11s'")
        want_a["statement_timeout"] = "11s"
        check()
        a.execute("RESET statement_timeout")
        a.execute("RESET work_mem")
        want_a.update(statement_timeout="1234ms", work_mem=defaults["work_mem"])
        check()
        a.execute("RESET ALL")
        want_a = dict(start_a)
        check()
        a.execute("SET work_mem = '3MB'")
        a.execute("SET statement_timeout = '12s'")
        a.execute("DISCARD ALL")
        check()
        b.execute("RESET ALL")
        want_b = dict(defaults)
        check()

        # The startup statement_timeout is in force for a, on whichever server connection.
        b.execute("SET work_mem = '6MB'")
        with pytest.raises(psycopg.errors.QueryCanceled):
            a.execute("select pg_sleep(3)")
        assert settings(b)["work_mem"] == "6MB"


@pytest.mark.parametrize("mode", MODES)
async def test_settings_isolated_under_concurrency(start_proxy: StartProxy, mode: str) -> None:
    """16 clients, each with its own work_mem and search_path, on two server connections."""
    proxy = proxy_for(start_proxy, mode, size=2, clients=16)

    async def task(tid: int) -> int:
        conn = await apg(proxy, server_settings={"lock_timeout": f"{tid + 1}s"})
        try:
            await conn.execute(f"SET work_mem = '{tid + 1}MB'")
            await conn.execute(f"SET search_path TO tc_schema_{tid}, public")
            seen = 0
            for rnd in range(10):
                async with conn.transaction():
                    row = await conn.fetchrow(
                        "select current_setting('work_mem') w, current_setting('search_path') s,"
                        " current_setting('lock_timeout') l, $1::int r",
                        rnd,
                    )
                    assert row is not None
                    assert dict(row) == {
                        "w": f"{tid + 1}MB",
                        "s": f"tc_schema_{tid}, public",
                        "l": f"{tid + 1}s",
                        "r": rnd,
                    }
                    seen += 1
                await asyncio.sleep(0)
            return seen
        finally:
            await conn.close()

    results = await asyncio.wait_for(asyncio.gather(*(task(t) for t in range(16))), 60)
    assert results == [10] * 16


# --------------------------------------------------------------------------------------------
# Pinning: state that cannot be replayed


async def pids_of(conn: asyncpg.Connection, n: int) -> set[int]:
    """The backend pids of n separate transactions of conn."""
    pids = set()
    for _ in range(n):
        async with conn.transaction():
            pids.add(int(await conn.fetchval("select pg_backend_pid()")))
    return pids


@pytest.mark.parametrize("mode", MODES)
async def test_advisory_lock_pins_until_unlock_all(
    start_proxy: StartProxy, admin: asyncpg.Connection, mode: str
) -> None:
    proxy = proxy_for(start_proxy, mode, size=2, clients=2)
    key = 910000 + secrets.randbelow(10000)
    a = await apg(proxy)
    b = await apg(proxy)
    lock_sql = "select pid from pg_locks where locktype = 'advisory' and objid = $1 and granted"
    try:
        # A transaction-level lock is gone at commit: no pinning.
        async with a.transaction():
            await a.execute(f"select pg_advisory_xact_lock({key})")
        if mode == "transaction":
            assert await x.wait_pinned(proxy, 0) == 0

        await a.execute(f"select pg_advisory_lock({key})")
        pid = int(await a.fetchval("select pg_backend_pid()"))
        assert await admin.fetchval(lock_sql, key) == pid
        if mode == "transaction":
            assert await x.wait_pinned(proxy, 1) == 1
        # Every later transaction of a runs on the backend that holds the lock, also while b
        # holds the other one; b never gets a's backend.
        for _ in range(3):
            tx = b.transaction()
            await tx.start()
            b_pid = int(await b.fetchval("select pg_backend_pid()"))
            assert b_pid != pid
            assert await pids_of(a, 2) == {pid}
            await tx.commit()
            assert int(await b.fetchval("select pg_backend_pid()")) != pid
        # The same session: the lock is re-entrant for a, not available to b.
        assert await a.fetchval(f"select pg_try_advisory_lock({key})") is True
        assert await b.fetchval(f"select pg_try_advisory_lock({key})") is False

        # Two pinned clients are counted as two.
        await b.execute(f"select pg_advisory_lock({key + 1})")
        if mode == "transaction":
            assert await x.wait_pinned(proxy, 2) == 2
        await b.execute("select pg_advisory_unlock_all()")

        await a.execute("select pg_advisory_unlock_all()")
        assert await admin.fetchval(lock_sql, key) is None
        if mode == "transaction":
            assert await x.wait_pinned(proxy, 0) == 0
            # Unpinned: a moves between server connections again.
            seen: set[int] = set()
            for _ in range(3):
                tx = b.transaction()
                await tx.start()
                await b.fetchval("select 1")
                seen |= await pids_of(a, 1)
                await tx.commit()
                seen |= await pids_of(a, 1)
            assert len(seen) == 2, seen
    finally:
        await a.close()
        await b.close()


@pytest.mark.parametrize("mode", MODES)
async def test_listen_pins_and_delivers_notifications(
    start_proxy: StartProxy, admin: asyncpg.Connection, pg: LocalPostgres, mode: str
) -> None:
    proxy = proxy_for(start_proxy, mode, size=2, clients=2)
    chan = f"tc_chan_{secrets.token_hex(4)}"
    got: asyncio.Queue[str] = asyncio.Queue()
    a = await apg(proxy)
    b = await psycopg.AsyncConnection.connect(
        proxy.dsn(), autocommit=True, prepare_threshold=None, connect_timeout=10
    )
    b_got: list[str] = []
    b.add_notify_handler(lambda n: b_got.append(f"{n.channel}:{n.payload}"))
    try:
        await a.add_listener(chan, lambda _c, _pid, _ch, payload: got.put_nowait(payload))
        if mode == "transaction":
            assert await x.wait_pinned(proxy, 1) == 1
        pid = int(await a.fetchval("select pg_backend_pid()"))
        # Notifications sent through the proxy by another client, and directly, reach a while it
        # is idle, in order.
        for i in range(3):
            await b.execute("select pg_notify(%s, %s)", (chan, f"via-proxy-{i}"))
            await admin.execute(f"NOTIFY {chan}, 'direct-{i}'")
            assert await asyncio.wait_for(got.get(), 5) == f"via-proxy-{i}"
            assert await asyncio.wait_for(got.get(), 5) == f"direct-{i}"
            assert await pids_of(a, 1) == {pid}
            await b.execute("select 1")
        # b never receives a's notifications.
        assert b_got == []

        await a.execute("UNLISTEN *")
        if mode == "transaction":
            assert await x.wait_pinned(proxy, 0) == 0
        # A direct listener hears the notification: PostgreSQL has signalled every listener by
        # then, and a round trip on each client lets anything the proxy forwards arrive.
        sentinel = await asyncpg.connect(pg.dsn(dbname="app"))
        heard: asyncio.Queue[str] = asyncio.Queue()
        try:
            await sentinel.add_listener(chan, lambda _c, _pid, _ch, p: heard.put_nowait(p))
            await admin.execute(f"NOTIFY {chan}, 'after-unlisten'")
            assert await asyncio.wait_for(heard.get(), 5) == "after-unlisten"
        finally:
            await sentinel.close()
        await a.fetchval("select 1")
        await b.execute("select 1")
        assert got.empty()
        assert b_got == []
    finally:
        await a.close()
        await b.close()


@pytest.mark.parametrize("mode", MODES)
async def test_temp_table_pins_until_dropped_or_discarded(
    start_proxy: StartProxy, mode: str
) -> None:
    proxy = proxy_for(start_proxy, mode, size=2, clients=2)
    a = await apg(proxy)
    b = await apg(proxy)
    try:
        # ON COMMIT DROP: gone with the transaction, nothing to pin.
        async with a.transaction():
            await a.execute("create temp table tc_tmp_oc (x int) on commit drop")
        if mode == "transaction":
            assert await x.wait_pinned(proxy, 0) == 0

        for how in ("drop", "discard"):
            await a.execute("create temp table tc_tmp (x int)")
            if mode == "transaction":
                assert await x.wait_pinned(proxy, 1) == 1
            for i in range(4):
                tx = b.transaction()
                await tx.start()
                # Never visible to another client.
                assert await b.fetchval("select to_regclass('pg_temp.tc_tmp')") is None
                await a.execute("insert into tc_tmp values ($1)", i)
                await tx.commit()
                async with a.transaction():
                    assert await a.fetchval("select count(*) from tc_tmp") == i + 1
                assert await b.fetchval("select to_regclass('pg_temp.tc_tmp')") is None
            if how == "drop":
                await a.execute("drop table tc_tmp")
            else:
                await a.execute("DISCARD ALL")
            assert await a.fetchval("select to_regclass('pg_temp.tc_tmp')") is None
            if mode == "transaction":
                assert await x.wait_pinned(proxy, 0) == 0
    finally:
        await a.close()
        await b.close()


@pytest.mark.parametrize("mode", MODES)
async def test_with_hold_cursor_pins_until_closed(start_proxy: StartProxy, mode: str) -> None:
    proxy = proxy_for(start_proxy, mode, size=2, clients=2)
    a = await apg(proxy)
    b = await apg(proxy)
    declare = (
        "BEGIN; DECLARE tc_cur CURSOR WITH HOLD FOR SELECT g FROM generate_series(1, 10) g; COMMIT"
    )
    try:
        # A cursor without HOLD ends with its transaction: no pinning.
        async with a.transaction():
            await a.execute("DECLARE tc_plain CURSOR FOR SELECT 1")
            assert [r[0] for r in await a.fetch("FETCH ALL FROM tc_plain")] == [1]
        if mode == "transaction":
            assert await x.wait_pinned(proxy, 0) == 0

        for how in ("close", "close all"):
            await a.execute(declare)
            if mode == "transaction":
                assert await x.wait_pinned(proxy, 1) == 1
            fetched: list[int] = []
            for _ in range(3):
                tx = b.transaction()
                await tx.start()
                assert (
                    await b.fetchval("select count(*) from pg_cursors where name = 'tc_cur'") == 0
                )
                fetched += [r[0] for r in await a.fetch("FETCH 3 FROM tc_cur")]
                await tx.commit()
            assert fetched == list(range(1, 10))
            await a.execute("CLOSE tc_cur" if how == "close" else "CLOSE ALL")
            assert await a.fetchval("select count(*) from pg_cursors where name = 'tc_cur'") == 0
            if mode == "transaction":
                assert await x.wait_pinned(proxy, 0) == 0
    finally:
        await a.close()
        await b.close()
