"""One benchmark session: server, targets, the pgbench matrix, memory, results files."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .memory import measure_idle_memory
from .pgbench import init_tables
from .report import format_report, machine_info, summarize, write_chart, write_json
from .scenarios import (
    THROUGHPUT_KINDS,
    build_scenarios,
    direct_client_limit,
    run_matrix,
    warm_up,
)
from .targets import (
    Database,
    DirectTarget,
    PgBouncerTarget,
    ProxyTarget,
    PureProxyTarget,
    Target,
    TargetError,
    ensure_pgbouncer,
    pgbouncer_version,
    raise_nofile_limit,
    start_postgres,
)

ALL_TARGETS = ("direct", "pgbouncer", "proxy", "proxy-pure")
# proxy-pure (the pure-Python hot path beside the compiled one) only when asked for.
DEFAULT_TARGETS = ("direct", "pgbouncer", "proxy")


@dataclass
class Options:
    client_counts: list[int] = field(default_factory=lambda: [10, 100, 1000, 5000])
    kinds: list[str] = field(default_factory=lambda: list(THROUGHPUT_KINDS))
    churn_clients: int | None = 50
    latency: bool = True
    duration_s: float = 10.0
    rounds: int = 2
    pool_size: int = 20
    scale: int = 10
    max_connections: int = 300
    targets: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))
    install_pgbouncer: bool = True
    memory_clients: int = 10000
    out_dir: Path = Path(__file__).resolve().parent / "results"
    chart: bool = True
    warm_up: bool = True
    proxy_settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    command: str = "python -m bench"


def _make_target(name: str, db: Database, opts: Options, pgbouncer_bin: str | None) -> Target:
    if name == "direct":
        return DirectTarget(db)
    if name == "pgbouncer":
        assert pgbouncer_bin is not None
        return PgBouncerTarget(db, opts.pool_size, pgbouncer_bin)
    if name == "proxy":
        return ProxyTarget(db, opts.pool_size, opts.proxy_settings)
    if name == "proxy-pure":
        return PureProxyTarget(db, opts.pool_size, opts.proxy_settings)
    raise ValueError(f"unknown target {name!r}")


def run_benchmark(opts: Options, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run everything `opts` asks for, write <out_dir>/latest.json (and tps.png); return the
    results. Every process started is stopped before returning, also on errors and Ctrl-C."""
    started_wall = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    t0 = time.monotonic()
    load_start = os.getloadavg()
    nofile = raise_nofile_limit()
    notes: list[str] = []
    names = [n for n in ALL_TARGETS if n in opts.targets]

    pgbouncer_bin: str | None = None
    if "pgbouncer" in names:
        pgbouncer_bin, why = ensure_pgbouncer(opts.install_pgbouncer, log)
        if pgbouncer_bin is None:
            msg = f"PgBouncer skipped: {why}"
            log(msg)
            notes.append(msg)
            names.remove("pgbouncer")

    log(f"Starting PostgreSQL (max_connections={opts.max_connections}) ...")
    db = start_postgres(opts.max_connections)
    targets: list[Target] = []
    try:
        pgbench = db.pg.bin("pgbench")
        pg_version = db.pg.psql("SHOW server_version")
        log(f"PostgreSQL {pg_version} on {db.host}:{db.port}; pgbench -i -s {opts.scale} ...")
        init_tables(pgbench, db, opts.scale)

        for name in names:
            target = _make_target(name, db, opts, pgbouncer_bin)
            try:
                target.start()
            except TargetError as exc:
                msg = f"{target.label} skipped: could not start: {exc}"
                log(msg)
                notes.append(msg)
                target.stop()
                continue
            targets.append(target)
            log(f"  {target.label:<18} on {target.host}:{target.port} (pid {target.pid})")

        poolers = sum(1 for t in targets if t.name != "direct")
        direct_max = direct_client_limit(db, opts.pool_size, poolers)
        scenarios = build_scenarios(
            opts.client_counts, opts.kinds, opts.churn_clients, opts.latency
        )
        if opts.warm_up:
            warm_up(targets, pgbench, db)
        log(
            f"Running {len(scenarios)} scenarios x {opts.rounds} round(s) x "
            f"{len(targets)} targets, {opts.duration_s:g} s each ..."
        )
        runs, matrix_notes = run_matrix(
            targets,
            scenarios,
            pgbench=pgbench,
            db=db,
            rounds=opts.rounds,
            duration_s=opts.duration_s,
            direct_max_clients=direct_max,
            log=log,
        )
        notes += matrix_notes

        memory: list[dict[str, Any]] = []
        if opts.memory_clients > 0:
            # Fresh pooler processes, so memory freed by the throughput runs does not hide growth.
            for t in targets:
                t.stop()
            log(f"Memory: {opts.memory_clients} idle authenticated clients per pooler ...")
            for name in names:
                if name == "direct":
                    continue
                target = _make_target(name, db, opts, pgbouncer_bin)
                try:
                    with target:
                        memory.append(measure_idle_memory(target, opts.memory_clients, log=log))
                except TargetError as exc:
                    memory.append({"target": name, "skipped": f"could not start: {exc}"})
    finally:
        for t in targets:
            with contextlib.suppress(Exception):
                t.stop()
        with contextlib.suppress(Exception):
            db.pg.cleanup()

    settings = asdict(opts)
    settings["out_dir"] = str(opts.out_dir)
    settings["direct_max_clients"] = direct_max
    settings["nofile_limit"] = nofile
    settings["targets_run"] = [t.name for t in targets]
    results: dict[str, Any] = {
        "version": 1,
        "started": started_wall,
        "elapsed_s": round(time.monotonic() - t0, 1),
        "command": opts.command,
        "machine": machine_info(
            pg_version, pgbouncer_version(pgbouncer_bin) if pgbouncer_bin else None
        ),
        "settings": settings,
        # Other work on the machine skews the figures: the 1/5/15-minute load averages (at the
        # end they mostly reflect the benchmark's own processes).
        "load_average": {"start": list(load_start), "end": list(os.getloadavg())},
        "summary": summarize(runs),
        "runs": runs,
        "memory": memory,
        "notes": notes,
    }
    json_path = opts.out_dir / "latest.json"
    write_json(results, json_path)
    log("")
    log(format_report(results))
    log("")
    log(f"Results: {json_path}")
    if opts.chart:
        no_chart = write_chart(results, opts.out_dir / "tps.png")
        log(no_chart if no_chart else f"Chart:   {opts.out_dir / 'tps.png'}")
    return results
