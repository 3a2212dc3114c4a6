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

_NO_BUDGET = 1 << 62

PARSE_COMPLETE = _HDR.pack(b"1", 4)
CLOSE_COMPLETE = _HDR.pack(b"3", 4)
# Close of the unnamed statement, sent before a Bind of it on a server that holds another's.
CLOSE_UNNAMED_STATEMENT = _HDR.pack(b"C", 4 + 2) + b"S\0"


class Stmt:
    """One pool-wide prepared statement."""

    __slots__ = (
        "close_frame",
        "evicted",
        "flags",
        "key",
        "name",
        "names",
        "parse_head",
        "use_bind",
        "use_describe",
    )

    def __init__(self, name: bytes, key: bytes, flags: int, names: list[str] | None = None) -> None:
        self.name = name
        self.key = key  # the Parse body after the name: query, NUL, parameter types
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

    def tombstone(self) -> Stmt:
        """What a server connection keeps of an evicted statement it still holds: the name, to
        close it, and not the text."""
        dead = Stmt(self.name, b"", 0)
        dead.forget()
        return dead


class Action:
    """A unit the proxy acts on when the server's reply (or the unit's turn) comes."""

    __slots__ = ("client_name", "kind", "prev", "reply", "stmt", "unit", "z")

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

    __slots__ = ("by_key", "counter", "entries", "evictions", "hits", "limit", "misses", "nbytes")

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

    def add(
        self, key: bytes, flags: int, names: list[str] | None = None, budget: int = _NO_BUDGET
    ) -> Stmt:
        """A new statement for key (callers look in `by_key` first)."""
        self.counter += 1
        stmt = Stmt(b"pgpool_%x" % self.counter, key, flags, names)
        self.by_key[key] = stmt
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
            if self.by_key.get(victim.key) is victim:
                del self.by_key[victim.key]

    def retire(self, stmt: Stmt) -> None:
        """The statement's plan went stale (DDL): the next Parse of its text gets a new one."""
        if self.by_key.get(stmt.key) is stmt:
            del self.by_key[stmt.key]


class ClientStatements(dict[bytes, Stmt]):
    """A client's named statements (its name -> statement), with the bytes of their texts
    counted for the client's budget (proxy.max_client_statement_bytes)."""

    __slots__ = ("nbytes",)

    def __init__(self) -> None:
        super().__init__()
        self.nbytes = 0

    def __setitem__(self, name: bytes, stmt: Stmt) -> None:
        old = super().get(name)
        if old is not None:
            self.nbytes -= len(old.key)
        self.nbytes += len(stmt.key)
        super().__setitem__(name, stmt)

    def __delitem__(self, name: bytes) -> None:
        self.nbytes -= len(self[name].key)
        super().__delitem__(name)

    def pop(self, name: bytes, *default: Stmt | None) -> Stmt | None:  # type: ignore[override]
        stmt = super().pop(name, *default)
        if stmt is not None and name not in self:
            self.nbytes -= len(stmt.key)
        return stmt

    def clear(self) -> None:
        super().clear()
        self.nbytes = 0


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
