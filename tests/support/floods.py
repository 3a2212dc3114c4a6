"""Flood-test helpers: a proxy subprocess whose RSS and metrics can be read, a latency probe in
a process of its own, and SCRAM logins cheap enough to run by the thousand.

Also a script: ``python -m tests.support.floods PORT USER PASSWORD SECONDS`` runs the probe
(``select 1`` every 5 ms through the proxy for SECONDS) and prints its latencies as JSON.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import resource
import statistics
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import uvloop

from pgpool_proxy.auth.scram_client import ScramClient
from pgpool_proxy.protocol import messages as m

from .pg import LocalPostgres
from .proxyproc import REPO, ProxyProcess, free_port, write_config
from .rawpg import RawClient, RawError
from .waits import wait_for

T = TypeVar("T")


def raise_nofile(wanted: int) -> int:
    """Raise the soft RLIMIT_NOFILE towards `wanted` (up to the hard limit); the soft limit now.
    The proxy subprocess inherits it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return int(resource.getrlimit(resource.RLIMIT_NOFILE)[0])


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class FloodProxy:
    """The proxy as an operator runs it (its own process, so its RSS is its own), with a
    metrics endpoint; users alice, bob and carol."""

    def __init__(
        self, pg: LocalPostgres, tmp: Path, *, pool_size: int = 2, proxy: str = "", pool: str = ""
    ) -> None:
        self.port = free_port()
        self.metrics_port = free_port()
        config = tmp / "proxy.toml"
        write_config(
            config,
            pg,
            self.port,
            pool_size=pool_size,
            users=("alice", "bob", "carol"),
            proxy=proxy,
        )
        size_line = f"default_pool_size = {pool_size}\n"
        text = config.read_text().replace(size_line, size_line + pool + "\n", 1)
        config.write_text(text + f'\n[metrics]\nlisten = "127.0.0.1:{self.metrics_port}"\n')
        self.process = ProxyProcess(config, self.port, tmp / "proxy.log")
        self.process.wait_listening()

    @property
    def pid(self) -> int:
        return self.process.proc.pid

    def rss_kib(self) -> int:
        return rss_kib(self.pid)

    def cpu_s(self) -> float:
        return cpu_s(self.pid)

    def metrics(self) -> dict[str, float]:
        """Unlabelled samples and ``name{k="v"}`` keys of labelled ones, from /metrics."""
        from prometheus_client.parser import text_string_to_metric_families

        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=20) as resp:
            text = resp.read().decode()
        out: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
                out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
        return out

    def clients(self, state: str) -> int:
        return int(self.metrics().get(f'pgpool_proxy_client_connections{{state="{state}"}}', 0))

    def stop(self) -> None:
        self.process.stop()


# --- logins ----------------------------------------------------------------------------------

# (password, salt, iterations) -> ClientKey: PBKDF2 once per user, not once per login.
_CLIENT_KEYS: dict[tuple[str, bytes, int], bytes] = {}


def _client_key(password: str, server_first: bytes) -> bytes:
    attrs = dict(part.split("=", 1) for part in server_first.decode().split(","))
    salt, iterations = base64.b64decode(attrs["s"]), int(attrs["i"])
    key = (password, salt, iterations)
    if key not in _CLIENT_KEYS:
        salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
        _CLIENT_KEYS[key] = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    return _CLIENT_KEYS[key]


async def fast_login(
    host: str, port: int, user: str, password: str, database: str = "app", timeout: float = 30
) -> RawClient:
    """A SCRAM login like RawClient.login, raising RawError on an ErrorResponse."""
    c = await RawClient.connect(host, port)
    try:
        c.send(m.startup_message({"user": user, "database": database}))
        scram: ScramClient | None = None
        while True:
            t, body = await c.read_message(timeout)
            if t == b"R":
                code = struct.unpack("!I", body[:4])[0]
                if code == 10:
                    c.send(m.sasl_initial_response("SCRAM-SHA-256", b"n,,n=,r=" + b"x" * 24))
                elif code == 11:
                    # The first message was sent before the key was known: rebuild the client
                    # with the same nonce and the cached key, then answer.
                    scram = ScramClient(client_key=_client_key(password, body[4:]), nonce="x" * 24)
                    scram.client_first()
                    c.send(m.sasl_response(scram.handle_server_first(body[4:])))
            elif t == b"K":
                c.pid, c.secret = struct.unpack("!II", body)
            elif t == b"E":
                raise RawError(m.parse_error_fields(body))
            elif t == b"Z":
                return c
    except BaseException:
        c.writer.transport.abort()
        raise


# --- the flooding side ----------------------------------------------------------------------


async def off_loop(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a flood on uvloop in a thread of its own, at a lower CPU priority: several times
    cheaper per connection than the test's asyncio loop, which stays free to watch the proxy.
    Everything the flood creates must stay inside `make`'s coroutine (streams belong to their
    loop); hand results back by return value or thread-safe objects."""

    def run() -> T:
        # The attacker is normally not on the proxy's machine: here it shares 2 cores with the
        # proxy, PostgreSQL and the probe, so it yields to them (Linux: a thread's own nice).
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
        return uvloop.run(make())

    return await asyncio.to_thread(run)


class Phase:
    """A flag one loop sets and another awaits (the flood's thread and the test's loop)."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def set(self) -> None:
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    async def wait(self, timeout: float, what: str) -> None:
        await wait_for(self._event.is_set, timeout=timeout, what=what)


class _CancelRequest(asyncio.Protocol):
    """Sends one CancelRequest; `done` gets whatever the proxy answered before closing."""

    def __init__(self, packet: bytes, done: asyncio.Future[bytes]) -> None:
        self.packet = packet
        self.done = done
        self.got = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.write(self.packet)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        self.got += data

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(self.got)


async def send_cancel(port: int, pid: int, secret: int) -> bytes:
    """A CancelRequest on a connection of its own; what came back before the close (nothing)."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[bytes] = loop.create_future()
    packet = m.cancel_request(pid, secret)
    await loop.create_connection(lambda: _CancelRequest(packet, done), "127.0.0.1", port)
    return await asyncio.wait_for(done, 30)


async def run_bounded(n: int, concurrency: int, one: Callable[[int], Awaitable[None]]) -> None:
    """Run one(i) for i < n, at most `concurrency` at a time."""
    it = iter(range(n))

    async def worker() -> None:
        for i in it:
            await one(i)

    async with asyncio.TaskGroup() as tg:
        for _ in range(concurrency):
            tg.create_task(worker())


# --- latency probe ---------------------------------------------------------------------------


class LatencyProbe:
    """``select 1`` round trips through the proxy from a process of its own (so the test's own
    busy event loop is not what gets measured). It logs in first, then measures on `go()`."""

    def __init__(self, port: int, user: str, password: str, seconds: float) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.floods", str(port), user, password, str(seconds)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=REPO,
        )

    @classmethod
    async def ready(cls, port: int, user: str, password: str, seconds: float) -> LatencyProbe:
        probe = cls(port, user, password, seconds)
        assert probe.proc.stdout is not None
        line = await asyncio.to_thread(probe.proc.stdout.readline)
        if line.strip() != b"ready":
            probe.proc.kill()
            _out, err = probe.proc.communicate()
            raise AssertionError(f"the latency probe did not log in: {line!r} {err.decode()}")
        return probe

    async def measure_now(self, timeout: float = 60) -> dict[str, float]:
        out, err = await asyncio.to_thread(self.proc.communicate, b"go\n", timeout)
        assert self.proc.returncode == 0, err.decode()
        return dict(json.loads(out))

    @classmethod
    async def measure(cls, port: int, user: str, password: str, seconds: float) -> dict[str, float]:
        probe = await cls.ready(port, user, password, seconds)
        return await probe.measure_now()


def _probe(port: int, user: str, password: str, seconds: float) -> dict[str, float]:
    import psycopg

    dsn = f"postgresql://{user}:{password}@127.0.0.1:{port}/app"
    samples: list[float] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("select 1")  # the pool's first server connection is not part of it
        print("ready", flush=True)
        sys.stdin.readline()
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            t0 = time.perf_counter()
            conn.execute("select 1").fetchall()
            samples.append(time.perf_counter() - t0)
            time.sleep(0.005)  # the probe's pace: a bystander, not a flood of its own
    samples.sort()
    return {
        "n": len(samples),
        "p50_ms": statistics.median(samples) * 1000,
        "p90_ms": samples[int(len(samples) * 0.9)] * 1000,
        "max_ms": samples[-1] * 1000,
    }


if __name__ == "__main__":
    port_, user_, password_, seconds_ = sys.argv[1:5]
    print(json.dumps(_probe(int(port_), user_, password_, float(seconds_))))
