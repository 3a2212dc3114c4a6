"""Named prepared statements in transaction mode: shared statements, per-server caches, and the
queue that keeps the server's replies in step with what the client asked for.

A client's statement name means nothing on the next server connection it is given. So each
distinct (query text, parameter types) becomes one pool-wide statement with a proxy-chosen name;
each server connection remembers which of them it has prepared (a bounded LRU). Before a Bind or
Describe that needs a statement the server lacks, the proxy sends the Parse itself and drops the
ParseComplete; a client's Parse of a statement the server already has, and every Close of a
statement, are answered by the proxy without the server.

Because the proxy adds and removes messages, it must know which reply belongs to which request.
Each client message that earns a reply appends a *unit* to the link's queue; the server's replies
are matched to units by their terminating message (ParseComplete, BindComplete, ..., and
ReadyForQuery). Plain units are small ints matched inline by the backend scanner; units the proxy
must act on are `Action` objects handled in Python.
"""

from __future__ import annotations

import hashlib
import struct
from collections import OrderedDict

from ..protocol.units import U_BIND, U_DESCRIBE

_HDR = struct.Struct("!cI")

# Action kinds.
A_PARSE = 1  # the client's Parse, renamed and forwarded: pass ParseComplete
A_INJECTED_PARSE = 2  # the proxy's own Parse: drop ParseComplete
A_INJECTED_CLOSE = 3  # the proxy's own Close (LRU eviction): drop CloseComplete
A_USE = 4  # a Bind or Describe of a shared statement: pass, and watch for a stale plan
A_SYNTH = 5  # answered by the proxy: `reply` is written when the unit reaches the head
A_DUPLICATE = 6  # a Parse of a name the client already uses: the server's 42P05, reworded
A_CHECK = 7  # the proxy's own Describe after its own Parse, to compare results: drop it
A_REFUSED = 8  # REFUSED_USE: the server's error becomes PostgreSQL's 0A000
A_UCLOSE = 9  # the client's Close of its unnamed statement: undone when the server skips it

_NO_BUDGET = 1 << 62

PARSE_COMPLETE = _HDR.pack(b"1", 4)
CLOSE_COMPLETE = _HDR.pack(b"3", 4)
# Close of the unnamed statement, sent before a Bind of it on a server that holds another's.
CLOSE_UNNAMED_STATEMENT = _HDR.pack(b"C", 4 + 2) + b"S\0"


class Stmt:
    """One pool-wide prepared statement."""

    __slots__ = (
        "broken",
        "close_frame",
        "evicted",
        "flags",
        "key",
        "lookup",
        "name",
        "names",
        "parse_head",
        "shape",
        "told_params",
        "use_bind",
        "use_describe",
    )

    def __init__(
        self,
        name: bytes,
        key: bytes,
        flags: int,
        names: list[str] | None = None,
        lookup: bytes | None = None,
    ) -> None:
        self.name = name
        self.key = key  # the Parse body after the name: query, NUL, parameter types
        # Its entry in StatementRegistry.by_key: the key, and the search_path it was planned
        # under when the client set one (session.statements._lookup).
        self.lookup = key if lookup is None else lookup
        self.flags = flags  # sqlscan flags of the query text
        self.names = names or []  # the settings the text names (sqlscan.setting_names)
        # The Parse frame is this head followed by `key`, written as two pieces: a statement's
        # text is held once, however many times it is prepared.
        self.parse_head = _HDR.pack(b"P", 4 + len(name) + 1 + len(key)) + name + b"\0"
        self.close_frame = _HDR.pack(b"C", 4 + 1 + len(name) + 1) + b"S" + name + b"\0"
        # A Bind or Describe unit carries no per-use state: one object each, made once.
        self.use_bind = Action(A_USE, U_BIND, self)
        self.use_describe = Action(A_USE, U_DESCRIBE, self)
        # Forgotten by the registry (see StatementRegistry): server connections drop it.
        self.evicted = False
        # The result the first Describe of it told a client (see result_shape).
        self.shape: bytes | None = None
        # A client's copy whose result changed since the client was told it (broken_twin), and
        # the ParameterDescription that client was told: a Describe of it gets that, then 0A000.
        self.broken = False
        self.told_params = b""

    def forget(self) -> None:
        """The registry let go of this statement. Its actions point back at it; that cycle would
        keep its text alive after the last client lets go, until a garbage collection."""
        self.evicted = True
        self.use_bind = self.use_describe = _NO_USE

    def revive(self) -> None:
        self.evicted = False
        self.use_bind = Action(A_USE, U_BIND, self)
        self.use_describe = Action(A_USE, U_DESCRIBE, self)

    @property
    def parse_frame(self) -> bytes:
        return self.parse_head + self.key

    def broken_twin(self, told_params: bytes) -> Stmt:
        """What a client holds of this statement once its result changed under the client: the
        same name and text, refused on every use (REFUSED_USE)."""
        twin = Stmt(self.name, self.key, self.flags, self.names)
        twin.broken = True
        twin.told_params = told_params
        return twin

    def tombstone(self) -> Stmt:
        """What a server connection keeps of an evicted statement it still holds: the name, to
        close it, and not the text."""
        dead = Stmt(self.name, b"", 0)
        dead.forget()
        return dead


class Action:
    """A unit the proxy acts on when the server's reply (or the unit's turn) comes."""

    __slots__ = ("client_name", "kind", "prev", "reply", "stmt", "undo", "unit", "z")

    def __init__(
        self,
        kind: int,
        unit: int,
        stmt: Stmt | None = None,
        *,
        reply: bytes = b"",
        client_name: bytes = b"",
        prev: Stmt | None = None,
        z: bool = False,
        undo: tuple[object, ...] = (),
    ) -> None:
        self.kind = kind
        self.unit = unit  # the U_* code whose terminator completes this unit
        self.stmt = stmt
        self.reply = reply
        # For undoing the client's view when the server skips this message after an error.
        self.client_name = client_name
        self.prev = prev
        # An answered Query: ends with ReadyForQuery, so it counts as one of the client's pending.
        self.z = z
        self.undo = undo  # A_UCLOSE: the client's unnamed statement before the Close


# The use actions of a forgotten statement (never queued: a statement is readmitted first).
_NO_USE = Action(A_USE, U_BIND)


class StatementRegistry:
    """The statements of one pool, by (query, parameter types), within a count and byte budget.

    Every statement a server connection of the pool may hold is an entry here, so the bytes of
    statement text a pool keeps are bounded by the budget (plus one statement bigger than it).
    Past the budget, the least recently used entries are forgotten: they are marked `evicted`,
    and each server connection drops them (closing them on the server) the next time it is
    released or prepares a statement. Forgetting only costs sharing: statements clients hold
    stay valid objects (their bytes count against the client's own budget), and are readmitted
    when used again; their names are never reused.
    """

    __slots__ = (
        "by_key",
        "checks",
        "counter",
        "entries",
        "epochs",
        "evictions",
        "hits",
        "limit",
        "misses",
        "nbytes",
        "stale_error",
    )

    def __init__(self, limit: int) -> None:
        self.by_key: dict[bytes, Stmt] = {}
        # Every statement the pool keeps, least recently used first.
        self.entries: OrderedDict[Stmt, None] = OrderedDict()
        self.nbytes = 0
        self.counter = 0
        self.limit = limit
        # Bumped on each eviction: server connections look for evicted statements when it moved.
        self.evictions = 0
        # Uses of a statement its server connection had prepared / had to be given (metrics).
        self.hits = 0
        self.misses = 0
        self.epochs = 0  # schema changes seen (new_epoch)
        self.checks = 0  # results compared after the proxy's own Parse (statements._prepare)
        # The server's own ErrorResponse for a statement whose result changed, once seen.
        self.stale_error: bytes | None = None

    def add(
        self,
        key: bytes,
        flags: int,
        names: list[str] | None = None,
        budget: int = _NO_BUDGET,
        lookup: bytes | None = None,
    ) -> Stmt:
        """A new statement for key (callers look in `by_key` first, under `lookup`)."""
        self.counter += 1
        stmt = Stmt(b"pgpool_%x" % self.counter, key, flags, names, lookup)
        self.by_key[stmt.lookup] = stmt
        self._admit(stmt, budget)
        return stmt

    def touch(self, stmt: Stmt, budget: int = _NO_BUDGET) -> None:
        """stmt is being used on a server connection: keep it (readmitted if forgotten)."""
        entries = self.entries
        if stmt in entries:
            entries.move_to_end(stmt)
        else:
            stmt.revive()
            self._admit(stmt, budget)

    def _admit(self, stmt: Stmt, budget: int) -> None:
        entries = self.entries
        entries[stmt] = None
        self.nbytes += len(stmt.key)
        while len(entries) > 1 and (self.nbytes > budget or len(entries) > self.limit):
            victim, _ = entries.popitem(last=False)
            self.nbytes -= len(victim.key)
            victim.forget()
            self.evictions += 1
            if self.by_key.get(victim.lookup) is victim:
                del self.by_key[victim.lookup]

    def retire(self, stmt: Stmt) -> None:
        """The statement's plan went stale (DDL): the next Parse of its text gets a new one."""
        if self.by_key.get(stmt.lookup) is stmt:
            del self.by_key[stmt.lookup]

    def new_epoch(self) -> None:
        """A client changed the schema (CREATE, ALTER, DROP). A client's Parse means a plan
        made now, as PostgreSQL makes it; a shared statement prepared before may have another
        result or none. So every text gets a new statement from here on. Statements clients
        already hold stay what they are: their server connections keep the old plans, which
        PostgreSQL itself revalidates (0A000 when the result changed), and the proxy's own
        Parse of one on another connection is checked against what the client was told
        (session.statements._prepare)."""
        self.epochs += 1
        self.by_key.clear()


class ClientStatements(dict[bytes, Stmt]):
    """A client's named statements (its name -> statement), with the bytes of their texts
    counted for the client's budget (proxy.max_client_statement_bytes).

    `shapes` holds, per statement, what the client was last told by a Describe of it: the
    ParameterDescription frame and the result (result_shape), which PostgreSQL would hold the
    statement to."""

    __slots__ = ("nbytes", "shapes", "told_params")

    def __init__(self) -> None:
        super().__init__()
        self.nbytes = 0
        self.shapes: dict[Stmt, tuple[bytes, bytes]] = {}
        # The ParameterDescription of the Describe being answered (its RowDescription follows).
        self.told_params = b""

    def __setitem__(self, name: bytes, stmt: Stmt) -> None:
        old = super().get(name)
        if old is not None:
            self.nbytes -= len(old.key)
            self.shapes.pop(old, None)
        self.nbytes += len(stmt.key)
        # A Parse: what the statement returns is learnt afresh from its next Describe.
        self.shapes.pop(stmt, None)
        super().__setitem__(name, stmt)

    def __delitem__(self, name: bytes) -> None:
        stmt = self[name]
        self.nbytes -= len(stmt.key)
        self.shapes.pop(stmt, None)
        super().__delitem__(name)

    def pop(self, name: bytes, *default: Stmt | None) -> Stmt | None:  # type: ignore[override]
        stmt = super().pop(name, *default)
        if stmt is not None and name not in self:
            self.nbytes -= len(stmt.key)
            self.shapes.pop(stmt, None)
        return stmt

    def clear(self) -> None:
        super().clear()
        self.nbytes = 0
        self.shapes.clear()


class ServerStatements:
    """What one server connection has prepared, least recently used first."""

    __slots__ = ("closing", "lru", "size", "swept")

    def __init__(self, size: int) -> None:
        self.lru: OrderedDict[Stmt, None] = OrderedDict()
        self.size = size
        # Statements the registry forgot that the server still holds (tombstones): closed on the
        # server before this connection next prepares anything.
        self.closing: list[Stmt] = []
        self.swept = 0  # the registry's eviction count when this connection last looked

    def __contains__(self, stmt: Stmt) -> bool:
        return stmt in self.lru

    def __len__(self) -> int:
        return len(self.lru)

    def touch(self, stmt: Stmt) -> None:
        self.lru.move_to_end(stmt)

    def add(self, stmt: Stmt) -> Stmt | None:
        """Record stmt as prepared; returns the statement to close to stay within size."""
        self.lru[stmt] = None
        if len(self.lru) > self.size:
            victim, _ = self.lru.popitem(last=False)
            return victim
        return None

    def discard(self, stmt: Stmt) -> None:
        self.lru.pop(stmt, None)

    def unclose(self, stmt: Stmt) -> None:
        """A Close the proxy sent was skipped by the server: the statement is still there."""
        if stmt.evicted:
            self.closing.append(stmt)
        else:
            self.lru[stmt] = None

    def sweep(self, registry: StatementRegistry) -> None:
        """Let go of the texts of statements the registry forgot (cheap when it forgot none)."""
        if self.swept == registry.evictions:
            return
        self.swept = registry.evictions
        dead = [stmt for stmt in self.lru if stmt.evicted]
        for stmt in dead:
            del self.lru[stmt]
            self.closing.append(stmt.tombstone())

    def clear(self) -> None:
        self.lru.clear()
        self.closing.clear()


STALE_PLAN = "cached plan must not change result type"
STALE_PLAN_FUNCTION = "RevalidateCachedQuery"


def stale_plan_error(severity: str) -> bytes:
    """PostgreSQL's own 0A000 for a statement whose result changed, as far as the proxy can
    write it (drivers such as asyncpg tell it by the function that raised it, not the text). The
    pool replays the server's own frame instead once it has seen one (stale_error)."""
    body = b"".join(
        (
            b"S" + severity.encode() + b"\0",
            b"VERROR\0C0A000\0M" + STALE_PLAN.encode() + b"\0",
            b"Fplancache.c\0R" + STALE_PLAN_FUNCTION.encode() + b"\0\0",
        )
    )
    return _HDR.pack(b"E", 4 + len(body)) + body


# Sent before a client's use of a statement whose result changed: the server refuses it (08P01,
# "invalid DESCRIBE message subtype") whatever the session holds, and then skips the client's
# message and the rest of its batch, in the client's transaction, as PostgreSQL skips them after
# its own 0A000. The proxy gives the client PostgreSQL's 0A000 in its place.
REFUSED_USE = _HDR.pack(b"D", 4 + 2) + b"X\0"
FLUSH = _HDR.pack(b"H", 4)


def result_shape(buf: bytearray, pos: int, n: int) -> bytes | None:
    """What PostgreSQL holds a statement's result to, from the RowDescription at buf[pos:pos+n]:
    each column's name, type, type length and modifier (not the table and column it comes from,
    which a re-created table changes without changing the result). None when malformed.

    Only compared, so kept as a digest: a short text can return 1600 columns of 63-byte names,
    which the proxy keeps per statement and per client that was told (the client's budget
    counts texts, not results)."""
    end = pos + n
    if n < 7:
        return None
    count = struct.unpack_from("!h", buf, pos + 5)[0]
    p = pos + 7
    parts = []
    for _ in range(count):
        nul = buf.find(0, p, end)
        if nul < 0 or nul + 19 > end:
            return None
        parts.append(buf[p : nul + 1])
        parts.append(buf[nul + 7 : nul + 17])
        p = nul + 19
    return hashlib.blake2b(b"".join(parts), digest_size=16).digest()


def duplicate_parse(stmt: Stmt, key: bytes) -> bytes:
    """A Parse the server refuses with 42P05 exactly where PostgreSQL would refuse the client's:
    it reuses the name of a statement the server holds (after checking the new query)."""
    name = stmt.name
    return _HDR.pack(b"P", 4 + len(name) + 1 + len(key)) + name + b"\0" + key


def rebuilt_bind_head(portal: bytes | memoryview, name: bytes, rest_len: int) -> bytes:
    """Header, portal and statement name of a Bind whose parameters (rest_len bytes) follow."""
    return (
        _HDR.pack(b"B", 4 + len(portal) + 1 + len(name) + 1 + rest_len)
        + bytes(portal)
        + b"\0"
        + name
        + b"\0"
    )


def describe_statement(name: bytes) -> bytes:
    return _HDR.pack(b"D", 4 + 1 + len(name) + 1) + b"S" + name + b"\0"


def command_complete(tag: bytes) -> bytes:
    return _HDR.pack(b"C", 4 + len(tag) + 1) + tag + b"\0"
