"""Sans-IO tests of the hot path: receive buffers and both frame scanners, fed whole, byte by byte
and with trailing garbage."""

from __future__ import annotations

import pytest

from pgpool_proxy.protocol import messages as m
from pgpool_proxy.protocol.buffer import RecvBuffer
from pgpool_proxy.protocol.client_scan import CEV_NEED, ClientScanner
from pgpool_proxy.protocol.constants import TX_FAILED, TX_IDLE, TX_IN_BLOCK
from pgpool_proxy.protocol.framing import FrameError, peek_type
from pgpool_proxy.protocol.server_scan import (
    EV_ERROR,
    EV_FATAL,
    EV_NEED,
    EV_NOTIFY,
    EV_PARAM,
    EV_READY,
    BackendScanner,
    is_fatal,
)
from pgpool_proxy.protocol.sqltables import SQL_SESSION

LIMIT = 1 << 20


def feed_client(data: bytes, chunk: int) -> tuple[ClientScanner, list[bytes]]:
    """Feed data through a RecvBuffer + ClientScanner in chunks; return what would be forwarded."""
    rb = RecvBuffer(16, LIMIT)
    sc = ClientScanner(LIMIT)
    out: list[bytes] = []
    for i in range(0, len(data), chunk):
        piece = data[i : i + chunk]
        while piece:
            view = rb.get_buffer()
            n = min(len(view), len(piece))
            view[:n] = piece[:n]
            piece = piece[n:]
            rb.end += n
            start = rb.start
            pos = sc.scan(rb.buf, start, rb.end)
            out.append(bytes(rb.buf[start:pos]))
            rb.consumed(pos)
            if sc.terminated:
                return sc, out
    return sc, out


SIMPLE = m.query("select 1")
EXTENDED = (
    m.frame(b"P", b"\0select $1\0\0\0")
    + m.frame(b"B", b"\0\0\0\0\0\x01\0\0\0\x011\0\0")
    + m.frame(b"D", b"P\0")
    + m.frame(b"E", b"\0\0\0\0\0")
    + m.frame(b"S")
)


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 7, 64, 10_000])
def test_client_scanner_counts_sync_points(chunk: int) -> None:
    data = SIMPLE + EXTENDED + SIMPLE
    sc, out = feed_client(data, chunk)
    assert b"".join(out) == data
    assert sc.pending == 3
    assert not sc.unsynced
    assert sc.skip == 0


def test_client_scanner_unsynced_until_sync() -> None:
    sc, _ = feed_client(EXTENDED[:-5], 1000)
    assert sc.unsynced and sc.pending == 0
    sc2, _ = feed_client(EXTENDED[:-5] + m.frame(b"H"), 1000)
    assert sc2.unsynced and sc2.pending == 0


def test_client_scanner_flush_after_sync_does_not_unsync() -> None:
    # psycopg 3 ends a pipeline with Sync+Flush: nothing of the client's is left on the server.
    sc, _ = feed_client(EXTENDED + m.frame(b"H"), 1000)
    assert sc.pending == 1 and not sc.unsynced
    sc2, _ = feed_client(SIMPLE + m.frame(b"H") + m.frame(b"H"), 1)
    assert sc2.pending == 1 and not sc2.unsynced
    # A Flush with a body: PostgreSQL errors and skips everything up to the next Sync.
    sc3, _ = feed_client(SIMPLE + m.frame(b"H", b"x"), 1)
    assert sc3.unsynced


def test_client_scanner_copy_data_does_not_unsync() -> None:
    data = m.query("copy t from stdin") + m.frame(b"d", b"1\n") + m.frame(b"c")
    sc, out = feed_client(data, 3)
    assert b"".join(out) == data
    assert sc.pending == 1 and not sc.unsynced


@pytest.mark.parametrize("chunk", [1, 4, 1000])
def test_client_scanner_stops_before_terminate(chunk: int) -> None:
    data = SIMPLE + m.TERMINATE + b"garbage after terminate"
    sc, out = feed_client(data, chunk)
    assert sc.terminated
    assert b"".join(out) == SIMPLE


def test_client_scanner_streams_large_frames_without_buffering_them() -> None:
    # An Execute-free Bind of the unnamed statement: parameters are never looked into.
    big = m.frame(
        b"B", b"\0\0" + b"\0\0" + b"\0\1" + (100_000).to_bytes(4, "big") + b"x" * 100_000 + b"\0\0"
    ) + m.frame(b"S")
    rb = RecvBuffer(4096, LIMIT)
    sc = ClientScanner(LIMIT)
    forwarded = 0
    for i in range(0, len(big), 4000):
        piece = big[i : i + 4000]
        view = rb.get_buffer()
        view[: len(piece)] = piece
        rb.end += len(piece)
        pos = sc.scan(rb.buf, rb.start, rb.end)
        forwarded += pos - rb.start
        rb.consumed(pos)
    assert forwarded == len(big)
    # The buffer never grew: the frame was passed through in pieces.
    assert len(rb.buf) == 4096
    assert sc.pending == 1 and sc.skip == 0


def test_client_scanner_waits_for_a_whole_query_to_look_into_it() -> None:
    q = m.query("SELECT 1; SET work_mem = '8MB'")
    sc = ClientScanner(LIMIT)
    buf = bytearray(q)
    assert sc.scan(buf, 0, len(q) - 3) == 0
    assert sc.event == CEV_NEED and sc.need == len(q) and sc.pending == 0
    assert sc.scan(buf, 0, len(q)) == len(q)
    assert sc.pending == 1 and sc.dirty & SQL_SESSION


def test_client_scanner_rejects_huge_length_before_allocating() -> None:
    sc = ClientScanner(LIMIT)
    buf = bytearray(b"Q" + (256 * 1024 * 1024).to_bytes(4, "big"))
    with pytest.raises(FrameError) as info:
        sc.scan(buf, 0, len(buf))
    assert info.value.too_large
    assert info.value.length == 256 * 1024 * 1024


@pytest.mark.parametrize("length", [0, 1, 3])
def test_client_scanner_rejects_short_length(length: int) -> None:
    buf = bytearray(b"Q" + length.to_bytes(4, "big"))
    with pytest.raises(FrameError) as info:
        ClientScanner(LIMIT).scan(buf, 0, len(buf))
    assert not info.value.too_large


def test_peek_type() -> None:
    buf = bytearray(SIMPLE)
    assert peek_type(buf, 0, 4, LIMIT) == -1
    assert peek_type(buf, 0, 5, LIMIT) == ord("Q")
    with pytest.raises(FrameError):
        peek_type(bytearray(b"Q\xff\xff\xff\xff"), 0, 5, LIMIT)


def backend_reply(status: int = TX_IDLE) -> bytes:
    return (
        m.frame(b"T", b"\0\x01a\0" + bytes(18))
        + m.frame(b"D", b"\0\x01\0\0\0\x011")
        + m.frame(b"C", b"SELECT 1\0")
        + m.ready_for_query(status)
    )


def scan_backend(data: bytes, chunk: int) -> list[tuple[int, int]]:
    """Events (event, status) seen while feeding data in chunks."""
    rb = RecvBuffer(8, 1 << 16)
    sc = BackendScanner()
    events: list[tuple[int, int]] = []
    for i in range(0, len(data), chunk):
        piece = data[i : i + chunk]
        while piece:
            view = rb.get_buffer()
            n = min(len(view), len(piece))
            view[:n] = piece[:n]
            piece = piece[n:]
            rb.end += n
            pos = rb.start
            while True:
                pos = sc.scan(rb.buf, pos, rb.end)
                if sc.event == EV_READY:
                    events.append((EV_READY, sc.status))
                    continue
                if sc.event in (EV_PARAM, EV_ERROR, EV_NOTIFY, EV_FATAL):
                    events.append((sc.event, 0))
                    pos += int.from_bytes(rb.buf[pos + 1 : pos + 5], "big") + 1
                    continue
                if sc.event == EV_NEED:
                    rb.consumed(pos)
                    rb.ensure_capacity(sc.need)
                    break
                rb.consumed(pos)
                break
    return events


@pytest.mark.parametrize("chunk", [1, 2, 6, 13, 4096])
def test_backend_scanner_finds_ready_for_query(chunk: int) -> None:
    data = backend_reply(TX_IN_BLOCK) + backend_reply(TX_FAILED) + backend_reply(TX_IDLE)
    events = scan_backend(data, chunk)
    assert events == [(EV_READY, TX_IN_BLOCK), (EV_READY, TX_FAILED), (EV_READY, TX_IDLE)]


@pytest.mark.parametrize("chunk", [1, 3, 4096])
def test_backend_scanner_stops_at_parameter_status(chunk: int) -> None:
    data = m.parameter_status("TimeZone", "UTC") + backend_reply()
    assert scan_backend(data, chunk) == [(EV_PARAM, 0), (EV_READY, TX_IDLE)]


@pytest.mark.parametrize("chunk", [1, 3, 4096])
def test_backend_scanner_stops_at_notification(chunk: int) -> None:
    notify = m.frame(b"A", (1234).to_bytes(4, "big") + b"chan\0" + b"x" * 3000 + b"\0")
    data = notify + backend_reply() + notify
    assert scan_backend(data, chunk) == [(EV_NOTIFY, 0), (EV_READY, TX_IDLE), (EV_NOTIFY, 0)]


def test_backend_scanner_errors_only_when_asked() -> None:
    err = m.error_response("ERROR", "42601", "syntax error")
    sc = BackendScanner()
    buf = bytearray(err + m.ready_for_query())
    pos = sc.scan(buf, 0, len(buf))
    assert sc.event == EV_READY and pos == len(buf)
    sc.internal = True
    pos = sc.scan(buf, 0, len(buf))
    assert sc.event == EV_ERROR and pos == 0


def _error(**fields: str) -> bytes:
    body = b"".join(k.encode() + v.encode() + b"\0" for k, v in fields.items())
    return m.frame(b"E", body + b"\0")


@pytest.mark.parametrize("chunk", [1, 7, 4096])
def test_backend_scanner_stops_at_the_servers_last_word(chunk: int) -> None:
    """A FATAL ErrorResponse (the server closes next) is stopped at whole, however it arrives;
    an ERROR streams through."""
    data = (
        m.error_response("ERROR", "42601", "syntax error" + "x" * 200)
        + m.ready_for_query()
        + m.error_response("FATAL", "57P01", "terminating connection due to administrator command")
    )
    assert scan_backend(data, chunk) == [(EV_READY, TX_IDLE), (EV_FATAL, 0)]


@pytest.mark.parametrize(
    ("fields", "fatal"),
    [
        ({"S": "FATAL", "V": "FATAL", "C": "57P01"}, True),
        ({"S": "PANIC", "V": "PANIC", "C": "XX000"}, True),
        ({"S": "ERROR", "V": "ERROR", "C": "57014"}, False),
        ({"S": "SCHWERWIEGEND", "V": "FATAL", "C": "57P01"}, True),  # localized: V decides
        ({"S": "FATAL", "V": "ERROR"}, False),
        ({"S": "FATAL", "C": "57P01"}, True),  # before PostgreSQL 9.6: no V
        ({"C": "57P01", "M": "FATAL"}, False),
        ({}, False),
    ],
)
def test_is_fatal(fields: dict[str, str], fatal: bool) -> None:
    frame = bytearray(_error(**fields))
    assert is_fatal(frame, 5, len(frame)) is fatal


def test_is_fatal_unterminated_field() -> None:
    frame = bytearray(b"E\0\0\0\x0aSFATAL")
    assert is_fatal(frame, 5, len(frame)) is False


def test_backend_scanner_trailing_garbage_is_left_unconsumed() -> None:
    data = bytearray(backend_reply() + b"\x01\x02")
    sc = BackendScanner()
    pos = sc.scan(data, 0, len(data))
    assert sc.event == EV_READY
    pos = sc.scan(data, pos, len(data))
    assert pos == len(data) - 2 and sc.event == EV_NEED


def test_backend_scanner_rejects_bad_length() -> None:
    with pytest.raises(FrameError):
        BackendScanner().scan(bytearray(b"D\x00\x00\x00\x02"), 0, 5)


def test_recv_buffer_detach_keeps_tail_and_leaves_old_bytes_alone() -> None:
    rb = RecvBuffer(16, 1024)
    view = rb.get_buffer()
    view[:10] = b"0123456789"
    rb.end = 10
    held = memoryview(rb.buf)[0:6]  # what a transport would still hold
    rb.consumed(6)
    rb.detach()
    assert bytes(held) == b"012345"
    assert bytes(rb.buf[rb.start : rb.end]) == b"6789"
    rb.get_buffer()[:2] = b"ab"
    assert bytes(held) == b"012345"


def test_recv_buffer_grows_for_inspected_frames_and_shrinks_when_idle() -> None:
    rb = RecvBuffer(16, 1 << 20)
    rb.get_buffer()[:5] = b"Q\0\0\0\x63"
    rb.end = 5
    rb.ensure_capacity(100)
    assert len(rb.buf) >= 100 and bytes(rb.buf[:5]) == b"Q\0\0\0\x63"
    rb.consumed(rb.end)
    rb.shrink()
    assert len(rb.buf) == 16


def test_recv_buffer_dropped_when_idle_holds_nothing_and_reads_again() -> None:
    """An idle client holds no buffer; its next read gets `initial` bytes, and bytes a
    transport still holds from before the drop are never written over."""
    rb = RecvBuffer(16, 1 << 20)
    rb.get_buffer()[:4] = b"abcd"
    rb.end = 4
    held = memoryview(rb.buf)[0:4]
    rb.drop()  # not empty: kept
    assert bytes(rb.buf[rb.start : rb.end]) == b"abcd"
    rb.consumed(4)
    rb.drop()
    assert len(rb.buf) == 0 and rb.pending() == 0
    view = rb.get_buffer()
    assert len(view) == 16 and len(rb.buf) == 16
    view[:4] = b"wxyz"
    assert bytes(held) == b"abcd"
    rb.end = 4
    rb.consumed(4)
    rb.drop()
    rb.ensure_capacity(40)  # an inspected frame's room, asked of a dropped buffer
    assert len(rb.buf) >= 40


def test_recv_buffer_compacts_instead_of_growing() -> None:
    rb = RecvBuffer(8, 1024)
    rb.get_buffer()[:8] = b"abcdefgh"
    rb.end = 8
    rb.consumed(6)
    view = rb.get_buffer()
    assert len(rb.buf) == 8 and bytes(rb.buf[:2]) == b"gh" and len(view) == 6


def test_client_scanner_ignores_syncs_the_server_drops_in_copy_in() -> None:
    """Extended-protocol COPY FROM STDIN: the Sync after Execute reaches the server in copy-in
    mode and earns no ReadyForQuery; only the Sync after CopyDone does."""
    sc = ClientScanner(LIMIT)
    first = bytearray(EXTENDED)  # Parse/Bind/Describe/Execute/Sync
    sc.scan(first, 0, len(first))
    assert sc.pending == 1
    sc.copy_in = True  # what the backend side sets on CopyInResponse
    rest = bytearray(m.frame(b"d", b"1\n") + m.frame(b"c") + m.frame(b"S"))
    sc.scan(rest, 0, len(rest))
    assert sc.pending == 1 and not sc.copy_in and not sc.unsynced


def test_backend_scanner_reports_copy_in_response() -> None:
    sc = BackendScanner()
    data = bytearray(m.frame(b"G", b"\0\0\0"))
    assert sc.scan(data, 0, len(data)) == len(data)
    assert sc.copy_in
