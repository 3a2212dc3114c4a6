"""Frame headers: the length rule every frame in either direction must pass.

A PostgreSQL frame is a type byte and a 4-byte length that counts itself. The scanners of both
directions (protocol.client_scan, protocol.server_scan) and the session's own reads check
headers here; a length that cannot be valid is a FrameError, never an allocation.
"""

from __future__ import annotations

from .constants import INT32

_unpack_len = INT32.unpack_from


class FrameError(Exception):
    """A frame header that cannot be valid: a length below 4 or above the configured bound."""

    def __init__(self, type_byte: int, length: int, limit: int) -> None:
        super().__init__(f"invalid message length {length} for message type {type_byte!r}")
        self.type_byte = type_byte
        self.length = length
        self.limit = limit

    @property
    def too_large(self) -> bool:
        return self.length > self.limit


def peek_type(buf: bytearray, pos: int, end: int, max_len: int) -> int:
    """Type byte of the frame at pos once its header is complete, else -1 (validates length)."""
    if end - pos < 5:
        return -1
    t = buf[pos]
    length: int = _unpack_len(buf, pos + 1)[0]
    if length < 4 or length > max_len:
        raise FrameError(t, length, max_len)
    return t
