"""What client and server connections share: receive buffer, flow control, slow-path reads."""

from __future__ import annotations

import asyncio
from typing import Protocol, cast

from ..errors import ProxyError, SqlState
from ..protocol.buffer import RecvBuffer
from ..protocol.constants import INT32

# How long a connection closed after an error reply goes on discarding what its peer sends.
LINGER_S = 2.0


class EndpointClosed(Exception):
    """The connection went away while a slow-path reader waited for bytes."""


class Peer(Protocol):
    """The other end of a link, as backpressure needs it."""

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


class Endpoint:
    """One side of a link. Backpressure crosses the link: when this side's transport cannot
    send, the peer stops reading, and resumes when the transport has drained.

    A buffered protocol by its methods (what uvloop looks for). The connection classes the
    loop is given add asyncio.BufferedProtocol as a base, which the asyncio loop looks for:
    not here, because in the compiled twin this is an extension type (endpoint.pxd), and an
    extension type cannot have a Python class as its base."""

    __slots__ = (
        "_wakeup",
        "_writable",
        "eof",
        "linger",
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
        # Set before closing after an error reply: see close_transport.
        self.linger = False
        self._wakeup: asyncio.Future[None] | None = None
        self._writable: asyncio.Future[None] | None = None

    def peer(self) -> Peer | None:
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
        _set(self._writable)
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

    def close_transport(self) -> None:
        """Close the transport; after an error reply (`linger`), without destroying it.

        Closing a socket whose peer's bytes are still unread makes the kernel send RST, and a
        RST can discard the error reply before the peer reads it. So when reading stopped (or
        bytes are held) while the peer kept sending, shut down the sending side after the reply,
        discard what still arrives (buffer_updated of a closed endpoint), and close on the
        peer's EOF or after LINGER_S.
        """
        transport = self.transport
        if transport is None:
            return
        rb = self.rbuf
        if not (self.linger and (self.reading_paused or rb.end > rb.start)):
            transport.close()
            return
        try:
            lingering = transport.can_write_eof()
            if lingering:
                transport.write_eof()
        except (NotImplementedError, OSError, RuntimeError):
            lingering = False
        if not lingering:  # TLS cannot half-close
            transport.close()
            return
        rb.consumed(rb.end)
        self.reading_paused = True
        self.resume_reading()
        asyncio.get_running_loop().call_later(LINGER_S, transport.abort)

    # --- slow path: awaiting whole messages during login ---------------------------------------

    # While a login (session.stepped) or a task (the admin console) reads, nothing consumes
    # bytes between its reads: reading stops once the buffer is full and resumes when the reader
    # asks for more, so a peer that sends without waiting for replies holds at most one buffer
    # here (the kernel's socket buffers then push back on it). There is no linked peer in those
    # states, so the flag of link backpressure is free for this use.

    def slow_path_data(self) -> None:
        """Called by buffer_updated while a task reads this connection (the admin console, a
        server connection's login)."""
        _set(self._wakeup)
        if self.rbuf.is_full():
            self.pause_reading()

    def wake(self) -> None:
        """Called when the connection ends, to resume a waiting reader or writer."""
        _set(self._wakeup)
        _set(self._writable)

    async def wait_for_bytes(self) -> None:
        if self.transport is None or self.eof or self.is_closed():
            raise EndpointClosed
        self.resume_reading()
        self._wakeup = asyncio.get_running_loop().create_future()
        try:
            await self._wakeup
        finally:
            self._wakeup = None
        if self.transport is None or self.is_closed():
            raise EndpointClosed

    async def wait_writable(self) -> None:
        """Return once the transport has drained below its high-water mark (or the connection
        ended): a task that writes replies waits here instead of buffering without bound."""
        while self.write_paused and self.transport is not None and not self.is_closed():
            self._writable = asyncio.get_running_loop().create_future()
            try:
                await self._writable
            finally:
                self._writable = None

    async def read_frame(self, max_len: int, what: str) -> tuple[int, bytes]:
        """The next whole typed message (type byte, body); lengths above max_len are refused."""
        while True:
            frame = self.take_frame(max_len, what)
            if frame is not None:
                return frame
            await self.wait_for_bytes()

    def take_frame(self, max_len: int, what: str) -> tuple[int, bytes] | None:
        """The next whole typed message if it is all here, else None (with room made for it);
        a length above max_len is refused before any room is made."""
        rb = self.rbuf
        avail = rb.end - rb.start
        if avail < 5:
            return None
        t = rb.buf[rb.start]
        length = INT32.unpack_from(rb.buf, rb.start + 1)[0]
        if length < 4 or length > max_len:
            raise ProxyError(SqlState.PROTOCOL_VIOLATION, f"invalid message length during {what}")
        if avail < length + 1:
            rb.ensure_capacity(length + 1)
            return None
        body = bytes(rb.buf[rb.start + 5 : rb.start + 1 + length])
        rb.consumed(rb.start + 1 + length)
        return t, body


def _set(fut: asyncio.Future[None] | None) -> None:
    if fut is not None and not fut.done():
        fut.set_result(None)
