"""The unnamed prepared statement across transactions and server connections (issue 13, items 1
and 2), compared with PostgreSQL itself.

In transaction mode two clients take turns on one server connection (pool of 1). PostgreSQL
keeps a session's unnamed statement until the next unnamed Parse, a simple Query or a Close; a
driver may Parse it in one batch and Bind it in the next (asyncpg without a statement cache does
this for introspection). Each scenario runs the same message sequence on two direct connections
and through the proxy, and the replies must be equal: in particular a client never runs the
unnamed statement another client parsed.

In session mode (the tests at the end) the client keeps its server connection, and its unnamed
statement must outlive the proxy's own statements there: the session check after a transaction
that may have changed the session, and the restore of a startup setting the client reset.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import asyncpg
import pg8000.dbapi
import pg8000.native
import pytest

from pgpool_proxy.protocol import messages as m
from pgpool_proxy.session.state import UNTIMED_EXTENDED, probe_statements
from tests.support import extproto as x
from tests.support.pg import LocalPostgres
from tests.support.proxy import PASSWORDS, ProxyThread, StartProxy
from tests.support.rawpg import RawClient

pytestmark = pytest.mark.timeout(60)

Connect = Callable[[], Awaitable[RawClient]]
Outcome = list[object]


def direct(pg: LocalPostgres, **params: str) -> Connect:
    return lambda: x.raw_login(pg, **params)


def proxied(proxy: ProxyThread, **params: str) -> Connect:
    return lambda: x.raw_login(proxy, **params)


def one_connection(start_proxy: StartProxy) -> ProxyThread:
    return start_proxy(pool={"default_pool_size": 1, "query_wait_timeout_s": 20})


async def run_both(
    pg: LocalPostgres,
    start_proxy: StartProxy,
    scenario: Callable[[RawClient, RawClient], Awaitable[Outcome]],
    proxy: ProxyThread | None = None,
    **params: str,
) -> None:
    """The scenario on two direct connections, then on two through the proxy (by default a
    transaction-mode one with a single server connection); the outcomes must be equal. `params`
    are startup parameters of every connection."""
    outcomes = []
    for connect in (direct(pg, **params), proxied(proxy or one_connection(start_proxy), **params)):
        a, b = await connect(), await connect()
        try:
            outcomes.append(await scenario(a, b))
        finally:
            await a.close()
            await b.close()
    assert outcomes[1] == outcomes[0]


def summary(r: x.Reply) -> tuple[list[str], list[list[str | None]]]:
    return r.kinds, r.rows


async def bind_run(c: RawClient) -> tuple[list[str], list[list[str | None]]]:
    return summary(await x.roundtrip(c, x.bind(""), x.execute(), x.SYNC))


async def test_unnamed_statement_survives_another_clients_turn(
    pg: LocalPostgres, start_proxy: StartProxy
) -> None:
    async def scenario(a: RawClient, b: RawClient) -> Outcome:
        out: Outcome = []
        parse = x.parse("", "SELECT 'a-secret'::text")
        r = await x.roundtrip(a, parse, x.describe("S", ""), x.SYNC)
        out.append(r.kinds)
        r = await x.roundtrip(b, x.parse("", "SELECT 'b-secret'::text"), x.SYNC)
        out.append(r.kinds)
        out.append(await bind_run(a))  # A's statement, never B's
        out.append(await b.simple_query("SELECT 1"))
        out.append(await bind_run(a))
        out.append(await bind_run(b))  # B's own, still there for B
        return out

    await run_both(pg, start_proxy, scenario)


async def test_unnamed_statement_of_nobody_is_not_another_clients(
    pg: LocalPostgres, start_proxy: StartProxy
) -> None:
    """A client that never parsed one gets 26000, not the statement B left on the server."""

    async def scenario(a: RawClient, b: RawClient) -> Outcome:
        r = await x.roundtrip(b, x.parse("", "SELECT 'b-secret'::text"), x.SYNC)
        out: Outcome = [r.kinds]
        out.append(await bind_run(a))
        r = await x.roundtrip(a, x.describe("S", ""), x.SYNC)
        out.append(r.kinds)
        out.append(await bind_run(b))
        return out

    await run_both(pg, start_proxy, scenario)


@pytest.mark.parametrize(
    "drop",
    [
        pytest.param([x.close("S", "")], id="close"),
        pytest.param([m.query("SELECT 1")], id="simple-query"),
        pytest.param([x.parse("", "SELECT 1/0 FROM nowhere")], id="failed-parse"),
    ],
)
async def test_what_drops_the_unnamed_statement_drops_it_through_the_proxy(
    pg: LocalPostgres, start_proxy: StartProxy, drop: list[bytes]
) -> None:
    async def scenario(a: RawClient, b: RawClient) -> Outcome:
        out: Outcome = []
        r = await x.roundtrip(a, x.parse("", "SELECT 'a'::text"), x.SYNC)
        out.append(r.kinds)
        if drop[0][:1] == b"Q":
            a.send(drop[0])
            out.append(await a.read_until_ready())
        else:
            out.append((await x.roundtrip(a, *drop, x.SYNC)).kinds)
        await x.roundtrip(b, x.parse("", "SELECT 'b-secret'::text"), x.SYNC)
        out.append(await bind_run(a))
        return out

    await run_both(pg, start_proxy, scenario)


async def test_unnamed_statement_in_a_pipeline_with_syncs(
    pg: LocalPostgres, start_proxy: StartProxy
) -> None:
    """Parse, Sync, Bind, Execute, Sync sent at once, then the same Bind after B's turn."""

    async def scenario(a: RawClient, b: RawClient) -> Outcome:
        a.send(
            x.parse("", "SELECT $1::int * 2") + x.SYNC + x.bind("", ["21"]) + x.execute() + x.SYNC
        )
        out: Outcome = [summary(await x.roundtrip(a)), summary(await x.roundtrip(a))]
        await x.roundtrip(b, x.parse("", "SELECT $1::text"), x.SYNC)
        r = await x.roundtrip(a, x.bind("", ["5"]), x.execute(), x.SYNC)
        out.append(summary(r))
        return out

    await run_both(pg, start_proxy, scenario)


async def test_unnamed_statement_that_sets_state_is_judged_where_it_runs(
    pg: LocalPostgres, start_proxy: StartProxy
) -> None:
    """Parsed in one transaction and run in a later one on another turn of the connection: the
    setting it makes is still A's alone."""
    proxy = one_connection(start_proxy)
    a, b = await proxied(proxy)(), await proxied(proxy)()
    try:
        parse = x.parse("", "SELECT set_config('app.tenant', 'A', false)")
        assert (await x.roundtrip(a, parse, x.describe("S", ""), x.SYNC)).kinds[-1] == "Z:I"
        assert await b.simple_query("SELECT 1") == [["1"]]
        assert (await bind_run(a))[1] == [["A"]]
        assert await b.simple_query("SELECT current_setting('app.tenant', true)") in (
            [[None]],
            [[""]],
        )
        assert await a.simple_query("SELECT current_setting('app.tenant')") == [["A"]]
    finally:
        await a.close()
        await b.close()


async def test_asyncpg_without_statement_cache_interleaved(
    pg: LocalPostgres, start_proxy: StartProxy
) -> None:
    """asyncpg with statement_cache_size=0 (Parse+Describe, then Bind+Execute in a second
    batch), two connections taking turns, the same answers as directly; explicitly named
    statements too."""
    proxy = one_connection(start_proxy)

    async def work(dsn: str) -> Outcome:
        a = await asyncpg.connect(dsn, statement_cache_size=0)
        b = await asyncpg.connect(dsn, statement_cache_size=0)
        try:
            out: Outcome = []
            for i in range(6):
                out.append(await a.fetchval("SELECT $1::int + 1", i))
                out.append(await b.fetchval("SELECT $1::text || 'b'", str(i)))
                out.append(await a.fetch("SELECT $1::text[] AS v", [str(i)]))
            # asyncpg's prepare() ends with Flush, not Sync: the server connection stays with
            # the client until the statement first runs (so, with a pool of one, B comes after).
            stmt = await a.prepare("SELECT $1::int * 3", name="foobar")
            out.append(await stmt.fetchval(5))
            out.append(await b.fetchval("SELECT 1"))
            other = await b.prepare("SELECT $1::text", name="foobar")
            out.append(await other.fetchval("x"))
            out.append(await stmt.fetchval(7))
            out.append(await other.fetchval("y"))
            return out
        finally:
            await a.close()
            await b.close()

    assert await work(proxy.dsn()) == await work(
        pg.dsn(user="alice", password=PASSWORDS["alice"], dbname="app")
    )


async def test_session_mode_unnamed_statement_survives_the_proxys_check(
    pg: LocalPostgres, start_proxy: StartProxy
) -> None:
    """pg8000's pattern: Parse(unnamed) of a SET (which makes the proxy check the session after
    the Sync), then Describe and Bind of it in the next batch. Found by pg8000's suite run
    through a session-mode proxy."""
    proxy = start_proxy(pool={"default_pool_size": 2}, proxy={"pool_mode": "session"})

    async def scenario(a: RawClient, b: RawClient) -> Outcome:
        r = await x.roundtrip(a, x.parse("", "SET application_name = 'x'"), x.SYNC)
        out: Outcome = [r.kinds]
        r = await x.roundtrip(a, x.describe("S", ""), x.bind(""), x.execute(), x.SYNC)
        out.append(r.kinds)
        return out

    await run_both(pg, start_proxy, scenario, proxy)


# --- session mode ---------------------------------------------------------------------------
#
# The client keeps its server connection, and with it its unnamed statement, through the
# proxy's own statements on it: the session check after a transaction that may have changed
# the session, and the restore of a startup setting the client reset.

# Startup settings of every connection below, so that RESET and DISCARD ALL have something of
# the client's own to return to.
STARTUP = {"application_name": "from-startup", "work_mem": "5MB"}
READ_SESSION = (
    "SELECT current_setting('application_name'), current_setting('work_mem'), "
    "current_setting('app.tenant', true)"
)


def session_mode(start_proxy: StartProxy) -> ProxyThread:
    return start_proxy(pool={"default_pool_size": 2}, proxy={"pool_mode": "session"})


def settled(r: x.Reply) -> tuple[list[str], list[list[str | None]]]:
    """Kinds and rows without ParameterStatus: where a client resets a startup setting the
    server reports the server's default and the proxy then restores the startup value, two
    reports PostgreSQL itself does not send (the values read afterwards are compared)."""
    return [k for k in r.kinds if k != "S"], r.rows


@pytest.mark.parametrize(
    "text",
    [
        "SET application_name = 'x'",
        "RESET application_name",
        "SET work_mem = '7MB'",
        "RESET work_mem",
        "RESET ALL",
        "DISCARD ALL",
        "SELECT set_config('app.tenant', 'A', false)",
    ],
)
async def test_session_mode_unnamed_statement_that_changes_the_session(
    pg: LocalPostgres, start_proxy: StartProxy, text: str
) -> None:
    """Parsed in one batch (the proxy checks the session after it), described and run in the
    next, run again in a third: what it does to the session is what PostgreSQL does, startup
    settings that it resets come back to their startup values, and a named statement dropped
    by DISCARD ALL is dropped."""

    async def scenario(a: RawClient, b: RawClient) -> Outcome:
        r = await x.roundtrip(a, x.parse("named", "SELECT 'n'::text"), x.parse("", text), x.SYNC)
        out: Outcome = [settled(r)]
        r = await x.roundtrip(a, x.describe("S", ""), x.bind(""), x.execute(), x.SYNC)
        out.append(settled(r))
        out.append(await a.simple_query(READ_SESSION))
        out.append(await b.simple_query(READ_SESSION))
        await a.simple_query("SET application_name = 'changed'; SET work_mem = '9MB'")
        # A simple Query drops the unnamed statement: parse it again, check, run.
        await x.roundtrip(a, x.parse("", text), x.SYNC)
        out.append(settled(await x.roundtrip(a, x.bind(""), x.execute(), x.SYNC)))
        out.append(await a.simple_query(READ_SESSION))
        out.append(settled(await x.roundtrip(a, x.bind("named"), x.execute(), x.SYNC)))
        return out

    await run_both(pg, start_proxy, scenario, session_mode(start_proxy), **STARTUP)


async def test_session_mode_unnamed_statement_across_a_check_then_described(
    pg: LocalPostgres, start_proxy: StartProxy
) -> None:
    """A batch that changes the session (the proxy checks it) leaves an unnamed SELECT parsed;
    the next batch describes and binds it, with parameters, twice."""

    async def scenario(a: RawClient, b: RawClient) -> Outcome:
        r = await x.roundtrip(
            a,
            x.parse("s1", "SET application_name = 'named'"),
            x.bind("s1"),
            x.execute(),
            x.parse("", "SELECT $1::int + 1, current_setting('application_name')"),
            x.SYNC,
        )
        out: Outcome = [settled(r)]
        r = await x.roundtrip(
            a,
            x.describe("S", ""),
            x.bind("", ["41"]),
            x.execute(),
            x.bind("", ["1"]),
            x.execute(),
            x.SYNC,
        )
        out.append(settled(r))
        out.append(await a.simple_query(READ_SESSION))
        return out

    await run_both(pg, start_proxy, scenario, session_mode(start_proxy), **STARTUP)


async def test_session_mode_named_and_unnamed_mixed(
    pg: LocalPostgres, start_proxy: StartProxy
) -> None:
    """Named and unnamed statements parsed together before a check, run in later batches in
    both orders, the unnamed one replaced in between (the check after that replacement runs
    too)."""

    async def scenario(a: RawClient, b: RawClient) -> Outcome:
        r = await x.roundtrip(
            a,
            x.parse("", "SET application_name = 'unnamed'"),
            x.parse("s2", "SELECT current_setting('application_name')"),
            x.parse("s3", "RESET application_name"),
            x.SYNC,
        )
        out: Outcome = [settled(r)]
        r = await x.roundtrip(a, x.bind(""), x.execute(), x.bind("s2"), x.execute(), x.SYNC)
        out.append(settled(r))
        # The RESET in a batch of its own: the proxy restores the startup value after the
        # transaction (docs/behaviour.md, known limits), so inside it the setting reads the
        # server's default.
        out.append(settled(await x.roundtrip(a, x.bind("s3"), x.execute(), x.SYNC)))
        out.append(settled(await x.roundtrip(a, x.bind("s2"), x.execute(), x.SYNC)))
        out.append(await a.simple_query(READ_SESSION))
        r = await x.roundtrip(
            a,
            x.parse("", "SELECT set_config('work_mem', '6MB', false)"),
            x.describe("S", ""),
            x.SYNC,
        )
        out.append(settled(r))
        r = await x.roundtrip(a, x.bind("s2"), x.execute(), x.bind(""), x.execute(), x.SYNC)
        out.append(settled(r))
        out.append(await a.simple_query(READ_SESSION))
        out.append(settled(await x.roundtrip(a, x.close("S", ""), x.bind(""), x.SYNC)))
        return out

    await run_both(pg, start_proxy, scenario, session_mode(start_proxy), **STARTUP)


async def test_session_mode_unnamed_parse_pipelined_behind_a_query(
    pg: LocalPostgres, start_proxy: StartProxy
) -> None:
    """Parse, Sync, a simple Query and an unnamed Parse of a RESET sent at once: the Query's
    answer (which drops the unnamed statement before it) comes after the RESET's Parse was
    seen, and must not make the proxy forget what that statement does when it runs."""

    async def scenario(a: RawClient, b: RawClient) -> Outcome:
        await a.simple_query("SET application_name = 'changed'")
        a.send(
            x.parse("", "SELECT 1")
            + x.SYNC
            + m.query("SELECT 2")
            + x.parse("", "RESET application_name")
            + x.SYNC
        )
        out: Outcome = [settled(await x.roundtrip(a)) for _ in range(3)]
        out.append(settled(await x.roundtrip(a, x.bind(""), x.execute(), x.SYNC)))
        out.append(await a.simple_query(READ_SESSION))
        return out

    await run_both(pg, start_proxy, scenario, session_mode(start_proxy), **STARTUP)


def pg8000_session(host: str, port: int) -> Outcome:
    """pg8000's unnamed statements: `native.run` with parameters and dbapi's `commit()` send
    Parse+Sync, then Describe+Sync+Bind, then Execute+Sync."""
    kw = {
        "database": "app",
        "password": PASSWORDS["alice"],
        "timeout": 5,
        "application_name": STARTUP["application_name"],
        "startup_params": {"work_mem": STARTUP["work_mem"]},
    }
    out: Outcome = []
    con = pg8000.native.Connection("alice", host=host, port=port, **kw)
    try:
        out.append(con.run("SELECT set_config('application_name', :v, false)", v="native"))
        out.append(con.run("SELECT current_setting('application_name')"))
        out.append(con.run("SELECT set_config('work_mem', :v, false)", v="6MB"))
        con.run("RESET ALL")
        out.append(con.run(READ_SESSION))
        out.append(con.run("SELECT :a::int + 1", a=41))
    finally:
        con.close()
    db = pg8000.dbapi.connect("alice", host=host, port=port, **kw)
    try:
        cur = db.cursor()
        cur.execute("SELECT set_config(%s, %s, false)", ("application_name", "in-a-tx"))
        db.commit()
        cur.execute("SELECT current_setting('application_name'), %s", ("after",))
        out.append(cur.fetchall())
        db.rollback()
    finally:
        db.close()
    return out


async def test_session_mode_pg8000(pg: LocalPostgres, start_proxy: StartProxy) -> None:
    proxy = session_mode(start_proxy)
    expected = await asyncio.to_thread(pg8000_session, pg.host, pg.port)
    assert await asyncio.to_thread(pg8000_session, proxy.host, proxy.port) == expected


async def test_session_mode_check_batch_on_postgresql(pg: LocalPostgres) -> None:
    """The check as the proxy sends it in session mode, straight to PostgreSQL after an unnamed
    Parse: rows as from the simple Query, no warning (SET LOCAL outside a transaction block
    would log one each time), the client's timeouts back after it, and the unnamed statement
    and the client's own named one still there."""
    c = await direct(pg)()
    try:
        await c.simple_query("SET statement_timeout = '7s'")
        await x.roundtrip(
            c, x.parse("", "SELECT 'kept'::text"), x.parse("mine", "SELECT 2"), x.SYNC
        )
        stmts = probe_statements(
            full=False, pins=True, names=["work_mem"], untimed=UNTIMED_EXTENDED
        )
        r = await x.roundtrip(c, m.internal_batch(stmts))
        assert "N" not in [t.decode() for t, _ in r.messages]
        assert r.kinds[-1] == "Z:I" and not r.errors
        assert [row[0] for row in r.rows if len(row) == 3] == ["u", "u", "n", "p"]
        # Again: the proxy's statement was closed (a leftover would make its Parse fail).
        assert not (await x.roundtrip(c, m.internal_batch(stmts))).errors
        assert (await bind_run(c))[1] == [["kept"]]
        assert (await x.roundtrip(c, x.bind("mine"), x.execute(), x.SYNC)).rows == [["2"]]
        assert await c.simple_query("SHOW statement_timeout") == [["7s"]]
    finally:
        await c.close()


async def patiently(a: RawClient, *msgs: bytes) -> tuple[list[str], list[list[str | None]]]:
    """A roundtrip sent again while the client's own 1 ms statement_timeout cancels it."""
    for _ in range(50):
        r = settled(await x.roundtrip(a, *msgs))
        if "E:57014" not in r[0]:
            return r
    raise AssertionError("timed out 50 times")


async def test_session_mode_check_under_the_clients_1ms_timeouts(
    pg: LocalPostgres, start_proxy: StartProxy
) -> None:
    """The proxy's statements, in extended protocol in session mode, still run with the
    client's timeouts off (SET LOCAL lasts until their Sync) and leave them as they were."""

    async def scenario(a: RawClient, b: RawClient) -> Outcome:
        out: Outcome = []
        for text in (
            "SET statement_timeout = 1",
            "SET lock_timeout = 1",
            "SELECT set_config('work_mem', '3MB', false)",
            "RESET application_name",
        ):
            out.append(await patiently(a, x.parse("", text), x.SYNC))
            out.append(await patiently(a, x.bind(""), x.execute(), x.SYNC))
        read = (
            "SELECT current_setting('statement_timeout'), current_setting('lock_timeout'), "
            "current_setting('work_mem'), current_setting('application_name')"
        )
        out.append(await patiently(a, x.parse("", read), x.bind(""), x.execute(), x.SYNC))
        return out

    await run_both(pg, start_proxy, scenario, session_mode(start_proxy), **STARTUP)
