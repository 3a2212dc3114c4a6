"""Receive buffers: what a BufferedProtocol reads into, without copying, within a bound."""

from __future__ import annotations


class RecvBufferFull(Exception):
    """A read was offered a buffer that is full at its bound: the endpoint should have paused
    reading first (a bug guard; the transport closes the connection)."""


# What an idle buffer holds: nothing of its own (see RecvBuffer.drop). Never written: a read
# into it is preceded by a growth to `initial` bytes, as its length is 0.
_NOTHING = bytearray()
_NOTHING_VIEW = memoryview(_NOTHING)


class RecvBuffer:
    """A growable receive buffer that a BufferedProtocol reads into without copying.

    Bytes [start, end) are received and not yet consumed. Once a slice has been handed to a
    transport that could not send it at once, the transport holds a view of it; `detach` then
    moves the unconsumed tail to a fresh buffer so the held bytes are never overwritten.

    Growth for reads is geometric and stops at `limit`: a buffer full of unconsumed bytes at its
    limit is not grown (each growth copies everything held, so growing by a little per read costs
    a copy of the whole buffer per read). Its owner pauses reading before that (`is_full`).
    Only `ensure_capacity`, asked for one frame whose length the caller has checked, goes past it.
    """

    __slots__ = ("buf", "end", "initial", "limit", "start", "view")

    def __init__(self, initial: int, limit: int) -> None:
        self.buf = bytearray(initial)
        # One long-lived view: slicing it costs one object per read instead of two.
        self.view = memoryview(self.buf)
        self.start = 0
        self.end = 0
        self.initial = initial
        self.limit = limit

    def get_buffer(self) -> memoryview:
        buf = self.buf
        if self.end == len(buf):
            if self.start:
                self._compact()
            else:
                self._grow()
        return self.view[self.end :]

    def is_full(self) -> bool:
        """No room left for a read without compacting or growing: a reader that is not consuming
        pauses here, so what it holds is bounded by the buffer's current size."""
        return self.end == len(self.buf)

    def consumed(self, pos: int) -> None:
        """Mark everything before pos as consumed; rewinds to offset 0 when nothing is left."""
        if pos == self.end:
            self.start = self.end = 0
        else:
            self.start = pos

    def ensure_capacity(self, nbytes: int) -> None:
        """Make room for a frame of nbytes starting at start (an inspected frame must fit)."""
        if len(self.buf) - self.start >= nbytes:
            return
        if nbytes <= len(self.buf):
            self._compact()
            return
        size = max(len(self.buf), self.initial, 1)  # a dropped buffer has length 0
        while size < nbytes:
            size *= 2
        self._replace(min(max(size, nbytes), max(self.limit, nbytes)))

    def detach(self) -> None:
        """Give up the current bytearray (a transport holds a view of it) for a fresh one."""
        self._replace(max(self.initial, self.end - self.start))

    def drop(self) -> None:
        """Hold no bytearray while empty: an idle client then costs no buffer (thousands of
        them sit idle behind a pooler). The next read allocates `initial` bytes again; a
        transport still holding a view of the old bytes keeps them alive until it has sent them.
        """
        if self.start == self.end:
            self.buf = _NOTHING
            self.view = _NOTHING_VIEW
            self.start = self.end = 0

    def shrink(self) -> None:
        """Return to the initial size when empty, so an idle connection holds little memory."""
        if self.start == self.end and len(self.buf) > self.initial:
            self.buf = bytearray(self.initial)
            self.view = memoryview(self.buf)
            self.start = self.end = 0

    def release(self) -> None:
        """Drop unconsumed bytes and return to the initial size (the connection has closed)."""
        self.start = self.end = 0
        self.shrink()

    def pending(self) -> int:
        return self.end - self.start

    def _compact(self) -> None:
        start, end = self.start, self.end
        try:
            self.buf[: end - start] = self.buf[start:end]
        except BufferError:
            self._replace(len(self.buf))
            return
        self.start, self.end = 0, end - start

    def _grow(self) -> None:
        size = len(self.buf)
        if size >= self.limit:
            raise RecvBufferFull(f"receive buffer full at its bound of {self.limit} bytes")
        self._replace(min(max(size * 2, self.initial), self.limit))

    def _replace(self, size: int) -> None:
        start, end = self.start, self.end
        new = bytearray(max(size, end - start, 1))
        new[: end - start] = self.buf[start:end]
        self.buf = new
        self.view = memoryview(new)
        self.start, self.end = 0, end - start
