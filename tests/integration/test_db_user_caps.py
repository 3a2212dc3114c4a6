"""pool.max_db_connections and pool.max_user_connections (PgBouncer's): server connections per
database entry and per server user across pools, never exceeded, clients waiting meanwhile.

The bound is checked the way a DBA would: sampling pg_stat_activity over a direct superuser
connection, as fast as it answers, while many clients of several pools run transactions.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg
import psycopg
import pytest

from tests.support.pg import LocalPostgres
from tests.support.proxy import PASSWORDS, ProxyThread, StartProxy
from tests.support.waits import wait_for

CLIENTS_PER_POOL = 6
ROUNDS = 8


async def _sample_until(
    admin: asyncpg.Connection, sql: str, done: asyncio.Future[Any]
) -> list[int]:
    samples = []
    while not done.done():
        samples.append(int(await admin.fetchval(sql)))
    return samples


async def _run_clients(proxy: ProxyThread, targets: list[tuple[str, str]]) -> None:
    """CLIENTS_PER_POOL clients per (user, database), each running ROUNDS short transactions
    that hold their server connection a moment."""

    async def one(user: str, db: str) -> None:
        conn = await asyncpg.connect(proxy.dsn(user, db))
        try:
            for _ in range(ROUNDS):
                async with conn.transaction():
                    await conn.execute("SELECT pg_sleep(0.02)")
        finally:
            await conn.close()

    await asyncio.gather(*(one(u, d) for u, d in targets for _ in range(CLIENTS_PER_POOL)))


async def test_max_db_connections_across_users(
    start_proxy: StartProxy, pg: LocalPostgres, admin: asyncpg.Connection
) -> None:
    cap = 3
    proxy = start_proxy(pool={"default_pool_size": 5, "max_db_connections": cap})
    sql = (
        "SELECT count(*) FROM pg_stat_activity WHERE datname = 'app' "
        "AND usename IN ('alice', 'bob') AND backend_type = 'client backend'"
    )
    work = asyncio.ensure_future(_run_clients(proxy, [("alice", "app"), ("bob", "app")]))
    samples = await _sample_until(admin, sql, work)
    await work  # every client finished every transaction: they waited, none was refused
    assert max(samples) <= cap, max(samples)
    assert max(samples) == cap, "the cap was never reached: the test proves nothing"
    assert len(samples) > 50, len(samples)
    assert sum(proxy.pool_stats("app", u)["total"] for u in ("alice", "bob")) <= cap

    # At the cap, a pool with clients queued takes the longest-idle connection of another
    # pool of the same database (PgBouncer evicts too) rather than waiting for it to expire.
    alice = [await asyncpg.connect(proxy.dsn("alice")) for _ in range(cap)]
    bob = await asyncpg.connect(proxy.dsn("bob"))
    try:
        txs = [c.transaction() for c in alice]
        for c, tx in zip(alice, txs, strict=True):
            await tx.start()
            await c.fetchval("SELECT 1")
        await wait_for(
            lambda: proxy.pool_stats("app", "alice")["total"] == cap,
            what="alice's pool to hold every connection the database may have",
        )
        query = asyncio.ensure_future(bob.fetchval("SELECT 42"))
        await wait_for(lambda: proxy.pool_stats("app", "bob")["waiting"] == 1, what="bob queued")
        assert int(await admin.fetchval(sql)) <= cap
        t0 = time.monotonic()
        await txs[0].commit()  # one of alice's connections goes idle: bob's pool takes it over
        assert await asyncio.wait_for(query, 10) == 42
        assert time.monotonic() - t0 < 5
        assert int(await admin.fetchval(sql)) <= cap
        for tx in txs[1:]:
            await tx.commit()
    finally:
        for c in [*alice, bob]:
            await c.close()


async def test_max_user_connections_across_databases(
    start_proxy: StartProxy, pg: LocalPostgres, admin: asyncpg.Connection
) -> None:
    cap = 2
    # Two database entries for the same server database: two pools of alice, one cap.
    proxy = start_proxy(
        pool={"default_pool_size": 5, "max_user_connections": cap},
        databases=[
            {"name": "app", "host": pg.host, "port": pg.port},
            {"name": "app2", "host": pg.host, "port": pg.port, "dbname": "app"},
        ],
    )
    sql = (
        "SELECT count(*) FROM pg_stat_activity WHERE usename = 'alice' "
        "AND backend_type = 'client backend'"
    )
    work = asyncio.ensure_future(
        _run_clients(proxy, [("alice", "app"), ("alice", "app2"), ("bob", "app")])
    )
    samples = await _sample_until(admin, sql, work)
    await work
    assert max(samples) <= cap, max(samples)
    assert max(samples) == cap, "the cap was never reached: the test proves nothing"
    # Bob's pool is under no cap of alice's.
    assert 1 <= proxy.pool_stats("app", "bob")["total"] <= 5


def _two_entries(pg: LocalPostgres, **app: Any) -> list[dict[str, Any]]:
    return [
        {"name": "app", "host": pg.host, "port": pg.port, **app},
        {"name": "app2", "host": pg.host, "port": pg.port, "dbname": "app"},
    ]


@pytest.mark.parametrize("where", ["pool", "database", "user"])
async def test_queued_past_query_wait_timeout_at_the_cap(
    start_proxy: StartProxy, pg: LocalPostgres, where: str
) -> None:
    """A cap of 1, from [pool] or from the database's or the user's own entry: the second
    pool under it queues, then gets query_wait_timeout naming the cap."""
    pool: dict[str, Any] = {"default_pool_size": 5, "query_wait_timeout_s": 1}
    sections: dict[str, Any] = {"databases": _two_entries(pg)}
    first, second = ("alice", "app"), ("bob", "app")
    cap = "max_db_connections (1) of database app"
    if where == "pool":
        pool["max_db_connections"] = 1
    elif where == "database":
        sections["databases"] = _two_entries(pg, max_db_connections=1)
    else:
        sections["users"] = [
            {"name": "alice", "password": PASSWORDS["alice"], "max_user_connections": 1},
            {"name": "bob", "password": PASSWORDS["bob"]},
        ]
        second = ("alice", "app2")
        cap = "max_user_connections (1) of user alice"
    proxy = start_proxy(pool=pool, **sections)
    holder = await asyncpg.connect(proxy.dsn(*first))
    waiter = await asyncpg.connect(proxy.dsn(*second))
    other = await asyncpg.connect(proxy.dsn("bob", "app2"))
    try:
        tx = holder.transaction()
        await tx.start()
        await holder.fetchval("SELECT 1")
        t0 = time.monotonic()
        try:
            await asyncio.wait_for(waiter.fetchval("SELECT 2"), 10)
            raise AssertionError(f"a server connection past {cap}")
        except asyncpg.PostgresError as exc:
            # FATAL 57014 (asyncpg reports the closed connection; the message is the proxy's).
            assert "query_wait_timeout" in str(exc), exc
            assert f"at {cap}" in str(exc), exc
        assert 0.8 <= time.monotonic() - t0 < 5
        # A pool under no full cap is served meanwhile.
        assert await asyncio.wait_for(other.fetchval("SELECT 3"), 10) == 3
        await tx.commit()
    finally:
        for c in (holder, waiter, other):
            await c.close()


async def test_set_max_db_connections_live(start_proxy: StartProxy) -> None:
    proxy = start_proxy(admin={"admin_users": ["alice"]})
    console = await psycopg.AsyncConnection.connect(
        proxy.dsn("alice", "pgbouncer"), autocommit=True
    )
    a1, a2, b = [await asyncpg.connect(proxy.dsn(u)) for u in ("alice", "alice", "bob")]
    try:
        # Both pools exist, each with an idle server connection, before the cap is set.
        assert await a1.fetchval("SELECT 1") == 1
        assert await b.fetchval("SELECT 1") == 1
        await console.execute("SET pool.max_db_connections = 1")
        tx = a1.transaction()
        await tx.start()
        assert await a1.fetchval("SELECT 1") == 1
        # A second connection for alice would make two busy ones: it waits (bob's idle one
        # alone would not make room).
        second = asyncio.ensure_future(a2.fetchval("SELECT 2"))
        await wait_for(lambda: proxy.pool_stats("app", "alice")["waiting"] == 1, what="a2 to queue")
        assert not second.done()
        await tx.commit()
        assert await asyncio.wait_for(second, 10) == 2
        await console.execute("SET pool.max_db_connections = 0")
        assert proxy.call(lambda: proxy.server.budget) is None  # type: ignore[union-attr]
    finally:
        await console.close()
        for c in (a1, a2, b):
            await c.close()


async def test_evicting_for_another_pool_waits_for_the_server_to_go(
    start_proxy: StartProxy, admin: asyncpg.Connection
) -> None:
    """Cap 1, two users taking turns: every turn closes the other pool's idle connection to
    open one of its own. The new one opens only once PostgreSQL has let the old one go, so
    pg_stat_activity never shows two (closing our socket and opening at once showed 2 in about
    one sample in 4,000)."""
    proxy = start_proxy(pool={"default_pool_size": 5, "max_db_connections": 1})
    sql = (
        "SELECT count(*) FROM pg_stat_activity WHERE datname = 'app' "
        "AND usename IN ('alice', 'bob') AND backend_type = 'client backend'"
    )
    a = await asyncpg.connect(proxy.dsn("alice"))
    b = await asyncpg.connect(proxy.dsn("bob"))

    async def take_turns() -> None:
        for _ in range(100):
            assert await a.fetchval("SELECT 1") == 1
            assert await b.fetchval("SELECT 2") == 2

    try:
        work = asyncio.ensure_future(take_turns())
        samples = await _sample_until(admin, sql, work)
        await work
        evictions = proxy.call(lambda: proxy.server.budget.evictions)  # type: ignore[union-attr]
        assert evictions >= 150, evictions
        assert max(samples) <= 1, (max(samples), sum(1 for s in samples if s > 1))
    finally:
        await a.close()
        await b.close()
