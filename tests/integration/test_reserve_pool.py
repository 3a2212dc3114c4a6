"""pool.reserve_pool_size / reserve_pool_timeout_s (PgBouncer's reserve pool): the extra server
connections a pool opens only once a client has waited, sampled in pg_stat_activity."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import asyncpg

from tests.support.pg import LocalPostgres
from tests.support.proxy import ProxyThread, StartProxy
from tests.support.waits import wait_for

_COUNT = (
    "SELECT count(*) FROM pg_stat_activity WHERE usename = 'alice' "
    "AND backend_type = 'client backend' AND application_name = ''"
)


class Sampler:
    """The most server connections of the pool pg_stat_activity showed, sampled all along."""

    def __init__(self, admin: asyncpg.Connection) -> None:
        self.admin = admin
        self.max = 0
        self.samples = 0

    async def run(self) -> None:
        while True:
            self.max = max(self.max, int(await self.admin.fetchval(_COUNT)))
            self.samples += 1
            await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def sampling(pg: LocalPostgres) -> AsyncIterator[Sampler]:
    admin = await asyncpg.connect(pg.dsn())
    sampler = Sampler(admin)
    task = asyncio.create_task(sampler.run())
    try:
        yield sampler
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await admin.close()


def _oldest_wait(proxy: ProxyThread) -> float:
    def read() -> float:
        assert proxy.server is not None
        pool = proxy.server.pools[("app", "alice")]
        live = [c.wait_since for c in pool.waiters if c.is_waiting()]
        return pool.loop.time() - min(live) if live else 0.0

    return proxy.call(read)


async def _busy(proxy: ProxyThread, n: int) -> list[asyncpg.Connection]:
    """n clients each holding a server connection in an open transaction."""
    conns = [await asyncpg.connect(proxy.dsn()) for _ in range(n)]
    for c in conns:
        await c.execute("BEGIN")
        await c.fetchval("SELECT 1")
    return conns


async def test_reserve_opens_after_the_timeout_and_never_beyond(
    start_proxy: StartProxy, pg: LocalPostgres
) -> None:
    timeout = 1.0
    proxy = start_proxy(
        pool={"default_pool_size": 2, "reserve_pool_size": 1, "reserve_pool_timeout_s": timeout}
    )
    async with sampling(pg) as sampler:
        held = await _busy(proxy, 2)
        assert proxy.pool_stats()["total"] == 2
        late = [await asyncpg.connect(proxy.dsn()) for _ in range(3)]
        t0 = time.monotonic()
        first = asyncio.create_task(late[0].fetchval("SELECT 'reserve'"))
        await wait_for(lambda: proxy.pool_stats().get("waiting") == 1, what="a queued client")
        # Served from the reserve, and not before it waited reserve_pool_timeout_s.
        assert await asyncio.wait_for(first, 10) == "reserve"
        assert time.monotonic() - t0 >= timeout
        assert proxy.pool_stats()["total"] == 3
        # The reserve is used up: with all three busy, more waiters get no fourth connection,
        # however long they wait.
        await late[0].execute("BEGIN")
        await late[0].fetchval("SELECT 1")
        more = [asyncio.create_task(c.fetchval("SELECT 'queued'")) for c in late[1:]]
        await wait_for(lambda: proxy.pool_stats().get("waiting") == 2, what="two queued clients")
        await wait_for(
            lambda: _oldest_wait(proxy) >= timeout + 1.0, what="waiters past the reserve timeout"
        )
        assert not any(t.done() for t in more)
        assert proxy.pool_stats()["total"] == 3
        assert sampler.max == 3 and sampler.samples > 10
        # A transaction ends: its connection serves the queue.
        for c in [*held, late[0]]:
            await c.execute("COMMIT")
        assert await asyncio.gather(*more) == ["queued", "queued"]
        assert sampler.max == 3
        for c in [*held, *late]:
            await c.close()


async def test_no_reserve_before_the_timeout(start_proxy: StartProxy, pg: LocalPostgres) -> None:
    proxy = start_proxy(
        pool={"default_pool_size": 2, "reserve_pool_size": 3, "reserve_pool_timeout_s": 30}
    )
    async with sampling(pg) as sampler:
        held = await _busy(proxy, 2)
        c = await asyncpg.connect(proxy.dsn())
        query = asyncio.create_task(c.fetchval("SELECT 'after commit'"))
        await wait_for(lambda: proxy.pool_stats().get("waiting") == 1, what="a queued client")
        # Several janitor rounds (0.25 s apart) pass: still no connection beyond the size.
        await wait_for(lambda: _oldest_wait(proxy) >= 1.0, what="a second of waiting")
        assert not query.done() and proxy.pool_stats()["total"] == 2
        await held[0].execute("COMMIT")
        assert await asyncio.wait_for(query, 10) == "after commit"
        assert sampler.max == 2
        for conn in [*held, c]:
            await conn.close()


async def test_reserve_is_bounded_by_max_server_connections(
    start_proxy: StartProxy, pg: LocalPostgres
) -> None:
    proxy = start_proxy(
        pool={
            "default_pool_size": 2,
            "reserve_pool_size": 2,
            "reserve_pool_timeout_s": 0.2,
            "max_server_connections": 2,
        }
    )
    async with sampling(pg) as sampler:
        held = await _busy(proxy, 2)
        c = await asyncpg.connect(proxy.dsn())
        query = asyncio.create_task(c.fetchval("SELECT 'capped'"))
        await wait_for(lambda: proxy.pool_stats().get("waiting") == 1, what="a queued client")
        await wait_for(lambda: _oldest_wait(proxy) >= 1.2, what="waiting well past the timeout")
        assert not query.done() and proxy.pool_stats()["total"] == 2
        await held[1].execute("COMMIT")
        assert await asyncio.wait_for(query, 10) == "capped"
        assert sampler.max == 2
        for conn in [*held, c]:
            await conn.close()
