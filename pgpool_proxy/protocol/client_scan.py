"""Client -> server on the hot path: a header-only scanner that counts the replies owed.

Nothing here copies message bodies or allocates per message. The scanner walks frame headers in
a receive buffer, streams frames whose contents the proxy does not need, and stops only at the
few it must act on (named statements when renaming, DEALLOCATE/DISCARD, Terminate).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import Any

from .constants import (
    F_BIND,
    F_CLOSE,
    F_COPY_DATA,
    F_COPY_DONE,
    F_COPY_FAIL,
    F_DESCRIBE,
    F_EXECUTE,
    F_FLUSH,
    F_FUNCTION_CALL,
    F_PARSE,
    F_QUERY,
    F_SYNC,
    F_TERMINATE,
)
from .framing import FrameError
from .sqlscan import classify, setting_names
from .sqltables import MAX_NAMES, SQL_ALL, SQL_DEALLOCATE, SQL_SETTINGS
from .units import (
    U_BIND,
    U_CLOSE,
    U_DESCRIBE,
    U_EXECUTE,
    U_FZ,
    U_PARSE,
    U_QUERY,
    U_QZ,
    U_UPARSE,
    U_Z,
)

# How much of a client message is buffered to look into it (query text, statement names); a
# longer Query is classified by its first part only.
INSPECT_LIMIT = 1024 * 1024
# Named statements whose flags one client's scanner keeps without renaming (see _named_kept).
MAX_KEPT = 256

# ClientScanner.event values.
CEV_NONE = 0  # consumed everything available (possibly mid-frame)
CEV_INSPECT = 1  # stopped at a frame the caller must handle (rename, answer locally)
CEV_NEED = 2  # stopped at a frame that must be looked into and is incomplete; `need` is its size
_S = ord("S")


class _NoUnits(deque[Any]):
    """The reply-unit queue of a client that owes nothing and has no server connection: empty,
    shared, and refusing to hold anything, so that a unit appended while idle is an error
    rather than one client's unit left in every idle client's queue."""

    def append(self, x: Any) -> None:
        _refuse()

    def appendleft(self, x: Any) -> None:
        _refuse()

    def extend(self, iterable: Iterable[Any]) -> None:
        _refuse()

    def extendleft(self, iterable: Iterable[Any]) -> None:
        _refuse()

    def insert(self, i: int, x: Any) -> None:
        _refuse()

    def __iadd__(self, value: Iterable[Any]) -> _NoUnits:
        _refuse()
        return self


def _refuse() -> None:
    raise RuntimeError("a reply unit for a client with no server connection")


# What an idle client holds instead of a queue (an empty deque is 760 bytes): see
# session.client, which gives the scanner a queue of its own for each transaction.
NO_UNITS: deque[Any] = _NoUnits()


class ClientScanner:
    """Client -> backend accounting: how many ReadyForQuery replies the backend still owes.

    Every Query, Sync and FunctionCall earns exactly one ReadyForQuery. `unsynced` is true while
    extended-protocol messages have been sent after the last Sync: the backend then holds state
    (an unnamed portal, a half-built pipeline) that belongs to this client.
    """

    __slots__ = (
        "copy_in",
        "dirty",
        "event",
        "max_len",
        "named_flags",
        "names",
        "need",
        "opaque_binds",
        "parse_flags",
        "pending",
        "rename",
        "skip",
        "syncs",
        "syncs_since_execute",
        "terminated",
        "units",
        "unnamed",
        "unnamed_drops",
        "unnamed_fifo",
        "unnamed_flags",
        "unnamed_here",
        "unnamed_names",
        "unsynced",
    )

    def __init__(self, max_len: int) -> None:
        self.max_len = max_len
        self.skip = 0
        self.pending = 0
        self.unsynced = False
        self.terminated = False
        self.event = CEV_NONE
        self.need = 0
        # Transaction mode: rename named statements (stop at named Parse/Bind/Describe/Close).
        self.rename = False
        # Transaction mode without renaming: a Bind of a named statement marks SQL_ALL.
        self.opaque_binds = False
        # sqlscan flags of the statements sent since the last check of the session's state, and
        # the settings they name (read back by that check).
        self.dirty = 0
        self.names: list[str] = []
        # Reply units owed by the server (see link.prepared). Empty while only Query/Sync
        # replies are owed: those are counted by `pending` alone.
        self.units: deque[Any] = deque()
        # Set (from the server's CopyInResponse) while the server is in copy-in mode, where it
        # ignores Sync: the Syncs sent since the COPY's Execute earn no ReadyForQuery.
        self.copy_in = False
        self.syncs_since_execute = 0
        self.syncs = 0  # Sync messages seen, ever
        # Transaction mode: the client's unnamed statement. A driver may Parse it in one batch and
        # Bind it in the next (asyncpg without a statement cache), on another server connection
        # or after the proxy's own Query (which drops the server's unnamed statement); the
        # session layer gives it to the server again (session.client, link.replies).
        # `unnamed`: (Parse frame, flags, setting names) of the one the server last accepted
        # (frame None: too long to keep), None when the client has none. `unnamed_fifo`: the
        # unnamed Parses sent and not yet settled, in order, each (frame or None, flags, names,
        # `unnamed_drops` when sent); each has a U_UPARSE unit, popped without a callback when
        # ParseComplete comes, so a record whose unit is gone from `units` was accepted (see
        # settle_unnamed). `unnamed_here`: the linked server holds the client's.
        # `unnamed_flags`/`unnamed_names`: what a Bind of it may run (those of every unnamed
        # Parse still unsettled included). `unnamed_drops` counts the Closes of it: a Parse
        # answered after one was sent no longer counts. `parse_flags`: the flags of the Query
        # the scan stopped at.
        self.unnamed: tuple[bytes | None, int, list[str]] | None = None
        # Made on the first unnamed Parse: an empty deque costs 760 bytes, and most idle clients
        # (simple protocol, or named statements only) never need one.
        self.unnamed_fifo: deque[tuple[bytes | None, int, list[str], int]] | None = None
        self.unnamed_flags = 0
        self.unnamed_names: list[str] = []
        self.unnamed_here = True
        self.unnamed_drops = 0
        self.parse_flags = 0
        # Without renaming (session mode): the flags and setting names of the client's named
        # statements whose text may change the session, by name (see _named_kept).
        # None until the first (most clients never have one).
        self.named_flags: dict[bytes, tuple[int, list[str]]] | None = None

    def reset(self) -> None:
        self.pending = 0
        self.unsynced = False
        self.copy_in = False
        self.syncs_since_execute = 0
        self.units.clear()

    def scan(self, buf: bytearray, pos: int, end: int) -> int:
        """Advance over frames in buf[pos:end]; return the position reached.

        Records reply units, notes statements that may change session state, and stops
        (CEV_INSPECT) at named-statement messages when `rename` is set and at DEALLOCATE/DISCARD
        queries; CEV_NEED when such a message is incomplete. Stops before a Terminate (setting
        `terminated`): the caller decides what a leaving client means for its backend, and a
        Terminate is never forwarded in transaction mode.

        Hot-path loop: kept in one function because it runs once per client frame, and a call
        per frame (a method per message type) would cost more than the header work itself.
        Only per-frame work is inline: the stops (which end a scan), COPY ends, FunctionCall and
        Describe/Close of a statement are in helpers.
        """
        self.event = CEV_NONE
        skip = self.skip
        if skip:
            if end - pos <= skip:
                self.skip = skip - (end - pos)
                return end
            pos += skip
            self.skip = 0
        max_len = self.max_len
        units = self.units
        while end - pos >= 5:
            t = buf[pos]
            # The header's big-endian length, byte by byte: as fast as struct's unpack in the
            # interpreter, and plain C in the compiled twin (no call, no tuple). The first
            # byte goes through `length` so that the twin shifts it as a 64-bit integer.
            length: int = buf[pos + 1]
            length = (length << 24) | (buf[pos + 2] << 16) | (buf[pos + 3] << 8) | buf[pos + 4]
            if length < 4 or length > max_len:
                raise FrameError(t, length, max_len)
            n = length + 1
            if t == F_QUERY or t == F_PARSE:
                avail = end - pos
                if avail < n and avail < INSPECT_LIMIT:
                    return self._need(pos, n)
                if t == F_QUERY:
                    # A text longer than what is looked into is judged unseen.
                    flags = classify(buf, pos + 5, pos + n - 1) if avail >= n else SQL_ALL
                    if self.rename:
                        self._query_drops_unnamed()
                    if flags & SQL_DEALLOCATE and avail >= n:
                        return self._deallocate_stop(pos, flags)
                    if avail < n:
                        self.dirty |= SQL_ALL
                    elif flags:
                        self.mark(flags, buf, pos + 5, pos + n - 1)
                    self.pending += 1
                    self.syncs_since_execute = 0
                    if units:
                        units.append(U_QZ if self.unsynced else U_QUERY)
                else:
                    if not units and self.pending:
                        self._track_pending()
                    # First in its batch: no earlier error can make the server skip it.
                    first = not self.unsynced
                    self.unsynced = True
                    if self.rename:
                        if n > 5 and buf[pos + 5]:
                            return self._named_parse(pos, n, avail)
                        if avail >= n and self._repeat_unnamed(buf, pos, n):
                            units.append(U_UPARSE)
                            pos += n
                            continue
                    stop = min(pos + n, end)
                    q = buf.find(0, pos + 5, stop) + 1  # the query text follows the name
                    qend = buf.find(0, q, stop) if q else -1
                    names = None
                    if q and qend >= 0:
                        flags = classify(buf, q, qend)
                        if flags:
                            names = self.mark(flags, buf, q, qend)
                    else:
                        flags = SQL_ALL
                        self.dirty |= SQL_ALL
                    if self.rename:
                        self._unnamed_sent(buf, pos, n, avail, flags, q, qend)
                        units.append(U_UPARSE)
                    else:
                        units.append(U_PARSE)
                        if n > 5 and buf[pos + 5] == 0:
                            if flags or (first and self.unnamed_flags):
                                self._unnamed_kept(flags, names, first)
                        elif flags and not self.opaque_binds:
                            self._named_kept(buf, pos, q, flags, names)
            elif t == F_SYNC:
                self.pending += 1
                self.unsynced = False
                self.syncs_since_execute += 1
                self.syncs += 1
                if units:
                    units.append(U_Z)
            elif t == F_BIND or t == F_DESCRIBE or t == F_CLOSE:
                if self.rename and n > 6:  # shorter ones are malformed: the server refuses them
                    avail = end - pos
                    if avail < n and avail < INSPECT_LIMIT:
                        return self._need(pos, n)
                    stop = min(pos + n, end)
                    if t == F_BIND:
                        p1 = pos + 5 if buf[pos + 5] == 0 else buf.find(0, pos + 5, stop)
                        named = p1 < 0 or (p1 + 1 < stop and buf[p1 + 1] != 0)
                        # The unnamed statement: re-Parsed first when the server lacks it, and
                        # its flags noted again when it runs again.
                        named = named or not self.unnamed_here or self.unnamed_flags != 0
                    elif buf[pos + 5] != _S:
                        named = False
                    else:
                        named = self._statement_needs_caller(t, buf[pos + 6] != 0)
                    if named:
                        return self._inspect_stop(pos)
                elif t == F_BIND and (self.opaque_binds or self.unnamed_flags or self.named_flags):
                    self._bind_marks(buf, pos, min(pos + n, end))
                if not units and self.pending:
                    self._track_pending()
                self.unsynced = True
                units.append(U_BIND if t == F_BIND else U_DESCRIBE if t == F_DESCRIBE else U_CLOSE)
            elif t == F_EXECUTE:
                if not units and self.pending:
                    self._track_pending()
                self.unsynced = True
                self.syncs_since_execute = 0
                units.append(U_EXECUTE)
            elif t == F_FUNCTION_CALL:
                self._function_call()
            elif t == F_TERMINATE:
                self.terminated = True
                return pos
            elif t == F_COPY_DONE or t == F_COPY_FAIL:
                if self.copy_in:
                    self._copy_in_ended()
            elif t != F_COPY_DATA and (t != F_FLUSH or n != 5):
                # A Flush creates no server state: after a Sync (psycopg's pipeline mode ends
                # with Sync+Flush) the backend is free at ReadyForQuery, not at the next Sync.
                # One with a body is a protocol error, which leaves the server skipping
                # everything up to a Sync, as does a type PostgreSQL refuses.
                self.unsynced = True
            if end - pos < n:
                self.skip = n - (end - pos)
                return end
            pos += n
        return pos

    def _deallocate_stop(self, pos: int, flags: int) -> int:
        """Stop at a Query naming DEALLOCATE or DISCARD: the caller reads it (deallocate)."""
        self.parse_flags = flags
        self.event = CEV_INSPECT
        return pos

    def _named_parse(self, pos: int, n: int, avail: int) -> int:
        """Stop at a named Parse when renaming; a named statement is kept whole, however long."""
        if avail < n:
            self.event = CEV_NEED
            self.need = n
            return pos
        self.event = CEV_INSPECT
        return pos

    def _statement_needs_caller(self, t: int, named: bool) -> bool:
        """Whether a Describe or Close of a statement (not a portal) needs the caller when
        renaming; a Close of the unnamed one it need not is applied here."""
        if named:
            return True
        if t == F_DESCRIBE:
            return not self.unnamed_here
        if self.units:
            # Close of the unnamed statement with replies owed: an error before it makes the
            # server skip it, and the drop must then be undone (session.statements).
            return True
        # Close of the unnamed statement: the server drops its own, if any.
        self.drop_unnamed()
        return False

    def _inspect_stop(self, pos: int) -> int:
        """Stop at an extended-protocol message the caller handles (a rename, a local answer)."""
        if not self.units and self.pending:
            self._track_pending()
        self.unsynced = True
        self.event = CEV_INSPECT
        return pos

    def _function_call(self) -> None:
        """A FunctionCall, a call by function OID: whatever it does, the proxy cannot see."""
        self.dirty |= SQL_ALL
        self.pending += 1
        self.syncs_since_execute = 0
        if self.units:
            self.units.append(U_FZ if self.unsynced else U_Z)

    def _copy_in_ended(self) -> None:
        """A CopyDone or CopyFail while the server is in copy-in mode, where it ignored Sync."""
        self.copy_in = False
        ignored = self.syncs_since_execute
        self.pending -= ignored
        self.syncs_since_execute = 0
        # Those Syncs earn no ReadyForQuery: they are the newest units.
        units = self.units
        for _ in range(min(ignored, len(units))):
            units.pop()

    def mark(self, flags: int, buf: bytes | bytearray, start: int, end: int) -> list[str] | None:
        """Note the flags of the SQL text in buf[start:end], and the settings it names (returned,
        when it may set any)."""
        self.dirty |= flags
        if flags & SQL_SETTINGS:
            names = setting_names(buf, start, end)
            self.note_names(names)
            return names
        return None

    def _query_drops_unnamed(self) -> None:
        """A simple Query: PostgreSQL drops the unnamed statement when it runs one."""
        self.unnamed_here = True  # the server's and the client's: both none, or both kept
        if not self.units:
            # Nothing is in flight: the effect is known now. Otherwise it comes in reply order
            # (link.replies.ready), or never, if the server skips the Query.
            self.unnamed = None
            self.unnamed_flags = 0
            self.unnamed_names = []

    def drop_unnamed(self) -> tuple[object, ...]:
        """A Close of the unnamed statement was sent: it drops the server's, and the client's.
        Returns what undo_drop_unnamed needs if the server skips that Close."""
        undo = (self.unnamed, self.unnamed_flags, self.unnamed_names)
        self.unnamed = None
        self.unnamed_flags = 0
        self.unnamed_names = []
        self.unnamed_here = True
        self.unnamed_drops += 1
        return undo

    def undo_drop_unnamed(self, undo: tuple[object, ...]) -> None:
        """The server skipped that Close (an error earlier in the batch): its unnamed statement,
        and the client's, are what they were; Parses after the Close were skipped too."""
        self.unnamed, self.unnamed_flags, self.unnamed_names = undo  # type: ignore[assignment]
        self.unnamed_drops -= 1

    def _bind_marks(self, buf: bytearray, pos: int, stop: int) -> None:
        """Without renaming: what a Bind runs may change the session (see _unnamed_kept)."""
        p1 = buf.find(0, pos + 5, stop)  # the end of the portal name
        p2 = buf.find(0, p1 + 1, stop) if p1 >= 0 else -1
        if p2 < 0:
            # The statement's name is not all here: whichever it is.
            self.dirty |= SQL_ALL if self.opaque_binds or self.named_flags else self.unnamed_flags
            if self.unnamed_names:
                self.note_names(self.unnamed_names)
        elif p2 == p1 + 1:
            if self.unnamed_flags:
                self.dirty |= self.unnamed_flags
                if self.unnamed_names:
                    self.note_names(self.unnamed_names)
        elif self.opaque_binds:
            self.dirty |= SQL_ALL
        elif self.named_flags:
            kept = self.named_flags.get(bytes(buf[p1 + 1 : p2]))
            if kept is not None:
                self.dirty |= kept[0]
                if kept[1]:
                    self.note_names(kept[1])

    def _unnamed_kept(self, flags: int, names: list[str] | None, first: bool) -> None:
        """An unnamed Parse without renaming (session mode). The statement stays on this server
        connection through the proxy's own checks, so its flags mark each Bind of it: the check
        after the batch of its Parse ran before it did. Marking a check too many costs a check,
        never a wrong answer; so the flags stay after a Close or a Query (a Bind then fails),
        and a Parse the server may skip (an error earlier in its batch leaves the statement
        before it in place) adds its flags to those before it, where the first of a batch
        replaces them (it makes the statement, or fails and leaves none)."""
        if first:
            self.unnamed_flags = flags
            if names is not None or self.unnamed_names:
                self.unnamed_names = names or []
        else:
            self.unnamed_flags |= flags
            if names:
                self.unnamed_names = _merged(self.unnamed_names, names)

    def _named_kept(
        self, buf: bytearray, pos: int, q: int, flags: int, names: list[str] | None
    ) -> None:
        """A named Parse without renaming (session mode) of a text that may change the session:
        as _unnamed_kept, by name. A name's flags only grow (a Parse of a name in use fails and
        leaves the statement there) and are never dropped (a Close may be skipped too); past
        MAX_KEPT names, or a name too long to read here, every named Bind marks SQL_ALL."""
        kept = self.named_flags
        if kept is None:
            kept = self.named_flags = {}
        if not q or (len(kept) >= MAX_KEPT and bytes(buf[pos + 5 : q - 1]) not in kept):
            self.opaque_binds = True
            self.named_flags = None
            return
        name = bytes(buf[pos + 5 : q - 1])
        old = kept.get(name)
        if old is not None:
            flags |= old[0]
            names = _merged(old[1], names or [])
        kept[name] = (flags, names or [])

    def _repeat_unnamed(self, buf: bytearray, pos: int, n: int) -> bool:
        """The common case of the extended protocol: an unnamed Parse of the same harmless text
        as the one before it (drivers send one text again and again). Its flags are those of the
        text, known to be none, so it is recorded as sent without classifying it again."""
        fifo = self.unnamed_fifo
        last = fifo[-1] if fifo else self.unnamed
        if last is None or last[1]:
            return False
        frame = last[0]
        if frame is None or len(frame) != n or not buf.startswith(frame, pos):
            return False
        if fifo is None:
            fifo = self.unnamed_fifo = deque()
        fifo.append((frame, 0, [], self.unnamed_drops))
        self.unnamed_here = True
        return True

    def _unnamed_sent(
        self, buf: bytearray, pos: int, n: int, avail: int, flags: int, q: int, qend: int
    ) -> None:
        frame: bytes | None = None
        if avail >= n:
            last = self.unnamed_fifo[-1][0] if self.unnamed_fifo else None
            if last is None and self.unnamed is not None:
                last = self.unnamed[0]
            # Drivers send the same text again and again: no copy then.
            if last is not None and len(last) == n and buf.startswith(last, pos):
                frame = last
            else:
                frame = bytes(buf[pos : pos + n])
        else:
            flags = SQL_ALL  # streamed through, too long to keep: judged unseen when it runs
        names = setting_names(buf, q, qend) if flags & SQL_SETTINGS and qend >= 0 else []
        fifo = self.unnamed_fifo
        if fifo is None:
            fifo = self.unnamed_fifo = deque()
        fifo.append((frame, flags, names, self.unnamed_drops))
        self.unnamed_here = True
        self.unnamed_flags |= flags
        if names:
            self.unnamed_names = [*self.unnamed_names, *names]

    def settle_unnamed(self, popped: int = 0) -> None:
        """Take as accepted the unnamed Parses whose U_UPARSE unit is gone from `units` (popped
        on ParseComplete); `popped` of those gone were not accepted (their error or skip is
        being handled). Replies come in order, so those are the oldest records."""
        fifo = self.unnamed_fifo
        if not fifo:
            return
        if not popped and not self.units:
            # The common case, at the end of a transaction: all answered, the last one counts.
            frame, flags, names, drops = fifo[-1]
            if drops == self.unnamed_drops:
                fifo.clear()
                # A frame too long to keep (None) is not given again elsewhere, but its flags
                # still mark each Bind of it on this server connection.
                self.unnamed = (frame, flags, names)
                self.unnamed_flags, self.unnamed_names = flags, names
                return
        in_flight = sum(1 for u in self.units if u.__class__ is int and u == U_UPARSE)
        accepted = len(fifo) - popped - in_flight
        for _ in range(accepted):
            frame, flags, names, drops = fifo.popleft()
            if drops == self.unnamed_drops:
                self.unnamed = (frame, flags, names)
        if not fifo:
            self._unnamed_settled()

    def unnamed_refused(self, answered: bool) -> None:
        """The oldest unsettled unnamed Parse failed (answered: an ErrorResponse, which drops
        the old statement too) or was skipped after an earlier error (the old one stays)."""
        self.settle_unnamed(popped=1)
        fifo = self.unnamed_fifo
        if fifo:
            drops = fifo.popleft()[3]
            if answered and drops == self.unnamed_drops:
                self.unnamed = None
        if not self.unnamed_fifo:
            self._unnamed_settled()

    def forget_unsettled(self) -> None:
        """The server connection is gone with replies owed: what those Parses made is unknown,
        and counts as not made."""
        if self.unnamed_fifo:
            self.unnamed_fifo.clear()
        self._unnamed_settled()

    def unnamed_query_ran(self) -> None:
        """The server ran a simple Query of the client's: it dropped the unnamed statement."""
        if not self.rename:
            # Without renaming, marks stay (see _unnamed_kept): those of an unnamed Parse sent
            # after this Query, and scanned already, must not go.
            return
        self.settle_unnamed()
        self.unnamed = None
        if not self.unnamed_fifo:
            self._unnamed_settled()

    def _unnamed_settled(self) -> None:
        # Nothing in flight: a Bind runs exactly the statement the server accepted last.
        kept = self.unnamed
        self.unnamed_flags, self.unnamed_names = (kept[1], kept[2]) if kept else (0, [])

    def note_names(self, names: list[str]) -> None:
        if len(names) >= MAX_NAMES:
            # setting_names stops at MAX_NAMES: the text may name more than it listed.
            self.dirty |= SQL_ALL
            return
        have = self.names
        for n in names:
            if n not in have:
                if len(have) >= MAX_NAMES:
                    self.dirty |= SQL_ALL  # more than one probe reads: reset before reuse
                    return
                have.append(n)

    def _track_pending(self) -> None:
        """Start tracking units: the replies owed so far are all Query/Sync ones."""
        self.units.extend([U_Z] * self.pending)

    def _need(self, pos: int, n: int) -> int:
        self.event = CEV_NEED
        self.need = min(n, INSPECT_LIMIT)
        return pos


def _merged(have: list[str], new: list[str]) -> list[str]:
    """Setting names of several statements, each once; at most MAX_NAMES (note_names then
    marks SQL_ALL), however many statements add to them."""
    return list(dict.fromkeys([*have, *new]))[:MAX_NAMES]
