"""The benchmark matrix: which pgbench workloads, at which client counts, in which order.

Each scenario runs its targets alternately (direct, PgBouncer, proxy, direct, ...) for every
round, so runs compared within a round are seconds apart. Around every run the CPU time of the
target's pooler process is read, giving CPU seconds per 1,000 transactions.
"""

from __future__ import annotations

import bisect
import contextlib
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from . import looplag
from .pgbench import run_pgbench
from .targets import Database, Target, cpu_seconds, process_tree

# PostgreSQL keeps superuser_reserved_connections (3) for the superuser.
_SUPERUSER_RESERVED = 3


@dataclass(frozen=True)
class Kind:
    builtin: str
    protocol: str
    connect_each: bool
    latency_log: bool
    title: str


KINDS: dict[str, Kind] = {
    "select-simple": Kind("select-only", "simple", False, False, "select-only (-S), -M simple"),
    "select-extended": Kind(
        "select-only", "extended", False, False, "select-only (-S), -M extended"
    ),
    # PgBouncer before 1.21 cannot run this in transaction mode (named statements).
    "select-prepared": Kind(
        "select-only", "prepared", False, False, "select-only (-S), -M prepared"
    ),
    "tpcb": Kind("tpcb-like", "simple", False, False, "TPC-B-like (default script), -M simple"),
    "churn": Kind("select-only", "simple", True, False, "connection churn (-C), select-only"),
    "latency": Kind("select-only", "simple", False, True, "latency at 1 client, select-only"),
}
THROUGHPUT_KINDS = ("select-simple", "select-extended", "tpcb")
# Selectable with --scenarios, not run by default.
OPTIONAL_KINDS = ("select-prepared",)


@dataclass(frozen=True)
class Scenario:
    kind: str
    clients: int

    @property
    def key(self) -> str:
        return f"{self.kind}@{self.clients}"

    @property
    def spec(self) -> Kind:
        return KINDS[self.kind]


def build_scenarios(
    client_counts: Sequence[int],
    kinds: Sequence[str] = THROUGHPUT_KINDS,
    churn_clients: int | None = 50,
    latency: bool = True,
) -> list[Scenario]:
    scenarios = [Scenario(kind, c) for kind in kinds for c in sorted(set(client_counts))]
    if churn_clients:
        scenarios.append(Scenario("churn", churn_clients))
    if latency:
        scenarios.append(Scenario("latency", 1))
    return scenarios


# Figures a caller measures around each run beside the pooler's CPU (bench.scaling: per-core busy
# time, PostgreSQL's and pgbench's CPU). The dict is filled when the context exits and is merged
# into the run's record.
RunProbe = Callable[[Target], AbstractContextManager[dict[str, Any]]]


def direct_client_limit(db: Database, pool_size: int, poolers: int) -> int:
    """The most pgbench clients PostgreSQL can take directly while the poolers hold their
    (idle) server connections: max_connections less the reserved and pooled ones, less slack."""
    return db.max_connections - _SUPERUSER_RESERVED - poolers * pool_size - 5


class CpuSampler:
    """Samples a process's CPU seconds every `interval` s in a thread, so the CPU used after
    pgbench finished connecting its clients can be told from the CPU of the whole run."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        self.pid = pid
        self.pids = process_tree(pid)
        self.interval = interval
        self.times: list[float] = []
        self.values: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-sampler", daemon=True)

    def _sample(self) -> None:
        self.times.append(time.monotonic())
        self.values.append(cpu_seconds(self.pid, self.pids))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> CpuSampler:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    @property
    def start(self) -> float:
        return self.times[0]

    @property
    def total(self) -> float:
        return max(0.0, self.values[-1] - self.values[0])

    def since(self, t: float) -> float:
        """CPU seconds used from time t (interpolated between samples) to the end."""
        i = bisect.bisect_left(self.times, t)
        if i <= 0:
            return self.total
        if i >= len(self.times):
            return 0.0
        t0, t1 = self.times[i - 1], self.times[i]
        v0, v1 = self.values[i - 1], self.values[i]
        at = v0 + (v1 - v0) * ((t - t0) / (t1 - t0) if t1 > t0 else 1.0)
        return max(0.0, self.values[-1] - at)


def _settle(clients: int) -> None:
    # Let the previous run's clients finish disconnecting before the next target's run.
    time.sleep(min(5.0, 0.2 + clients / 1000))


def warm_up(targets: Sequence[Target], pgbench: str, db: Database) -> None:
    """A short unrecorded run per target: opens the poolers' server connections, warms caches."""
    for target in targets:
        run_pgbench(pgbench, target.host, target.port, db, clients=4, duration_s=1)


def run_matrix(
    targets: Sequence[Target],
    scenarios: Sequence[Scenario],
    *,
    pgbench: str,
    db: Database,
    rounds: int,
    duration_s: float,
    direct_max_clients: int,
    log: Callable[[str], None] = print,
    threads: int | None = None,
    probe: RunProbe | None = None,
) -> tuple[list[dict[str, Any]], list[str]]:
    """Run every scenario `rounds` times over the targets; returns (run records, notes).

    `threads` is pgbench's -j (default pgbench.threads_for); `probe` adds figures to each record.
    """
    runs: list[dict[str, Any]] = []
    notes: list[str] = []
    plan = [
        (s, r, t)
        for s in scenarios
        for r in range(1, rounds + 1)
        for t in targets
        if not (t.name == "direct" and s.clients > direct_max_clients)
    ]
    skipped = [s.key for s in scenarios if s.clients > direct_max_clients]
    if skipped and any(t.name == "direct" for t in targets):
        notes.append(
            f"direct skipped above {direct_max_clients} clients (PostgreSQL max_connections="
            f"{db.max_connections}, less reserved and pooled connections): {', '.join(skipped)}"
        )
    for i, (scenario, rnd, target) in enumerate(plan, 1):
        spec = scenario.spec
        if not target.alive():
            msg = f"{target.label} was not running before {scenario.key} round {rnd}; restarting"
            notes.append(msg + (f": {target.log_tail(5)}" if target.log_tail(5) else ""))
            log("  " + msg)
            try:
                target.start()
            except Exception as exc:
                notes.append(f"{target.label} could not be restarted: {exc}")
        pid = target.pid
        metrics_port = int(getattr(target, "metrics_port", 0))
        lag_before = looplag.scrape(target.host, metrics_port) if metrics_port else None
        with contextlib.ExitStack() as stack:
            # The probe first: it may wait before the run starts (bench.scaling waits for other
            # work on its CPUs to pass), and the pooler's CPU is counted from the run's start.
            probed = stack.enter_context(probe(target)) if probe is not None else {}
            sampler = stack.enter_context(CpuSampler(pid)) if pid is not None else None
            result = run_pgbench(
                pgbench,
                target.host,
                target.port,
                db,
                clients=scenario.clients,
                duration_s=duration_s,
                builtin=spec.builtin,
                protocol=spec.protocol,
                connect_each=spec.connect_each,
                latency_log=spec.latency_log,
                threads=threads,
            )
        lag = None
        if lag_before is not None:
            lag = looplag.between(lag_before, looplag.scrape(target.host, metrics_port))
        cpu = steady = None
        if sampler is not None:
            cpu = sampler.total
            steady = cpu
            # pgbench's tps leaves out the initial connections; so does CPU per transaction.
            # Under -C connecting is the workload, and stays in.
            if not spec.connect_each and result.connection_time_ms is not None:
                steady = sampler.since(sampler.start + result.connection_time_ms / 1000.0)
        record: dict[str, Any] = {
            "scenario": scenario.key,
            "kind": scenario.kind,
            "clients": scenario.clients,
            "round": rnd,
            "target": target.name,
            **result.to_dict(),
            "cpu_s": round(cpu, 3) if cpu is not None else None,
            "cpu_s_after_connect": round(steady, 3) if steady is not None else None,
            "cpu_s_per_1k_tx": (
                round(steady / result.transactions * 1000, 4)
                if steady is not None and result.transactions
                else None
            ),
            "target_alive_after": target.alive(),
            "loop_lag": lag,
            **probed,
        }
        if not record["target_alive_after"]:
            record["error"] = (record["error"] + "; " if record["error"] else "") + (
                f"{target.label} died: {target.log_tail(5)}"
            )
        runs.append(record)
        status = f"{result.tps:10.0f} tps"
        if scenario.kind == "latency" and result.p50_ms is not None:
            status += f", p50 {result.p50_ms * 1000:.0f} us"
        if lag is not None:
            status += f", loop lag p99 {lag['p99_ms']:g} ms max {lag['max_ms']:g} ms"
        if result.failed:
            status += f", {result.failed} failed"
        if record["error"]:
            status += f"  ERROR: {record['error'][:200]}"
        log(f"  [{i:3d}/{len(plan)}] {scenario.key:<22} round {rnd} {target.name:<9} {status}")
        _settle(scenario.clients)
    return runs, notes
