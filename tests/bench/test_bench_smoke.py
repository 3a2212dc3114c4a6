"""Smoke test of the benchmark harness (bench/): its pieces work and its JSON has the expected
shape. Tiny durations, PostgreSQL direct and the proxy only (PgBouncer is never needed); the
figures themselves are not checked: benchmarks are never part of the suite's pass/fail."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from bench.__main__ import build_parser, options_from_args
from bench.looplag import LagSnapshot, between
from bench.pgbench import latency_log_percentiles, parse_output
from bench.report import render_results_md
from bench.run import Options, run_benchmark
from tests.support.pg import pg_available

PGBENCH_OUTPUT = """\
pgbench (15.18 (Debian 15.18-0+deb12u1))
transaction type: <builtin: select only>
scaling factor: 1
query mode: simple
number of clients: 8
number of threads: 2
maximum number of tries: 1
duration: 1 s
number of transactions actually processed: 15557
number of failed transactions: 3 (0.019%)
latency average = 0.512 ms
initial connection time = 6.609 ms
tps = 15557.362384 (without initial connection time)
"""


def test_parse_pgbench_output() -> None:
    figures = parse_output(PGBENCH_OUTPUT)
    assert figures == {
        "transactions": 15557,
        "failed": 3,
        "latency_avg_ms": 0.512,
        "connection_time_ms": 6.609,
        "tps": 15557.362384,
    }
    assert parse_output("pgbench: error: connection refused")["tps"] is None


def test_latency_log_percentiles(tmp_path: Path) -> None:
    # client_id transaction_no time_us script_no epoch epoch_us
    lines = [f"0 {i} {100 + i} 0 1700000000 {i}" for i in range(100)]
    lines.append("0 100 failed 0 1700000000 100")
    (tmp_path / "txlog.123").write_text("\n".join(lines) + "\n")
    (tmp_path / "txlog.123.1").write_text("1 0 1000 0 1700000000 0\n")
    p50, p99 = latency_log_percentiles(tmp_path, "txlog")
    assert p50 == pytest.approx(0.150)
    assert p99 == pytest.approx(0.199)


def test_cli_options() -> None:
    argv = ["--quick", "--targets", "direct,proxy", "--proxy-set", "pool.min_pool_size=2"]
    opts = options_from_args(build_parser().parse_args(argv), argv)
    assert opts.rounds == 1 and opts.client_counts == [10, 100]
    assert opts.targets == ["direct", "proxy"]
    assert opts.proxy_settings == {"pool": {"min_pool_size": 2}}
    assert opts.command == "python -m bench --quick --targets direct,proxy --proxy-set " + (
        "pool.min_pool_size=2"
    )


def test_loop_lag_between_two_scrapes() -> None:
    inf = float("inf")
    before = LagSnapshot([(0.001, 10), (0.01, 10), (0.1, 10), (inf, 10)], max_s=0.0008)
    after = LagSnapshot([(0.001, 100), (0.01, 108), (0.1, 110), (inf, 110)], max_s=0.07)
    # 100 ticks: 90 within 1 ms, 8 within 10 ms, 2 within 100 ms (the worst a new record).
    assert between(before, after) == {"ticks": 100, "p99_ms": 70.0, "max_ms": 70.0}
    again = LagSnapshot([(0.001, 199), (0.01, 209), (0.1, 210), (inf, 210)], max_s=0.07)
    # 99 within 1 ms, 1 within 10 ms: no new record, so the max is that bucket's bound.
    assert between(after, again) == {"ticks": 100, "p99_ms": 1.0, "max_ms": 10.0}
    assert between(again, again) is None and between(None, again) is None


@pytest.mark.skipif(not pg_available(), reason="no PostgreSQL server binaries")
@pytest.mark.timeout(120)
def test_harness_smoke(tmp_path: Path) -> None:
    lines: list[str] = []
    opts = Options(
        client_counts=[2, 4],
        kinds=["select-simple", "select-extended", "tpcb"],
        churn_clients=4,
        latency=True,
        duration_s=1,
        rounds=1,
        pool_size=2,
        scale=1,
        targets=["direct", "proxy"],
        install_pgbouncer=False,
        memory_clients=20,
        out_dir=tmp_path,
        warm_up=False,
        command="python -m bench (smoke)",
    )
    run_benchmark(opts, log=lines.append)

    data = json.loads((tmp_path / "latest.json").read_text())
    assert {"version", "started", "elapsed_s", "command", "machine", "settings"} <= set(data)
    assert {"summary", "runs", "memory", "notes", "load_average"} <= set(data)
    assert {"nproc", "cpu_model", "memory_gib", "postgresql", "pgbouncer"} <= set(data["machine"])
    assert data["settings"]["targets_run"] == ["direct", "proxy"]

    expected = {
        f"{kind}@{c}" for kind in ("select-simple", "select-extended", "tpcb") for c in (2, 4)
    } | {"churn@4", "latency@1"}
    assert [s["scenario"] for s in data["summary"]] == [
        *(f"{k}@{c}" for k in ("select-simple", "select-extended", "tpcb") for c in (2, 4)),
        "churn@4",
        "latency@1",
    ]
    assert {r["scenario"] for r in data["runs"]} == expected
    assert len(data["runs"]) == len(expected) * 2  # one round, two targets
    for run in data["runs"]:
        assert run["target"] in ("direct", "proxy")
        assert isinstance(run["tps"], float) and isinstance(run["transactions"], int)
        assert isinstance(run["failed"], int) and isinstance(run["error"], str)
        assert run["command"].startswith("pgbench ")
        if run["target"] == "proxy":
            assert isinstance(run["cpu_s"], float)
            # The proxy's own lag histogram, scraped around the run (ticks every 50 ms).
            assert run["loop_lag"]["ticks"] >= 1, run["loop_lag"]
            assert 0 <= run["loop_lag"]["p99_ms"] <= run["loop_lag"]["max_ms"] + 1e-9
        else:
            assert run["cpu_s"] is None
            assert run["loop_lag"] is None
    for entry in data["summary"]:
        assert set(entry["targets"]) == {"direct", "proxy"}
        assert set(entry["ratios"]) == {"proxy/pgbouncer", "proxy/direct"}
        assert entry["ratios"]["proxy/pgbouncer"] is None  # PgBouncer not run
        for figures in entry["targets"].values():
            assert {"tps_median", "tps_runs", "failed", "errors", "cpu_s_per_1k_tx_median"} <= set(
                figures
            )
    # The harness works end to end: select-only through both targets completed transactions.
    simple = next(s for s in data["summary"] if s["scenario"] == "select-simple@2")
    assert simple["targets"]["direct"]["tps_median"] > 0
    assert simple["targets"]["proxy"]["tps_median"] > 0
    latency = next(s for s in data["summary"] if s["kind"] == "latency")
    assert latency["targets"]["direct"]["p50_ms_median"] > 0
    assert set(latency["added_p50_us_over_direct"]) == {"pgbouncer", "proxy"}

    assert any("Event-loop lag of the proxy" in line for line in lines)

    assert [m["target"] for m in data["memory"]] == ["proxy"]
    memory = data["memory"][0]
    assert memory["clients_used"] == 20 and memory["clients_open"] == 20
    assert memory["rss_after_bytes"] > 0

    if importlib.util.find_spec("matplotlib") is not None:
        assert (tmp_path / "tps.png").stat().st_size > 0
    md = render_results_md(data)
    assert "## Throughput" in md and "python -m bench (smoke)" in md
    assert any("select-simple" in line for line in lines)


@pytest.mark.skipif(not pg_available(), reason="PostgreSQL server binaries not found")
def test_failover_bench_one_run(tmp_path: Path) -> None:
    from bench.failover import main as failover_main

    out = tmp_path / "failover.json"
    assert failover_main(["--runs", "1", "--promote-after", "0.5", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    (run,) = data["runs"]
    assert run["promote_to_write_s"] is not None
    assert run["lost_commits"] == 0
    assert run["idle_kept"] == run["idle_total"]


def test_report_keeps_hand_written_sections() -> None:
    from bench.report import keep_hand_written

    old = "# R\n\n## Throughput\nold\n\n## Failover\nfigures\n\n## Notes\n- n\n"
    new = "# R\n\n## Throughput\nnew\n\n## Notes\n- m\n"
    merged = keep_hand_written(new, old)
    assert merged == "# R\n\n## Throughput\nnew\n\n## Failover\nfigures\n\n## Notes\n- m\n"
    assert keep_hand_written(new, "# R\n") == new


def test_pure_python_target_and_its_ratio() -> None:
    """proxy-pure runs the same checkout with PGPOOL_PURE_PYTHON=1 (and only it does: the
    pooler processes get no PGPOOL_* of the caller's shell); its ratio appears only in runs
    that measured it."""
    from bench.report import summarize
    from bench.targets import ProxyTarget, PureProxyTarget

    assert PureProxyTarget.env(None).get("PGPOOL_PURE_PYTHON") == "1"  # type: ignore[arg-type]
    assert "PGPOOL_PURE_PYTHON" not in ProxyTarget.env(None)  # type: ignore[arg-type]

    def run(target: str, rnd: int, tps: float) -> dict[str, object]:
        return {
            "scenario": "select-simple@10",
            "kind": "select-simple",
            "clients": 10,
            "target": target,
            "round": rnd,
            "tps": tps,
            "transactions": int(tps),
            "failed": 0,
            "error": "",
            "cpu_s": 1.0,
            "cpu_s_per_1k_tx": 0.05,
            "latency_avg_ms": 1.0,
            "p50_ms": None,
            "p99_ms": None,
        }

    both = [run("proxy", 1, 110.0), run("proxy-pure", 1, 100.0)]
    (entry,) = summarize(both)
    assert entry["ratios"]["proxy/proxy-pure"] == 1.1
    (alone,) = summarize([run("proxy", 1, 110.0)])
    assert "proxy/proxy-pure" not in alone["ratios"]
