"""Type cache invalidation through the proxy (issue 13, item 6), compared with PostgreSQL itself:
the sequences of asyncpg's own test_type_cache_invalidation_* tests (a composite type altered
inside and after transactions, with asyncpg's statement cache on), and a statement after a
server-side interruption of a script. Each runs directly and through the proxy in transaction
mode with a pool shared with another client; the outcomes (rows, or the exception class) must be
equal.
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable

import asyncpg
import pytest

from tests.support.pg import LocalPostgres
from tests.support.proxy import PASSWORDS, StartProxy

pytestmark = pytest.mark.timeout(60)

Outcome = list[object]
_n = itertools.count()


async def attempt(coro: Awaitable[object]) -> object:
    try:
        value = await coro
    except (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.OutdatedSchemaCacheError) as exc:
        return type(exc).__name__
    if isinstance(value, list):
        return [tuple(r) for r in value]
    if isinstance(value, asyncpg.Record):
        return tuple(value)
    return value


async def both(
    pg: LocalPostgres,
    start_proxy: StartProxy,
    scenario: Callable[[asyncpg.Connection, asyncpg.Connection, str], Awaitable[Outcome]],
) -> None:
    proxy = start_proxy(pool={"default_pool_size": 2, "query_wait_timeout_s": 20})
    direct = pg.dsn(user="alice", password=PASSWORDS["alice"], dbname="app")
    outcomes = []
    for dsn in (direct, proxy.dsn()):
        suffix = f"t{next(_n)}"
        con = await asyncpg.connect(dsn)
        other = await asyncpg.connect(dsn)
        try:
            outcomes.append(await scenario(con, other, suffix))
        finally:
            await con.execute(
                f"DROP TABLE IF EXISTS tab_{suffix}; DROP TYPE IF EXISTS typ_{suffix} CASCADE"
            )
            await con.close()
            await other.close()
    assert outcomes[1] == outcomes[0]


async def composite_table(con: asyncpg.Connection, s: str) -> object:
    """A table with a column of a composite type, one row, read once (asyncpg caches the
    type's codec and the statement)."""
    await con.execute(f"CREATE TYPE typ_{s} AS (x int, y int)")
    await con.execute(f"CREATE TABLE tab_{s}(a int, b typ_{s})")
    await con.execute(f"INSERT INTO tab_{s} VALUES (1, (2, 3))")
    return await attempt(con.fetchrow(f"SELECT * FROM tab_{s}"))


async def test_type_cache_invalidation_in_transaction(
    pg: LocalPostgres, start_proxy: StartProxy
) -> None:
    async def scenario(con: asyncpg.Connection, other: asyncpg.Connection, s: str) -> Outcome:
        out: Outcome = []
        out.append(await composite_table(con, s))
        async with con.transaction():
            await con.execute(f"ALTER TYPE typ_{s} ADD ATTRIBUTE c text")
            out.append(await attempt(con.fetchrow(f"SELECT * FROM tab_{s}")))
            out.append(await attempt(con.fetchrow(f"SELECT * FROM tab_{s}")))
            await con.execute(f"UPDATE tab_{s} SET b = (2, 3, 'x')")
            out.append(await attempt(con.fetchrow(f"SELECT * FROM tab_{s}")))
        out.append(await attempt(other.fetchrow(f"SELECT * FROM tab_{s}")))
        out.append(await attempt(con.fetchrow(f"SELECT * FROM tab_{s}")))
        return out

    await both(pg, start_proxy, scenario)


async def test_type_cache_invalidation_in_cancelled_transaction(
    pg: LocalPostgres, start_proxy: StartProxy
) -> None:
    async def scenario(con: asyncpg.Connection, other: asyncpg.Connection, s: str) -> Outcome:
        out: Outcome = []
        out.append(await composite_table(con, s))
        try:
            async with con.transaction():
                await con.execute(f"ALTER TYPE typ_{s} ADD ATTRIBUTE c text")
                out.append(await attempt(con.fetchrow(f"SELECT * FROM tab_{s}")))
                out.append(await attempt(con.fetchrow(f"SELECT * FROM tab_{s}")))
                raise ZeroDivisionError
        except ZeroDivisionError:
            pass
        out.append(await attempt(con.fetchrow(f"SELECT * FROM tab_{s}")))
        out.append(await attempt(other.fetchrow(f"SELECT * FROM tab_{s}")))
        return out

    await both(pg, start_proxy, scenario)


async def test_type_cache_invalidation_on_change_attr(
    pg: LocalPostgres, start_proxy: StartProxy
) -> None:
    async def scenario(con: asyncpg.Connection, other: asyncpg.Connection, s: str) -> Outcome:
        out: Outcome = []
        out.append(await composite_table(con, s))
        out.append(await attempt(other.fetchrow(f"SELECT * FROM tab_{s}")))
        await con.execute(f"ALTER TYPE typ_{s} DROP ATTRIBUTE y")
        await con.execute(f"ALTER TYPE typ_{s} ADD ATTRIBUTE y bigint")
        for c in (con, other, con, other):
            out.append(await attempt(c.fetchrow(f"SELECT * FROM tab_{s}")))
        return out

    await both(pg, start_proxy, scenario)


async def test_statement_after_a_script_interrupted_by_the_server(
    pg: LocalPostgres, start_proxy: StartProxy
) -> None:
    """A multi-statement script cancelled by statement_timeout half-way, then ordinary use."""

    async def scenario(con: asyncpg.Connection, other: asyncpg.Connection, s: str) -> Outcome:
        out: Outcome = []
        await con.execute(f"CREATE TABLE tab_{s}(a int)")
        await con.execute("SET statement_timeout = 200")
        out.append(
            await attempt(
                con.execute(
                    f"INSERT INTO tab_{s} VALUES (1); SELECT pg_sleep(5); "
                    f"INSERT INTO tab_{s} VALUES (2)"
                )
            )
        )
        await con.execute("SET statement_timeout = 0")
        out.append(await attempt(con.fetch(f"SELECT a FROM tab_{s} ORDER BY a")))
        out.append(await attempt(other.fetch(f"SELECT a FROM tab_{s} ORDER BY a")))
        out.append(await attempt(con.fetchval("SELECT $1::int + 1", 41)))
        return out

    await both(pg, start_proxy, scenario)
