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

from pgpool_proxy.auth.scram_client import ScramClient
from pgpool_proxy.protocol import messages as m
from tests.support.extproto import SYNC, bind, close, execute, parse, roundtrip
from tests.support.pg import LocalPostgres
from tests.support.proxy import PASSWORDS
from tests.support.proxyproc import ProxyProcess, free_port, write_config
from tests.support.rawpg import RawClient
from tests.support.waits import wait_for

MB = 1024 * 1024


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

    def run(proxy: str = "", pool_size: int = 4, pool: str = "") -> Proxy:
        port = free_port()
        config = tmp_path / f"proxy{len(started)}.toml"
        write_config(
            config,
            pg,
            port,
            pool_size=pool_size,
            proxy=f"client_login_timeout_s = 30\n{proxy}",
            pool=pool,
            admin='stats_users = ["bob"]',
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
    latency = min([await login_latency(proxy) for _ in range(3)])
    assert latency < max(10 * idle, 1.0), (latency, idle)
    # Nothing is spinning while the flood is held back.
    busy0 = cpu_s(proxy.pid)
    await asyncio.sleep(1.0)  # the window the CPU time is measured over, not a wait
    assert cpu_s(proxy.pid) - busy0 < 0.2
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
    # The proxy is not busy meanwhile: the console answers (within 5 s, 5x the bound this
    # had on an idle machine; a proxy still reading the flood would not get round to it).
    t0 = time.monotonic()
    assert await admin.simple_query("SHOW VERSION")
    assert time.monotonic() - t0 < 5
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


# --- what the proxy keeps per client and per pool (finding 8) ------------------------------------

STMT_TEXT = 4_000_000  # bytes of query text per statement, as in the issue (60 x 4 MB)


def big_statement(i: int) -> str:
    return f"SELECT {i} AS n -- " + "x" * STMT_TEXT


async def prepare(c: RawClient, name: str, query: str) -> list[str]:
    return (await roundtrip(c, parse(name, query), SYNC, timeout=30)).kinds


async def test_named_statements_past_the_client_budget_end_the_session(start) -> None:  # type: ignore[no-untyped-def]
    proxy = start(proxy=f"max_client_statement_bytes = {16 * MB}")
    c = await proxy.client()
    for i in range(4):
        assert await prepare(c, f"s{i}", big_statement(i)) == ["1", "Z:I"]
    # Closing one makes room again.
    assert (await roundtrip(c, close("S", "s0"), SYNC)).kinds == ["3", "Z:I"]
    assert await prepare(c, "s4", big_statement(4)) == ["1", "Z:I"]
    reply = await roundtrip(c, bind("s4"), execute(), SYNC)
    assert reply.rows == [["4"]]
    c.send(parse("s5", big_statement(5)) + SYNC)
    err = await c.read_error(30)
    assert err["C"] == "54000" and err["S"] == "FATAL", err
    assert "proxy.max_client_statement_bytes" in err["M"] and str(16 * MB) in err["M"], err
    assert await c.closed(10)
    other = await proxy.client()
    assert await other.simple_query("SELECT 1") == [["1"]]
    await other.close()


async def test_big_statements_are_not_kept_after_the_client_leaves(  # type: ignore[no-untyped-def]
    start, monkeypatch: pytest.MonkeyPatch
) -> None:
    """60 named 4 MB statements used to stay in the pool's registry (about 480 MB with their
    Parse frames) after the client left. The pool now keeps at most statement_cache_bytes."""
    # Freed blocks of this size go back to the system at once, so RSS shows what is held.
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "131072")
    cache = 32 * MB
    proxy = start(
        proxy=f"max_client_statement_bytes = {1024 * MB}",
        pool=f"statement_cache_bytes = {cache}",
    )
    warm = await proxy.client()
    assert await warm.simple_query("SELECT 1") == [["1"]]
    await warm.close()
    rss0 = proxy.rss()
    c = await proxy.client()
    for i in range(60):
        assert await prepare(c, f"s{i}", big_statement(i)) == ["1", "Z:I"]
    # The first ones were forgotten by the pool (and closed on the server); the client still
    # holds them, so using one prepares it again.
    reply = await roundtrip(c, bind("s0"), execute(), bind("s59"), execute(), SYNC, timeout=30)
    assert reply.rows == [["0"], ["59"]], reply.kinds
    held = proxy.rss() - rss0
    await c.close()
    # A second client's statements push the rest out of the pool's cache.
    d = await proxy.client()
    assert await prepare(d, "small", "SELECT 1") == ["1", "Z:I"]
    await d.close()
    await wait_for(
        lambda: proxy.rss() - rss0 <= cache + 24 * MB,
        what=lambda: f"RSS back to the cache's bound (+{(proxy.rss() - rss0) / MB:.0f} MB)",
        interval=0.1,
    )
    kept = proxy.rss() - rss0
    print(f"statements: held while connected +{held / MB:.0f} MB, kept after +{kept / MB:.0f} MB")
    assert kept <= cache + 24 * MB, f"{kept / MB:.0f} MB kept after the client left"


async def test_huge_settings_end_the_session_and_never_reach_another_client(start) -> None:  # type: ignore[no-untyped-def]
    """A 100-byte query sets an 8 MB search_path: the proxy would keep it and replay it on every
    server connection. Over max_client_settings_bytes the session ends with 54000, and the
    server connection holding the setting is closed, not handed on."""
    proxy = start(pool_size=1)
    c = await proxy.client()
    # Below the bound: kept and replayed as usual.
    await c.simple_query("SET application_name = 'below'; SET app.note = '" + "n" * 100_000 + "'")
    assert await c.simple_query("SELECT length(current_setting('app.note'))") == [["100000"]]
    rows = await c.simple_query(
        "SELECT length(set_config('search_path', repeat('a,', 4000000) || 'a', false))"
    )
    assert rows == [["8000001"]]
    err = await c.read_error(30)
    assert err["C"] == "54000" and err["S"] == "FATAL", err
    assert "proxy.max_client_settings_bytes" in err["M"] and "search_path" in err["M"], err
    assert await c.closed(10)
    other = await proxy.client("bob")
    assert await other.simple_query("SHOW search_path") == [['"$user", public']]
    note = await other.simple_query("SELECT current_setting('app.note', true)")
    assert note in ([[None]], [[""]])
    await other.close()


async def test_oversized_message_error_reaches_a_client_still_sending(start) -> None:  # type: ignore[no-untyped-def]
    """The 54000 for a message over max_message_size_bytes is read by a client that is still
    sending the body: the proxy half-closes and drains instead of closing with unread input
    (which makes the kernel send RST and can destroy the error before it is read)."""
    proxy = start()
    c = await proxy.client()
    c.send(b"Q" + (100 * MB).to_bytes(4, "big") + b"x" * (8 * MB))
    err = await c.read_error(10)
    assert err["C"] == "54000" and "max_message_size_bytes" in err.get("H", ""), err
    assert await c.closed(10)
    other = await proxy.client()
    assert await other.simple_query("SELECT 1") == [["1"]]
    await other.close()
