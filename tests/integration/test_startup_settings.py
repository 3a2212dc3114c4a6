"""Session state through the proxy: session-mode reset, and startup settings per client.

Every test checks an outcome the server produced: rows read back over a direct connection,
server-reported settings, backend pids, SQLSTATEs. Tests that take a `mode` run in both pool
modes.
"""

from __future__ import annotations

import contextlib

import asyncpg
import psycopg
import pytest

from tests.support.clients import MODES, apg, pconnect, start
from tests.support.pg import LocalPostgres
from tests.support.proxy import StartProxy

# --------------------------------------------------------------------------------------------
# 5. Session mode semantics


def test_session_mode_state_persists_then_is_discarded(
    pg: LocalPostgres, start_proxy: StartProxy
) -> None:
    proxy = start(start_proxy, "session", size=1)
    default = pg.psql("show work_mem", dbname="app")
    assert default != "7MB"
    with pconnect(proxy, "session", autocommit=True) as c1:
        pid = c1.execute("select pg_backend_pid()").fetchone()
        c1.execute("SET work_mem = '7MB'")
        c1.execute("create temp table tc_session_tmp (x int)")
        for _ in range(3):
            with c1.transaction():
                assert c1.execute("show work_mem").fetchone() == ("7MB",)
        assert c1.execute("show work_mem").fetchone() == ("7MB",)
        # psycopg prepares this statement server-side as _pg3_N after 5 runs.
        for i in range(7):
            assert c1.execute("select %s::int + 100", (i,)).fetchone() == (i + 100,)
        assert c1.execute("select pg_backend_pid()").fetchone() == pid
    with pconnect(proxy, "session", autocommit=True) as c2:
        assert c2.execute("select pg_backend_pid()").fetchone() == pid
        assert c2.execute("show work_mem").fetchone() == (default,)
        assert c2.execute("select to_regclass('pg_temp.tc_session_tmp')").fetchone() == (None,)
        # Same statement names as the first client: DISCARD ALL dropped the old ones.
        for i in range(7):
            assert c2.execute("select %s::int + 100", (i,)).fetchone() == (i + 100,)


# --------------------------------------------------------------------------------------------
# 6. Startup settings in transaction mode (one shared backend)


async def test_startup_settings_replayed_per_client(start_proxy: StartProxy) -> None:
    proxy = start(start_proxy, "transaction", size=1)
    settings_a = {
        "application_name": "client-a",
        "TimeZone": "Asia/Tokyo",
        "DateStyle": "SQL, DMY",
        "IntervalStyle": "iso_8601",
    }
    settings_b = {
        "application_name": "client-b",
        "TimeZone": "America/New_York",
        "DateStyle": "ISO, MDY",
        "IntervalStyle": "postgres",
    }
    a = await apg(proxy, server_settings=settings_a)
    b = await apg(proxy, server_settings=settings_b)
    query = (
        "select current_setting('application_name'), current_setting('TimeZone'), "
        "current_setting('DateStyle'), current_setting('IntervalStyle'), "
        "'2024-03-05'::date::text, interval '1 day 2 hours'::text, pg_backend_pid()"
    )
    try:
        pids = set()
        for _ in range(4):
            ra = await a.fetchrow(query)
            assert tuple(ra)[:6] == (
                "client-a",
                "Asia/Tokyo",
                "SQL, DMY",
                "iso_8601",
                "05/03/2024",
                "P1DT2H",
            )
            assert await a.fetchval("show timezone") == "Asia/Tokyo"
            rb = await b.fetchrow(query)
            assert tuple(rb)[:6] == (
                "client-b",
                "America/New_York",
                "ISO, MDY",
                "postgres",
                "2024-03-05",
                "1 day 02:00:00",
            )
            assert await b.fetchval("show timezone") == "America/New_York"
            pids.update((ra[6], rb[6]))
        assert len(pids) == 1, "the two clients should have shared the single backend"
    finally:
        await a.close()
        await b.close()


def test_startup_options_replayed_and_reset(pg: LocalPostgres, start_proxy: StartProxy) -> None:
    proxy = start(start_proxy, "transaction", size=1)
    default = pg.psql("show statement_timeout", dbname="app")
    assert default != "1234ms"
    query = (
        "select current_setting('statement_timeout'), current_setting('work_mem'), pg_backend_pid()"
    )
    default_work_mem = pg.psql("show work_mem", dbname="app")
    with (
        pconnect(
            proxy,
            "transaction",
            autocommit=True,
            options="-c statement_timeout=1234 -c work_mem=5MB",
        ) as a,
        pconnect(proxy, "transaction", autocommit=True) as b,
    ):
        pids = set()
        for _ in range(3):
            ra = a.execute(query).fetchone()
            assert ra is not None and ra[:2] == ("1234ms", "5MB")
            assert a.execute("show statement_timeout").fetchone() == ("1234ms",)
            rb = b.execute(query).fetchone()
            assert rb is not None and rb[:2] == (default, default_work_mem)
            assert b.execute("show statement_timeout").fetchone() == (default,)
            pids.update((ra[2], rb[2]))
        assert len(pids) == 1, "the two clients should have shared the single backend"


async def test_session_mode_startup_settings_after_reset(start_proxy: StartProxy) -> None:
    """Session mode, pool of 1: DISCARD ALL between clients resets the backend's reported
    settings; each client with the same startup settings gets them again."""
    proxy = start(start_proxy, "session", size=1)
    settings = {"application_name": "sess-app", "TimeZone": "Asia/Tokyo", "DateStyle": "SQL, DMY"}
    pids = set()
    for _ in range(3):
        conn = await apg(proxy, server_settings=settings)
        try:
            row = await conn.fetchrow(
                "select current_setting('application_name'), current_setting('TimeZone'), "
                "current_setting('DateStyle'), pg_backend_pid()"
            )
            assert tuple(row)[:3] == ("sess-app", "Asia/Tokyo", "SQL, DMY")
            pids.add(row[3])
        finally:
            await conn.close()
    # Same backend each time; in between, a client without settings sees the defaults.
    plain = await apg(proxy)
    try:
        assert await plain.fetchval("select current_setting('application_name')") == ""
        pids.add(await plain.fetchval("select pg_backend_pid()"))
    finally:
        await plain.close()
    assert len(pids) == 1


def test_session_mode_startup_options_after_reset(
    pg: LocalPostgres, start_proxy: StartProxy
) -> None:
    proxy = start(start_proxy, "session", size=1)
    pids = set()
    for i in range(3):
        with pconnect(
            proxy, "session", autocommit=True, options="-c statement_timeout=1234 -c work_mem=5MB"
        ) as conn:
            row = conn.execute(
                "select current_setting('statement_timeout'), current_setting('work_mem'), "
                "pg_backend_pid()"
            ).fetchone()
            assert row is not None
            assert row[:2] == ("1234ms", "5MB"), f"client {i} got {row[:2]}"
            pids.add(row[2])
    assert len(pids) == 1


@pytest.mark.parametrize(
    ("option", "param"),
    [("-c statement_timeout=abc", "statement_timeout"), ("-c TimeZone=Mars/Olympus", "TimeZone")],
)
def test_invalid_startup_setting_is_refused(
    pg: LocalPostgres, start_proxy: StartProxy, option: str, param: str
) -> None:
    proxy = start(start_proxy, "transaction", size=1)
    with (
        pytest.raises(psycopg.Error, match=f'invalid value for parameter "{param}"'),
        pconnect(proxy, "transaction", autocommit=True, options=option) as conn,
    ):
        conn.execute("select current_setting(%s)", (param,)).fetchone()


def test_rejected_startup_setting_does_not_leak(pg: LocalPostgres, start_proxy: StartProxy) -> None:
    proxy = start(start_proxy, "transaction", size=1)
    default = pg.psql("show work_mem", dbname="app")
    assert default != "5MB"
    with pconnect(proxy, "transaction", autocommit=True, options="-c work_mem=5MB") as a:
        assert a.execute("show work_mem").fetchone() == ("5MB",)
        with (
            contextlib.suppress(psycopg.Error),
            pconnect(
                proxy, "transaction", autocommit=True, options="-c statement_timeout=abc"
            ) as b,
        ):
            b.execute("select 1")
        with pconnect(proxy, "transaction", autocommit=True) as plain:
            assert plain.execute("show work_mem").fetchone() == (default,)


@pytest.mark.parametrize("mode", MODES)
async def test_asyncpg_pool_reset_keeps_startup_settings(
    start_proxy: StartProxy, mode: str
) -> None:
    proxy = start(start_proxy, mode, size=1)
    pool = await asyncpg.create_pool(
        proxy.dsn(),
        min_size=1,
        max_size=1,
        statement_cache_size=0,
        server_settings={"application_name": "pooled", "TimeZone": "Asia/Tokyo", "work_mem": "5MB"},
    )
    try:
        for i in range(3):
            async with pool.acquire() as conn:
                row = await conn.fetchrow(
                    "select current_setting('application_name'), current_setting('TimeZone'), "
                    "current_setting('work_mem')"
                )
                assert tuple(row) == ("pooled", "Asia/Tokyo", "5MB"), f"acquire {i}: {tuple(row)}"
    finally:
        await pool.close()


def test_large_first_statement_after_settings_replay(start_proxy: StartProxy) -> None:
    """A client with startup options whose first statement is large: its bytes pile up while
    the settings are replayed (reading pauses past 64 KiB) and must flow again afterwards."""
    proxy = start_proxy(pool={"default_pool_size": 2})
    big = "x" * (3 * 1024 * 1024)
    for _ in range(3):
        with psycopg.connect(
            proxy.dsn(), options="-c work_mem=8MB", prepare_threshold=None, connect_timeout=10
        ) as conn:
            conn.execute("set statement_timeout = '20s'")
            row = conn.execute("select length(%s), current_setting('work_mem')", (big,)).fetchone()
            assert row == (len(big), "8MB")
