"""pool.max_server_connections: one proxy's cap on server connections across all its pools."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import asyncpg

from tests.support.pg import LocalPostgres
from tests.support.proxy import ProxyThread
from tests.support.waits import wait_for


async def _server_conns(admin: asyncpg.Connection) -> int:
    return int(
        await admin.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE usename IN ('alice', 'bob') "
            "AND backend_type = 'client backend' AND application_name = ''"
        )
    )


async def test_cap_across_pools_waits_then_evicts_idle(
    start_proxy: Callable[..., ProxyThread], pg: LocalPostgres
) -> None:
    proxy = start_proxy(pool={"default_pool_size": 5, "max_server_connections": 3})
    admin = await asyncpg.connect(pg.dsn())
    try:
        alice = [await asyncpg.connect(proxy.dsn("alice")) for _ in range(3)]
        for c in alice:
            await c.execute("BEGIN")
            await c.fetchval("SELECT 1")
        assert proxy.pool_stats("app", "alice")["total"] == 3
        bob = await asyncpg.connect(proxy.dsn("bob"))
        # Every allowed connection is in a transaction: bob's query waits in the queue.
        query = asyncio.create_task(bob.fetchval("SELECT 42"))
        await wait_for(
            lambda: proxy.pool_stats("app", "bob").get("waiting") == 1, what="bob's query to queue"
        )
        assert not query.done()
        assert await _server_conns(admin) <= 3
        # alice ends one transaction: her connection goes idle and bob's pool takes its place.
        await alice[0].execute("COMMIT")
        assert await asyncio.wait_for(query, 10) == 42
        assert proxy.pool_stats("app", "alice")["total"] == 2
        assert proxy.pool_stats("app", "bob")["total"] == 1
        assert await _server_conns(admin) <= 3
        for c in alice[1:]:
            await c.execute("COMMIT")
        # Idle connections of one pool make room for another at once.
        assert await asyncio.wait_for(bob.fetchval("SELECT 1"), 5) == 1
        for c in [*alice, bob]:
            await c.close()
    finally:
        await admin.close()
