"""Client -> proxy frame scanning: ClientScanner and peek_type over a raw client byte stream.

Contract: FrameError for an impossible length, nothing else; the scanner never moves backwards
or past the data it was given, and every stop is at a frame boundary it can explain.
"""

from __future__ import annotations

import contextlib

from tests.fuzz._common import instrumented, main

with instrumented("pgpool_proxy.protocol"):
    from pgpool_proxy.protocol.buffer import RecvBuffer
    from pgpool_proxy.protocol.client_scan import CEV_INSPECT, CEV_NEED, CEV_NONE, ClientScanner
    from pgpool_proxy.protocol.framing import FrameError, peek_type

MAX_LEN = 1 << 16
EXPECTED = (FrameError,)


def _feed(data: bytes, chunk: int, rename: bool) -> None:
    rb = RecvBuffer(16, MAX_LEN)
    sc = ClientScanner(MAX_LEN)
    sc.rename = rename
    offset = 0
    while offset < len(data) or rb.pending():
        if offset < len(data):
            view = rb.get_buffer()
            n = min(len(view), chunk, len(data) - offset)
            view[:n] = data[offset : offset + n]
            rb.end += n
            offset += n
        start, end = rb.start, rb.end
        peek_type(rb.buf, start, end, MAX_LEN)
        pos = sc.scan(rb.buf, start, end)
        assert start <= pos <= end, (start, pos, end)
        assert sc.event in (CEV_NONE, CEV_INSPECT, CEV_NEED), sc.event
        assert sc.skip >= 0 and sc.need >= 0
        if sc.terminated:
            return
        if sc.event == CEV_INSPECT:
            # The caller handles the frame (rename, answer locally): here, pass over it whole.
            length = int.from_bytes(rb.buf[pos + 1 : pos + 5], "big")
            pos = min(pos + 1 + length, end)
            if pos - rb.start < 5:
                return
        elif sc.event == CEV_NEED:
            rb.consumed(pos)
            rb.ensure_capacity(sc.need)
            if offset >= len(data):
                return  # the rest never comes
            continue
        rb.consumed(pos)
        if pos == start and offset >= len(data):
            return


def TestOneInput(data: bytes) -> None:
    for chunk, rename in ((len(data) or 1, False), (1 + len(data) % 13, True), (1, False)):
        with contextlib.suppress(*EXPECTED):
            _feed(data, chunk, rename)


if __name__ == "__main__":
    main(TestOneInput)
