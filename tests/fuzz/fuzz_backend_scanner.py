"""Server -> proxy frame scanning: BackendScanner over a raw server byte stream, with the frames
the proxy stops at decoded as the backend does (ParameterStatus, ErrorResponse, DataRow).

Contract: FrameError (an impossible length) or ProtocolViolation (a frame the proxy reads whose
contents are malformed), nothing else.
"""

from __future__ import annotations

import contextlib
from collections import deque

from tests.fuzz._common import instrumented, main

with instrumented("pgpool_proxy.protocol"):
    from pgpool_proxy.protocol import messages as m
    from pgpool_proxy.protocol.buffer import RecvBuffer
    from pgpool_proxy.protocol.framing import FrameError
    from pgpool_proxy.protocol.server_scan import (
        EV_AFTER,
        EV_ERROR,
        EV_FATAL,
        EV_NEED,
        EV_NONE,
        EV_NOTIFY,
        EV_PARAM,
        EV_READY,
        EV_ROW,
        EV_UNIT,
        BackendScanner,
    )

EXPECTED = (FrameError, m.ProtocolViolation)
_EVENTS = (
    EV_NONE,
    EV_READY,
    EV_PARAM,
    EV_ERROR,
    EV_NEED,
    EV_ROW,
    EV_UNIT,
    EV_AFTER,
    EV_NOTIFY,
    EV_FATAL,
)


def _feed(data: bytes, chunk: int, internal: bool, units: bool) -> None:
    rb = RecvBuffer(64, 1 << 16)
    sc = BackendScanner()
    sc.internal = internal
    if units:
        sc.units = deque([1, 2, 3, 4, 5, 0, 4, 0])  # Parse/Bind/Describe/Execute/Close, Sync...
    offset = 0
    stalls = 0
    while True:
        if offset < len(data):
            view = rb.get_buffer()
            n = min(len(view), chunk, len(data) - offset)
            view[:n] = data[offset : offset + n]
            rb.end += n
            offset += n
        start, end = rb.start, rb.end
        buf = rb.buf
        pos = sc.scan(buf, start, end)
        assert start <= pos <= end, (start, pos, end)
        ev = sc.event
        assert ev in _EVENTS, ev
        if ev in (EV_PARAM, EV_ERROR, EV_ROW, EV_UNIT, EV_NOTIFY, EV_FATAL):
            n = int.from_bytes(buf[pos + 1 : pos + 5], "big") + 1
            assert pos + n <= end, "stopped at an incomplete frame"
            body = memoryview(buf)[pos + 5 : pos + n]
            if ev == EV_PARAM:
                m.parse_parameter_status(body)
            elif ev == EV_ERROR:
                m.parse_error_fields(body)
            elif ev == EV_FATAL:
                # The backend relays it unread and closes; a fuzzed stream just goes on.
                assert buf[pos] == ord("E")
            elif ev == EV_ROW:
                m.parse_data_row(body)
            elif ev == EV_NOTIFY:
                assert buf[pos] == ord("A")
            elif sc.units:
                sc.units.popleft()
            pos += n
        elif ev == EV_READY:
            assert buf[pos - 6] == ord("Z") and pos - start >= 6
        elif ev == EV_NEED:
            rb.consumed(pos)
            # As BackendConnection._pump: room for twice what is held, never the claimed size.
            rb.ensure_capacity(min(sc.need, max(2 * rb.pending(), 64)))
            if offset >= len(data):
                return
            continue
        rb.consumed(pos)
        if pos == start:
            stalls += 1
            if offset >= len(data) or stalls > len(data) + 2:
                return
        if offset >= len(data) and not rb.pending():
            return


def TestOneInput(data: bytes) -> None:
    cases = ((len(data) or 1, True, False), (1 + len(data) % 11, False, True), (1, True, True))
    for chunk, internal, units in cases:
        with contextlib.suppress(*EXPECTED):
            _feed(data, chunk, internal, units)


if __name__ == "__main__":
    main(TestOneInput)
