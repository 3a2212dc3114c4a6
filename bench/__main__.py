"""`python -m bench`: PostgreSQL direct vs PgBouncer vs pgpool-proxy under real pgbench.

Full run (~15-20 minutes): python -m bench
Quick run (< 2 minutes):   python -m bench --quick
Then:                      python -m bench.report   (rewrites bench/RESULTS.md)
"""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
import tomllib
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from .report import main as report_main
from .run import ALL_TARGETS, DEFAULT_TARGETS, Options, run_benchmark
from .scenarios import OPTIONAL_KINDS, THROUGHPUT_KINDS


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers: {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive numbers: {text!r}")
    return values


def _name_list(choices: Sequence[str]) -> Any:
    def parse(text: str) -> list[str]:
        names = [v.strip() for v in text.split(",") if v.strip()]
        bad = [n for n in names if n not in choices]
        if bad or not names:
            raise argparse.ArgumentTypeError(f"choose from {', '.join(choices)}: {text!r}")
        return names

    return parse


def _setting(text: str) -> tuple[str, str, Any]:
    """section.key=value, value as a TOML literal (bare words are strings)."""
    try:
        name, raw = text.split("=", 1)
        section, key = name.strip().split(".", 1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected section.key=value: {text!r}") from None
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return section, key, value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark pgpool-proxy against PgBouncer and PostgreSQL direct with pgbench.",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="development mode: 10 and 100 clients, 3 s runs, one round, scale 1 (< 2 minutes)",
    )
    p.add_argument("--clients", type=_int_list, help="client counts (default 10,100,1000,5000)")
    p.add_argument(
        "--scenarios",
        type=_name_list(THROUGHPUT_KINDS + OPTIONAL_KINDS),
        help=f"throughput workloads (default {','.join(THROUGHPUT_KINDS)}; also "
        f"{','.join(OPTIONAL_KINDS)})",
    )
    p.add_argument("--duration", type=float, help="seconds per pgbench run (default 10)")
    p.add_argument("--rounds", type=int, help="rounds over all targets (default 2)")
    p.add_argument("--pool-size", type=int, default=20, help="pool size of both poolers")
    p.add_argument("--scale", type=int, help="pgbench -i scale (default 10)")
    p.add_argument(
        "--targets",
        type=_name_list(ALL_TARGETS),
        default=list(DEFAULT_TARGETS),
        help="which targets (default direct,pgbouncer,proxy; proxy-pure adds the proxy with "
        "its pure-Python hot path)",
    )
    p.add_argument("--churn-clients", type=int, default=50, help="-C clients (0 = skip)")
    p.add_argument("--no-latency", action="store_true", help="skip the 1-client latency runs")
    p.add_argument("--memory-clients", type=int, help="idle clients for the memory test (0 = skip)")
    p.add_argument(
        "--no-install", action="store_true", help="do not apt-get install a missing PgBouncer"
    )
    p.add_argument("--out-dir", type=Path, help="where latest.json and tps.png go")
    p.add_argument(
        "--proxy-set",
        type=_setting,
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="extra proxy config, e.g. --proxy-set pool.server_lifetime_s=0",
    )
    p.add_argument(
        "--write-results-md",
        action="store_true",
        help="afterwards rewrite bench/RESULTS.md from the results (python -m bench.report)",
    )
    return p


def options_from_args(args: argparse.Namespace, argv: Sequence[str]) -> Options:
    quick = bool(args.quick)
    opts = Options(
        client_counts=args.clients or ([10, 100] if quick else [10, 100, 1000, 5000]),
        kinds=args.scenarios or list(THROUGHPUT_KINDS),
        churn_clients=args.churn_clients or None,
        latency=not args.no_latency,
        duration_s=args.duration or (3.0 if quick else 10.0),
        rounds=args.rounds or (1 if quick else 2),
        pool_size=args.pool_size,
        scale=args.scale or (1 if quick else 10),
        targets=args.targets,
        install_pgbouncer=not args.no_install,
        memory_clients=(
            args.memory_clients if args.memory_clients is not None else 2000 if quick else 10000
        ),
        command=" ".join(["python -m bench", *(shlex.quote(a) for a in argv)]),
    )
    if args.out_dir is not None:
        opts.out_dir = args.out_dir
    for section, key, value in args.proxy_set:
        opts.proxy_settings.setdefault(section, {})[key] = value
    return opts


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    # Turn SIGTERM into the same unwinding as Ctrl-C, so every `finally` stops its processes.
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    opts = options_from_args(args, argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        run_benchmark(opts, log=lambda line: print(line, flush=True))
    except KeyboardInterrupt:
        print("\ninterrupted; every process the benchmark started has been stopped", flush=True)
        return 130
    if args.write_results_md:
        report_main(["--json", str(opts.out_dir / "latest.json")])
    return 0


if __name__ == "__main__":
    sys.exit(main())
