"""The server's FATAL ErrorResponse when it ends a session (issue 13): compared with PostgreSQL.

PostgreSQL says why it closes a connection (57P01 after pg_terminate_backend, 25P03 after
idle_in_transaction_session_timeout, ...) in a FATAL ErrorResponse, then closes. A client
served by that server connection must get exactly those bytes and then EOF, as it would
directly (asyncpg raises AdminShutdownError from them); the proxy drops the server connection
and keeps serving everyone else. A FATAL in answer to the proxy's own statement is not the
client's: it gets the proxy's connection-failure error instead.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import asyncpg
import pytest

from pgpool_proxy.protocol import messages as m
from tests.integration.test_hostile_server import hostile
from tests.support import extproto as x
from tests.support.hostile_server import READY, HostileConn, error
from tests.support.pg import LocalPostgres
from tests.support.proxy import PASSWORDS, ProxyThread, StartProxy
from tests.support.rawpg import RawClient, RawError, raw_login
from tests.support.robustness import backends, settle
from tests.support.waits import eventually

pytestmark = pytest.mark.timeout(60)

Messages = list[tuple[bytes, bytes]]


async def direct(pg: LocalPostgres) -> RawClient:
    return await raw_login(pg)


async def until_eof(c: RawClient) -> Messages:
    """Every message up to the server's (or proxy's) EOF."""
    got: Messages = []
    while True:
        try:
            got.append(await c.read_message(10))
        except asyncio.IncompleteReadError as exc:
            assert exc.partial == b"", exc.partial
            return got


async def pid_running(admin: asyncpg.Connection, marker: str) -> int:
    """The pid of the session running the statement that holds `marker`, once it runs."""
    sql = (
        "SELECT pid FROM pg_stat_activity WHERE state = 'active' AND query LIKE $1 "
        "AND pid <> pg_backend_pid()"
    )
    pid, _ = await eventually(lambda: admin.fetchval(sql, f"%{marker}%"), bool, 10)
    assert pid, f"no session runs {marker}"
    return int(pid)


Scenario = Callable[[RawClient, asyncpg.Connection], Awaitable[Messages]]


async def run_both(
    pg: LocalPostgres, proxy: ProxyThread, admin: asyncpg.Connection, scenario: Scenario
) -> Messages:
    """The scenario directly and through the proxy; the messages must be equal to the byte.
    Through the proxy, a bystander client holding a server connection in a transaction is
    untouched and the pool is back to the connections still in use."""
    want = await scenario(await direct(pg), admin)
    bystander = await raw_login(proxy)
    try:
        assert await bystander.simple_query("BEGIN") == []
        assert await bystander.simple_query("SELECT 'before'") == [["before"]]
        got = await scenario(await raw_login(proxy), admin)
        assert await bystander.simple_query("SELECT 'after'") == [["after"]]
        assert await bystander.simple_query("COMMIT") == []
        # The dead server connection is gone from the pool; a new client gets a live one.
        c = await raw_login(proxy)
        assert await c.simple_query("SELECT 'new'") == [["new"]]
        await c.close()

        async def counts() -> tuple[int, int]:
            return proxy.pool_stats()["total"], await backends(admin, "alice")

        (total, on_server), _ = await eventually(counts, lambda c: c[0] == c[1], 5)
        assert total == on_server
    finally:
        await bystander.close()
    assert got == want
    return got


def fatal(messages: Messages) -> dict[str, str]:
    t, body = messages[-1]
    assert t == b"E", messages
    fields = m.parse_error_fields(body)
    assert fields["S"] == "FATAL", fields
    return fields


@pytest.fixture(params=["transaction", "session"])
async def proxy(
    request: pytest.FixtureRequest, start_proxy: StartProxy, admin: asyncpg.Connection
) -> ProxyThread:
    await settle(admin, "alice")
    return start_proxy(
        proxy={"pool_mode": request.param},
        pool={"default_pool_size": 2, "query_wait_timeout_s": 20},
    )


async def terminate_running(c: RawClient, admin: asyncpg.Connection, marker: str) -> Messages:
    """Terminate the backend running the query marked `marker`; what `c` got until EOF."""
    pid = await pid_running(admin, marker)
    assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
    return await until_eof(c)


async def test_terminated_mid_simple_query(
    pg: LocalPostgres, proxy: ProxyThread, admin: asyncpg.Connection
) -> None:
    async def scenario(c: RawClient, admin: asyncpg.Connection) -> Messages:
        c.send(m.query("SELECT pg_sleep(30) -- fatal-simple"))
        return await terminate_running(c, admin, "fatal-simple")

    got = await run_both(pg, proxy, admin, scenario)
    assert fatal(got)["C"] == "57P01"


async def test_terminated_mid_extended_query(
    pg: LocalPostgres, proxy: ProxyThread, admin: asyncpg.Connection
) -> None:
    """Through the proxy the replies of an extended-protocol batch are matched to its messages;
    the FATAL ends that too."""

    async def scenario(c: RawClient, admin: asyncpg.Connection) -> Messages:
        c.send(
            x.parse("s1", "SELECT pg_sleep($1::float8) -- fatal-extended")
            + x.bind("s1", ["30"])
            + x.execute()
            + x.SYNC
        )
        return await terminate_running(c, admin, "fatal-extended")

    got = await run_both(pg, proxy, admin, scenario)
    assert [t for t, _ in got] == [b"1", b"2", b"E"]
    assert fatal(got)["C"] == "57P01"


async def test_idle_in_transaction_timeout(
    pg: LocalPostgres, proxy: ProxyThread, admin: asyncpg.Connection
) -> None:
    """The server ends a session idle in a transaction without being asked anything."""

    async def scenario(c: RawClient, admin: asyncpg.Connection) -> Messages:
        assert await c.simple_query("BEGIN") == []
        await c.simple_query("SET LOCAL idle_in_transaction_session_timeout = '200ms'")
        return await until_eof(c)

    got = await run_both(pg, proxy, admin, scenario)
    assert fatal(got)["C"] == "25P03"


async def test_asyncpg_execute_interrupted_by_server(
    pg: LocalPostgres, proxy: ProxyThread, admin: asyncpg.Connection
) -> None:
    """asyncpg's own test_execute_script_interrupted_by_server: the FATAL becomes the cause of
    ConnectionDoesNotExistError."""

    async def scenario(dsn: str) -> tuple[str, str, str]:
        con = await asyncpg.connect(dsn, statement_cache_size=0)
        try:
            task = asyncio.create_task(con.execute("SELECT pg_sleep(30) -- fatal-asyncpg"))
            pid = await pid_running(admin, "fatal-asyncpg")
            assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
            with pytest.raises(asyncpg.ConnectionDoesNotExistError) as exc:
                await task
            return (type(exc.value).__name__, type(exc.value.__cause__).__name__, str(exc.value))
        finally:
            await con.close()

    want = await scenario(pg.dsn(user="alice", password=PASSWORDS["alice"], dbname="app"))
    got = await scenario(proxy.dsn())
    assert got == want
    assert want[1] == "AdminShutdownError"


async def test_fatal_answering_the_proxys_own_statement_is_not_relayed(
    start_proxy: StartProxy, pg: LocalPostgres
) -> None:
    """The server ends the session in answer to the settings the proxy replays before a
    client's query: that FATAL answers the proxy, not the client, which gets the proxy's own
    connection-failure error; a FATAL in answer to the client's query is relayed as sent."""

    async def script(conn: HostileConn) -> None:
        await conn.normal_login()
        while True:
            t, body = await conn.read_message()
            if t == b"X":
                return
            sql = body[:-1].decode()
            if "SET" in sql.upper():
                await conn.send(error(S="FATAL", V="FATAL", C="57P01", M="replay refused"))
                return
            if "bye" in sql:
                await conn.send(error(S="FATAL", V="FATAL", C="57P01", M="bye") + READY)
                return
            await conn.send(m.frame(b"C", b"SELECT 0\0") + READY)

    async with hostile(start_proxy, pg, script) as (proxy, _):
        replayed = await RawClient.connect(proxy.host, proxy.port)
        await replayed.login("alice", PASSWORDS["alice"], "evil", application_name="replayed")
        with pytest.raises(RawError) as err:
            await replayed.simple_query("select 1")
        assert err.value.fields["C"] == "08006", err.value.fields
        assert "server connection lost" in err.value.fields["M"]
        assert await until_eof(replayed) == []
        await replayed.close()

        plain = await RawClient.connect(proxy.host, proxy.port)
        await plain.login("alice", PASSWORDS["alice"], "evil")
        plain.send(m.query("select bye"))
        # Bytes after the FATAL (a ReadyForQuery here; PostgreSQL sends none) are not passed on.
        got = await until_eof(plain)
        assert got == [(b"E", b"SFATAL\0VFATAL\0C57P01\0Mbye\0\0")]
        await plain.close()


async def test_fatal_answering_a_logins_settings_check(
    start_proxy: StartProxy, pg: LocalPostgres
) -> None:
    """The server ends the session the proxy asks, during a client's login, how it spells a
    startup setting: nobody gets that FATAL, and the login goes on at once (the value is then
    checked by the client's first transaction), not after server_check_timeout_s."""

    async def script(conn: HostileConn) -> None:
        await conn.normal_login()
        while True:
            t, body = await conn.read_message()
            if t == b"X":
                return
            if b"set_config" in body or b"SET" in body:
                await conn.send(error(S="FATAL", V="FATAL", C="57P01", M="check refused"))
                return
            await conn.send(m.frame(b"C", b"SELECT 0\0") + READY)

    async with hostile(start_proxy, pg, script, server_check_timeout_s=30) as (proxy, _):
        client = await RawClient.connect(proxy.host, proxy.port)
        await asyncio.wait_for(
            client.login("alice", PASSWORDS["alice"], "evil", DateStyle="German"), 3
        )
        # The first transaction replays the setting on a new server connection, which ends the
        # session the same way: the proxy's own statement, so the proxy's own error.
        with pytest.raises(RawError) as err:
            await client.simple_query("select 1")
        assert err.value.fields["C"] == "08006", err.value.fields
        await client.close()
