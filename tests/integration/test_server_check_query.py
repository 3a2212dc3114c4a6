"""pool.server_check_query: the idle check runs the operator's query instead of the empty one."""

from __future__ import annotations

import asyncpg

from pgpool_proxy.errors import DisconnectReason
from tests.support.proxy import StartProxy
from tests.support.waits import wait_for

_POOLED = (
    "SELECT pid, query FROM pg_stat_activity WHERE usename = 'alice' "
    "AND backend_type = 'client backend' AND application_name = ''"
)


async def test_idle_check_runs_the_configured_query(
    start_proxy: StartProxy, admin: asyncpg.Connection
) -> None:
    check = "SELECT 1 AS pgpool_idle_check"
    proxy = start_proxy(
        pool={
            "default_pool_size": 1,
            "min_pool_size": 1,
            "server_check_delay_s": 0.2,
            "server_check_query": check,
        }
    )
    c = await asyncpg.connect(proxy.dsn())
    try:
        assert await c.fetchval("SELECT 'before'") == "before"

        # PostgreSQL shows the last statement of the idle server connection: the check.
        async def checked() -> list[asyncpg.Record]:
            rows = await admin.fetch(_POOLED)
            return [r for r in rows if r["query"] == check]

        rows = await wait_for(checked, what="the check query on the pooled server connection")
        pid = rows[0]["pid"]

        # Passing checks keep the connection: a later round finds the same server process.
        def rounds() -> bool:
            assert proxy.server is not None
            pool = proxy.server.pools[("app", "alice")]
            return all(b.checked_at - b.created_at >= 0.4 for b in pool.backends)

        await wait_for(lambda: proxy.call(rounds), what="two rounds of checks")
        assert {r["pid"] for r in await admin.fetch(_POOLED)} == {pid}
        assert await c.fetchval("SELECT 'after'") == "after"
    finally:
        await c.close()


async def test_failing_check_query_replaces_the_connection(
    start_proxy: StartProxy, admin: asyncpg.Connection
) -> None:
    proxy = start_proxy(
        pool={
            "default_pool_size": 1,
            "min_pool_size": 1,
            "server_check_delay_s": 0.2,
            # Fails on every server: each check closes the connection it ran on.
            "server_check_query": "SELECT 1/0",
        }
    )
    c = await asyncpg.connect(proxy.dsn())
    try:
        assert await c.fetchval("SELECT 1") == 1
        first = {r["pid"] for r in await admin.fetch(_POOLED)}
        assert len(first) == 1

        def failed() -> int:
            assert proxy.server is not None
            return proxy.server.pools[("app", "alice")].server_disconnects[
                DisconnectReason.SERVER_SILENT
            ]

        await wait_for(lambda: proxy.call(failed) >= 1, what="a failed check to close a server")

        async def replaced() -> bool:
            pids = {r["pid"] for r in await admin.fetch(_POOLED)}
            return len(pids) == 1 and not pids & first

        # min_pool_size refills it, and the client is served by the new one.
        await wait_for(replaced, what="the failed connection to be replaced")
        assert await c.fetchval("SELECT 2") == 2
    finally:
        await c.close()
