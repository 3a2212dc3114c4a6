"""`workers = N`: several processes on one port, cancel requests relayed to the right one."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from pgpool_proxy.protocol import messages as m
from tests.support.pg import LocalPostgres
from tests.support.proxy import PASSWORDS
from tests.support.proxyproc import ProxyProcess, start_workers
from tests.support.rawpg import RawClient
from tests.support.waits import wait_for

WORKERS = 2


def _children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found.update(int(x) for x in text)
    return found


@pytest.fixture
def supervised(pg: LocalPostgres, tmp_path: Path) -> Iterator[ProxyProcess]:
    proxy = start_workers(pg, tmp_path, WORKERS, pool_size=8)
    try:
        yield proxy
    finally:
        proxy.stop(signal.SIGTERM)


async def _query(port: int, sql: str) -> list[list[str | None]]:
    c = await RawClient.connect("127.0.0.1", port)
    try:
        await c.login("alice", PASSWORDS["alice"], "app")
        return await c.simple_query(sql)
    finally:
        await c.close()


async def test_cancels_reach_the_worker_that_owns_the_client(
    supervised: ProxyProcess, admin: asyncpg.Connection
) -> None:
    port = supervised.port
    clients = [await RawClient.connect("127.0.0.1", port) for _ in range(12)]
    try:
        for c in clients:
            await c.login("alice", PASSWORDS["alice"], "app")
        # Keys carry the worker number in their top bits: both workers issued some.
        assert len({c.pid >> 24 for c in clients}) == WORKERS
        # pool_size 8 per worker: all 8 run at once, however the kernel spread the clients.
        for c in clients[:8]:
            c.send(m.query("select pg_sleep(20) /* workers-cancel */"))

        async def all_running() -> bool:
            n = await admin.fetchval(
                "select count(*) from pg_stat_activity where state = 'active' "
                "and query like '%workers-cancel%' and pid <> pg_backend_pid()"
            )
            return bool(n == 8)

        await wait_for(all_running, what="8 queries running on the server")
        # Each cancel is a new connection the kernel may hand to either worker.
        await asyncio.gather(*(c.cancel("127.0.0.1", port) for c in clients[:8]))
        # 57014 and no query timeout configured: cancelled, not run out (20 s).
        codes = [(await c.read_error(15))["C"] for c in clients[:8]]
        assert codes == ["57014"] * 8
        for c in clients[:8]:
            await c.read_until_ready()
        for c in clients:
            assert await c.simple_query("select 1") == [["1"]]
    finally:
        for c in clients:
            await c.close()


async def test_workers_share_the_port_and_survive_a_crash(supervised: ProxyProcess) -> None:
    port = supervised.port
    pids = {int(row[0]) for _ in range(20) for row in await _query(port, "select pg_backend_pid()")}
    assert pids  # served
    workers = _children(supervised.proc.pid)
    assert len(workers) == WORKERS
    victim = sorted(workers)[0]
    os.kill(victim, signal.SIGKILL)

    def restarted() -> bool:
        now = _children(supervised.proc.pid)
        return len(now) == WORKERS and victim not in now

    await wait_for(restarted, what="the supervisor to restart the worker")
    # The new worker listens too (the others' lines are in the log already).
    await asyncio.to_thread(supervised.wait_for, r"\[w\d+\]: .*listening on", WORKERS + 1)
    for _ in range(20):
        assert await _query(port, "select 42") == [["42"]]


def test_sigterm_stops_every_worker(supervised: ProxyProcess) -> None:
    workers = _children(supervised.proc.pid)
    supervised.proc.send_signal(signal.SIGTERM)
    assert supervised.proc.wait(20) == 0
    for pid in workers:
        assert (
            not Path(f"/proc/{pid}").exists()
            or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
        )
