"""Server -> client on the hot path: a header-only scanner that streams replies through.

Nothing here copies message bodies or allocates per message: a 100 MB DataRow passes through in
buffer-sized pieces. The scanner stops only at the frames the proxy must act on.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from .constants import (
    B_COPY_IN,
    B_DATA_ROW,
    B_ERROR,
    B_NOTIFICATION,
    B_PARAMETER_STATUS,
    B_READY_FOR_QUERY,
)
from .framing import FrameError
from .units import TERMINATES, UNIT_STOP

# A backend frame longer than this means the stream is corrupt (PostgreSQL caps messages at 1 GB).
MAX_BACKEND_FRAME = 0x40000000


def is_fatal(buf: bytearray, pos: int, end: int) -> bool:
    """Whether the ErrorResponse body buf[pos:end] ends the session (FATAL or PANIC): by its
    non-localized severity (V, PostgreSQL 9.6 and later), else by the localized one (S)."""
    severity = b""
    while pos < end and buf[pos]:
        code = buf[pos]
        stop = buf.find(b"\0", pos + 1, end)
        if stop < 0:
            return False
        if code == 0x56:  # V
            return bytes(buf[pos + 1 : stop]) in (b"FATAL", b"PANIC")
        if code == 0x53:  # S
            severity = bytes(buf[pos + 1 : stop])
        pos = stop + 1
    return severity in (b"FATAL", b"PANIC")


# BackendScanner.event values.
EV_NONE = 0  # consumed everything available (possibly mid-frame)
EV_READY = 1  # stopped just after a ReadyForQuery; `status` holds its transaction status
EV_PARAM = 2  # stopped at a complete ParameterStatus frame starting at the returned position
EV_ERROR = 3  # stopped at a complete ErrorResponse frame starting at the returned position
EV_NEED = 4  # stopped at an inspected frame that is not complete yet; `need` is its size
EV_ROW = 5  # stopped at a complete DataRow of the proxy's own query (`internal` set)
EV_UNIT = 6  # stopped at a complete frame that ends a reply unit the caller must act on
EV_AFTER = 7  # stopped just after a frame that ended a unit: the next unit needs the caller
EV_NOTIFY = 8  # stopped at a complete NotificationResponse frame starting at the returned position
# Stopped at a complete FATAL or PANIC ErrorResponse starting at the returned position (not of
# the proxy's own queries): the server closes the connection after it.
EV_FATAL = 9

# The event of a stop at a complete frame of these types (see BackendScanner.scan).
_STOP_EVENT = {
    B_PARAMETER_STATUS: EV_PARAM,
    B_NOTIFICATION: EV_NOTIFY,
    B_ERROR: EV_ERROR,
    B_DATA_ROW: EV_ROW,
}


class BackendScanner:
    """Backend -> client: streams frames through, stopping at ReadyForQuery, ParameterStatus and
    NotificationResponse (its pid may need rewriting).

    ErrorResponse and DataRow frames are stopped at only when `internal` is set (the proxy's own
    queries). When `units` holds reply units (see link.prepared), frames that end a unit are
    matched against it inline, and the scan stops where a unit needs the caller. Any other
    ErrorResponse is read whole (never streamed in pieces) to see whether it is the server's
    last word (FATAL or PANIC), where the scan stops too.
    """

    __slots__ = ("copy_in", "event", "internal", "need", "skip", "status", "units")

    def __init__(self) -> None:
        self.copy_in = False  # a CopyInResponse passed; the caller tells the client's scanner
        self.skip = 0
        self.event = EV_NONE
        self.status = 0
        self.need = 0
        self.internal = False
        self.units: deque[Any] | None = None

    def scan(self, buf: bytearray, pos: int, end: int) -> int:
        """Advance over frames in buf[pos:end]; return the position reached (see `event`).

        Hot-path loop: kept in one function because it runs once per server frame (every
        DataRow of every result), and a call per frame would cost more than the header work.
        Stops and incomplete frames, which end a scan, go through helpers.
        """
        skip = self.skip
        if skip:
            if end - pos <= skip:
                self.skip = skip - (end - pos)
                self.event = EV_NONE
                return end
            pos += skip
            self.skip = 0
        units = self.units
        while end - pos >= 5:
            t = buf[pos]
            # The header's big-endian length, byte by byte: as fast as struct's unpack in the
            # interpreter, and plain C in the compiled twin (no call, no tuple). The first
            # byte goes through `length` so that the twin shifts it as a 64-bit integer.
            length: int = buf[pos + 1]
            length = (length << 24) | (buf[pos + 2] << 16) | (buf[pos + 3] << 8) | buf[pos + 4]
            if length < 4 or length > MAX_BACKEND_FRAME:
                raise FrameError(t, length, MAX_BACKEND_FRAME)
            n = length + 1
            if t == B_READY_FOR_QUERY:
                if length != 5:  # exactly one status byte; a shorter one would read past it
                    raise FrameError(t, length, MAX_BACKEND_FRAME)
                if end - pos < n:
                    return self._need(pos, n)
                self.status = buf[pos + 5]
                self.event = EV_READY
                return pos + n
            if (
                t == B_PARAMETER_STATUS
                or t == B_NOTIFICATION
                or (self.internal and (t == B_ERROR or t == B_DATA_ROW))
            ):
                if end - pos < n:
                    return self._need(pos, n)
                self.event = _STOP_EVENT[t]
                return pos
            if t == B_ERROR:
                if end - pos < n:
                    return self._need(pos, n)
                if is_fatal(buf, pos + 5, pos + n):
                    self.event = EV_FATAL
                    return pos
            if units and UNIT_STOP[t]:
                u = units[0]
                if u.__class__ is not int or u > 0:  # an action, or an extended-protocol unit
                    if end - pos < n:
                        return self._need(pos, n)
                    if u.__class__ is not int or t == B_ERROR:
                        self.event = EV_UNIT
                        return pos
                    if TERMINATES[u][t]:
                        units.popleft()
                        if units and units[0].__class__ is not int:
                            self.event = EV_AFTER
                            return pos + n
            if t == B_COPY_IN:
                self.copy_in = True
            if end - pos < n:
                self.skip = n - (end - pos)
                self.event = EV_NONE
                return end
            pos += n
        self.event = EV_NEED if pos < end else EV_NONE
        self.need = 5
        return pos

    def _need(self, pos: int, n: int) -> int:
        self.need = n
        self.event = EV_NEED
        return pos
