"""The metrics pieces that need no network: [metrics] config, request parsing, histogram buckets,
worker snapshot merging (and fetching a large one over a Unix socket), the collector's rendering
of a proxy that is not serving, JSON logs."""

from __future__ import annotations

import asyncio
import json
import logging
import types
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry

from pgpool_proxy.admin.http import parse_request_head
from pgpool_proxy.admin.metrics import _wait_buckets, build_registry
from pgpool_proxy.admin.worker_metrics import (
    StaticCollector,
    all_ready,
    encode_families,
    fetch_snapshot,
    merge,
)
from pgpool_proxy.cli import JsonFormatter
from pgpool_proxy.config import ConfigError, build_config
from pgpool_proxy.counters import WAIT_BOUNDS_S, wait_buckets
from pgpool_proxy.runtime.server import ProxyServer

BASE = {
    "databases": [{"name": "app", "host": "10.0.0.5", "port": 5433}],
    "users": [{"name": "alice", "password": "pw"}],
}


def config(env: dict[str, str] | None = None, **sections: object):  # type: ignore[no-untyped-def]
    return build_config({**BASE, **sections}, env=env or {})


# --- config ------------------------------------------------------------------------------------


def test_metrics_config() -> None:
    assert not config().metrics.enabled
    assert not config(metrics={"listen": ""}).metrics.enabled
    m = config(metrics={"listen": "0.0.0.0:9187", "request_timeout_s": 2}).metrics
    assert (m.enabled, m.listen_host, m.listen_port, m.request_timeout_s) == (
        True,
        "0.0.0.0",
        9187,
        2.0,
    )
    env = config(env={"PGPOOL_METRICS_LISTEN": "[::1]:9000"}).metrics
    assert (env.listen_host, env.listen_port) == ("::1", 9000)


@pytest.mark.parametrize(
    ("section", "env", "problem"),
    [
        ({"listen": "9187"}, {}, 'metrics.listen: expected "host:port"'),
        ({"listen": 9187}, {}, "metrics.listen: expected a string"),
        ({"lisen": "127.0.0.1:1"}, {}, 'metrics.lisen: unknown key; did you mean "listen"?'),
        ({"request_timeout_s": 0}, {}, "metrics.request_timeout_s: must be between 0 and 300"),
        ({}, {"PGPOOL_METRICS_LISTEN": "x:y"}, "PGPOOL_METRICS_LISTEN): port must be a number"),
    ],
)
def test_metrics_config_problems(
    section: dict[str, object], env: dict[str, str], problem: str
) -> None:
    with pytest.raises(ConfigError) as info:
        config(env=env, metrics=section)
    assert any(problem in p for p in info.value.problems), info.value.problems


# --- HTTP request heads ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", ("GET", "/metrics")),
        (b"HEAD /readyz?verbose=1 HTTP/1.0\r\n\r\n", ("HEAD", "/readyz")),
        (b"POST /metrics HTTP/1.1\r\n\r\n", ("POST", "/metrics")),
        (b"GET /metrics\r\n\r\n", None),
        (b"GET  /metrics HTTP/1.1\r\n\r\n", None),
        (b"GET http://x/metrics HTTP/1.1\r\n\r\n", None),
        (b"GET /metrics HTTP/2\r\n\r\n", None),
        (b"G3T /metrics HTTP/1.1\r\n\r\n", None),
        (b"GET /m\x01 HTTP/1.1\r\n\r\n", None),
        (b"GET /metrics HTTP/1.1\r\nbroken\r\n\r\n", None),
        (b"GET /metrics HTTP/1.1\r\n folded: x\r\n\r\n", None),
        ("GET /é HTTP/1.1\r\n\r\n".encode(), None),
        (b"\r\n\r\n", None),
    ],
)
def test_parse_request_head(head: bytes, expected: tuple[str, str] | None) -> None:
    assert parse_request_head(head) == expected


# --- histogram -----------------------------------------------------------------------------------


def test_wait_buckets_are_cumulative_with_instant_acquires_lowest() -> None:
    counts = wait_buckets()
    counts[0] += 1  # a wait under 0.5 ms
    counts[WAIT_BOUNDS_S.index(0.1)] += 2  # two waits in (50 ms, 100 ms]
    counts[-1] += 1  # one above the last bound
    pool = types.SimpleNamespace(wait_buckets=counts, instant_acquires=10)
    buckets = dict(_wait_buckets(pool))  # type: ignore[arg-type]
    assert buckets["0.0005"] == 11
    assert buckets["0.05"] == 11
    assert buckets["0.1"] == 13
    assert buckets["60.0"] == 13
    assert buckets["+Inf"] == 14
    assert list(buckets)[-1] == "+Inf" and len(buckets) == len(WAIT_BOUNDS_S) + 1


# --- rendering and worker merging ----------------------------------------------------------------


def parse(text: bytes) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for f in text_string_to_metric_families(text.decode())
        for s in f.samples
    }


def test_collector_renders_a_proxy_that_is_not_serving() -> None:
    server = ProxyServer(config())
    server.counters.auth_failures["password"] += 3
    samples = parse(generate_latest(build_registry(server)))
    assert samples[("pgpool_proxy_ready", frozenset())] == 0  # not listening
    assert samples[("pgpool_proxy_auth_failures_total", frozenset({("reason", "password")}))] == 3
    writer = frozenset({("database", "app"), ("address", "10.0.0.5:5433")})
    assert samples[("pgpool_proxy_writer", writer)] == 1
    assert samples[("pgpool_proxy_failovers_total", frozenset({("database", "app")}))] == 0
    assert samples[("pgpool_proxy_client_connections", frozenset({("state", "idle")}))] == 0
    assert all(name.startswith(("pgpool_proxy_", "process_")) for name, _ in samples)


def test_merge_labels_each_worker_and_marks_silent_ones() -> None:
    server = ProxyServer(config())
    registry = build_registry(server)
    families = encode_families(registry.collect())
    server.counters.logins = 5
    busier = encode_families(registry.collect())
    snapshots = [
        {"worker": 0, "ready": True, "why": "ready", "families": families},
        {"worker": 1, "ready": True, "why": "ready", "families": busier},
        None,
    ]
    merged = CollectorRegistry(auto_describe=False)
    merged.register(StaticCollector(merge(snapshots)))
    samples = parse(generate_latest(merged))
    logins = {
        dict(labels)["worker"]: v
        for (name, labels), v in samples.items()
        if name == "pgpool_proxy_client_logins_total" and ("kind", "pool") in labels
    }
    assert logins == {"0": 0, "1": 5}
    up = {dict(k[1])["worker"]: v for k, v in samples.items() if k[0] == "pgpool_proxy_worker_up"}
    assert up == {"0": 1, "1": 1, "2": 0}
    assert all_ready(snapshots) == (False, "worker 2 is not answering")
    assert all_ready(snapshots[:2]) == (True, "ready")
    snapshots[1] = {"worker": 1, "ready": False, "why": "draining (shutting down)"}
    assert all_ready(snapshots[:2]) == (False, "worker 1: draining (shutting down)")


async def test_a_large_snapshot_arrives_whole(tmp_path: Path) -> None:
    # Megabytes arrive in several reads: the fetch reads to EOF, not one read()'s worth.
    payload = json.dumps({"worker": 1, "ready": True, "families": ["x" * 100] * 20000}).encode()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        for i in range(0, len(payload), 65536):
            writer.write(payload[i : i + 65536])
            await writer.drain()
            await asyncio.sleep(0)  # a loop turn between chunks: the reader sees several reads
        writer.close()

    path = str(tmp_path / "s.sock")
    server = await asyncio.start_unix_server(handle, path)
    try:
        got = await fetch_snapshot(path, b"metrics\n", 5)
        assert got is not None and len(got["families"]) == 20000
    finally:
        server.close()


def test_json_log_lines_carry_extra_fields() -> None:
    record = logging.LogRecord(
        "pgpool_proxy.server", logging.INFO, __file__, 1, "closed %s", ("x",), None
    )
    record.__dict__.update(event="client_disconnect", user="alice", db="app", reason="client_eof")
    out = json.loads(JsonFormatter(worker=1).format(record))
    assert out["msg"] == "closed x" and out["worker"] == 1
    assert (out["event"], out["user"], out["db"], out["reason"]) == (
        "client_disconnect",
        "alice",
        "app",
        "client_eof",
    )
