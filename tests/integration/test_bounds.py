"""Memory a client can make the proxy hold is bounded (issue 17, findings 5 and 8).

Run against a proxy subprocess, so its RSS (/proc/<pid>/status) is the proxy's alone: a client
that sends without reading replies, a login that waits for a paused pool, big named prepared
statements and huge settings.
"""

from __future__ import annotations

import asyncio
import os
import select
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pgpool_proxy.auth.scram import ScramClient
from pgpool_proxy.protocol import messages as m
from tests.support.pg import LocalPostgres
from tests.support.proxy import PASSWORDS
from tests.support.proxyproc import ProxyProcess
from tests.support.rawpg import RawClient

MB = 1024 * 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Proxy:
    def __init__(self, proc: ProxyProcess) -> None:
        self.proc = proc
        self.host = "127.0.0.1"
        self.port = proc.port

    @property
    def pid(self) -> int:
        return self.proc.proc.pid

    def rss(self) -> int:
        return rss_bytes(self.pid)

    async def client(self, user: str = "alice", database: str = "app") -> RawClient:
        c = await RawClient.connect(self.host, self.port)
        await c.login(user, PASSWORDS[user], database)
        return c


@pytest.fixture
def start(pg: LocalPostgres, tmp_path: Path) -> Iterator[object]:
    started: list[ProxyProcess] = []

    def run(proxy: str = "", pool: str = "") -> Proxy:
        port = free_port()
        config = tmp_path / f"proxy{len(started)}.toml"
        users = "".join(
            f'[[users]]\nname = "{u}"\npassword = "{PASSWORDS[u]}"\n\n' for u in ("alice", "bob")
        )
        config.write_text(
            f"""
[proxy]
listen = "127.0.0.1:{port}"
client_login_timeout_s = 30
{proxy}

[pool]
default_pool_size = 4
{pool}

[admin]
admin_users = ["alice"]
stats_users = ["bob"]

[[databases]]
name = "app"
host = "{pg.host}"
port = {pg.port}

{users}"""
        )
        proc = ProxyProcess(config, port, tmp_path / f"proxy{len(started)}.log")
        started.append(proc)
        proc.wait_listening()
        return Proxy(proc)

    yield run
    for proc in started:
        proc.stop()


def flood_until_blocked(sock: socket.socket, chunk: bytes, max_s: float) -> tuple[int, bool]:
    """Send chunk over and over without reading; stop once the peer has taken nothing for a
    second (it stopped reading: the socket buffers are full) or after max_s. Returns (bytes
    sent, whether the peer stopped reading)."""
    sock.setblocking(False)
    sent = 0
    deadline = time.monotonic() + max_s
    while time.monotonic() < deadline:
        try:
            sent += sock.send(chunk)
            continue
        except BlockingIOError:
            pass
        _r, writable, _x = select.select([], [sock], [], 1.0)
        if not writable:
            return sent, True
    return sent, False


def raw_socket(c: RawClient) -> socket.socket:
    """The client's socket for blocking use (its asyncio transport stops reading replies)."""
    c.writer.transport.pause_reading()  # type: ignore[attr-defined]
    fd = c.writer.get_extra_info("socket").fileno()
    return socket.socket(fileno=os.dup(fd))


async def login_latency(proxy: Proxy) -> float:
    t0 = time.monotonic()
    c = await asyncio.wait_for(proxy.client("alice"), 10)
    assert await asyncio.wait_for(c.simple_query("SELECT 1"), 10) == [["1"]]
    elapsed = time.monotonic() - t0
    await c.close()
    return elapsed


# --- receive buffers (finding 5) -----------------------------------------------------------------


async def test_console_client_that_never_reads_is_stopped_not_buffered(start) -> None:  # type: ignore[no-untyped-def]
    """A stats user sends SHOW CONFIG over and over and reads nothing: the proxy stops reading
    it (TCP pushes back on the sender), its RSS and CPU stay flat, and other clients log in and
    query as fast as before."""
    proxy = start()
    idle = min([await login_latency(proxy) for _ in range(3)])
    flood = await proxy.client("bob", "pgbouncer")
    sock = raw_socket(flood)
    rss0, cpu0 = proxy.rss(), cpu_s(proxy.pid)
    sent, blocked = await asyncio.to_thread(
        flood_until_blocked, sock, m.query("SHOW CONFIG") * 4096, 20
    )
    # Before the fix the proxy kept reading (and copying) for as long as the client sent.
    assert blocked, f"the proxy was still reading after {sent / MB:.0f} MB"
    # What was taken sits in kernel socket buffers, the proxy's write buffer and one 4 KiB
    # receive buffer: a few MB, whatever the kernel's autotuning.
    assert sent < 32 * MB, sent
    grown = proxy.rss() - rss0
    assert grown < 16 * MB, f"proxy RSS grew {grown / MB:.1f} MB"
    busy0 = cpu_s(proxy.pid)
    latency = min([await login_latency(proxy) for _ in range(3)])
    assert latency < max(10 * idle, 1.0), (latency, idle)
    # Nothing is spinning while the flood is held back.
    await asyncio.sleep(1.0)
    assert cpu_s(proxy.pid) - busy0 < 0.3 + latency
    print(
        f"flood: {sent / MB:.1f} MB taken, RSS +{grown / MB:.1f} MB, "
        f"CPU {cpu_s(proxy.pid) - cpu0:.2f}s, login+query {latency * 1000:.0f} ms "
        f"(idle {idle * 1000:.0f} ms)"
    )
    sock.close()
    await flood.close()


async def test_login_waiting_for_a_paused_pool_stops_reading(start) -> None:  # type: ignore[no-untyped-def]
    """A client that pipelines queries behind its login while the pool is paused (login waits
    for the pool's first server connection) is held back by TCP, not buffered."""
    proxy = start()
    admin = await proxy.client("alice", "pgbouncer")
    await admin.simple_query("PAUSE app")
    c = await RawClient.connect(proxy.host, proxy.port)
    await authenticate(c, "bob")  # login now waits for the paused pool
    rss0 = proxy.rss()
    sock = raw_socket(c)
    sent, blocked = await asyncio.to_thread(
        flood_until_blocked, sock, m.query("SELECT 1") * 8192, 20
    )
    assert blocked, f"the proxy was still reading after {sent / MB:.0f} MB"
    assert proxy.rss() - rss0 < 16 * MB
    # The proxy is not busy meanwhile: the console answers at once.
    t0 = time.monotonic()
    assert await admin.simple_query("SHOW VERSION")
    assert time.monotonic() - t0 < 1.0
    await admin.simple_query("RESUME app")
    await admin.close()
    sock.close()
    c.writer.close()


async def authenticate(c: RawClient, user: str) -> None:
    """Startup and SCRAM up to the server's final message (the proxy's AuthenticationOk comes
    only once the pool can serve the client)."""
    c.send(m.startup_message({"user": user, "database": "app"}))
    scram = ScramClient(PASSWORDS[user])
    while True:
        t, body = await c.read_message()
        assert t == b"R", (t, body)
        code = struct.unpack("!I", body[:4])[0]
        if code == 10:
            c.send(m.sasl_initial_response("SCRAM-SHA-256", scram.client_first()))
        elif code == 11:
            c.send(m.sasl_response(scram.handle_server_first(body[4:])))
        else:
            assert code == 12, code
            scram.handle_server_final(body[4:])
            return
