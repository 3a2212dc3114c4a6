"""Differential tests (issue 13, items 3 and 4): the same client code runs on a direct connection
and through the proxy in transaction mode, and must see the same thing.

- Reported parameters: every ParameterStatus a client sees, at login and later, carries the
  server's canonical spelling of what the client asked for (`UTF8` for `utf-8`), and an invalid
  startup setting is refused at login with the server's own error.
- NotificationResponse: a client that notifies itself sees the pid it was given at login.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import psycopg
import pytest

from tests.support.clients import MODES, start
from tests.support.pg import LocalPostgres
from tests.support.proxy import PASSWORDS, ProxyThread, StartProxy

REPORTED = (
    "application_name",
    "client_encoding",
    "DateStyle",
    "IntervalStyle",
    "TimeZone",
    "standard_conforming_strings",
)

# Startup settings in a spelling other than the one the server reports.
SPELLINGS = [
    {"client_encoding": "UTF-8"},
    {"client_encoding": "utf8"},
    {"client_encoding": "unicode"},
    {"DateStyle": "iso,mdy"},
    {"DateStyle": "sql, dmy"},
    {"TimeZone": "utc"},
    {"TimeZone": "europe/paris"},
    {"IntervalStyle": "ISO_8601"},
    {"standard_conforming_strings": "true"},
    {"application_name": "caf\u00e9 \u2603"},
    {"application_name": "tab\there"},
    {"application_name": "x" * 100},
    {"DateStyle": "ISO"},
    {"extra_float_digits": "3", "TimeZone": "Etc/UTC"},
    {"DateStyle": "German", "TimeZone": "+3", "IntervalStyle": "SQL_standard"},
]


def _ids(settings: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in settings.items())


def _direct_dsn(pg: LocalPostgres) -> str:
    return pg.dsn(user="alice", password=PASSWORDS["alice"], dbname="app")


Connect = Callable[..., Awaitable[asyncpg.Connection]]


@contextlib.asynccontextmanager
async def _both(pg: LocalPostgres, proxy: ProxyThread, **kwargs: Any) -> AsyncIterator[Any]:
    """A direct connection and one through the proxy, opened with the same arguments."""
    kwargs.setdefault("statement_cache_size", 0)
    d = await asyncpg.connect(_direct_dsn(pg), **kwargs)
    try:
        p = await asyncpg.connect(proxy.dsn(), **kwargs)
        try:
            yield d, p
        finally:
            await p.close()
    finally:
        await d.close()


def _reported(conn: asyncpg.Connection) -> dict[str, str | None]:
    settings = conn.get_settings()
    return {k: getattr(settings, k, None) for k in REPORTED}


@pytest.mark.parametrize("settings", SPELLINGS, ids=_ids)
async def test_asyncpg_sees_server_spelling(
    pg: LocalPostgres, start_proxy: StartProxy, settings: dict[str, str]
) -> None:
    proxy = start(start_proxy, "transaction", size=2)
    async with _both(pg, proxy, server_settings=settings) as (d, p):
        assert _reported(p) == _reported(d)
        # Later transactions (settings replayed on whichever server connection serves the
        # client) must not change what the client was told.
        for _ in range(3):
            await d.fetchval("select 1")
            await p.fetchval("select 1")
        assert _reported(p) == _reported(d)
        names = ", ".join(f"current_setting('{k}')" for k in REPORTED)
        assert tuple(await p.fetchrow(f"select {names}")) == tuple(
            await d.fetchrow(f"select {names}")
        )


@pytest.mark.parametrize("mode", MODES)
async def test_default_asyncpg_client_encoding(
    pg: LocalPostgres, start_proxy: StartProxy, mode: str
) -> None:
    """asyncpg itself sends client_encoding 'utf-8': a plain connect must already report UTF8."""
    proxy = start(start_proxy, mode, size=2)
    async with _both(pg, proxy) as (d, p):
        assert d.get_settings().client_encoding == "UTF8"
        assert _reported(p) == _reported(d)


async def test_many_clients_share_learned_spelling(
    pg: LocalPostgres, start_proxy: StartProxy
) -> None:
    """Clients logging in at once with an unlearned spelling, on a pool with no idle server
    connection: each still ends up with the server's spelling (at login or with its first
    transaction), and none is refused."""
    proxy = start(start_proxy, "transaction", size=1)
    settings = {"DateStyle": "postgres,ymd", "TimeZone": "asia/tokyo"}
    d = await asyncpg.connect(_direct_dsn(pg), server_settings=settings)
    try:
        want = _reported(d)
        hold = await asyncpg.connect(proxy.dsn(), statement_cache_size=0)
        tx = hold.transaction()
        await tx.start()  # the pool's only server connection stays busy
        try:
            conns = await asyncio.gather(
                *(
                    asyncpg.connect(proxy.dsn(), statement_cache_size=0, server_settings=settings)
                    for _ in range(4)
                )
            )
        finally:
            await tx.rollback()
        try:
            for c in conns:
                await c.fetchval("select 1")
                assert _reported(c) == want
            late = await asyncpg.connect(
                proxy.dsn(), statement_cache_size=0, server_settings=settings
            )
            assert _reported(late) == want  # learned: right at login
            await late.close()
        finally:
            for c in conns:
                await c.close()
            await hold.close()
    finally:
        await d.close()


def test_psycopg_options_spelling(pg: LocalPostgres, start_proxy: StartProxy) -> None:
    """Settings given as `options=-c ...` (libpq), read back from psycopg's ParameterStatus."""
    proxy = start(start_proxy, "transaction", size=2)
    options = "-c DateStyle=iso,dmy -c TimeZone=utc -c IntervalStyle=POSTGRES_verbose"
    seen = []
    for dsn in (_direct_dsn(pg), proxy.dsn()):
        with psycopg.connect(
            dsn, options=options, client_encoding="utf-8", autocommit=True, sslmode="disable"
        ) as conn:
            conn.execute("select 1")
            seen.append({k: conn.info.parameter_status(k) for k in REPORTED})
    assert seen[1] == seen[0]
    assert seen[0]["DateStyle"] == "ISO, DMY"


INVALID = [
    {"client_encoding": "bogus"},
    {"DateStyle": "iso,nonsense"},
    {"TimeZone": "Mars/Olympus"},
    {"IntervalStyle": "klingon"},
    {"standard_conforming_strings": "maybe"},
    {"work_mem": "lots"},
    {"nosuch_setting": "1"},
]


def _psycopg_refusal(dsn: str, settings: dict[str, str]) -> tuple[str | None, str]:
    options = " ".join(f"-c {k}={v}" for k, v in settings.items())
    with pytest.raises(psycopg.Error) as info:
        # A refused login fails here, at connect, as PostgreSQL refuses it.
        psycopg.connect(dsn, options=options, autocommit=True, sslmode="disable").close()
    exc = info.value
    # libpq prefixes the server's message with the address it connected to.
    text = str(exc)
    return exc.sqlstate, text[text.index("FATAL:") :]


@pytest.mark.parametrize("settings", INVALID, ids=_ids)
def test_invalid_setting_refused_at_login(
    pg: LocalPostgres, start_proxy: StartProxy, settings: dict[str, str]
) -> None:
    proxy = start(start_proxy, "transaction", size=2)
    direct_err = _psycopg_refusal(_direct_dsn(pg), settings)
    proxy_err = _psycopg_refusal(proxy.dsn(), settings)
    assert proxy_err == direct_err


@pytest.mark.parametrize("settings", INVALID[:4], ids=_ids)
async def test_asyncpg_invalid_setting_refused_at_login(
    pg: LocalPostgres, start_proxy: StartProxy, settings: dict[str, str]
) -> None:
    proxy = start(start_proxy, "transaction", size=2)
    errors = []
    for dsn in (_direct_dsn(pg), proxy.dsn()):
        with pytest.raises(asyncpg.PostgresError) as info:
            await asyncpg.connect(dsn, server_settings=settings)
        errors.append((type(info.value), info.value.sqlstate, str(info.value)))
    assert errors[1] == errors[0]


# --------------------------------------------------------------------------------------------
# NotificationResponse pids


async def _notify_self(conn: asyncpg.Connection, channel: str) -> int:
    got: asyncio.Queue[int] = asyncio.Queue()

    def on_notify(_c: object, pid: int, _ch: str, _payload: str) -> None:
        got.put_nowait(pid)

    await conn.add_listener(channel, on_notify)
    try:
        await conn.execute(f"NOTIFY {channel}, 'hello'")
        return await asyncio.wait_for(got.get(), 10)
    finally:
        await conn.remove_listener(channel, on_notify)


@pytest.mark.parametrize("mode", MODES)
async def test_asyncpg_self_notify_pid(
    pg: LocalPostgres, start_proxy: StartProxy, mode: str
) -> None:
    proxy = start(start_proxy, mode, size=2)
    async with _both(pg, proxy) as (d, p):
        for conn in (d, p):
            for i in range(2):
                pid = await _notify_self(conn, f"fid_self_{i}")
                assert pid == conn.get_server_pid()


async def test_asyncpg_self_notify_in_transaction_and_pg_notify(
    pg: LocalPostgres, start_proxy: StartProxy
) -> None:
    proxy = start(start_proxy, "transaction", size=2)
    async with _both(pg, proxy) as (d, p):
        for conn in (d, p):
            got: asyncio.Queue[tuple[int, str]] = asyncio.Queue()
            await conn.add_listener(
                "fid_tx", lambda _c, pid, _ch, payload, q=got: q.put_nowait((pid, payload))
            )
            async with conn.transaction():
                await conn.execute("NOTIFY fid_tx, 'a'")
                await conn.execute("select pg_notify('fid_tx', 'b')")
            await conn.execute("select pg_notify('fid_tx', $1)", "c" * 5000)
            seen = [await asyncio.wait_for(got.get(), 10) for _ in range(3)]
            me = conn.get_server_pid()
            assert seen == [(me, "a"), (me, "b"), (me, "c" * 5000)]


async def test_asyncpg_notify_from_another_client(
    pg: LocalPostgres, start_proxy: StartProxy
) -> None:
    """A notification from another session never carries the listener's own pid (what a
    client checks to ignore its own notifications)."""
    proxy = start(start_proxy, "transaction", size=3)
    for connect in (
        lambda: asyncpg.connect(_direct_dsn(pg)),
        lambda: asyncpg.connect(proxy.dsn(), statement_cache_size=0),
    ):
        listener, sender = await connect(), await connect()
        try:
            got: asyncio.Queue[int] = asyncio.Queue()
            await listener.add_listener(
                "fid_other", lambda _c, pid, _ch, _p, q=got: q.put_nowait(pid)
            )
            await sender.execute("NOTIFY fid_other, 'x'")
            pid = await asyncio.wait_for(got.get(), 10)
            assert pid != listener.get_server_pid()
        finally:
            await listener.close()
            await sender.close()


def test_psycopg_self_notify_pid(pg: LocalPostgres, start_proxy: StartProxy) -> None:
    proxy = start(start_proxy, "transaction", size=2)
    for dsn in (_direct_dsn(pg), proxy.dsn()):
        with psycopg.connect(dsn, autocommit=True, sslmode="disable") as conn:
            conn.execute("LISTEN fid_pg")
            conn.execute("NOTIFY fid_pg, 'p'")
            n = next(conn.notifies(timeout=10))
            assert (n.channel, n.payload, n.pid) == ("fid_pg", "p", conn.info.backend_pid)
            conn.execute("UNLISTEN *")


async def test_notifications_during_the_proxys_own_statements(
    pg: LocalPostgres, start_proxy: StartProxy
) -> None:
    """A pinned listener whose statements make the proxy check the session (SET) gets every
    notification, including those that arrive while the proxy's own statements run."""
    proxy = start(start_proxy, "transaction", size=2)
    listener = await asyncpg.connect(proxy.dsn(), statement_cache_size=0)
    sender = await asyncpg.connect(_direct_dsn(pg))
    try:
        got: list[str] = []
        done = asyncio.Event()
        total = 300

        def on_notify(_c: object, _pid: int, _ch: str, payload: str) -> None:
            got.append(payload)
            if len(got) == total:
                done.set()

        await listener.add_listener("fid_busy", on_notify)

        async def churn() -> None:
            i = 0
            while not done.is_set():
                await listener.execute(f"SET work_mem = '{1 + i % 7}MB'")
                i += 1

        task = asyncio.create_task(churn())
        try:
            for i in range(total):
                await sender.execute(f"NOTIFY fid_busy, '{i}'")
            await asyncio.wait_for(done.wait(), 20)
        finally:
            done.set()
            await task
        assert got == [str(i) for i in range(total)]
    finally:
        await listener.close()
        await sender.close()
