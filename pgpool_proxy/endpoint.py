"""What client and server connections share: receive buffer, flow control, slow-path reads."""

from __future__ import annotations

import asyncio
from typing import cast

from .errors import ProxyError, SqlState
from .protocol.constants import INT32
from .protocol.framing import RecvBuffer


class EndpointClosed(Exception):
    """The connection went away while a slow-path reader waited for bytes."""


class Endpoint(asyncio.BufferedProtocol):
    """One side of a link. Backpressure crosses the link: when this side's transport cannot
    send, the peer stops reading, and resumes when the transport has drained."""

    __slots__ = (
        "_wakeup",
        "eof",
        "rbuf",
        "reading_paused",
        "transport",
        "write_paused",
    )

    def __init__(self, rbuf: RecvBuffer) -> None:
        self.rbuf = rbuf
        self.transport: asyncio.Transport | None = None
        self.reading_paused = False
        self.write_paused = False
        self.eof = False
        self._wakeup: asyncio.Future[None] | None = None

    def peer(self) -> Endpoint | None:
        """The endpoint linked to this one, if any."""
        raise NotImplementedError

    def is_closed(self) -> bool:
        raise NotImplementedError

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, so no isinstance check.
        self.transport = cast(asyncio.Transport, transport)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.rbuf.get_buffer()

    def eof_received(self) -> bool | None:
        self.eof = True
        return None

    def pause_writing(self) -> None:
        self.write_paused = True
        peer = self.peer()
        if peer is not None:
            peer.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        peer = self.peer()
        if peer is not None:
            peer.resume_reading()

    def pause_reading(self) -> None:
        if not self.reading_paused and self.transport is not None:
            self.reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.reading_paused and self.transport is not None:
            self.reading_paused = False
            self.transport.resume_reading()

    # --- slow path: awaiting whole messages during login ---------------------------------------

    def wake(self) -> None:
        """Called when bytes arrive or the connection ends, to resume a waiting reader."""
        w = self._wakeup
        if w is not None and not w.done():
            w.set_result(None)

    async def wait_for_bytes(self) -> None:
        if self.transport is None or self.eof or self.is_closed():
            raise EndpointClosed
        self._wakeup = asyncio.get_running_loop().create_future()
        try:
            await self._wakeup
        finally:
            self._wakeup = None
        if self.transport is None or self.is_closed():
            raise EndpointClosed

    async def read_frame(self, max_len: int, what: str) -> tuple[int, bytes]:
        """The next whole typed message (type byte, body); lengths above max_len are refused."""
        rb = self.rbuf
        while True:
            avail = rb.end - rb.start
            if avail >= 5:
                t = rb.buf[rb.start]
                length = INT32.unpack_from(rb.buf, rb.start + 1)[0]
                if length < 4 or length > max_len:
                    raise ProxyError(
                        SqlState.PROTOCOL_VIOLATION, f"invalid message length during {what}"
                    )
                if avail >= length + 1:
                    body = bytes(rb.buf[rb.start + 5 : rb.start + 1 + length])
                    rb.consumed(rb.start + 1 + length)
                    return t, body
                rb.ensure_capacity(length + 1)
            await self.wait_for_bytes()
