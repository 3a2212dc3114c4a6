"""`workers = 2`: one scrape shows every worker's series, labelled worker="i", whichever worker
the kernel hands the scrape to; the per-worker series add up to the traffic sent."""

from __future__ import annotations

import asyncio
import os
import signal
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.pg import LocalPostgres
from tests.support.proxy import PASSWORDS
from tests.support.proxyproc import ProxyProcess, start_workers

WORKERS = 2


class Supervised(ProxyProcess):
    metrics_port = 0

    def get(self, path: str, timeout: float = 10) -> tuple[int, str]:
        url = f"http://127.0.0.1:{self.metrics_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()


@pytest.fixture
def supervised(pg: LocalPostgres, tmp_path: Path) -> Iterator[Supervised]:
    proxy = start_workers(
        pg,
        tmp_path,
        WORKERS,
        pool_size=4,
        sections='[metrics]\nlisten = "127.0.0.1:0"\nrequest_timeout_s = 2\n',
        cls=Supervised,
    )
    try:
        (found,) = proxy.wait_for(r"metrics on http://127\.0\.0\.1:(\d+)/metrics for all")
        proxy.metrics_port = int(found.group(1))
        proxy.wait_for(r"\[w\d+\]: .*metrics on http", count=WORKERS)
        yield proxy
    finally:
        proxy.stop(signal.SIGTERM)


def per_worker(body: str, name: str, **labels: str) -> dict[str, float]:
    """worker -> value of the sample `name` with `labels` (plus its worker label)."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            if s.name != name:
                continue
            rest = {k: v for k, v in s.labels.items() if k != "worker"}
            if rest == labels:
                out[s.labels["worker"]] = s.value
    return out


async def test_scrape_sees_every_worker(supervised: Supervised) -> None:
    dsn = f"postgresql://alice:{PASSWORDS['alice']}@127.0.0.1:{supervised.port}/app"
    status, body = supervised.get("/metrics")
    assert status == 200
    logins_before = per_worker(body, "pgpool_proxy_client_logins_total", kind="pool")
    assert set(logins_before) == {"0", "1"}

    # Enough connections that SO_REUSEPORT spreads them over both workers.
    conns = [await asyncpg.connect(dsn, statement_cache_size=0) for _ in range(24)]
    try:
        for conn in conns:
            for _ in range(3):
                await conn.execute("SELECT 1")
        # Every worker answers the same whole picture: ask several times.
        for _ in range(6):
            status, body = supervised.get("/metrics")
            assert status == 200
            up = per_worker(body, "pgpool_proxy_worker_up")
            assert up == {"0": 1.0, "1": 1.0}
            idle = per_worker(body, "pgpool_proxy_client_connections", state="idle")
            assert sum(idle.values()) == 24
            assert set(per_worker(body, "process_resident_memory_bytes")) == {"0", "1"}
    finally:
        await asyncio.gather(*(c.close() for c in conns))

    status, body = supervised.get("/metrics")
    logins = per_worker(body, "pgpool_proxy_client_logins_total", kind="pool")
    gained = {w: logins[w] - logins_before.get(w, 0) for w in logins}
    assert sum(gained.values()) == 24
    assert all(n > 0 for n in gained.values()), f"one worker got no clients: {gained}"
    xacts = per_worker(body, "pgpool_proxy_transactions_total", database="app", user="alice")
    assert sum(xacts.values()) >= 24 * 3
    assert set(xacts) == set(gained)
    assert supervised.get("/readyz") == (200, "ready\n")
    assert supervised.get("/healthz") == (200, "ok\n")


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found.extend(int(x) for x in (task / "children").read_text().split())
    return found


def test_a_stuck_worker_shows_as_down(supervised: Supervised) -> None:
    workers = _children(supervised.proc.pid)
    assert len(workers) == WORKERS
    os.kill(workers[1], signal.SIGSTOP)
    try:
        # The kernel may hand a scrape to the stopped worker (it waits in its backlog): the
        # other one answers the next, saying who is missing.
        answered: tuple[int, str] | None = None
        for _ in range(20):
            try:
                url = f"http://127.0.0.1:{supervised.metrics_port}/metrics"
                with urllib.request.urlopen(url, timeout=3) as resp:
                    answered = resp.status, resp.read().decode()
                    break
            except (TimeoutError, urllib.error.URLError):
                continue
        assert answered is not None and answered[0] == 200
        up = per_worker(answered[1], "pgpool_proxy_worker_up")
        assert sorted(up.values()) == [0.0, 1.0]
        silent = next(w for w, v in up.items() if v == 0)
        logins = per_worker(answered[1], "pgpool_proxy_client_logins_total", kind="pool")
        assert silent not in logins
        status, body = 0, ""
        for _ in range(20):
            try:
                status, body = supervised.get("/readyz", timeout=3)
                break
            except (TimeoutError, urllib.error.URLError):
                continue
        assert status == 503 and body == f"worker {silent} is not answering\n"
    finally:
        os.kill(workers[1], signal.SIGCONT)
    assert supervised.get("/readyz") == (200, "ready\n")
