"""deploy/grafana's dashboard asks only for metrics a real proxy exports: every metric name in
every PromQL expression (panels and template variables) is checked against a live scrape."""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path
from typing import Any

import asyncpg
from prometheus_client.parser import text_string_to_metric_families

from tests.support.proxy import StartProxy

DASHBOARD = Path(__file__).parents[2] / "deploy" / "grafana" / "pgpool-proxy-dashboard.json"
METRIC = re.compile(r"\b((?:pgpool_proxy|process)_[a-z0-9_]+)\b")
SUFFIXES = ("_total", "_bucket", "_sum", "_count")


def expressions(dashboard: dict[str, Any]) -> list[str]:
    found: list[str] = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            assert "title" in panel, panel
            if panel.get("type") != "row":
                assert panel.get("targets"), f"panel {panel['title']!r} has no query"
            for target in panel.get("targets", ()):
                found.append(target["expr"])
            walk(panel.get("panels", []))

    walk(dashboard["panels"])
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            found.append(var["definition"])
    return found


async def test_dashboard_metrics_exist(start_proxy: StartProxy) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"]
    exprs = expressions(dashboard)
    assert len(exprs) >= 20
    for expr in exprs:
        assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), expr
    proxy = start_proxy(metrics={"listen": "127.0.0.1:0"})
    conn = await asyncpg.connect(proxy.dsn())
    try:
        await conn.fetchval("SELECT $1::int", 1)
        assert proxy.server is not None and proxy.server.metrics_endpoint is not None
        url = f"http://127.0.0.1:{proxy.server.metrics_endpoint.port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as resp:
            body = resp.read().decode()
    finally:
        await conn.close()
    exported: set[str] = set()
    for family in text_string_to_metric_families(body):
        exported.add(family.name)
        exported.update(s.name for s in family.samples)
    used = {name for expr in exprs for name in METRIC.findall(expr)}
    assert len(used) >= 25
    missing = set()
    for name in used:
        base = next((name[: -len(s)] for s in SUFFIXES if name.endswith(s)), name)
        if name not in exported and base not in exported:
            missing.add(name)
    assert not missing, f"the dashboard uses metrics the proxy does not export: {missing}"
