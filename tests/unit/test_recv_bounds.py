"""Receive buffers stay bounded: growth is geometric and stops at the limit, and a connection
whose task is not consuming stops reading once its buffer is full (issue 17, finding 5)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from pgpool_proxy.net.endpoint import Endpoint
from pgpool_proxy.protocol.buffer import RecvBuffer, RecvBufferFull


def fill(rb: RecvBuffer, nbytes: int) -> int:
    """Read nbytes the way a transport does (get_buffer, then buffer_updated); returns how many
    times the buffer was replaced (each replacement copies what it holds)."""
    copies = 0
    while nbytes:
        before = rb.buf
        view = rb.get_buffer()
        copies += rb.buf is not before
        n = min(len(view), nbytes)
        view[:n] = b"x" * n
        rb.end += n
        nbytes -= n
    return copies


def test_growth_is_geometric_and_never_by_one_byte() -> None:
    rb = RecvBuffer(4096, 1 << 20)
    sizes = []
    while len(rb.buf) < rb.limit:
        fill(rb, len(rb.buf) - rb.end)
        rb.get_buffer()
        sizes.append(len(rb.buf))
    assert sizes == [1 << k for k in range(13, 21)]
    fill(rb, len(rb.buf) - rb.end)
    # Full at its limit with nothing consumed: no more room is made, and no copy is made.
    assert rb.is_full()
    with pytest.raises(RecvBufferFull):
        rb.get_buffer()
    assert len(rb.buf) == rb.limit


def test_a_limit_that_is_not_a_power_of_two_is_reached_exactly() -> None:
    rb = RecvBuffer(4096, 64 * 1024 * 1024 + 5)
    copies = fill(rb, rb.limit)
    assert len(rb.buf) == rb.limit and rb.is_full()
    assert copies == 15  # 4 KiB doubled 14 times, then the last step to the limit
    with pytest.raises(RecvBufferFull):
        rb.get_buffer()


def test_full_buffer_makes_room_by_compacting_once_consumed() -> None:
    rb = RecvBuffer(64, 64)
    fill(rb, 64)
    rb.consumed(60)
    assert len(rb.get_buffer()) == 60 and rb.start == 0 and rb.end == 4


def test_one_checked_frame_may_go_past_the_limit() -> None:
    """A frame the caller checked against its own bound is made room for whole."""
    rb = RecvBuffer(16, 64)
    fill(rb, 5)
    rb.ensure_capacity(1000)
    assert len(rb.buf) == 1000


class FakeTransport:
    def __init__(self) -> None:
        self.reading = True
        self.pauses = 0

    def pause_reading(self) -> None:
        assert self.reading
        self.reading = False
        self.pauses += 1

    def resume_reading(self) -> None:
        assert not self.reading
        self.reading = True


class SlowPathEndpoint(Endpoint):
    """An endpoint in a login-like state: a task reads it with read_frame."""

    def __init__(self) -> None:
        super().__init__(RecvBuffer(64, 1 << 20))
        self.transport = FakeTransport()  # type: ignore[assignment]

    def peer(self) -> Endpoint | None:
        return None

    def is_closed(self) -> bool:
        return False

    def buffer_updated(self, nbytes: int) -> None:
        self.rbuf.end += nbytes
        self.slow_path_data()

    def deliver(self, data: bytes) -> int:
        """What a transport does while reading: returns how many bytes it could deliver."""
        t: Any = self.transport
        done = 0
        while done < len(data) and t.reading:
            view = self.get_buffer(-1)
            n = min(len(view), len(data) - done)
            view[:n] = data[done : done + n]
            self.buffer_updated(n)
            done += n
        return done


def frame(body: bytes) -> bytes:
    return b"Q" + (len(body) + 4).to_bytes(4, "big") + body


async def test_a_reader_that_is_not_consuming_pauses_at_its_buffer_size() -> None:
    ep = SlowPathEndpoint()
    flood = frame(b"SHOW CONFIG\0") * 10_000
    taken = ep.deliver(flood)
    # The task is busy elsewhere (say, waiting for its client to read replies): one buffer.
    assert taken == 64 and not ep.transport.reading  # type: ignore[union-attr]
    assert len(ep.rbuf.buf) == 64
    # The task reads what is there, then asks for more: reading resumes.
    for _ in range(64 // 17):
        t, body = await ep.read_frame(1024, "test")
        assert (t, body) == (ord("Q"), b"SHOW CONFIG\0")
    reader = asyncio.ensure_future(ep.read_frame(1024, "test"))
    # One loop turn (not a wait on time): the task runs to its first await. Likewise below.
    await asyncio.sleep(0)
    assert ep.transport.reading  # type: ignore[union-attr]
    ep.deliver(flood[taken:])
    assert await reader == (ord("Q"), b"SHOW CONFIG\0")
    assert len(ep.rbuf.buf) == 64  # never grew: every frame fits


async def test_a_reader_waiting_for_a_large_frame_gets_room_for_it() -> None:
    ep = SlowPathEndpoint()
    big = frame(b"x" * 1000)
    reader = asyncio.ensure_future(ep.read_frame(4096, "test"))
    await asyncio.sleep(0)
    done = 0
    while not reader.done():
        done += ep.deliver(big[done:])
        await asyncio.sleep(0)
    assert reader.result() == (ord("Q"), b"x" * 1000)
    assert len(ep.rbuf.buf) <= 2048


async def test_writers_wait_for_the_transport_to_drain() -> None:
    ep = SlowPathEndpoint()
    ep.pause_writing()
    waiter = asyncio.ensure_future(ep.wait_writable())
    await asyncio.sleep(0)
    assert not waiter.done()
    ep.resume_writing()
    await asyncio.wait_for(waiter, 1)
    # Not paused: no wait at all.
    await asyncio.wait_for(ep.wait_writable(), 1)


# --- statement texts: per pool and per client (finding 8) ----------------------------------------


def _key(n: int, size: int) -> bytes:
    return b"select %d -- " % n + b"x" * size + b"\0\0\0"


def test_registry_keeps_statement_texts_within_its_byte_budget() -> None:
    from pgpool_proxy.link.prepared import StatementRegistry

    reg = StatementRegistry(1000)
    budget = 10_000
    stmts = [reg.add(_key(i, 3000), 0, None, budget) for i in range(10)]
    assert reg.nbytes <= budget and len(reg.entries) == 3
    assert [s.evicted for s in stmts] == [True] * 7 + [False] * 3
    assert set(reg.by_key.values()) == set(stmts[7:])
    # A used statement is the last to go; a forgotten one in use comes back.
    reg.touch(stmts[7], budget)
    reg.touch(stmts[0], budget)
    assert not stmts[0].evicted and stmts[8].evicted and not stmts[7].evicted
    assert reg.nbytes <= budget
    # One statement over the whole budget is still kept (alone): it is in use.
    big = reg.add(_key(99, 50_000), 0, None, budget)
    assert list(reg.entries) == [big] and reg.nbytes == len(big.key)


def test_server_connections_drop_forgotten_statements_and_close_them() -> None:
    from pgpool_proxy.link.prepared import ServerStatements, StatementRegistry

    reg = StatementRegistry(1000)
    server = ServerStatements(200)
    a = reg.add(_key(1, 100), 0, None, 1000)
    server.add(a)
    server.sweep(reg)
    assert a in server and not server.closing
    b = reg.add(_key(2, 900), 0, None, 1000)  # a is forgotten
    server.sweep(reg)
    assert a not in server and len(server.closing) == 1
    dead = server.closing[0]
    # The server connection keeps only the name to close, not the text.
    assert dead.name == a.name and dead.key == b"" and dead.close_frame == a.close_frame
    # A Close the server skipped (error earlier in the pipeline) is sent again later.
    server.closing.clear()
    server.unclose(dead)
    assert server.closing == [dead] and dead not in server
    server.unclose(b)
    assert b in server
    server.clear()
    assert not server.closing and not len(server)


def test_client_statements_count_their_bytes() -> None:
    from pgpool_proxy.link.prepared import ClientStatements, Stmt

    s1, s2 = Stmt(b"p1", _key(1, 10), 0), Stmt(b"p2", _key(2, 20), 0)
    held = ClientStatements()
    held[b"a"] = s1
    held[b"b"] = s2
    assert held.nbytes == len(s1.key) + len(s2.key)
    held[b"a"] = s2  # redefined (an undone Parse restores the previous one)
    assert held.nbytes == 2 * len(s2.key)
    assert held.pop(b"a") is s2 and held.pop(b"zz", None) is None
    assert held.nbytes == len(s2.key)
    del held[b"b"]
    assert held.nbytes == 0 and not held
    held[b"c"] = s1
    held.clear()
    assert held.nbytes == 0
