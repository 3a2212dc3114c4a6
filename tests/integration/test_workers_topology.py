"""`workers = 4` against a primary and a replica: only worker 0 probes (one monitoring connection
per host, counted on the PostgreSQL side), every worker follows its view through a failover,
and the others probe by themselves while worker 0 is away."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from pgpool_proxy.pool.monitor import PROBE_SQL
from tests.support.cluster import DBNAME, PASSWORD, USER, ReplicatedCluster
from tests.support.pg import LocalPostgres, quote_literal
from tests.support.proxyproc import ProxyProcess
from tests.support.waits import wait_for

pytestmark = pytest.mark.slow

WORKERS = 4
POLL_S = 0.5


@pytest.fixture
def cluster() -> Iterator[ReplicatedCluster]:
    with ReplicatedCluster(replicas=1) as c:
        yield c


@pytest.fixture
def workers(cluster: ReplicatedCluster, tmp_path: Path) -> Iterator[ProxyProcess]:
    hosts = ", ".join(f'"{h}"' for h in cluster.hosts())
    cfg = tmp_path / "proxy.toml"
    cfg.write_text(
        f"""
[proxy]
listen = "127.0.0.1:0"
workers = {WORKERS}

[pool]
default_pool_size = 2
query_wait_timeout_s = 30

[auth]
type = "md5"

[topology]
poll_interval_s = {POLL_S}
fast_poll_interval_s = 0.1

[[databases]]
name = "{DBNAME}"
hosts = [{hosts}]
user = "{USER}"
password = "{PASSWORD}"

[[users]]
name = "{USER}"
password = "{PASSWORD}"
"""
    )
    proc = ProxyProcess(cfg, 0, tmp_path / "proxy.log")
    try:
        (found,) = proc.wait_for(r"listening on 127\.0\.0\.1:(\d+) with")
        proc.port = int(found.group(1))
        proc.wait_for(r"\[w\d+\]: .*listening on", count=WORKERS)
        yield proc
    finally:
        proc.stop(signal.SIGTERM)


def monitoring_connections(server: LocalPostgres) -> int:
    """Sessions whose last statement is the monitor's probe: one per probing process."""
    return int(
        server.psql(
            f"SELECT count(*) FROM pg_stat_activity WHERE query = {quote_literal(PROBE_SQL)}"
        )
    )


def log_probes(server: LocalPostgres) -> None:
    """Log every statement, so the probes a server receives can be counted in its log."""
    server.psql("ALTER SYSTEM SET log_statement = 'all'")
    server.psql("SELECT pg_reload_conf()")


def probes_per_interval(server: LocalPostgres, window_s: float = 5.0) -> float:
    """Probes a host received per poll interval over `window_s`, from its statement log."""
    with open(server.log_file, "rb") as f:
        f.seek(0, 2)
        started = time.monotonic()
        while time.monotonic() < started + window_s:
            time.sleep(0.1)  # a measuring window, not a wait for a condition
        text = f.read().decode(errors="replace")
        elapsed = time.monotonic() - started
    return text.count("statement: SELECT pg_is_in_recovery()") / (elapsed / POLL_S)


async def served_by(port: int, n: int = 40) -> dict[int, str]:
    """worker -> the server address its connections reached (writes on the writer)."""
    dsn = f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{port}/{DBNAME}"

    async def one() -> tuple[int, str]:
        conn = await asyncpg.connect(dsn, statement_cache_size=0, timeout=30)
        try:
            port_ = await conn.fetchval("SELECT inet_server_port()")
            return conn.get_server_pid() >> 24, str(port_)
        finally:
            await conn.close()

    return dict(await asyncio.gather(*(one() for _ in range(n))))


async def test_one_prober_per_host_and_every_worker_follows_a_failover(
    cluster: ReplicatedCluster, workers: ProxyProcess
) -> None:
    primary, replica = cluster.primary, cluster.replicas[0]
    for server in (primary, replica):
        log_probes(server)
        await wait_for(
            lambda s=server: monitoring_connections(s) == 1,  # type: ignore[misc]
            what=f"one monitoring connection on {server.port}",
        )
    rates = [await asyncio.to_thread(probes_per_interval, s) for s in (primary, replica)]
    print(f"probes per host per poll interval (primary, replica): {rates}")
    assert all(0.7 <= r <= 1.3 for r in rates), rates
    assert all(monitoring_connections(s) == 1 for s in (primary, replica))

    served = await served_by(workers.port)
    assert served == {w: str(primary.port) for w in range(WORKERS)}
    # Failover: every worker learns the new writer from worker 0's probes.
    await asyncio.to_thread(primary.stop, "immediate")
    await asyncio.to_thread(replica.promote)

    async def all_on_new_writer() -> bool:
        got = await served_by(workers.port)
        return got == {w: str(replica.port) for w in range(WORKERS)}

    await wait_for(all_on_new_writer, timeout=30, what="every worker writing to the promoted one")
    assert monitoring_connections(replica) == 1


async def test_workers_probe_by_themselves_while_worker_0_is_away(
    cluster: ReplicatedCluster, workers: ProxyProcess
) -> None:
    primary = cluster.primary
    await wait_for(lambda: monitoring_connections(primary) == 1, what="worker 0 probing")
    # SIGSTOP: worker 0 neither answers nor dies, so the supervisor does not restart it.
    pid = _caller_pid(workers)
    os.kill(pid, signal.SIGSTOP)
    try:
        workers.wait_for(r"probing the servers from this worker", count=WORKERS - 1)
        # Worker 0's stopped connection stays open beside its siblings' own.
        await wait_for(
            lambda: monitoring_connections(primary) == WORKERS, what="the siblings probing"
        )
    finally:
        os.kill(pid, signal.SIGCONT)
    workers.wait_for(r"following worker 0's topology probes again", count=WORKERS - 1)
    await wait_for(lambda: monitoring_connections(primary) == 1, what="worker 0 alone again")
    served = await served_by(workers.port)
    assert served == {w: str(primary.port) for w in range(WORKERS)}


def _caller_pid(workers: ProxyProcess) -> int:
    """The worker listening on the AWS caller's socket (aws.sock): worker 0."""
    inodes = set()
    for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 8 and fields[7].endswith("/aws.sock") and fields[3] == "00010000":
            inodes.add(fields[6])
    children: set[int] = set()
    for task in Path(f"/proc/{workers.proc.pid}/task").iterdir():
        children.update(int(x) for x in (task / "children").read_text().split())
    for child in children:
        for fd in Path(f"/proc/{child}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in inodes:
                return child
    raise AssertionError("no worker listens on aws.sock")
