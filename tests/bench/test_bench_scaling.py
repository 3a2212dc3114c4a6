"""Smoke test of the pinned scaling run (bench/scaling.py): which layouts a machine holds, that
the pooler (with every worker it forks) and PostgreSQL (with every backend) run on their own
CPUs, and the shape of scaling.json. 1 s runs, the proxy only; the figures are not checked."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from bench.scaling import (
    Layout,
    ScalingOptions,
    _cpu_arg,
    bottleneck,
    default_workers,
    plan_layouts,
    run_scaling,
    strays,
)
from bench.targets import Database, ProxyTarget, process_tree
from tests.support.pg import pg_available

needs_two_cpus = pytest.mark.skipif(
    len(os.sched_getaffinity(0)) < 2, reason="pinning apart needs 2 usable CPUs"
)


def test_layouts_a_machine_holds() -> None:
    layouts, notes = plan_layouts([0, 1], [1, 2])
    assert layouts == [Layout(1, (0,), (1,))]
    assert len(notes) == 1 and notes[0].startswith("workers=2 not run: it needs 2 CPU(s)")

    layouts, notes = plan_layouts([4, 5, 6, 7, 0, 1, 2, 3], [1, 2, 4, 8])
    assert [(lay.pooler_cpus, lay.load_cpus) for lay in layouts] == [
        ((0,), (1, 2, 3, 4, 5, 6, 7)),
        ((0, 1), (2, 3, 4, 5, 6, 7)),
        ((0, 1, 2, 3), (4, 5, 6, 7)),
    ]
    assert [n.split(":")[0] for n in notes] == ["workers=8 not run"]
    # Two load CPUs per worker: 8 CPUs hold workers=2 but no longer workers=4.
    assert [lay.workers for lay in plan_layouts(range(8), [1, 2, 4], 2.0)[0]] == [1, 2]
    layouts, notes = plan_layouts([0], [1])  # one CPU: nothing to pin apart
    assert layouts == [] and notes[0].startswith("workers=1 not run")

    assert default_workers([0, 1]) == [1, 2]
    assert default_workers(range(8)) == [1, 2, 4, 8]
    assert _cpu_arg("0-2,5") == [0, 1, 2, 5]
    assert bottleneck(0.95, 0.5) == "pooler" and bottleneck(0.5, 0.97) == "pgbench+PostgreSQL"
    assert bottleneck(0.5, 0.5) == "neither" and bottleneck(0.9, 0.9) == "both"


@needs_two_cpus
@pytest.mark.skipif(not pg_available(), reason="no PostgreSQL server binaries")
@pytest.mark.timeout(60)
def test_forked_proxy_workers_inherit_the_pin() -> None:
    """workers = 2 on one CPU: the supervisor is pinned before it execs, its forks inherit."""
    from pgpool_devkit.pgserver import LocalPostgres

    cpu = min(os.sched_getaffinity(0))
    # The proxy opens no server connection until a client arrives: an unstarted server will do.
    proxy = ProxyTarget(Database(LocalPostgres(), 10), 1, {"proxy": {"workers": 2}})
    proxy.cpus = frozenset({cpu})
    with proxy:
        assert proxy.pid is not None
        deadline = time.monotonic() + 30
        while len(process_tree(proxy.pid)) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(process_tree(proxy.pid)) == 3  # the supervisor and two workers
        assert strays(proxy.pid, [cpu]) == []


@needs_two_cpus
@pytest.mark.skipif(not pg_available(), reason="no PostgreSQL server binaries")
@pytest.mark.timeout(120)
def test_scaling_smoke(tmp_path: Path) -> None:
    own = os.sched_getaffinity(0)
    lines: list[str] = []
    opts = ScalingOptions(
        workers=[1, len(own)],  # the second never fits: it would leave no CPU for the load
        client_counts=[2],
        duration_s=1,
        rounds=1,
        pool_size=2,
        scale=1,
        targets=["proxy"],
        install_pgbouncer=False,
        warm_up=False,
        quiet_wait_s=0.5,
        out_dir=tmp_path,
        command="python -m bench.scaling (smoke)",
    )
    run_scaling(opts, log=lines.append)
    assert os.sched_getaffinity(0) == own  # restored

    data = json.loads((tmp_path / "scaling.json").read_text())
    assert {"machine", "cpus", "layouts", "settings", "summary", "runs", "notes"} <= set(data)
    assert [lay["workers"] for lay in data["layouts"]] == [1]
    assert any(n.startswith(f"workers={len(own)} not run") for n in data["notes"])
    assert [(r["scenario"], r["target"]) for r in data["runs"]] == [
        ("select-simple@2", "proxy"),
        ("select-extended@2", "proxy"),
    ]
    for run in data["runs"]:
        assert run["error"] == "" and run["tps"] > 0
        assert run["affinity_stray"] == []  # every proxy and PostgreSQL process where it belongs
        assert run["pooler_cpus"] == [min(own)] and min(own) not in run["load_cpus"]
        assert set(run["core_busy"]) == {str(c) for c in own}
        assert run["cpu_s_per_1k_tx"] > 0 and run["tps_per_pooler_core"] > 0
        assert 0 < run["pooler_util"] <= 1.5 and run["postgres_cpu_s"] > 0
        assert run["pgbench_cpu_s"] > 0
        assert run["load_cpu_s_per_1k_tx"] > run["postgres_cpu_s_per_1k_tx"] > 0
        assert run["bottleneck"] in ("pooler", "pgbench+PostgreSQL", "both", "neither")
        assert run["pooler_cores_other"] >= 0 and run["load_cores_other"] >= 0
        assert 0.5 <= run["quiet_wait_s"] < 5 and isinstance(run["disturbed"], bool)
    assert [s["tps"] > 0 for s in data["summary"]] == [True, True]
    assert all(s["runs_used"] == 1 and s["runs_clean"] <= 1 for s in data["summary"])
    assert any("tps/pooler core" in line for line in lines)
