"""SQL texts built to be slow to scan cost the proxy linear time and nobody else any latency
(issue 17, item 1: an indented query froze every client of the proxy).

Each text goes once directly to PostgreSQL and once through the proxy: the answers (rows or the
error's SQLSTATE) must be the same. While the proxy relays it, another client pings through the
same proxy; its worst round trip must stay close to its idle one.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

import asyncpg
import pytest

from tests.support.pg import LocalPostgres
from tests.support.proxy import PASSWORDS, StartProxy
from tests.support.waits import wait_for

pytestmark = pytest.mark.timeout(240)

MB = 1024 * 1024

TEXTS = {
    "indented": "\n" + " " * 40 + "SELECT 1",
    "megabytes-of-spaces": "\n" + " " * (4 * MB) + "SELECT 1",
    "blank-lines-between": ";\n\n\n".join(["SELECT 1"] * 20_000),
    "semicolon-comment": ";/*" * 200_000,
    # PostgreSQL's own lexer is quadratic in comment nesting: 30,000 levels cost it 15 s.
    "nested-unclosed-comments": "SELECT 1 /*" + "/*" * 3_000,
    "line-comments": "-- x\r" * 200_000 + "SELECT 1",
    "semicolons": "SELECT 1" + ";" * (2 * MB),
    "parentheses": "SELECT " + "(" * 5_000 + "1" + ")" * 5_000,
    "calls": "SELECT " + "lower(" * 2_000 + "'x'" + ")" * 2_000,
    "quotes": "SELECT '" + "''" * MB + "'",
    "dollar-quotes": "SELECT $a$" + "$b$" * 300_000 + "$a$",
    "identifiers": "SELECT 1 AS " + '"' + "x" * 60 + '"' + ", 2" * 100_000,
    "set-storm": "SET application_name = 'a'; " * 500 + "SELECT 1",
    "set-storm-long": "SET application_name = 'a'; " * 20_000 + "SELECT 1",
}


async def answer(dsn: str, sql: str) -> tuple[str, Any]:
    conn = await asyncpg.connect(dsn, statement_cache_size=0, command_timeout=120)
    try:
        try:
            status = await conn.execute(sql)
        except asyncpg.PostgresError as exc:
            return "error", exc.sqlstate
        return "ok", status
    finally:
        await conn.close()


async def pings(dsn: str, stop: asyncio.Event, out: list[float]) -> None:
    conn = await asyncpg.connect(dsn, statement_cache_size=0)
    try:
        while not stop.is_set():
            t0 = time.perf_counter()
            await conn.fetchval("SELECT 1")
            out.append(time.perf_counter() - t0)
    finally:
        await conn.close()


@pytest.mark.parametrize("sql", TEXTS.values(), ids=TEXTS.keys())
async def test_hostile_text_same_answer_and_no_stall(
    pg: LocalPostgres, start_proxy: StartProxy, sql: str
) -> None:
    direct = pg.dsn(user="alice", password=PASSWORDS["alice"], dbname="app")
    proxy = start_proxy(pool={"default_pool_size": 3})
    expected = await answer(direct, sql)

    idle: list[float] = []
    stop = asyncio.Event()
    pinger = asyncio.ensure_future(pings(proxy.dsn(), stop, idle))
    await wait_for(lambda: len(idle) >= 50, what="50 idle pings")
    baseline = statistics.median(idle)
    during: list[float] = []
    stop.set()
    await pinger

    stop = asyncio.Event()
    pinger = asyncio.ensure_future(pings(proxy.dsn(), stop, during))
    got = await answer(proxy.dsn(), sql)
    stop.set()
    await pinger

    assert got == expected
    assert during, "the pinging client got no answer while the text was relayed"
    # The server and the kernel work on the big text too (2 cores): allow generous slack, but
    # a stall of the proxy's loop (seconds, before the fix) fails.
    assert max(during) < max(20 * baseline, 1.0), (baseline, max(during))
