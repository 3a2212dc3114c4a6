"""A server error in the middle of a long pipelined write reaches the client while it is still
writing (asyncpg's test_executemany_server_failure_during_writes), directly and through the
proxy: the proxy relays the server's ErrorResponse as it comes, not once the client has stopped
sending.

PostgreSQL flushes an ErrorResponse at once and skips the rest of the batch up to its Sync, so a
driver that reads while it writes (asyncpg's executemany) stops early. How early depends on the
socket buffers in between: a proxy adds a hop, so the client gets further, but it must still stop
long before the end of a batch far larger than those buffers.
"""

from __future__ import annotations

from collections.abc import Iterator

import asyncpg
import pytest

from tests.support.pg import LocalPostgres
from tests.support.proxy import PASSWORDS, StartProxy

pytestmark = pytest.mark.timeout(120)

ROWS = 1024  # of 32 KB: 32 MB, more than the socket buffers on both hops hold
ROW = "a" * 32768


async def rows_written(dsn: str) -> tuple[int, str, int]:
    """How many rows executemany generated before the server's error stopped it, the error,
    and the rows left in the table."""
    con = await asyncpg.connect(dsn)
    try:
        await con.execute(
            "DROP TABLE IF EXISTS early_error; CREATE TABLE early_error (a text, b int PRIMARY KEY)"
        )
        pos = 0

        def gen() -> Iterator[tuple[str, int]]:
            nonlocal pos
            while pos < ROWS:
                pos += 1
                yield ("a", 0) if pos < 3 else (ROW, pos)  # the second row violates the key

        with pytest.raises(asyncpg.UniqueViolationError) as err:
            await con.executemany("INSERT INTO early_error VALUES ($1, $2)", gen())
        left = await con.fetchval("SELECT count(*) FROM early_error")
        await con.execute("DROP TABLE early_error")
        return pos, type(err.value).__name__, left
    finally:
        await con.close()


async def test_error_reaches_the_client_while_it_writes(
    pg: LocalPostgres, start_proxy: StartProxy
) -> None:
    proxy = start_proxy(pool={"default_pool_size": 2})
    direct = await rows_written(pg.dsn(user="alice", password=PASSWORDS["alice"], dbname="app"))
    proxied = await rows_written(proxy.dsn())
    assert direct[1:] == proxied[1:] == ("UniqueViolationError", 0)
    assert direct[0] < ROWS, direct
    assert proxied[0] < ROWS, f"through the proxy the client wrote all {ROWS} rows: {proxied}"
