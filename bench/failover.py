"""`python -m bench.failover`: how fast writes come back through the proxy after a failover.

Each run builds a primary and a synchronous streaming replica (real PostgreSQL), starts the
proxy as its own process in front of both, keeps clients inserting rows, crashes the primary
(`pg_ctl stop -m immediate`), promotes the replica after --promote-after seconds and measures:

- kill -> first write: from the moment the primary is dead to the first COMMIT a client saw;
- promotion -> first write: from `pg_ctl promote` returning (the replica accepts writes) to the
  first COMMIT through the proxy;
- whether idle clients kept their connections and every COMMIT a client saw is on the new writer.

Targets (issue 6): median promotion -> write <= 1 s; worst kill -> write <= 10 s when the
promotion comes within 5 s. Results: a table on stdout and bench/results/failover.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import asyncpg

from pgpool_devkit.pgserver import ReplicatedCluster

from .targets import Database, ProxyTarget

RESULTS = Path(__file__).parent / "results" / "failover.json"
USER, PASSWORD, DBNAME = "alice", "alice-pw", "app"


@dataclass
class RunResult:
    run: int
    kill_to_write_s: float | None
    promote_to_write_s: float | None
    promote_cmd_s: float
    commits: int
    errors: int
    lost_commits: int
    idle_kept: int
    idle_total: int


class FailoverProxy(ProxyTarget):
    """The benchmark's proxy process, in front of every server of the cluster."""

    def __init__(self, cluster: ReplicatedCluster, poll_s: float, fast_poll_s: float) -> None:
        db = Database(cluster.primary, 0, name=DBNAME, user=USER, password=PASSWORD)
        topology = {"poll_interval_s": poll_s, "fast_poll_interval_s": fast_poll_s}
        super().__init__(db, pool_size=8, extra={"topology": topology})
        self.hosts = cluster.hosts()

    def server_lines(self) -> list[str]:
        hosts = ", ".join(f'"{h}"' for h in self.hosts)
        return [f"hosts = [{hosts}]", f'user = "{USER}"', f'password = "{PASSWORD}"']


async def _one_run(
    index: int, cluster: ReplicatedCluster, dsn: str, clients: int, promote_after: float
) -> RunResult:
    committed: list[tuple[int, float]] = []
    errors = 0
    counter = 0
    stop = False

    async def writer(k: int) -> None:
        nonlocal counter, errors
        conn: asyncpg.Connection | None = None
        while not stop:
            try:
                if conn is None or conn.is_closed():
                    conn = await asyncpg.connect(dsn, statement_cache_size=0)
                counter += 1
                i = counter
                await conn.execute("INSERT INTO writes (id, client) VALUES ($1, $2)", i, k)
                committed.append((i, time.monotonic()))
            except (
                asyncpg.PostgresError,
                asyncpg.InterfaceError,
                asyncpg.InternalClientError,
                OSError,
            ):
                errors += 1
                if conn is not None and not conn.is_closed():
                    conn.terminate()
                conn = None
                await asyncio.sleep(0.01)
        if conn is not None:
            await conn.close()

    idle = [await asyncpg.connect(dsn, statement_cache_size=0) for _ in range(20)]
    for conn in idle:
        await conn.fetchval("SELECT 1")
    tasks = [asyncio.create_task(writer(k)) for k in range(clients)]
    await asyncio.sleep(1.0)
    await asyncio.to_thread(cluster.primary.stop, "immediate")
    killed_at = time.monotonic()
    await asyncio.sleep(promote_after)
    t0 = time.monotonic()
    await asyncio.to_thread(cluster.replicas[0].promote)
    promoted_at = time.monotonic()
    deadline = promoted_at + 15
    while time.monotonic() < deadline and not any(t > promoted_at for _, t in committed):
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.5)
    stop = True
    await asyncio.gather(*tasks)

    after_kill = [t for _, t in committed if t > killed_at]
    after_promote = [t for _, t in committed if t > promoted_at]
    kept = 0
    for conn in idle:
        try:
            if not conn.is_closed() and await conn.fetchval("SELECT 1") == 1:
                kept += 1
        except (
            asyncpg.PostgresError,
            asyncpg.InterfaceError,
            asyncpg.InternalClientError,
            OSError,
        ):
            pass
    ids = {r["id"] for r in await idle[0].fetch("SELECT id FROM writes")} if kept else set()
    for conn in idle:
        conn.terminate()
    return RunResult(
        run=index,
        kill_to_write_s=(min(after_kill) - killed_at) if after_kill else None,
        promote_to_write_s=(min(after_promote) - promoted_at) if after_promote else None,
        promote_cmd_s=promoted_at - t0,
        commits=len(committed),
        errors=errors,
        lost_commits=sum(1 for i, _ in committed if i not in ids),
        idle_kept=kept,
        idle_total=len(idle),
    )


def run(
    runs: int, clients: int, promote_after: float, poll_s: float, fast_poll_s: float
) -> list[RunResult]:
    results = []
    for i in range(1, runs + 1):
        with ReplicatedCluster(1, sync=True, user=USER, password=PASSWORD, dbname=DBNAME) as c:
            proxy = FailoverProxy(c, poll_s, fast_poll_s)
            proxy.start()
            try:
                dsn = f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{proxy.port}/{DBNAME}"
                r = asyncio.run(_one_run(i, c, dsn, clients, promote_after))
            finally:
                proxy.stop()
            results.append(r)
            print(_row(r), flush=True)
    return results


def _fmt(v: float | None) -> str:
    return "none" if v is None else f"{v:.3f}"


def _row(r: RunResult) -> str:
    return (
        f"| {r.run} | {_fmt(r.kill_to_write_s)} | {_fmt(r.promote_to_write_s)} | "
        f"{r.promote_cmd_s:.3f} | {r.commits} | {r.errors} | {r.lost_commits} | "
        f"{r.idle_kept}/{r.idle_total} |"
    )


def summary(results: list[RunResult]) -> str:
    p = [r.promote_to_write_s for r in results if r.promote_to_write_s is not None]
    k = [r.kill_to_write_s for r in results if r.kill_to_write_s is not None]
    if not p or not k:
        return "no run resumed writing"
    return (
        f"promotion -> first write: median {statistics.median(p):.3f} s, worst {max(p):.3f} s; "
        f"kill -> first write: median {statistics.median(k):.3f} s, worst {max(k):.3f} s; "
        f"runs without a resumed write: {sum(1 for r in results if r.promote_to_write_s is None)}"
    )


HEADER = (
    "| run | kill → write (s) | promotion → write (s) | pg_ctl promote (s) | commits | "
    "client errors | lost commits | idle clients kept |\n"
    "|--:|--:|--:|--:|--:|--:|--:|--:|"
)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.failover", description=__doc__)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--clients", type=int, default=4, help="clients writing in a loop")
    ap.add_argument("--promote-after", type=float, default=1.0, help="seconds from kill")
    ap.add_argument("--poll", type=float, default=1.0, help="topology.poll_interval_s")
    ap.add_argument("--fast-poll", type=float, default=0.2, help="topology.fast_poll_interval_s")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    print(HEADER, flush=True)
    results = run(args.runs, args.clients, args.promote_after, args.poll, args.fast_poll)
    print(summary(results))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "command": "python -m bench.failover " + " ".join(argv or sys.argv[1:]),
                "cpus": os.cpu_count(),
                "settings": vars(args) | {"out": str(args.out)},
                "runs": [asdict(r) for r in results],
                "summary": summary(results),
            },
            indent=2,
        )
        + "\n"
    )
    return 0 if all(r.promote_to_write_s is not None for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
