"""`python -m bench.scaling`: tps per pooler core, with the pooler and its load on separate CPUs.

The unpinned harness (`python -m bench`) lets the pooler, pgbench and PostgreSQL share every
CPU, so a pooler's throughput there says little about what one more core would give it. Here the
pooler gets its own CPUs and pgbench and PostgreSQL the rest:

- this process pins itself to the load CPUs before starting PostgreSQL, so the postmaster and
  every backend it forks, and every pgbench it runs, inherit them (the postmaster and its
  children are pinned again for each layout);
- each pooler is pinned to the pooler CPUs before it execs, so the proxy's forked workers
  inherit them too;
- before each run the affinity of every pooler and PostgreSQL process is checked; a stray one is
  recorded with the run (`affinity_stray`) and printed.

A layout is `workers = N` on N CPUs with at least ceil(N x --load-cores-per-worker) CPUs left for
pgbench and PostgreSQL; the layouts a machine cannot hold are reported as skipped, not failed.
PgBouncer (single-threaded) runs pinned to the same pooler CPUs in every layout, as the
reference.

Per run, beside pgbench's tps: the pooler's CPU seconds per 1,000 transactions and its CPU
utilisation (CPU seconds / wall seconds / pooler CPUs), the busy fraction of every CPU from
/proc/stat (this counts anything else running on the machine), PostgreSQL's and pgbench's CPU,
and which side saturated. When the pooler's CPUs are saturated, its tps is its capacity per
core; when the load CPUs are, the pooler was not the limit and `tps per pooler core` (1,000 /
CPU seconds per 1,000 transactions) is the estimate of what it would do on a saturated core.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import resource
import shlex
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .__main__ import _int_list, _name_list, _on_sigterm
from .pgbench import init_tables
from .report import _fmt, _median, _table, machine_info, write_json
from .scenarios import RunProbe, build_scenarios, run_matrix, warm_up
from .targets import (
    Database,
    PgBouncerTarget,
    ProxyTarget,
    PureProxyTarget,
    Target,
    TargetError,
    cpu_seconds,
    ensure_pgbouncer,
    pgbouncer_version,
    process_tree,
    raise_nofile_limit,
    start_postgres,
)

SCALING_TARGETS = ("pgbouncer", "proxy", "proxy-pure")
SCALING_KINDS = ("select-simple", "select-extended")
# A CPU at least this busy over a run counts as saturated (the rest is scheduling slack).
SATURATED = 0.9
# Work of other processes (not the pooler, pgbench or PostgreSQL) above this share of a CPU
# marks a run as disturbed: on a shared machine it takes CPU time the run would have used.
DISTURBED = 0.15


@dataclass(frozen=True)
class Layout:
    """`workers` proxy processes on `pooler_cpus`; pgbench and PostgreSQL on `load_cpus`."""

    workers: int
    pooler_cpus: tuple[int, ...]
    load_cpus: tuple[int, ...]

    @property
    def label(self) -> str:
        return f"workers={self.workers} on CPU {_cpu_list(self.pooler_cpus)}"


def _cpu_list(cpus: Sequence[int]) -> str:
    return ",".join(str(c) for c in cpus)


def _load_cores(workers: int, load_per_worker: float) -> int:
    return max(1, math.ceil(workers * load_per_worker))


def default_workers(cpus: Sequence[int], load_per_worker: float = 1.0) -> list[int]:
    """1 and every power of two the CPUs hold, plus the first that they do not (so the output
    says where the machine stops the series)."""
    out: list[int] = []
    n = 1
    while n <= 64:
        out.append(n)
        if n + _load_cores(n, load_per_worker) > len(cpus):
            break
        n *= 2
    return out


def plan_layouts(
    cpus: Sequence[int], workers: Sequence[int], load_per_worker: float = 1.0
) -> tuple[list[Layout], list[str]]:
    """The layouts these CPUs can hold (the pooler on the lowest-numbered ones, pgbench and
    PostgreSQL on all the others), and a note for each one they cannot."""
    usable = sorted(set(cpus))
    layouts: list[Layout] = []
    notes: list[str] = []
    for n in workers:
        need = _load_cores(n, load_per_worker)
        if n + need > len(usable):
            notes.append(
                f"workers={n} not run: it needs {n} CPU(s) for the proxy and {need} for pgbench "
                f"and PostgreSQL, and this machine has {len(usable)} usable "
                f"(CPU {_cpu_list(usable)})"
            )
            continue
        layouts.append(Layout(n, tuple(usable[:n]), tuple(usable[n:])))
    return layouts, notes


# --------------------------------------------------------------------------------------------
# Pinning and measuring


def pin_tree(pid: int, cpus: Sequence[int]) -> None:
    """Pin pid and its live descendants (new children of any of them inherit it)."""
    for p in process_tree(pid):
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(p, cpus)


def strays(pid: int, cpus: Sequence[int]) -> list[str]:
    """pid and its descendants allowed on a CPU outside `cpus`, as 'pid (name): CPUs'."""
    allowed = set(cpus)
    out: list[str] = []
    for p in process_tree(pid):
        try:
            have = os.sched_getaffinity(p)
        except ProcessLookupError:
            continue
        if not have <= allowed:
            try:
                name = Path(f"/proc/{p}/comm").read_text().strip()
            except OSError:
                name = "?"
            out.append(f"{p} ({name}): CPU {_cpu_list(sorted(have))}")
    return out


def core_times() -> dict[int, tuple[int, int]]:
    """Per CPU: (busy, total) clock ticks since boot, from /proc/stat."""
    out: dict[int, tuple[int, int]] = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *values = line.split()
        if not name.startswith("cpu") or name == "cpu":
            continue
        # user nice system idle iowait irq softirq steal [guest guest_nice]: guest time is
        # already counted in user and nice.
        ticks = [int(v) for v in values[:8]]
        total = sum(ticks)
        out[int(name[3:])] = (total - ticks[3] - ticks[4], total)
    return out


def busy_between(
    before: dict[int, tuple[int, int]], after: dict[int, tuple[int, int]]
) -> dict[int, float]:
    out: dict[int, float] = {}
    for cpu, (busy1, total1) in after.items():
        busy0, total0 = before.get(cpu, (0, 0))
        out[cpu] = round((busy1 - busy0) / (total1 - total0), 3) if total1 > total0 else 0.0
    return out


def wait_for_quiet(cpus: Sequence[int], max_wait_s: float) -> tuple[float, float]:
    """Wait (up to max_wait_s) until no CPU of `cpus` is more than DISTURBED busy over half a
    second; between runs nothing of ours is working, so what is busy is other work. Returns
    (seconds waited, the busiest CPU's share in the last sample)."""
    started = time.monotonic()
    worst = 0.0
    while True:
        before = core_times()
        time.sleep(0.5)
        busy = busy_between(before, core_times())
        worst = max((busy.get(c, 0.0) for c in cpus), default=0.0)
        waited = time.monotonic() - started
        if worst <= DISTURBED or waited >= max_wait_s:
            return round(waited, 1), worst


def postmaster_pid(db: Database) -> int:
    return int((db.pg.data_dir / "postmaster.pid").read_text().split()[0])


def layout_probe(layout: Layout, postmaster: int, quiet_wait_s: float = 0.0) -> RunProbe:
    """What bench.scenarios.run_matrix measures around each run beside the pooler's CPU; first,
    when quiet_wait_s > 0, a wait for other work on the layout's CPUs to pass."""

    @contextlib.contextmanager
    def probe(target: Target) -> Iterator[dict[str, Any]]:
        out: dict[str, Any] = {}
        if quiet_wait_s > 0:
            waited, worst = wait_for_quiet(layout.pooler_cpus + layout.load_cpus, quiet_wait_s)
            out["quiet_wait_s"] = waited
            out["busy_before"] = worst
        stray = strays(postmaster, layout.load_cpus)
        if target.pid is not None:
            stray += strays(target.pid, layout.pooler_cpus)
        cores0 = core_times()
        pg0 = cpu_seconds(postmaster)
        # pgbench is this process's only child reaped during a run.
        kids0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.monotonic()
        try:
            yield out
        finally:
            window = time.monotonic() - t0
            kids1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            pgbench_cpu = (kids1.ru_utime + kids1.ru_stime) - (kids0.ru_utime + kids0.ru_stime)
            busy = busy_between(cores0, core_times())
            out.update(
                {
                    "workers": layout.workers,
                    "pooler_cpus": list(layout.pooler_cpus),
                    "load_cpus": list(layout.load_cpus),
                    "window_s": round(window, 3),
                    "core_busy": {str(c): b for c, b in sorted(busy.items())},
                    "postgres_cpu_s": round(max(0.0, cpu_seconds(postmaster) - pg0), 3),
                    "pgbench_cpu_s": round(pgbench_cpu, 3),
                    "affinity_stray": stray,
                }
            )

    return probe


def derive(run: dict[str, Any]) -> dict[str, Any]:
    """The per-run figures that need both the pooler's CPU and the probe's."""
    window = run["window_s"]
    pooler_n = len(run["pooler_cpus"])
    load_n = len(run["load_cpus"])
    busy = run["core_busy"]
    pooler_busy = sum(busy[str(c)] for c in run["pooler_cpus"]) / pooler_n
    load_busy = sum(busy[str(c)] for c in run["load_cpus"]) / load_n
    load_cpu = run["postgres_cpu_s"] + run["pgbench_cpu_s"]
    tx = run["transactions"]
    per_1k = run["cpu_s_per_1k_tx"]
    pooler_util = run["cpu_s"] / window / pooler_n if run["cpu_s"] and window else 0.0
    load_util = load_cpu / window / load_n if window else 0.0
    return {
        "pooler_util": round(pooler_util, 3),
        "pooler_cores_busy": round(pooler_busy, 3),
        # Busy time on the pooler's CPUs that was not the pooler's: other processes, interrupts.
        "pooler_cores_other": round(max(0.0, pooler_busy - pooler_util), 3),
        "load_util": round(load_util, 3),
        "load_cores_busy": round(load_busy, 3),
        "load_cores_other": round(max(0.0, load_busy - load_util), 3),
        "load_cpu_s_per_1k_tx": round(load_cpu / tx * 1000, 4) if tx else None,
        # PostgreSQL's part alone: what a server needs per transaction when clients live elsewhere.
        "postgres_cpu_s_per_1k_tx": round(run["postgres_cpu_s"] / tx * 1000, 4) if tx else None,
        # What the pooler would do with each of its cores saturated, at this CPU per transaction.
        "tps_per_pooler_core": round(1000 / per_1k) if per_1k else None,
        "bottleneck": bottleneck(pooler_busy, load_busy),
        "disturbed": max(pooler_busy - pooler_util, load_busy - load_util) > DISTURBED,
    }


def bottleneck(pooler_busy: float, load_busy: float) -> str:
    if pooler_busy >= SATURATED and load_busy >= SATURATED:
        return "both"
    if pooler_busy >= SATURATED:
        return "pooler"
    if load_busy >= SATURATED:
        return "pgbench+PostgreSQL"
    return "neither"


# --------------------------------------------------------------------------------------------
# The session


@dataclass
class ScalingOptions:
    workers: list[int] | None = None  # None: default_workers()
    client_counts: list[int] = field(default_factory=lambda: [10, 100])
    kinds: list[str] = field(default_factory=lambda: list(SCALING_KINDS))
    duration_s: float = 10.0
    rounds: int = 2
    pool_size: int = 20
    scale: int = 10
    max_connections: int = 300
    targets: list[str] = field(default_factory=lambda: ["pgbouncer", "proxy"])
    cpus: list[int] | None = None  # None: every CPU this process may use
    load_cores_per_worker: float = 1.0
    # Before each run, wait up to this long for other work on the CPUs to pass (0: never).
    quiet_wait_s: float = 20.0
    install_pgbouncer: bool = True
    warm_up: bool = True
    out_dir: Path = Path(__file__).resolve().parent / "results"
    command: str = "python -m bench.scaling"


def _targets_for(
    layout: Layout, db: Database, opts: ScalingOptions, pgbouncer_bin: str | None
) -> list[Target]:
    out: list[Target] = []
    # The proxy's total server connections stay equal to PgBouncer's: each worker has its own pool.
    per_worker = max(1, opts.pool_size // layout.workers)
    proxy_set = {"proxy": {"workers": layout.workers}, "pool": {"default_pool_size": per_worker}}
    for name in opts.targets:
        t: PgBouncerTarget | ProxyTarget
        if name == "pgbouncer":
            if pgbouncer_bin is None:
                continue
            t = PgBouncerTarget(db, opts.pool_size, pgbouncer_bin)
        elif name == "proxy":
            t = ProxyTarget(db, per_worker, proxy_set)
        elif name == "proxy-pure":
            t = PureProxyTarget(db, per_worker, proxy_set)
        else:
            raise ValueError(f"unknown target {name!r}")
        t.cpus = frozenset(layout.pooler_cpus)
        out.append(t)
    return out


def summarize_scaling(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per layout, scenario and target: medians over the rounds' error-free runs, and of those
    only the undisturbed ones when there are any (a disturbed run measured the other work too)."""
    keys: list[tuple[int, str, str]] = []
    for r in runs:
        key = (r["workers"], r["scenario"], r["target"])
        if key not in keys:
            keys.append(key)
    out = []
    for workers, scenario, target in keys:
        mine = [
            r
            for r in runs
            if (r["workers"], r["scenario"], r["target"]) == (workers, scenario, target)
        ]
        ok = [r for r in mine if not r["error"]]
        clean = [r for r in ok if not r["disturbed"]]
        used = clean or ok
        entry: dict[str, Any] = {
            "workers": workers,
            "pooler_cpus": mine[0]["pooler_cpus"],
            "load_cpus": mine[0]["load_cpus"],
            "scenario": scenario,
            "target": target,
            "tps_runs": [r["tps"] for r in mine],
            "runs_used": len(used),
            "runs_clean": len(clean),
            "errors": sorted({r["error"] for r in mine if r["error"]}),
            "affinity_stray": sorted({s for r in mine for s in r["affinity_stray"]}),
        }
        for name in (
            "tps",
            "cpu_s_per_1k_tx",
            "pooler_util",
            "pooler_cores_busy",
            "pooler_cores_other",
            "load_util",
            "load_cores_busy",
            "load_cores_other",
            "load_cpu_s_per_1k_tx",
            "postgres_cpu_s_per_1k_tx",
            "tps_per_pooler_core",
        ):
            entry[name] = _median(r[name] for r in used)
        entry["bottleneck"] = (
            bottleneck(entry["pooler_cores_busy"], entry["load_cores_busy"]) if used else None
        )
        entry["disturbed"] = bool(ok) and not clean
        out.append(entry)
    return out


def format_scaling(results: dict[str, Any]) -> str:
    headers = [
        "layout",
        "scenario",
        "target",
        "clean runs",
        "tps",
        "pooler CPU s/1k tx",
        "pooler util",
        "tps/pooler core",
        "pooler CPU busy",
        "load CPU busy",
        "other work (pooler/load CPU)",
        "load CPU s/1k tx",
        "of it PostgreSQL",
        "saturated",
    ]
    rows = [
        [
            f"workers={s['workers']} CPU {_cpu_list(s['pooler_cpus'])}, "
            f"load CPU {_cpu_list(s['load_cpus'])}",
            s["scenario"],
            s["target"],
            f"{s['runs_clean']}/{len(s['tps_runs'])}",
            _fmt(s["tps"], ",.0f"),
            _fmt(s["cpu_s_per_1k_tx"], ".4f"),
            _fmt(s["pooler_util"], ".0%"),
            _fmt(s["tps_per_pooler_core"], ",.0f"),
            _fmt(s["pooler_cores_busy"], ".0%"),
            _fmt(s["load_cores_busy"], ".0%"),
            f"{_fmt(s['pooler_cores_other'], '.0%')} / {_fmt(s['load_cores_other'], '.0%')}",
            _fmt(s["load_cpu_s_per_1k_tx"], ".4f"),
            _fmt(s["postgres_cpu_s_per_1k_tx"], ".4f"),
            (s["bottleneck"] or "-") + (" (disturbed)" if s["disturbed"] else ""),
        ]
        for s in results["summary"]
    ]
    lines = [_table(headers, rows, left=3)] if rows else ["(no runs)"]
    lines.append(
        "- medians over the clean (undisturbed) runs; where there is none, over all the runs, "
        "and the row says disturbed"
    )
    strays_seen = sorted({x for s in results["summary"] for x in s["affinity_stray"]})
    if strays_seen:
        lines.append("NOT PINNED: " + "; ".join(strays_seen))
    lines += [f"- {n}" for n in results["notes"]]
    if any(s["disturbed"] for s in results["summary"]):
        lines.append(
            f"- disturbed: in every run other work took more than {DISTURBED:.0%} of the "
            "pooler's or the load's CPUs (a shared machine); CPU per transaction is the figure "
            "least moved by it"
        )
    load = results["load_average"]
    lines.append(
        f"- load average (1/5/15 min) at start {load['start'][0]:.2f}/{load['start'][1]:.2f}/"
        f"{load['start'][2]:.2f}, at end {load['end'][0]:.2f}/{load['end'][1]:.2f}/"
        f"{load['end'][2]:.2f}; CPU busy counts every process on that CPU, util only the "
        "pooler's (or pgbench's and PostgreSQL's)"
    )
    return "\n".join(lines)


def run_scaling(opts: ScalingOptions, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every layout the machine holds; write <out_dir>/scaling.json; return the results.
    Every process started is stopped, and this process's CPU affinity restored, on the way out."""
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    t0 = time.monotonic()
    load_start = os.getloadavg()
    own_cpus = os.sched_getaffinity(0)
    cpus = sorted(own_cpus if opts.cpus is None else own_cpus & set(opts.cpus))
    workers = opts.workers or default_workers(cpus, opts.load_cores_per_worker)
    layouts, notes = plan_layouts(cpus, workers, opts.load_cores_per_worker)
    if opts.cpus is not None and set(opts.cpus) - own_cpus:
        notes.insert(0, f"CPU {_cpu_list(sorted(set(opts.cpus) - own_cpus))} not usable here")
    for note in notes:
        log(note)
    raise_nofile_limit()

    pgbouncer_bin: str | None = None
    if "pgbouncer" in opts.targets and layouts:
        pgbouncer_bin, why = ensure_pgbouncer(opts.install_pgbouncer, log)
        if pgbouncer_bin is None:
            notes.append(f"PgBouncer skipped: {why}")
            log(notes[-1])

    runs: list[dict[str, Any]] = []
    pg_version = "not run"
    try:
        if layouts:
            # Pinned before PostgreSQL starts, so the postmaster and all it forks inherit it.
            os.sched_setaffinity(0, layouts[0].load_cpus)
            log(f"Starting PostgreSQL on CPU {_cpu_list(layouts[0].load_cpus)} ...")
            db = start_postgres(opts.max_connections)
            try:
                pgbench = db.pg.bin("pgbench")
                pg_version = db.pg.psql("SHOW server_version")
                init_tables(pgbench, db, opts.scale)
                postmaster = postmaster_pid(db)
                for layout in layouts:
                    runs += _run_layout(layout, db, postmaster, pgbench, opts, pgbouncer_bin, log)
            finally:
                with contextlib.suppress(Exception):
                    db.pg.cleanup()
    finally:
        os.sched_setaffinity(0, own_cpus)

    for run in runs:
        run.update(derive(run))
    settings = asdict(opts)
    settings["out_dir"] = str(opts.out_dir)
    settings["workers"] = workers
    results: dict[str, Any] = {
        "version": 1,
        "started": started,
        "elapsed_s": round(time.monotonic() - t0, 1),
        "command": opts.command,
        "machine": machine_info(
            pg_version, pgbouncer_version(pgbouncer_bin) if pgbouncer_bin else None
        ),
        "cpus": cpus,
        "layouts": [asdict(layout) for layout in layouts],
        "settings": settings,
        "load_average": {"start": list(load_start), "end": list(os.getloadavg())},
        "summary": summarize_scaling(runs),
        "runs": runs,
        "notes": notes,
    }
    path = opts.out_dir / "scaling.json"
    write_json(results, path)
    log("")
    log(format_scaling(results))
    log(f"Results: {path}")
    return results


def _run_layout(
    layout: Layout,
    db: Database,
    postmaster: int,
    pgbench: str,
    opts: ScalingOptions,
    pgbouncer_bin: str | None,
    log: Callable[[str], None],
) -> list[dict[str, Any]]:
    # pgbench (and this process, which only waits) on the load CPUs; the server's processes
    # already there stay, the ones of an earlier layout move.
    os.sched_setaffinity(0, layout.load_cpus)
    pin_tree(postmaster, layout.load_cpus)
    log(f"{layout.label}; pgbench and PostgreSQL on CPU {_cpu_list(layout.load_cpus)}")
    targets: list[Target] = []
    try:
        for target in _targets_for(layout, db, opts, pgbouncer_bin):
            try:
                target.start()
            except TargetError as exc:
                log(f"  {target.label} skipped: {exc}")
                target.stop()
                continue
            targets.append(target)
        if opts.warm_up:
            warm_up(targets, pgbench, db)
        scenarios = build_scenarios(opts.client_counts, opts.kinds, None, False)
        runs, notes = run_matrix(
            targets,
            scenarios,
            pgbench=pgbench,
            db=db,
            rounds=opts.rounds,
            duration_s=opts.duration_s,
            direct_max_clients=0,
            log=log,
            # One pgbench thread per load CPU: more would only time-slice on them.
            threads=max(1, min(len(layout.load_cpus), *opts.client_counts)),
            probe=layout_probe(layout, postmaster, opts.quiet_wait_s),
        )
        for note in notes:
            log("  " + note)
        return runs
    finally:
        for t in targets:
            with contextlib.suppress(Exception):
                t.stop()


# --------------------------------------------------------------------------------------------
# Command line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.scaling",
        description="tps per pooler core: the pooler pinned to its own CPUs, pgbench and "
        "PostgreSQL to the others.",
    )
    p.add_argument(
        "--workers",
        type=_int_list,
        help="proxy worker counts, each on as many CPUs (default 1 and the powers of two the "
        "machine holds)",
    )
    p.add_argument("--clients", type=_int_list, default=[10, 100], help="default 10,100")
    p.add_argument(
        "--scenarios",
        type=_name_list(SCALING_KINDS),
        default=list(SCALING_KINDS),
        help=f"default {','.join(SCALING_KINDS)}",
    )
    p.add_argument("--duration", type=float, default=10.0, help="seconds per run (default 10)")
    p.add_argument("--rounds", type=int, default=2, help="default 2")
    p.add_argument(
        "--pool-size", type=int, default=20, help="PgBouncer's pool; the proxy's across workers"
    )
    p.add_argument("--scale", type=int, default=10, help="pgbench -i scale (default 10)")
    p.add_argument(
        "--targets",
        type=_name_list(SCALING_TARGETS),
        default=["pgbouncer", "proxy"],
        help="default pgbouncer,proxy",
    )
    p.add_argument("--cpus", type=_cpu_arg, help="CPUs to use, e.g. 0-3 (default all allowed)")
    p.add_argument(
        "--load-cores-per-worker",
        type=float,
        default=1.0,
        help="CPUs for pgbench and PostgreSQL per proxy worker (default 1)",
    )
    p.add_argument(
        "--quiet-wait",
        type=float,
        default=20.0,
        help="before each run wait up to this many seconds for other work on the CPUs to pass "
        "(default 20; 0 = never)",
    )
    p.add_argument(
        "--no-install", action="store_true", help="do not apt-get install a missing PgBouncer"
    )
    p.add_argument("--out-dir", type=Path, help="where scaling.json goes (default bench/results)")
    return p


def _cpu_arg(text: str) -> list[int]:
    """0-3,6 style, as taskset -c takes."""
    cpus: set[int] = set()
    try:
        for part in text.split(","):
            lo, _, hi = part.partition("-")
            cpus.update(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected CPU numbers like 0-3,6: {text!r}") from None
    return sorted(cpus)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    opts = ScalingOptions(
        workers=args.workers,
        client_counts=args.clients,
        kinds=args.scenarios,
        duration_s=args.duration,
        rounds=args.rounds,
        pool_size=args.pool_size,
        scale=args.scale,
        targets=args.targets,
        cpus=args.cpus,
        load_cores_per_worker=args.load_cores_per_worker,
        quiet_wait_s=args.quiet_wait,
        install_pgbouncer=not args.no_install,
        command=" ".join(["python -m bench.scaling", *(shlex.quote(a) for a in argv)]),
    )
    if args.out_dir is not None:
        opts.out_dir = args.out_dir
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        run_scaling(opts, log=lambda line: print(line, flush=True))
    except KeyboardInterrupt:
        print("\ninterrupted; every process the benchmark started has been stopped", flush=True)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
