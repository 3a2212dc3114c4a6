"""Robustness-test helpers: backends as PostgreSQL counts them, polling, cancels."""

from __future__ import annotations

import asyncio
from typing import TypeVar

import asyncpg

from pgpool_proxy.protocol import messages as m

from .proxy import ProxyThread
from .rawpg import RawClient
from .waits import eventually

T = TypeVar("T")

COUNT_SQL = (
    "select count(*) from pg_stat_activity "
    "where usename = $1 and datname = 'app' and backend_type = 'client backend'"
)


async def backends(admin: asyncpg.Connection, user: str) -> int:
    return int(await admin.fetchval(COUNT_SQL, user))


async def settle(admin: asyncpg.Connection, user: str, timeout: float = 10) -> None:
    """Wait until no backend of `user` is left over from an earlier test."""
    n, _ = await eventually(lambda: backends(admin, user), lambda n: n == 0, timeout)
    assert n == 0, f"{n} backends of {user} left over"


async def raw_cancel(host: str, port: int, pid: int, secret: int) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(m.cancel_request(pid, secret))
    await writer.drain()
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()


async def one_value(client: RawClient, sql: str) -> str | None:
    rows = await client.simple_query(sql)
    assert len(rows) == 1 and len(rows[0]) == 1, rows
    return rows[0][0]


def client_count(proxy: ProxyThread) -> int:
    return proxy.call(lambda: proxy.server.client_count if proxy.server else -1)


async def proxy_client_count(proxy: ProxyThread, want: int, timeout: float = 5) -> int:
    async def probe() -> int:
        return client_count(proxy)

    n, _ = await eventually(probe, lambda n: n == want, timeout)
    return n
