"""Prepared statements and schema changes through the proxy (issue 13), compared with PostgreSQL
itself. PostgreSQL holds a prepared statement to the result it had when it was prepared: after
a schema change that alters that result, using it fails with 0A000 "cached plan must not change
result type", while a fresh Parse plans afresh. The proxy shares statements between clients and
prepares a client's statement again on each server connection it lands on, so both halves must
be kept by it: a fresh Parse never answered from a plan made before the change, and a
statement prepared again never returning rows in a shape other than the one its client was
told.

Each scenario runs directly and through the proxy (one server connection, one statement per
server connection, so that a statement used again is always prepared again by the proxy) and
the outcomes — rows, or the class of the exception — must be equal.
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable

import asyncpg
import pytest

from tests.support import extproto as x
from tests.support.pg import LocalPostgres
from tests.support.proxy import PASSWORDS, StartProxy
from tests.support.rawpg import RawClient

pytestmark = pytest.mark.timeout(60)

Outcome = list[object]
Scenario = Callable[[asyncpg.Connection, asyncpg.Connection, str, str], Awaitable[Outcome]]
_n = itertools.count()


async def attempt(coro: Awaitable[object]) -> object:
    try:
        value = await coro
    except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        return type(exc).__name__
    if isinstance(value, list):
        return [tuple(r) for r in value]
    return value


async def both(
    pg: LocalPostgres, start_proxy: StartProxy, scenario: Scenario, *, pool_size: int = 1
) -> Outcome:
    """Runs scenario(con, other, table, direct_dsn) directly, then through the proxy; `other` is
    a second client of the same route, and direct_dsn reaches PostgreSQL without the proxy (a
    schema change made where the proxy cannot see it)."""
    proxy = start_proxy(pool={"default_pool_size": pool_size, "max_prepared_statements": 1})
    direct = pg.dsn(user="alice", password=PASSWORDS["alice"], dbname="app")
    outcomes = []
    for dsn in (direct, proxy.dsn()):
        table = f"ddl_{next(_n)}"
        # No statement cache: the scenarios prepare explicitly, and nothing is re-prepared
        # behind their back.
        con = await asyncpg.connect(dsn, statement_cache_size=0)
        other = await asyncpg.connect(dsn, statement_cache_size=0)
        try:
            await con.execute(
                f"CREATE TABLE {table}(a int, b int); INSERT INTO {table} VALUES (1, 2)"
            )
            outcomes.append(await scenario(con, other, table, direct))
        finally:
            await con.execute(f"DROP TABLE IF EXISTS {table}")
            await con.close()
            await other.close()
    assert outcomes[1] == outcomes[0]
    return outcomes[0]


async def prep(con: asyncpg.Connection, sql: str) -> asyncpg.prepared_stmt.PreparedStatement:
    """A named statement (asyncpg without a statement cache would use the unnamed one)."""
    return await con.prepare(sql, name=f"stmt_{next(_n)}")


async def evict(con: asyncpg.Connection) -> None:
    """Another statement on the only server connection: the proxy closes the one it held there
    (max_prepared_statements = 1), so the next use of it is prepared again by the proxy."""
    await con.fetchval("SELECT 'evict'::text")


async def test_result_type_change_fails_the_old_statement(
    pg: LocalPostgres, start_proxy: StartProxy
) -> None:
    async def scenario(con: asyncpg.Connection, _o: object, t: str, _d: str) -> Outcome:
        stmt = await prep(con, f"SELECT * FROM {t}")
        out: Outcome = [await attempt(stmt.fetch())]
        await con.execute(f"ALTER TABLE {t} ALTER COLUMN b TYPE text")
        await evict(con)
        out.append(await attempt(stmt.fetch()))
        out.append(await attempt(stmt.fetch()))  # it stays broken, as PostgreSQL keeps it
        # A fresh Parse of the same text is planned afresh.
        out.append(await attempt(con.fetch(f"SELECT * FROM {t}")))
        fresh = await prep(con, f"SELECT * FROM {t}")
        out.append(await attempt(fresh.fetch()))
        return out

    got = await both(pg, start_proxy, scenario)
    assert got[1] == "InvalidCachedStatementError"
    assert got[3] == [(1, "2")]


async def test_change_that_keeps_the_result_leaves_the_statement_working(
    pg: LocalPostgres, start_proxy: StartProxy
) -> None:
    async def scenario(con: asyncpg.Connection, _o: object, t: str, _d: str) -> Outcome:
        stmt = await prep(con, f"SELECT a, b FROM {t} WHERE a = $1")
        out: Outcome = [await attempt(stmt.fetch(1))]
        await con.execute(f"ALTER TABLE {t} ADD COLUMN c text DEFAULT 'x'")
        await con.execute(f"CREATE INDEX ON {t}(a)")
        await evict(con)
        out.append(await attempt(stmt.fetch(1)))
        async with con.transaction():
            await con.execute(f"ALTER TABLE {t} ALTER COLUMN b TYPE bigint")
            await con.execute(f"ALTER TABLE {t} ALTER COLUMN b TYPE int")
        await evict(con)
        out.append(await attempt(stmt.fetch(1)))
        return out

    got = await both(pg, start_proxy, scenario)
    assert got == [[(1, 2)]] * 3


async def test_rolled_back_change_leaves_the_statement_working(
    pg: LocalPostgres, start_proxy: StartProxy
) -> None:
    async def scenario(con: asyncpg.Connection, _o: object, t: str, _d: str) -> Outcome:
        stmt = await prep(con, f"SELECT * FROM {t}")
        out: Outcome = [await attempt(stmt.fetch())]
        tr = con.transaction()
        await tr.start()
        await con.execute(f"ALTER TABLE {t} ALTER COLUMN b TYPE text")
        await tr.rollback()
        await evict(con)
        out.append(await attempt(stmt.fetch()))
        return out

    await both(pg, start_proxy, scenario)


async def test_fresh_parse_inside_the_changing_transaction(
    pg: LocalPostgres, start_proxy: StartProxy
) -> None:
    """asyncpg's test_type_cache_invalidation_in_transaction, deterministic: another client has
    the text prepared on the only server connection; a fresh Parse after ALTER in the same
    transaction must be planned after the change."""

    async def scenario(
        con: asyncpg.Connection, other: asyncpg.Connection, t: str, _d: str
    ) -> Outcome:
        old = await prep(other, f"SELECT * FROM {t}")
        out: Outcome = [await attempt(old.fetch())]
        async with con.transaction():
            await con.execute(f"ALTER TABLE {t} ADD COLUMN c text DEFAULT 'x'")
            fresh = await prep(con, f"SELECT * FROM {t}")
            out.append(await attempt(fresh.fetch()))
        out.append(await attempt(fresh.fetch()))
        # The other client's statement was prepared before the change.
        out.append(await attempt(old.fetch()))
        again = await prep(other, f"SELECT * FROM {t}")
        out.append(await attempt(again.fetch()))
        return out

    got = await both(pg, start_proxy, scenario)
    assert got[1] == [(1, 2, "x")]
    assert got[3] == "InvalidCachedStatementError"


async def test_fresh_parse_after_a_committed_change_by_another_client(
    pg: LocalPostgres, start_proxy: StartProxy
) -> None:
    async def scenario(
        con: asyncpg.Connection, other: asyncpg.Connection, t: str, _d: str
    ) -> Outcome:
        old = await prep(con, f"SELECT * FROM {t}")
        out: Outcome = [await attempt(old.fetch())]
        await other.execute(f"ALTER TABLE {t} DROP COLUMN b, ADD COLUMN b numeric DEFAULT 1.5")
        fresh = await prep(other, f"SELECT * FROM {t}")
        out.append(await attempt(fresh.fetch()))
        out.append(await attempt(old.fetch()))
        return out

    await both(pg, start_proxy, scenario, pool_size=2)


async def test_change_made_where_the_proxy_cannot_see_it(
    pg: LocalPostgres, start_proxy: StartProxy
) -> None:
    """The schema changes over a direct connection (a migration run beside the proxy): the
    client's statement, prepared again by the proxy, must fail as PostgreSQL fails it, not
    return rows in the new shape under the old description."""

    async def scenario(con: asyncpg.Connection, _o: object, t: str, direct: str) -> Outcome:
        stmt = await prep(con, f"SELECT * FROM {t}")
        out: Outcome = [await attempt(stmt.fetch())]
        migration = await asyncpg.connect(direct)
        try:
            await migration.execute(f"ALTER TABLE {t} ALTER COLUMN b TYPE text")
        finally:
            await migration.close()
        await evict(con)
        out.append(await attempt(stmt.fetch()))
        # A new client's fresh Parse of the text is planned afresh.
        out.append(await attempt(con.fetch(f"SELECT * FROM {t}")))
        return out

    got = await both(pg, start_proxy, scenario)
    assert got[1] == "InvalidCachedStatementError"


async def test_statement_used_in_a_failed_transaction(
    pg: LocalPostgres, start_proxy: StartProxy
) -> None:
    async def scenario(con: asyncpg.Connection, _o: object, t: str, _d: str) -> Outcome:
        stmt = await prep(con, f"SELECT * FROM {t}")
        out: Outcome = [await attempt(stmt.fetch())]
        await evict(con)
        tr = con.transaction()
        await tr.start()
        out.append(await attempt(con.execute("SELECT 1/0")))
        out.append(await attempt(stmt.fetch()))
        await tr.rollback()
        out.append(await attempt(stmt.fetch()))
        return out

    await both(pg, start_proxy, scenario)


async def test_insert_into_a_recreated_table(pg: LocalPostgres, start_proxy: StartProxy) -> None:
    """asyncpg's test_custom_codec_override_tuple: the same INSERT text after the table is
    dropped and created with another column type."""

    async def scenario(
        con: asyncpg.Connection, other: asyncpg.Connection, t: str, _d: str
    ) -> Outcome:
        out: Outcome = []
        await other.execute(f"INSERT INTO {t}(a) VALUES ($1)", 5)
        await con.execute(f"DROP TABLE {t}; CREATE TABLE {t}(a text, b int)")
        out.append(await attempt(con.execute(f"INSERT INTO {t}(a) VALUES ($1)", "five")))
        out.append(await attempt(con.fetch(f"SELECT a FROM {t}")))
        return out

    await both(pg, start_proxy, scenario)


async def test_column_renamed(pg: LocalPostgres, start_proxy: StartProxy) -> None:
    """PostgreSQL holds a statement to its column names too, not only their types."""

    async def scenario(con: asyncpg.Connection, _o: object, t: str, _d: str) -> Outcome:
        stmt = await prep(con, f"SELECT * FROM {t}")
        out: Outcome = [await attempt(stmt.fetch())]
        await con.execute(f"ALTER TABLE {t} RENAME COLUMN b TO c")
        await evict(con)
        out.append(await attempt(stmt.fetch()))
        return out

    got = await both(pg, start_proxy, scenario)
    assert got[1] == "InvalidCachedStatementError"


async def raw_both(
    pg: LocalPostgres,
    start_proxy: StartProxy,
    scenario: Callable[[RawClient, str], Awaitable[Outcome]],
) -> Outcome:
    """The scenario on a raw protocol connection, directly and through the proxy (one server
    connection holding one statement)."""
    proxy = start_proxy(pool={"default_pool_size": 1, "max_prepared_statements": 1})
    outcomes = []
    for direct in (True, False):
        table = f"ddl_{next(_n)}"
        c = await x.raw_login(pg if direct else proxy)
        try:
            await x.roundtrip(
                c,
                x.parse("", f"CREATE TABLE {table}(a int, b int)"),
                x.bind(""),
                x.execute(),
                x.SYNC,
            )
            outcomes.append(await scenario(c, table))
            await x.roundtrip(
                c, x.parse("", f"DROP TABLE {table}"), x.bind(""), x.execute(), x.SYNC
            )
        finally:
            await c.close()
    assert outcomes[1] == outcomes[0]
    return outcomes[0]


async def run(c: RawClient, *msgs: bytes) -> list[str]:
    return (await x.roundtrip(c, *msgs, x.SYNC)).kinds


async def test_checked_statement_after_an_error_earlier_in_the_batch(
    pg: LocalPostgres, start_proxy: StartProxy
) -> None:
    """The server skips the rest of a batch after an error, the proxy's own Parse and Describe
    of a statement included: the client's message held for that answer must go on (no hang),
    and the next batch is checked again."""

    async def scenario(c: RawClient, t: str) -> Outcome:
        out: Outcome = [await run(c, x.parse("s1", f"SELECT * FROM {t}"), x.describe("S", "s1"))]
        out.append(await run(c, x.parse("", f"ALTER TABLE {t} ALTER COLUMN b TYPE text")))
        out.append(await run(c, x.bind(""), x.execute()))
        out.append(await run(c, x.parse("s2", "SELECT 2")))  # s1 leaves the server connection
        out.append(await run(c, x.parse("bad", "SELEC 1"), x.bind("s1"), x.execute()))
        out.append(await run(c, x.bind("s1"), x.execute()))
        out.append(await run(c, x.describe("S", "s1")))
        out.append(await run(c, x.parse("s1", "SELECT 3")))  # the name is taken still
        out.append(await run(c, x.close("S", "s1")))
        out.append(await run(c, x.parse("s1", f"SELECT * FROM {t}"), x.bind("s1"), x.execute()))
        return out

    got = await raw_both(pg, start_proxy, scenario)
    assert got[4] == ["E:42601", "Z:I"]
    assert got[5] == ["E:0A000", "Z:I"]


async def test_checked_statement_inside_a_transaction(
    pg: LocalPostgres, start_proxy: StartProxy
) -> None:
    """The refused use aborts the client's transaction, as PostgreSQL's own 0A000 does."""

    async def scenario(c: RawClient, t: str) -> Outcome:
        out: Outcome = [await run(c, x.parse("s1", f"SELECT a, b FROM {t}"), x.describe("S", "s1"))]
        out.append(await run(c, x.parse("", f"ALTER TABLE {t} ALTER COLUMN b TYPE bigint")))
        out.append(await run(c, x.bind(""), x.execute()))
        out.append(await run(c, x.parse("s2", "SELECT 2")))
        out.append(await run(c, x.parse("", "BEGIN"), x.bind(""), x.execute()))
        out.append(await run(c, x.bind("s1"), x.execute()))
        out.append(await run(c, x.parse("", "SELECT 1"), x.bind(""), x.execute()))
        out.append(await run(c, x.parse("", "ROLLBACK"), x.bind(""), x.execute()))
        return out

    got = await raw_both(pg, start_proxy, scenario)
    assert got[5] == ["E:0A000", "Z:E"]
    assert got[6] == ["E:25P02", "Z:E"]
