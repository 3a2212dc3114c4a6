"""Hostile clients against cancel connections held open until the server has been
signalled (bounded by cancel_wait_timeout_s), idle clients that drop their receive buffer, and
the compiled twin of the hot path against the pure-Python reference.

A relay in front of PostgreSQL stalls the proxy's own cancel connections, so a "very slow
server" is reproduced without stopping the shared test server's postmaster.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import ssl
import struct
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from pgpool_proxy import speedups
from pgpool_proxy.counters import CANCEL_SENT
from pgpool_proxy.protocol import messages as m
from pgpool_proxy.protocol.client_scan import NO_UNITS
from pgpool_proxy.protocol.constants import CANCEL_REQUEST_CODE
from pgpool_proxy.session.client_state import ClientState
from tests.support import extproto as x
from tests.support.pg import LocalPostgres
from tests.support.proxy import PASSWORDS, ProxyThread, StartProxy
from tests.support.proxyproc import ProxyProcess, write_config
from tests.support.rawpg import RawClient, RawError, raw_login
from tests.support.relay import splice
from tests.support.tlsfiles import TlsDir
from tests.support.waits import wait_for

SYNC = m.frame(b"S")


class CancelStallRelay:
    """A TCP relay to PostgreSQL that passes every connection through, except that a
    CancelRequest is held (neither forwarded nor answered) until `release()`."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.held = 0  # cancel requests received
        self.forwarded = 0  # cancel requests passed on to PostgreSQL
        self._gate = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    async def start(self) -> CancelStallRelay:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def release(self) -> None:
        self._gate.set()

    async def close(self) -> None:
        self.release()
        if self._server is not None:
            self._server.close()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.get_running_loop().create_task(self._pipe(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _pipe(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        try:
            head = await c_reader.readexactly(8)
            if struct.unpack("!I", head[4:])[0] == CANCEL_REQUEST_CODE:
                self.held += 1
                head += await c_reader.readexactly(8)
                await self._gate.wait()
                self.forwarded += 1
            s_reader, s_writer = await asyncio.open_connection(*self.target)
        except (OSError, asyncio.IncompleteReadError):
            c_writer.close()
            return
        s_writer.write(head)
        await splice(c_reader, c_writer, s_reader, s_writer)


@contextlib.asynccontextmanager
async def stall_relay(pg: LocalPostgres) -> AsyncIterator[CancelStallRelay]:
    relay = await CancelStallRelay(pg.host, pg.port).start()
    try:
        yield relay
    finally:
        await relay.close()


async def cancel_conn(
    proxy: ProxyThread, pid: int, secret: int, extra: bytes = b""
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(proxy.host, proxy.port)
    writer.write(m.cancel_request(pid, secret) + extra)
    await writer.drain()
    return reader, writer


async def answer_and_close_time(
    reader: asyncio.StreamReader, timeout: float
) -> tuple[bytes, float]:
    """Everything the proxy sent on a cancel connection before closing it, and when it closed."""
    got = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := await asyncio.wait_for(reader.read(65536), timeout):
            got += chunk
    return got, time.monotonic()


def loop_lag_max(proxy: ProxyThread) -> float:
    def read() -> float:
        assert proxy.server is not None
        return float(proxy.server.loopwatch.max_s)

    return proxy.call(read)


def task_count(proxy: ProxyThread) -> int:
    def read() -> int:
        assert proxy.server is not None
        return len(proxy.server._tasks)

    return proxy.call(read)


def client_total(proxy: ProxyThread) -> int:
    def read() -> int:
        assert proxy.server is not None
        return len(proxy.server.all_clients())

    return proxy.call(read)


def slow_proxy(
    start_proxy: StartProxy, relay: CancelStallRelay, **proxy_keys: object
) -> ProxyThread:
    return start_proxy(
        databases=[{"name": "app", "host": "127.0.0.1", "port": relay.port}],
        proxy={"cancel_wait_timeout_s": 1.0, **proxy_keys},
        pool={"default_pool_size": 2, "server_connect_timeout_s": 30},
    )


# --- cancel requests ---------------------------------------------------------------------------


async def test_cancel_held_past_login_timeout_gets_no_error(
    pg: LocalPostgres, start_proxy: StartProxy
) -> None:
    """A cancel connection is no login: PostgreSQL never writes a byte on one, whatever
    client_login_timeout_s says. With the defaults (both 10 s) the login timeout used to win the
    race and answer a slow cancel with a 08P01 "did not complete login" error."""
    async with stall_relay(pg) as relay:
        proxy = slow_proxy(
            start_proxy, relay, client_login_timeout_s=1.0, cancel_wait_timeout_s=2.0
        )
        victim = await raw_login(proxy)
        victim.send(m.query("select pg_sleep(60)"))
        await wait_for(lambda: proxy.pool_stats()["active"] == 1, what="the victim's query runs")
        t0 = time.monotonic()
        reader, writer = await cancel_conn(proxy, victim.pid, victim.secret)
        got, closed_at = await answer_and_close_time(reader, 10)
        writer.close()
        assert got == b"", m.parse_error_fields(got[5:]) if got[:1] == b"E" else got
        # Held for cancel_wait_timeout_s (the server was never signalled), then closed.
        assert 1.8 <= closed_at - t0 < 5
        relay.release()
        assert (await victim.read_error(20))["C"] == "57014"
        await victim.read_until_ready(5)
        assert await victim.simple_query("select 'after'") == [["after"]]
        await victim.close()


async def test_cancel_flood_against_a_slow_server(
    pg: LocalPostgres, start_proxy: StartProxy
) -> None:
    """Hundreds of cancel connections at once while the server's postmaster does not answer:
    valid keys of a busy client (one cancel reaches the server, the rest wait for it), unknown
    keys and an idle client's key (closed at once), some sending more bytes and never reading.
    Every one is closed within cancel_wait_timeout_s, others are served meanwhile, only the
    busy client's statement is cancelled, and nothing is left behind."""
    async with stall_relay(pg) as relay:
        proxy = slow_proxy(start_proxy, relay)
        victim = await raw_login(proxy)
        idle = await raw_login(proxy)
        canary = await raw_login(proxy)
        assert await canary.simple_query("select 'before'") == [["before"]]
        tasks_before = task_count(proxy)
        victim.send(m.query("select pg_sleep(60)"))
        await wait_for(lambda: proxy.pool_stats()["active"] == 1, what="the victim's query runs")
        lag_before = loop_lag_max(proxy)

        t0 = time.monotonic()
        busy = [
            await cancel_conn(proxy, victim.pid, victim.secret, b"x" * (i % 3) * 70000)
            for i in range(150)
        ]
        unknown = [await cancel_conn(proxy, victim.pid, victim.secret ^ 1) for _ in range(100)]
        unknown += [await cancel_conn(proxy, idle.pid, idle.secret) for _ in range(50)]
        # Refused or idle keys are acted on at once: closed long before the wait's bound.
        for reader, writer in unknown:
            got, closed_at = await answer_and_close_time(reader, 5)
            assert got == b""
            assert closed_at - t0 < 0.9
            writer.close()
        # The proxy serves others while the busy keys' connections wait.
        for i in range(20):
            assert await canary.simple_query(f"select {i}") == [[str(i)]]
        assert await idle.simple_query("select 'idle ok'") == [["idle ok"]]
        assert relay.held == 1  # one cancel at a time toward the server
        for reader, writer in busy:
            got, closed_at = await answer_and_close_time(reader, 5)
            assert got == b""
            assert closed_at - t0 < 3  # cancel_wait_timeout_s is 1 s
            writer.close()
        assert loop_lag_max(proxy) < max(lag_before, 0.25)

        relay.release()
        assert (await victim.read_error(20))["C"] == "57014"
        await victim.read_until_ready(5)
        for client in (victim, idle, canary):
            assert await client.simple_query("select 'after'") == [["after"]]
        assert relay.forwarded == 1
        # Nothing kept: the cancel connections are gone, and so are their tasks.
        await wait_for(lambda: client_total(proxy) == 3, what="only the 3 clients left")
        await wait_for(lambda: task_count(proxy) <= tasks_before, what="no task left behind")
        for client in (victim, idle, canary):
            await client.close()


async def test_held_cancels_use_client_slots_no_longer_than_cancel_wait(
    pg: LocalPostgres, start_proxy: StartProxy
) -> None:
    """Cancel connections waiting on a slow server count against max_client_conn while they
    wait (as PgBouncer counts its cancel requests as clients; PostgreSQL does not count them
    against max_connections), so their hold must stay bounded: once cancel_wait_timeout_s has
    closed them, logins are admitted again, while the server still has not been signalled."""
    async with stall_relay(pg) as relay:
        proxy = slow_proxy(start_proxy, relay, max_client_conn=3)
        victim = await raw_login(proxy)
        victim.send(m.query("select pg_sleep(60)"))
        await wait_for(lambda: proxy.pool_stats()["active"] == 1, what="the victim's query runs")
        held = [await cancel_conn(proxy, victim.pid, victim.secret) for _ in range(5)]
        await wait_for(lambda: client_total(proxy) == 6, what="the cancels are in")
        for reader, writer in held:
            await answer_and_close_time(reader, 5)
            writer.close()
        await wait_for(lambda: client_total(proxy) == 1, what="the cancel connections gone")
        newcomer = await raw_login(proxy)
        assert await newcomer.simple_query("select 'in'") == [["in"]]
        assert relay.forwarded == 0
        relay.release()
        assert (await victim.read_error(20))["C"] == "57014"
        await victim.read_until_ready(5)
        for client in (victim, newcomer):
            await client.close()


async def test_cancel_connection_closed_by_its_client_while_held(
    pg: LocalPostgres, start_proxy: StartProxy
) -> None:
    """Cancel senders that hang up at once (never reading the close) are forgotten at once,
    though their cancel is still on its way; the cancel still lands afterwards."""
    async with stall_relay(pg) as relay:
        proxy = slow_proxy(start_proxy, relay, cancel_wait_timeout_s=30.0)
        victim = await raw_login(proxy)
        victim.send(m.query("select pg_sleep(60)"))
        await wait_for(lambda: proxy.pool_stats()["active"] == 1, what="the victim's query runs")
        for _ in range(50):
            _, writer = await cancel_conn(proxy, victim.pid, victim.secret)
            writer.transport.abort()
        await wait_for(lambda: relay.held == 1, what="the cancel reaches the server's side")
        await wait_for(lambda: client_total(proxy) == 1, what="the hung-up cancels gone")
        relay.release()
        assert (await victim.read_error(20))["C"] == "57014"
        await victim.read_until_ready(5)
        assert await victim.simple_query("select 'after'") == [["after"]]
        await victim.close()


async def copy_cancelled(to: ProxyThread | LocalPostgres, cancel_port: int) -> Reply:
    """A COPY FROM STDIN cancelled while the server waits for its data, then fed rows: what
    the session saw (PostgreSQL acts on the cancel at the next data it reads)."""
    client = await raw_login(to)
    try:
        await client.simple_query("create temp table ct (a text)")
        client.send(q("copy ct from stdin"))
        t, _ = await client.read_message()
        assert t == b"G"
        reader, writer = await asyncio.open_connection("127.0.0.1", cancel_port)
        writer.write(m.cancel_request(client.pid, client.secret))
        got, _ = await answer_and_close_time(reader, 10)  # closed once the server is signalled
        writer.close()
        assert got == b""
        rows = b"".join(m.frame(b"d", f"row {i}\n".encode()) for i in range(1000))
        client.send(rows + m.frame(b"c") + q("select count(*) from ct"))
        return await read_replies(client, 2)
    finally:
        await client.close()


async def test_cancel_during_copy_from_stdin_as_postgres(
    pg: LocalPostgres, start_proxy: StartProxy
) -> None:
    proxy = start_proxy(proxy={"cancel_wait_timeout_s": 1.0}, pool={"default_pool_size": 1})
    other = await raw_login(proxy)
    try:
        want = await copy_cancelled(pg, pg.port)
        errors = [m.parse_error_fields(b)["C"] for t, b in want if t == b"E"]
        assert errors == ["57014"], want
        got = await copy_cancelled(proxy, proxy.port)
        assert got == want
        # Nobody else's statement was hit: the next client on that server connection runs.
        assert await other.simple_query("select pg_sleep(0.2), 'other'") == [["", "other"]]
    finally:
        await other.close()


async def test_cancel_of_a_client_waiting_on_a_paused_pool(start_proxy: StartProxy) -> None:
    """A client whose query waits for a paused pool holds no server: its cancel is closed at
    once, and its query runs after RESUME (nothing of the proxy's own is cancelled instead)."""
    proxy = start_proxy(
        proxy={"cancel_wait_timeout_s": 5.0},
        pool={"default_pool_size": 1},
        admin={"admin_users": ["alice"]},
    )
    client = await raw_login(proxy)
    console = await RawClient.connect(proxy.host, proxy.port)
    await console.login("alice", PASSWORDS["alice"], "pgbouncer")
    try:
        assert await client.simple_query("select 'warm'") == [["warm"]]
        console.send(q("PAUSE app"))
        await console.read_until_ready()
        client.send(q("select 'held'"))
        await wait_for(lambda: proxy.pool_stats()["waiting"] == 1, what="the query to queue")
        t0 = time.monotonic()
        reader, writer = await cancel_conn(proxy, client.pid, client.secret)
        got, closed_at = await answer_and_close_time(reader, 10)
        writer.close()
        assert got == b"" and closed_at - t0 < 1
        console.send(q("RESUME app"))
        await console.read_until_ready()
        rows = [b for t, b in await read_replies(client, 1) if t == b"D"]
        assert [m.parse_data_row(r) for r in rows] == [["held"]]
    finally:
        await console.close()
        await client.close()


async def test_cancels_racing_transaction_ends_never_hit_another_client(
    start_proxy: StartProxy,
) -> None:
    """A client runs short transactions while its own key is flooded with cancels; another
    client shares the single server connection: only the first ever sees 57014."""
    proxy = start_proxy(proxy={"cancel_wait_timeout_s": 1.0}, pool={"default_pool_size": 1})
    target, bystander = await raw_login(proxy), await raw_login(proxy)
    cancelled = 0

    async def run_target() -> None:
        nonlocal cancelled
        for i in range(200):
            try:
                assert await target.simple_query(f"select {i}, pg_sleep(0.001)") == [[str(i), ""]]
            except RawError as exc:
                assert exc.sqlstate == "57014"
                cancelled += 1

    async def run_bystander() -> None:
        for i in range(200):
            assert await bystander.simple_query(f"select 'b{i}'") == [[f"b{i}"]]

    async def flood() -> None:
        for _ in range(200):
            reader, writer = await cancel_conn(proxy, target.pid, target.secret)
            got, _ = await answer_and_close_time(reader, 5)
            writer.close()
            assert got == b""

    try:
        await asyncio.gather(run_target(), run_bystander(), flood())
        assert await bystander.simple_query("select 'last'") == [["last"]]

        def sent() -> int:
            assert proxy.server is not None
            return proxy.server.counters.cancel_requests[CANCEL_SENT]

        print(
            f"\ncancels sent to the server: {proxy.call(sent)}, statements cancelled: {cancelled}"
        )
        assert proxy.call(sent) > 0  # some did reach the target's server connection
    finally:
        await target.close()
        await bystander.close()


# --- idle clients without a receive buffer -----------------------------------------------------

Reply = list[tuple[bytes, bytes]]


async def read_replies(client: RawClient, readies: int, timeout: float = 20) -> Reply:
    """Every message up to the `readies`-th ReadyForQuery."""
    out: Reply = []
    while readies:
        t, body = await client.read_message(timeout)
        out.append((t, body))
        readies -= t == b"Z"
    return out


def q(sql: str) -> bytes:
    return m.query(sql)


def md5_query(tag: str, size: int) -> bytes:
    """A Query of about `size` bytes whose answer proves every byte arrived in order."""
    blob = hashlib.sha256(tag.encode()).hexdigest() * (size // 64 + 1)
    return q(f"select '{tag}', length('{blob[:size]}'), md5('{blob[:size]}')")


def pipelined_script(tag: str) -> tuple[bytes, int]:
    """Transactions back to back in one write: each next one starts in the packet that ends
    the last (the proxy releases the server and the client goes idle between them)."""
    parts = [
        q("begin"),
        q(f"select '{tag}-1'"),
        q("commit"),
        q(f"select '{tag}-2', pg_backend_pid() > 0"),
        q("begin"),
        md5_query(tag + "-big", 300_000),
        q("rollback"),
        # Extended protocol: unnamed statements, several Syncs in one packet.
        x.parse("", f"select $1::text || '{tag}'") + x.bind("", ["x"]) + x.execute() + SYNC,
        x.parse("", "select $1::int + 1") + x.bind("", ["41"]) + x.execute() + SYNC,
        q(f"select '{tag}-end'"),
    ]
    return b"".join(parts), 10


async def run_script(client: RawClient, payload: bytes, readies: int, split: int = 0) -> Reply:
    """Send `payload` (in two writes when `split`: the first ends `split` bytes into the
    payload), return the replies."""
    if split:
        client.send(payload[:split])
        await client.writer.drain()
        await asyncio.sleep(0)
        client.send(payload[split:])
    else:
        client.send(payload)
    return await read_replies(client, readies)


async def test_pipelined_transactions_match_postgres(
    pg: LocalPostgres, start_proxy: StartProxy
) -> None:
    """Two clients share one server connection and each pipelines transactions back to back,
    split across writes anywhere around a transaction's end: every reply is byte for byte what
    PostgreSQL answers directly."""
    proxy = start_proxy(pool={"default_pool_size": 1})
    payload, readies = pipelined_script("p")
    commit_end = len(q("begin") + q("select 'p-1'") + q("commit"))
    splits = [0, commit_end - 3, commit_end, commit_end + 2, commit_end + 7, len(payload) - 1]
    direct = await raw_login(pg)
    a, b = await raw_login(proxy), await raw_login(proxy)
    try:
        want = await run_script(direct, payload, readies)
        assert [t for t, _ in want].count(b"E") == 0
        for split in splits:
            got_a, got_b = await asyncio.gather(
                run_script(a, payload, readies, split), run_script(b, payload, readies, split)
            )
            assert got_a == want, split
            assert got_b == want, split
            # Idle again (once the proxy's check of what the call left is done), each holds
            # the shared empty queue, not one of its own (memory per idle client), and nothing
            # was left in it.
            await wait_for(
                lambda: proxy.call(lambda: _idle_queues(proxy)) == (2, 2, 0),
                what=lambda: (
                    f"both idle on the shared queue: {proxy.call(lambda: _idle_queues(proxy))}"
                ),
            )
    finally:
        for c in (direct, a, b):
            await c.close()


def _idle_queues(proxy: ProxyThread) -> tuple[int, int, int]:
    """On the proxy's loop: (idle clients, those holding NO_UNITS, units in NO_UNITS)."""
    assert proxy.server is not None
    idle = [c for c in proxy.server.all_clients() if c.state == ClientState.IDLE]
    return len(idle), sum(c.scanner.units is NO_UNITS for c in idle), len(NO_UNITS)


async def test_large_message_first_after_idle(pg: LocalPostgres, start_proxy: StartProxy) -> None:
    """An idle client holds no receive buffer; its next message is megabytes long (alone, or
    pipelined behind a COMMIT)."""
    proxy = start_proxy(pool={"default_pool_size": 1})
    direct = await raw_login(pg)
    client = await raw_login(proxy)
    other = await raw_login(proxy)
    try:
        for size in (3 << 20, 4096 - 5, 4096 + 1, 9 << 20):
            big = md5_query(f"s{size}", size)
            for payload, readies in ((big, 1), (q("begin") + q("commit") + big, 3)):
                want = await run_script(direct, payload, readies)
                # The other client takes the server in between, so this one is idle again.
                assert await other.simple_query("select 1") == [["1"]]
                assert await run_script(client, payload, readies, len(payload) // 3) == want
                assert await run_script(client, payload, readies) == want
    finally:
        for c in (direct, client, other):
            await c.close()


def proxy_client(proxy: ProxyThread, pid: int) -> object:
    assert proxy.server is not None
    return proxy.server.clients[pid]


async def test_slow_reader_sends_while_its_reply_is_still_being_written(
    pg: LocalPostgres, start_proxy: StartProxy
) -> None:
    """A client stops reading a large reply, then sends its next queries (one large) while the
    proxy still holds part of the reply for it; then reads everything."""
    proxy = start_proxy(pool={"default_pool_size": 1})
    direct = await raw_login(pg)
    client = await raw_login(proxy)
    other = await raw_login(proxy)
    first = q("select repeat(md5(g::text), 40000) from generate_series(1, 6) g")
    then = q("select 'next'") + md5_query("slow", 2 << 20) + q("begin") + q("commit")
    try:
        direct.send(first)
        want = await read_replies(direct, 1)
        want += await run_script(direct, then, 4)
        client.send(first)
        await client.writer.drain()

        def paused() -> bool:
            return bool(proxy.call(lambda: proxy_client(proxy, client.pid).write_paused))  # type: ignore[attr-defined]

        await wait_for(paused, what="the proxy holds reply bytes for the slow reader")
        client.send(then)
        await client.writer.drain()
        assert await read_replies(client, 5) == want
        assert await other.simple_query("select 'other'") == [["other"]]
    finally:
        for c in (direct, client, other):
            await c.close()


async def test_many_clients_alternating_idle_and_active(
    pg: LocalPostgres, start_proxy: StartProxy
) -> None:
    """Forty clients on three server connections, each pipelining and going idle at random:
    each gets its own answers, whole."""
    proxy = start_proxy(pool={"default_pool_size": 3})
    clients = [await raw_login(proxy) for _ in range(40)]

    async def work(i: int, c: RawClient) -> None:
        for round_ in range(6):
            size = (i * 7919 + round_ * 104729) % 200_000 + 10
            tag = f"c{i}r{round_}"
            blob = hashlib.sha256(tag.encode()).hexdigest() * (size // 64 + 1)
            payload = q("begin") + q(f"select '{tag}', md5('{blob[:size]}')") + q("commit")
            replies = await run_script(c, payload, 3, (i + round_) % len(payload))
            rows = [body for t, body in replies if t == b"D"]
            assert len(rows) == 1
            assert m.parse_data_row(rows[0]) == [tag, hashlib.md5(blob[:size].encode()).hexdigest()]
            if (i + round_) % 3 == 0:
                await asyncio.sleep(0.01 * (i % 4))  # idle a while, holding no buffer

    try:
        await asyncio.gather(*(work(i, c) for i, c in enumerate(clients)))
    finally:
        for c in clients:
            await c.close()


async def tls_login(proxy: ProxyThread, ca_file: Path) -> RawClient:
    client = await RawClient.connect(proxy.host, proxy.port)
    client.send(struct.pack("!II", 8, 80877103))
    assert await asyncio.wait_for(client.reader.readexactly(1), 5) == b"S"
    ctx = ssl.create_default_context(cafile=str(ca_file))
    await client.writer.start_tls(ctx, server_hostname="127.0.0.1")
    await client.login("alice", PASSWORDS["alice"], "app")
    return client


async def test_tls_clients_pipeline_and_send_large_messages_after_idle(
    pg: LocalPostgres, start_proxy: StartProxy
) -> None:
    """The same over TLS, where the TLS layer, not the socket, fills the receive buffer."""
    tls_dir = TlsDir()
    try:
        cert = tls_dir.issue("proxy", ["127.0.0.1"])
        proxy = start_proxy(
            pool={"default_pool_size": 1},
            client_tls={
                "mode": "require",
                "cert_file": str(cert.cert_file),
                "key_file": str(cert.key_file),
            },
        )
        direct = await raw_login(pg)
        a, b = await tls_login(proxy, cert.ca_file), await tls_login(proxy, cert.ca_file)
        try:
            payload, readies = pipelined_script("t")
            payload += md5_query("tls-big", 5 << 20)
            want = await run_script(direct, payload, readies + 1)
            for split in (0, 23, len(payload) // 2):
                got = await asyncio.gather(
                    run_script(a, payload, readies + 1, split),
                    run_script(b, payload, readies + 1, split),
                )
                assert list(got) == [want, want], split
        finally:
            for c in (direct, a, b):
                await c.close()
    finally:
        tls_dir.remove()


# --- the compiled twin against the pure-Python reference ---------------------------------------

INT = struct.Struct("!I")
END_REPLY = m.data_row(["end"]) + m.command_complete("SELECT 1") + m.ready_for_query()

# Sent after a successful login: what each proxy answers must be the same.
AFTER_LOGIN = {
    "huge_length": b"Q" + INT.pack(0x7FFFFFFF),
    "length_below_4": b"Q" + INT.pack(2) + b"xxxx",
    "length_0xffffffff": b"P" + INT.pack(0xFFFFFFFF) + b"x" * 16,
    "garbage_type": b"\x01" + INT.pack(4),
    "garbage_type_high": b"\xff" + INT.pack(8) + b"abcd",
    "query_without_nul": b"Q" + INT.pack(9) + b"hello",
    "query_nul_inside": b"Q" + INT.pack(4 + 14) + b"select 1\0junk\0",
    "parse_without_nul": b"P" + INT.pack(7) + b"abc",
    "parse_bad_param_count": b"P" + INT.pack(4 + 12) + b"\0select 1\0\xff\xff" + SYNC,
    "bind_truncated": b"B" + INT.pack(6) + b"\0\0" + SYNC,
    "bind_bad_counts": b"B" + INT.pack(4 + 8) + b"\0\0\x7f\xff\x00\x00\x00\x00" + SYNC,
    "execute_short": b"E" + INT.pack(5) + b"\0" + SYNC,
    "describe_bad_kind": b"D" + INT.pack(7) + b"Zx\0" + SYNC,
    "close_bad_kind": b"C" + INT.pack(7) + b"Zx\0" + SYNC,
    "copy_data_outside_copy": b"d" + INT.pack(8) + b"abcd" + q("select 'after d'"),
    "copy_done_outside_copy": b"c" + INT.pack(4) + q("select 'after c'"),
    "function_call": b"F" + INT.pack(4 + 10) + b"\0\0\0\x01" + b"\0\0\0\0\0\0",
    "startup_again": m.startup_message({"user": "alice", "database": "app"}),
    "cancel_inline": m.cancel_request(1, 2),
    "terminate_with_body": b"X" + INT.pack(8) + b"abcd",
    "sync_flood": SYNC * 2000,
    "truncated_then_eof": b"Q" + INT.pack(40) + b"select",
}


def raw_startup(body: bytes) -> bytes:
    return INT.pack(8 + len(body)) + INT.pack(3 << 16) + body


# Sent on a fresh connection, before any login.
BEFORE_LOGIN = {
    "http": b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    "len0": b"\0\0\0\0",
    "len7": b"\0\0\0\x07abc",
    "huge": INT.pack(0x7FFFFFFF) + INT.pack(3 << 16),
    "cancel_short": struct.pack("!III", 12, CANCEL_REQUEST_CODE, 1),
    "cancel_long": struct.pack("!IIIII", 20, CANCEL_REQUEST_CODE, 1, 2, 3),
    "startup_no_terminator": raw_startup(b"user\0alice"),
    "startup_key_without_value": raw_startup(b"user\0alice\0database\0"),
    "truncated_then_eof": INT.pack(64) + INT.pack(3 << 16) + b"user\0",
}


async def what_comes_back(port: int, payload: bytes, login: bool) -> tuple[object, ...]:
    """The messages (type, SQLSTATE, message) a proxy answered and whether it closed."""
    client = await RawClient.connect("127.0.0.1", port)
    try:
        if login:
            await client.login("alice", PASSWORDS["alice"], "app")
        client.send(payload)
        if payload.endswith(b"select") or payload.endswith(b"user\0"):
            client.writer.write_eof()
        elif login:
            client.send(q("select 'end'"))  # a proxy still serving answers it, then stops
        got = b""
        closed = False
        with contextlib.suppress(TimeoutError):
            # A proxy still waiting for the rest of a message answers nothing: bounded here.
            while not got.endswith(END_REPLY):
                try:
                    chunk = await asyncio.wait_for(client.reader.read(65536), 1.5)
                except ConnectionResetError:
                    chunk = b""  # closed with our 'end' unread: a reset instead of a FIN
                if not chunk:
                    closed = True
                    break
                got += chunk
        answer: list[object] = []
        pos = 0
        while pos + 5 <= len(got):
            t, length = got[pos : pos + 1], INT.unpack_from(got, pos + 1)[0]
            body = got[pos + 5 : pos + 1 + length]
            if t in (b"E", b"N"):
                fields = m.parse_error_fields(body)
                answer.append((t, fields.get("C"), fields.get("M")))
            else:
                answer.append((t, body if t in (b"Z", b"C", b"D") else b""))
            pos += 1 + length
        answer.append(got[pos:])  # whatever is not a whole message (an 'N' byte, say)
        return tuple(answer), closed
    finally:
        client.writer.close()


# Whether this checkout has every compiled twin, current (the run itself may be a pure one).
BUILT = all(speedups.is_current(name) for name in speedups.COMPILED)


@pytest.fixture(scope="module")
def twin_proxies(
    pg: LocalPostgres, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, int]]:
    """One proxy process on the compiled twin and one on the pure-Python modules."""
    tmp = tmp_path_factory.mktemp("twins")
    started: list[ProxyProcess] = []
    ports: dict[str, int] = {}
    try:
        for name, pure in (("compiled", False), ("pure", True)):
            config = tmp / f"{name}.toml"
            write_config(config, pg, 0, pool_size=1, proxy="client_login_timeout_s = 5")
            env = os.environ.copy()
            env.pop(speedups.PURE_ENV, None)
            if pure:
                env[speedups.PURE_ENV] = "1"
            proc = ProxyProcess(config, 0, tmp / f"{name}.log", env=env)
            started.append(proc)
            (found,) = proc.wait_for(r"listening on 127\.0\.0\.1:(\d+)")
            ports[name] = int(found.group(1))
            impl = proc.wait_for(r"\(([\w-]+) hot path\)")[0].group(1)
            assert impl == ("pure-python" if pure else "compiled"), impl
        yield ports
        for proc in started:
            assert "internal_error" not in proc.log() and "Traceback" not in proc.log()
    finally:
        for proc in started:
            proc.stop()


@pytest.mark.skipif(not BUILT, reason="no compiled twin built here")
@pytest.mark.parametrize(
    ("payload", "login"),
    [pytest.param(v, True, id=k) for k, v in AFTER_LOGIN.items()]
    + [pytest.param(v, False, id=f"startup-{k}") for k, v in BEFORE_LOGIN.items()],
)
async def test_compiled_and_pure_answer_hostile_input_alike(
    twin_proxies: dict[str, int], payload: bytes, login: bool
) -> None:
    answers = {}
    for name, port in twin_proxies.items():
        answers[name] = await what_comes_back(port, payload, login)
        # Each keeps serving others on its single server connection.
        canary = await RawClient.connect("127.0.0.1", port)
        await canary.login("alice", PASSWORDS["alice"], "app")
        assert await canary.simple_query("select 'canary'") == [["canary"]]
        await canary.close()
    assert answers["compiled"] == answers["pure"]
    for t in answers["compiled"][0]:
        assert not (isinstance(t, tuple) and t[1] == "XX000"), answers["compiled"]
