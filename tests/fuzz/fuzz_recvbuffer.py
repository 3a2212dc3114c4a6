"""RecvBuffer under any sequence of reads, consumes, capacity requests, detaches and shrinks.

Contract: no exception at all; the unconsumed bytes are never lost or reordered and the
buffer's indexes stay inside it.
"""

from __future__ import annotations

from tests.fuzz._common import instrumented, main

with instrumented("pgpool_proxy.protocol.buffer"):
    from pgpool_proxy.protocol.buffer import RecvBuffer

EXPECTED: tuple[type[BaseException], ...] = ()


def TestOneInput(data: bytes) -> None:
    initial = 1 + (data[0] % 64 if data else 0)
    limit = initial * (1 + (data[1] % 8 if len(data) > 1 else 0))
    rb = RecvBuffer(initial, limit)
    model = bytearray()  # what the buffer must hold, unconsumed
    counter = 0
    i = 2
    while i + 1 < len(data):
        op, arg = data[i] % 5, data[i + 1]
        i += 2
        if op == 0:  # a read of up to arg bytes
            if rb.is_full() and rb.start == 0 and len(rb.buf) >= rb.limit:
                # Full at its bound: its endpoint has stopped reading (RecvBufferFull guards it).
                continue
            view = rb.get_buffer()
            assert len(view) > 0, "get_buffer gave no room"
            n = min(len(view), arg + 1)
            chunk = bytes((counter + k) & 0xFF for k in range(n))
            counter += n
            view[:n] = chunk
            rb.end += n
            model += chunk
        elif op == 1:  # consume arg bytes
            n = min(arg, rb.pending())
            rb.consumed(rb.start + n)
            del model[:n]
        elif op == 2:  # a frame of arg * 4 bytes must fit
            rb.ensure_capacity(arg * 4)
            assert len(rb.buf) - rb.start >= arg * 4
        elif op == 3:  # a transport keeps a view of the old bytes
            held = rb.view[rb.start : rb.end]
            snapshot = bytes(held)
            rb.detach()
            assert bytes(held) == snapshot
            held.release()
        else:
            rb.shrink()
        assert 0 <= rb.start <= rb.end <= len(rb.buf), (rb.start, rb.end, len(rb.buf))
        assert bytes(rb.buf[rb.start : rb.end]) == model


if __name__ == "__main__":
    main(TestOneInput)
