"""Results: summary (medians, same-round ratios), the table, JSON, the PNG chart, RESULTS.md.

Also a script: `python -m bench.report [--json bench/results/latest.json] [--out
bench/RESULTS.md]` rewrites RESULTS.md from a results file.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from .scenarios import KINDS

BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_OUT_DIR = BENCH_DIR / "results"
TARGET_ORDER = ("direct", "pgbouncer", "proxy", "proxy-pure")
TARGET_LABELS = {
    "direct": "direct",
    "pgbouncer": "PgBouncer",
    "proxy": "proxy",
    "proxy-pure": "proxy (pure Python)",
}


# --------------------------------------------------------------------------------------------
# Machine


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(BENCH_DIR.parent), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def machine_info(postgres_version: str, pgbouncer_version: str | None) -> dict[str, Any]:
    from pgpool_proxy import __version__

    try:
        uvloop_version = importlib.metadata.version("uvloop")
    except importlib.metadata.PackageNotFoundError:
        uvloop_version = "not installed"
    return {
        "nproc": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_gib": _mem_total_gib(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "uvloop": uvloop_version,
        "postgresql": postgres_version,
        "pgbouncer": pgbouncer_version or "not run",
        "pgpool_proxy": __version__,
        "commit": _git_commit(),
    }


# --------------------------------------------------------------------------------------------
# Summary


def _median(values: Iterable[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def _in_round(group: Sequence[dict[str, Any]], name: str, rnd: int) -> dict[str, Any] | None:
    """target `name`'s error-free run in round `rnd`."""
    for r in group:
        if r["target"] == name and r["round"] == rnd and not r["error"]:
            return r
    return None


def summarize(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per scenario: per-target medians over rounds, and ratios taken within each round."""
    order: list[str] = []
    by_scenario: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        if run["scenario"] not in by_scenario:
            order.append(run["scenario"])
        by_scenario.setdefault(run["scenario"], []).append(run)
    summary = []
    for key in order:
        group = by_scenario[key]
        first = group[0]
        targets: dict[str, dict[str, Any]] = {}
        for name in TARGET_ORDER:
            mine = [r for r in group if r["target"] == name]
            if not mine:
                continue
            ok = [r for r in mine if not r["error"]]
            targets[name] = {
                "tps_median": _median(r["tps"] for r in ok),
                "tps_runs": [r["tps"] for r in mine],
                "transactions": sum(r["transactions"] for r in mine),
                "failed": sum(r["failed"] for r in mine),
                "errors": sorted({r["error"] for r in mine if r["error"]}),
                "cpu_s_per_1k_tx_median": _median(r["cpu_s_per_1k_tx"] for r in ok),
                "latency_avg_ms_median": _median(r["latency_avg_ms"] for r in ok),
                "p50_ms_median": _median(r["p50_ms"] for r in ok),
                "p99_ms_median": _median(r["p99_ms"] for r in ok),
            }
        entry: dict[str, Any] = {
            "scenario": key,
            "kind": first["kind"],
            "clients": first["clients"],
            "title": KINDS[first["kind"]].title,
            "targets": targets,
            "ratios": {},
        }
        rounds = sorted({r["round"] for r in group})

        # proxy/proxy-pure only in runs that measured the pure-Python hot path too.
        others = ["pgbouncer", "direct"] + (["proxy-pure"] if "proxy-pure" in targets else [])
        for other in others:
            ratios = []
            for rnd in rounds:
                p, o = _in_round(group, "proxy", rnd), _in_round(group, other, rnd)
                if p and o and o["tps"] > 0:
                    ratios.append(p["tps"] / o["tps"])
            median = _median(ratios)
            entry["ratios"][f"proxy/{other}"] = round(median, 3) if median is not None else None
        if first["kind"] == "latency":
            added: dict[str, float | None] = {}
            for name in ["pgbouncer", "proxy"] + (
                ["proxy-pure"] if "proxy-pure" in targets else []
            ):
                deltas = []
                for rnd in rounds:
                    t, d = _in_round(group, name, rnd), _in_round(group, "direct", rnd)
                    if t and d and t["p50_ms"] is not None and d["p50_ms"] is not None:
                        deltas.append((t["p50_ms"] - d["p50_ms"]) * 1000.0)
                m = _median(deltas)
                added[name] = round(m, 1) if m is not None else None
            entry["added_p50_us_over_direct"] = added
        summary.append(entry)
    return summary


# --------------------------------------------------------------------------------------------
# Tables


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "-" if value is None else format(value, spec) + suffix


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> str:
    """A Markdown table that also reads well as plain text; the first `left` columns are
    left-aligned, the rest (figures) right-aligned."""
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        padded = [
            c.ljust(w) if i < left else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "| " + " | ".join(padded) + " |"

    seps = [":" + "-" * (w + 1) if i < left else "-" * (w + 1) + ":" for i, w in enumerate(widths)]
    return "\n".join([line(headers), "|" + "|".join(seps) + "|", *(line(r) for r in rows)])


def _cell_tps(t: dict[str, Any] | None) -> str:
    if t is None:
        return "skipped"
    if t["tps_median"] is None:
        return "FAILED"
    mark = "*" if t["failed"] or t["errors"] else ""
    return f"{t['tps_median']:,.0f}{mark}"


def throughput_table(summary: Sequence[dict[str, Any]]) -> str:
    headers = [
        "scenario",
        "clients",
        "direct tps",
        "PgBouncer tps",
        "proxy tps",
        "proxy/PgB",
        "proxy/direct",
        "PgB CPU s/1k tx",
        "proxy CPU s/1k tx",
    ]
    # The pure-Python proxy, when the run measured it: what the compiled twin buys.
    pure = any("proxy-pure" in s["targets"] for s in summary)
    if pure:
        headers += ["pure tps", "proxy/pure", "pure CPU s/1k tx"]
    rows = []
    for s in summary:
        t = s["targets"]
        row = [
            s["kind"],
            str(s["clients"]),
            _cell_tps(t.get("direct")),
            _cell_tps(t.get("pgbouncer")),
            _cell_tps(t.get("proxy")),
            _fmt(s["ratios"].get("proxy/pgbouncer"), ".2f", "x"),
            _fmt(s["ratios"].get("proxy/direct"), ".2f", "x"),
            _fmt((t.get("pgbouncer") or {}).get("cpu_s_per_1k_tx_median"), ".3f"),
            _fmt((t.get("proxy") or {}).get("cpu_s_per_1k_tx_median"), ".3f"),
        ]
        if pure:
            row += [
                _cell_tps(t.get("proxy-pure")),
                _fmt(s["ratios"].get("proxy/proxy-pure"), ".2f", "x"),
                _fmt((t.get("proxy-pure") or {}).get("cpu_s_per_1k_tx_median"), ".3f"),
            ]
        rows.append(row)
    return _table(headers, rows)


def latency_table(summary: Sequence[dict[str, Any]]) -> str:
    rows = []
    for s in summary:
        if s["kind"] != "latency":
            continue
        added = s.get("added_p50_us_over_direct", {})
        for name, t in s["targets"].items():
            rows.append(
                [
                    TARGET_LABELS.get(name, name),
                    _fmt(t["p50_ms_median"], ".3f"),
                    _fmt(t["p99_ms_median"], ".3f"),
                    "0" if name == "direct" else _fmt(added.get(name), "+.0f"),
                    _fmt(t["tps_median"], ",.0f"),
                ]
            )
    headers = ["target (1 client)", "p50 ms", "p99 ms", "added p50 µs", "tps"]
    return _table(headers, rows)


def loop_lag_table(runs: Sequence[dict[str, Any]]) -> str:
    """Per scenario, the worst per-run p99 and max event-loop lag of the proxy over rounds."""
    worst: dict[str, list[float]] = {}
    for r in runs:
        lag = r.get("loop_lag")
        if lag and r.get("target", "proxy") == "proxy":
            row = worst.setdefault(r["scenario"], [0.0, 0.0])
            row[0] = max(row[0], lag["p99_ms"])
            row[1] = max(row[1], lag["max_ms"])
    rows = [[name, _fmt(p99, ".1f"), _fmt(top, ".1f")] for name, (p99, top) in worst.items()]
    return _table(["scenario (proxy)", "loop lag p99 ms", "loop lag max ms"], rows)


def memory_table(memory: Sequence[dict[str, Any]]) -> str:
    rows = []
    for m in memory:
        if "skipped" in m:
            continue
        per = m["bytes_per_client"]
        rows.append(
            [
                TARGET_LABELS.get(m["target"], m["target"]),
                f"{m['clients_open']:,}"
                + (f" ({m['clients_failed']} failed)" if m["clients_failed"] else ""),
                f"{m['rss_before_bytes'] / 2**20:.1f}",
                f"{m['rss_after_bytes'] / 2**20:.1f}",
                _fmt(per / 1024 if per is not None else None, ".1f"),
            ]
        )
    headers = ["pooler", "idle clients", "RSS before MiB", "RSS after MiB", "KiB per client"]
    return _table(headers, rows)


def notes_lines(results: dict[str, Any]) -> list[str]:
    lines = list(results.get("notes", []))
    for s in results.get("summary", []):
        for name, t in s["targets"].items():
            label = TARGET_LABELS.get(name, name)
            if t["failed"]:
                lines.append(f"{s['scenario']} {label}: {t['failed']} failed transactions")
            for err in t["errors"]:
                lines.append(f"{s['scenario']} {label}: {err}")
    for m in results.get("memory", []):
        if m.get("skipped"):
            lines.append(f"memory {m['target']}: {m['skipped']}")
        elif m.get("error"):
            lines.append(f"memory {m['target']}: {m['error']}")
    return lines


def format_report(results: dict[str, Any]) -> str:
    parts = [
        "Throughput (median tps over rounds; ratios are medians of same-round ratios; "
        "* = failed transactions or errors in some run):",
        throughput_table(results["summary"]),
    ]
    if any(s["kind"] == "latency" for s in results["summary"]):
        parts += ["", "Latency at 1 client (select-only, per-transaction log):"]
        parts.append(latency_table(results["summary"]))
    if any(r.get("loop_lag") for r in results.get("runs", [])):
        parts += ["", "Event-loop lag of the proxy (worst run per scenario; p99: a bucket bound):"]
        parts.append(loop_lag_table(results["runs"]))
    if results.get("memory"):
        parts += ["", "Memory with idle authenticated clients:", memory_table(results["memory"])]
    notes = notes_lines(results)
    if notes:
        parts += ["", "Notes:", *(f"- {n}" for n in notes)]
    return "\n".join(parts)


# --------------------------------------------------------------------------------------------
# Files


def write_json(results: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")


def write_chart(results: dict[str, Any], path: Path, kind: str = "select-simple") -> str | None:
    """tps by client count, one line per target; returns why not when it cannot be drawn."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install -e '.[bench]'): no chart"
    series: dict[str, list[tuple[int, float]]] = {}
    for s in results["summary"]:
        if s["kind"] != kind:
            continue
        for name, t in s["targets"].items():
            if t["tps_median"] is not None:
                series.setdefault(name, []).append((s["clients"], t["tps_median"]))
    if not series:
        return f"no {kind} results to chart"
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for name in TARGET_ORDER:
        points = sorted(series.get(name, []))
        if points:
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, marker="o", label=TARGET_LABELS[name])
    ax.set_xscale("log")
    ticks = sorted({x for points in series.values() for x, _ in points})
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{t:,}" for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("pgbench clients")
    ax.set_ylabel("transactions per second")
    machine = results.get("machine", {})
    ax.set_title(
        f"{KINDS[kind].title} — {machine.get('nproc', '?')} CPUs, "
        f"pool size {results.get('settings', {}).get('pool_size', '?')}"
    )
    ax.set_ylim(bottom=0)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return None


def _load_line(results: dict[str, Any]) -> list[str]:
    load = results.get("load_average")
    if not load:
        return []
    start = load["start"]
    # Only the value before the run says whether other work was competing: during it the
    # benchmark's own backends keep the load high.
    return [
        f"- load average (1/5/15 min) before the run: {start[0]:.2f}/{start[1]:.2f}/{start[2]:.2f}",
    ]


def render_results_md(results: dict[str, Any], chart: str | None = "results/tps.png") -> str:
    m = results["machine"]
    st = results["settings"]
    out = [
        "# Benchmark results",
        "",
        f"Measured {results['started']} in {results['elapsed_s'] / 60:.1f} minutes with:",
        "",
        "```sh",
        results["command"],
        "```",
        "",
        "## Machine",
        "",
        f"- {m['nproc']} CPUs ({m['cpu_model']}), {m['memory_gib']} GiB memory, "
        f"Linux {m['kernel']}",
        f"- PostgreSQL {m['postgresql']}, PgBouncer {m['pgbouncer']}, "
        f"pgpool-proxy {m['pgpool_proxy']} (checkout at commit {m['commit']}), "
        f"Python {m['python']}, uvloop {m['uvloop']}",
        *_load_line(results),
        "",
        "## Setup",
        "",
        f"- pgbench scale {st['scale']}, {st['duration_s']:g} s per run, {st['rounds']} round(s); "
        "targets run alternately (direct, PgBouncer, proxy) within each round",
        f"- transaction pooling, pool size {st['pool_size']} for both poolers; md5 "
        "authentication everywhere; PostgreSQL max_connections "
        f"{st['max_connections']} (so direct runs only up to {st['direct_max_clients']} "
        "clients)",
        "- everything (PostgreSQL, pooler, pgbench) shares the same CPUs over 127.0.0.1",
        "- CPU s/1k tx: user+system CPU seconds of the pooler process per 1,000 transactions, "
        "sampled from /proc during the run; like pgbench's tps it leaves out the initial "
        "connection phase (except under -C, where connecting is the workload)",
        "- pgbench -T counts the initial connection phase too (up to ~3 s at 5,000 clients), "
        "so those runs measure fewer seconds of transactions",
        "",
        "## Throughput",
        "",
        throughput_table(results["summary"]),
        "",
        "Ratios are the median of proxy/other taken within each round; "
        "`*` marks failed transactions or errors in some run (see notes).",
    ]
    if chart:
        out += ["", f"![tps by client count, select-only simple]({chart})"]
    if any(s["kind"] == "latency" for s in results["summary"]):
        out += ["", "## Latency at 1 client", "", latency_table(results["summary"])]
        out += ["", "p50/p99 from pgbench's per-transaction log (`--log`)."]
    if results.get("memory"):
        out += ["", "## Memory per idle client", "", memory_table(results["memory"]), ""]
        out.append(
            "RSS of the pooler process before and after opening the idle authenticated clients "
            "(from helper processes), on a freshly started pooler; the difference divided by "
            "the clients."
        )
    notes = notes_lines(results)
    if notes:
        out += ["", "## Notes", "", *(f"- {n}" for n in notes)]
    return "\n".join(out) + "\n"


# Sections of RESULTS.md written by hand (other harnesses, one-off runs): kept on rewrite.
HAND_WRITTEN = ("## Prepared statements", "## Failover", "## Re-checks")


def keep_hand_written(new: str, old: str) -> str:
    """``new`` with the hand-written sections of ``old`` put back before its Notes."""
    kept: list[str] = []
    section: list[str] | None = None
    for line in old.splitlines():
        if line.startswith("## "):
            if section is not None:
                kept.append("\n".join(section).rstrip() + "\n")
            section = [line] if line.startswith(HAND_WRITTEN) else None
        elif section is not None:
            section.append(line)
    if section is not None:
        kept.append("\n".join(section).rstrip() + "\n")
    if not kept:
        return new
    block = "\n".join(kept) + "\n"
    at = new.find("\n## Notes")
    if at < 0:
        return new.rstrip() + "\n\n" + block
    return new[: at + 1] + block + new[at + 1 :]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.report", description="Write bench/RESULTS.md from a results file"
    )
    p.add_argument("--json", type=Path, default=DEFAULT_OUT_DIR / "latest.json")
    p.add_argument("--out", type=Path, default=BENCH_DIR / "RESULTS.md")
    p.add_argument("--print", action="store_true", help="also print the table")
    args = p.parse_args(argv)
    results = json.loads(args.json.read_text())
    chart = args.json.parent / "tps.png"
    rel: str | None = None
    if chart.exists():
        rel = os.path.relpath(chart, args.out.resolve().parent)
    text = render_results_md(results, rel)
    if args.out.exists():
        text = keep_hand_written(text, args.out.read_text())
    args.out.write_text(text)
    if args.print:
        print(format_report(results))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
