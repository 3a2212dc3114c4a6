"""Owns metrics across ``workers = N``: per-worker snapshots over Unix sockets, merged per scrape.

Every worker serves the metrics port (SO_REUSEPORT, like the proxy port), so whichever worker
the kernel hands a scrape to answers it: it asks each sibling for a snapshot over that sibling's
socket in the private peer directory, adds its own, and labels every sample ``worker="i"``.
No single process is special: a worker that dies shows as ``pgpool_proxy_worker_up 0`` (and
/readyz 503) on the others until the supervisor has restarted it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from ..runtime.sibling_socket import SiblingSocket
from .health import readiness

if TYPE_CHECKING:
    from ..runtime.server import ProxyServer
    from ..runtime.workers import WorkerIdentity

log = logging.getLogger("pgpool_proxy.metrics")

# A request is one short line; a snapshot of thousands of pools is a few MB at most.
MAX_REQUEST = 64
MAX_SNAPSHOT = 64 * 1024 * 1024
REQ_METRICS = b"metrics\n"
REQ_READY = b"ready\n"


def snapshot_socket(identity: WorkerIdentity, index: int) -> str:
    assert identity.peer_dir is not None
    return os.path.join(identity.peer_dir, f"m{index}.sock")


def encode_families(families: Iterable[Metric]) -> list[dict[str, Any]]:
    return [
        {
            "name": f.name,
            "doc": f.documentation,
            "type": f.type,
            "unit": f.unit,
            "samples": [[s.name, s.labels, s.value] for s in f.samples],
        }
        for f in families
    ]


def snapshot(server: ProxyServer, registry: CollectorRegistry, with_metrics: bool) -> bytes:
    """This worker's readiness (and families) as JSON; built on the worker's own loop."""
    ready, why = readiness(server)
    out: dict[str, Any] = {"worker": server.identity.index, "ready": ready, "why": why}
    if with_metrics:
        out["families"] = encode_families(registry.collect())
    return json.dumps(out).encode()


class SnapshotServer(SiblingSocket):
    """Answers sibling workers' snapshot requests on this worker's Unix socket."""

    def __init__(self, server: ProxyServer, registry: CollectorRegistry, timeout_s: float) -> None:
        super().__init__(snapshot_socket(server.identity, server.identity.index), MAX_REQUEST)
        self.server = server
        self.registry = registry
        self.timeout_s = timeout_s

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(self.timeout_s):
                request = await reader.readline()
                if request in (REQ_METRICS, REQ_READY):
                    writer.write(snapshot(self.server, self.registry, request == REQ_METRICS))
                    await writer.drain()
        except (OSError, TimeoutError, ValueError, asyncio.LimitOverrunError) as exc:
            log.debug("metrics snapshot request failed: %s", exc)


async def read_to_eof(reader: asyncio.StreamReader, limit: int) -> bytes:
    """Everything until the sender closes (one read() returns whatever has arrived so far);
    ValueError beyond `limit` bytes."""
    chunks: list[bytes] = []
    size = 0
    while chunk := await reader.read(256 * 1024):
        size += len(chunk)
        if size > limit:
            raise ValueError(f"snapshot larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def fetch_snapshot(path: str, request: bytes, timeout_s: float) -> dict[str, Any] | None:
    """A sibling's snapshot, or None when it does not answer in time (dead or restarting)."""
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_unix_connection(path)
            writer.write(request)
            data = await read_to_eof(reader, MAX_SNAPSHOT)
        found = json.loads(data)
        return found if isinstance(found, dict) else None
    except (OSError, TimeoutError, ValueError) as exc:
        log.debug("no metrics snapshot from %s: %s", path, exc)
        return None
    finally:
        if writer is not None:
            writer.close()


async def gather(
    server: ProxyServer, registry: CollectorRegistry, with_metrics: bool, timeout_s: float
) -> list[dict[str, Any] | None]:
    """Every worker's snapshot, by index (None where a worker did not answer)."""
    ident = server.identity
    request = REQ_METRICS if with_metrics else REQ_READY
    own = json.loads(snapshot(server, registry, with_metrics))

    async def one(index: int) -> dict[str, Any] | None:
        if index == ident.index:
            return dict(own)
        return await fetch_snapshot(snapshot_socket(ident, index), request, timeout_s)

    return list(await asyncio.gather(*(one(i) for i in range(ident.count))))


def all_ready(snapshots: list[dict[str, Any] | None]) -> tuple[bool, str]:
    for index, snap in enumerate(snapshots):
        if snap is None:
            return False, f"worker {index} is not answering"
        if not snap.get("ready"):
            return False, f"worker {index}: {snap.get('why', 'not ready')}"
    return True, "ready"


def merge(snapshots: list[dict[str, Any] | None]) -> list[Metric]:
    """One family per name with every worker's samples, each labelled worker="i"."""
    up = GaugeMetricFamily(
        "pgpool_proxy_worker_up",
        "1 for each worker that answered this scrape, 0 for one that did not",
        labels=["worker"],
    )
    families: dict[str, Metric] = {}
    for index, snap in enumerate(snapshots):
        up.add_metric([str(index)], int(snap is not None))
        if snap is None:
            continue
        for fam in snap.get("families", ()):
            metric = families.get(fam["name"])
            if metric is None:
                metric = Metric(fam["name"], fam["doc"], fam["type"], fam.get("unit", ""))
                families[fam["name"]] = metric
            for name, labels, value in fam["samples"]:
                metric.add_sample(name, {"worker": str(index), **labels}, value)
    return [up, *families.values()]


class StaticCollector(Collector):
    """Serves families built elsewhere (the merged snapshots) through generate_latest."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)
