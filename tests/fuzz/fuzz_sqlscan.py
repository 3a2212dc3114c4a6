"""The statement scanner: classify() over any query text a client sends.

Contract: returns an int and finishes (in linear time: the long run's -timeout catches a
blow-up), for any bytes, NULs included (a malformed Query may hold them), and for a range
inside a larger buffer.
"""

from __future__ import annotations

from tests.fuzz._common import instrumented, main

with instrumented("pgpool_proxy.protocol.sqlscan"):
    from pgpool_proxy.protocol.sqlscan import classify

EXPECTED: tuple[type[BaseException], ...] = ()


def TestOneInput(data: bytes) -> None:
    buf = bytearray(data)
    assert isinstance(classify(buf, 0, len(buf)), int)
    # As the client scanner calls it: the text between a frame header and the terminator.
    framed = bytearray(b"Q\0\0\0\0") + buf + b"\0P"
    assert isinstance(classify(framed, 5, 5 + len(buf)), int)
    half = len(buf) // 2
    assert isinstance(classify(buf, half, len(buf)), int)


if __name__ == "__main__":
    main(TestOneInput)
