"""Owns the metrics HTTP endpoint: /metrics, /healthz and /readyz on the proxy's own event loop.

A deliberately small HTTP/1.1 server: GET or HEAD, one request per connection, a bounded request
head read within a timeout. Anything malformed gets a 400 and the connection closes; nothing a
client sends can stop the listener.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import socket
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry

from .health import readiness
from .metrics import build_registry
from .worker_metrics import SnapshotServer, StaticCollector, all_ready, gather, merge

if TYPE_CHECKING:
    from ..config import Config
    from ..runtime.server import ProxyServer

log = logging.getLogger("pgpool_proxy.metrics")

MAX_REQUEST_HEAD = 8192
# Connections served at once; more get a 503 and are closed (scrapers need one or two).
MAX_CONNECTIONS = 64
_TEXT = "text/plain; charset=utf-8"
_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
ROUTES = ("/metrics", "/healthz", "/readyz")


class MetricsEndpoint:
    """The HTTP listener of one proxy process (with workers, of each worker: see
    worker_metrics)."""

    def __init__(self, server: ProxyServer) -> None:
        self.server = server
        self.settings = server.config.metrics
        self.registry = build_registry(server)
        self.workers = server.identity.count > 1
        self.host = self.settings.listen_host
        self.port = self.settings.listen_port
        self._http: asyncio.base_events.Server | None = None
        self._snapshots: SnapshotServer | None = None
        self._conns: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        s = self.settings
        if self.workers:
            self._snapshots = SnapshotServer(self.server, self.registry, s.request_timeout_s)
            await self._snapshots.start()
        self._http = await asyncio.start_server(
            self._handle,
            s.listen_host,
            s.listen_port,
            reuse_address=True,
            reuse_port=self.workers,
            limit=MAX_REQUEST_HEAD,
        )
        self.host, self.port = self._http.sockets[0].getsockname()[:2]
        log.info(
            "metrics on http://%s:%s/metrics (/healthz, /readyz)",
            _url_host(self.host),
            self.port,
            extra={"event": "metrics_listening", "addr": f"{self.host}:{self.port}"},
        )

    async def close(self) -> None:
        if self._http is not None:
            self._http.close()
        for task in list(self._conns):
            task.cancel()
        if self._snapshots is not None:
            await self._snapshots.close()

    # --- requests ------------------------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._conns) >= MAX_CONNECTIONS:
            writer.write(_response(503, _TEXT, b"too many connections\n", False))
            writer.close()
            return
        task = asyncio.current_task()
        if task is not None:
            self._conns.add(task)
        try:
            status, ctype, body, head_only = await self._respond(reader)
            writer.write(_response(status, ctype, body, head_only))
            async with asyncio.timeout(self.settings.request_timeout_s):
                await writer.drain()
        except (OSError, TimeoutError) as exc:
            log.debug("metrics client went away: %s", exc)
        except Exception:
            log.exception("metrics request failed")
        finally:
            writer.close()
            if task is not None:
                self._conns.discard(task)

    async def _respond(self, reader: asyncio.StreamReader) -> tuple[int, str, bytes, bool]:
        try:
            async with asyncio.timeout(self.settings.request_timeout_s):
                head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            return 431, _TEXT, b"request head too large\n", False
        except asyncio.IncompleteReadError as exc:
            if not exc.partial:
                raise ConnectionResetError("closed before sending a request") from None
            return 400, _TEXT, b"incomplete request\n", False
        except TimeoutError:
            return 408, _TEXT, b"request not received in time\n", False
        request = parse_request_head(head)
        if request is None:
            return 400, _TEXT, b"malformed request\n", False
        method, path = request
        head_only = method == "HEAD"
        if method not in ("GET", "HEAD"):
            return 405, _TEXT, b"only GET and HEAD are supported\n", False
        if path == "/metrics":
            try:
                return 200, CONTENT_TYPE_LATEST, await self.render_metrics(), head_only
            except Exception:
                log.exception("rendering metrics failed")
                return 500, _TEXT, b"could not collect metrics\n", head_only
        if path == "/healthz":
            # Answered by the event loop itself: if this runs, the loop runs.
            return 200, _TEXT, b"ok\n", head_only
        if path == "/readyz":
            ready, why = await self.readiness()
            return (200 if ready else 503), _TEXT, f"{why}\n".encode(), head_only
        return 404, _TEXT, b"not found (try /metrics, /healthz or /readyz)\n", head_only

    async def render_metrics(self) -> bytes:
        """The Prometheus text exposition, of this process or (workers) of all of them."""
        if not self.workers:
            return generate_latest(self.registry)
        snapshots = await gather(
            self.server, self.registry, True, self.settings.request_timeout_s / 2
        )
        merged = CollectorRegistry(auto_describe=False)
        merged.register(StaticCollector(merge(snapshots)))
        return generate_latest(merged)

    async def readiness(self) -> tuple[bool, str]:
        if not self.workers:
            return readiness(self.server)
        snapshots = await gather(
            self.server, self.registry, False, self.settings.request_timeout_s / 2
        )
        return all_ready(snapshots)


def parse_request_head(head: bytes) -> tuple[str, str] | None:
    """(method, path without query) of an HTTP/1.x request head, or None when malformed."""
    try:
        text = head.decode("ascii")
    except UnicodeDecodeError:
        return None
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3:
        return None
    method, target, version = parts
    if not method.isalpha() or not method.isupper() or version not in ("HTTP/1.0", "HTTP/1.1"):
        return None
    if not target.startswith("/") or any(c.isspace() or ord(c) < 33 for c in target):
        return None
    for line in lines[1:]:
        if line and (":" not in line or line[0] in " \t"):
            return None
    return method, target.split("?", 1)[0]


def _response(status: int, ctype: str, body: bytes, head_only: bool) -> bytes:
    head = (
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
        f"Content-Type: {ctype}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Cache-Control: no-store\r\n"
        "Connection: close\r\n"
    )
    if status == 405:
        head += "Allow: GET, HEAD\r\n"
    return (head + "\r\n").encode() + (b"" if head_only else body)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


async def start_metrics_endpoint(server: ProxyServer) -> MetricsEndpoint | None:
    """Start the endpoint when ``[metrics] listen`` is set; None otherwise."""
    if not server.config.metrics.enabled:
        return None
    endpoint = MetricsEndpoint(server)
    await endpoint.start()
    return endpoint


def reserve_metrics_port(config: Config) -> tuple[Config, socket.socket | None]:
    """With workers, resolve ``[metrics] listen`` port 0 once, in the supervisor, so that every
    worker binds the same port (SO_REUSEPORT); returns the config to give the workers and the
    reservation to keep open while they run."""
    from ..runtime.workers import reserve_port

    m = config.metrics
    if not m.enabled or config.proxy.workers <= 1:
        return config, None
    sock, port = reserve_port(m.listen_host, m.listen_port)
    log.info("metrics on http://%s:%s/metrics for all workers", _url_host(m.listen_host), port)
    return dataclasses.replace(config, metrics=dataclasses.replace(m, listen_port=port)), sock
