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

PARSE_COMPLETE = _HDR.pack(b"1", 4)
CLOSE_COMPLETE = _HDR.pack(b"3", 4)


class Stmt:
    """One pool-wide prepared statement."""

    __slots__ = (
        "close_frame",
        "flags",
        "key",
        "name",
        "names",
        "parse_frame",
        "use_bind",
        "use_describe",
    )

    def __init__(self, name: bytes, key: bytes, flags: int, names: list[str] | None = None) -> None:
        self.name = name
        self.key = key  # the Parse body after the name: query, NUL, parameter types
        self.flags = flags  # sqlscan flags of the query text
        self.names = names or []  # the settings the text names (sqlscan.setting_names)
        self.parse_frame = _HDR.pack(b"P", 4 + len(name) + 1 + len(key)) + name + b"\0" + key
        self.close_frame = _HDR.pack(b"C", 4 + 1 + len(name) + 1) + b"S" + name + b"\0"
        # A Bind or Describe unit carries no per-use state: one object each, made once.
        self.use_bind = Action(A_USE, U_BIND, self)
        self.use_describe = Action(A_USE, U_DESCRIBE, self)


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


class StatementRegistry:
    """The statements of one pool, by (query, parameter types)."""

    __slots__ = ("by_key", "counter", "hits", "limit", "misses")

    def __init__(self, limit: int) -> None:
        self.by_key: dict[bytes, Stmt] = {}
        self.counter = 0
        self.limit = limit
        # Uses of a statement its server connection had prepared / had to be given (metrics).
        self.hits = 0
        self.misses = 0

    def add(self, key: bytes, flags: int, names: list[str] | None = None) -> Stmt:
        """A new statement for key (callers look in `by_key` first)."""
        if len(self.by_key) >= self.limit:
            # Forgetting only costs sharing: statements clients hold stay valid objects, and
            # their names are never reused.
            self.by_key.clear()
        self.counter += 1
        stmt = Stmt(b"pgpool_%x" % self.counter, key, flags, names)
        self.by_key[key] = stmt
        return stmt

    def retire(self, stmt: Stmt) -> None:
        """The statement's plan went stale (DDL): the next Parse of its text gets a new one."""
        if self.by_key.get(stmt.key) is stmt:
            del self.by_key[stmt.key]


class ServerStatements:
    """What one server connection has prepared, least recently used first."""

    __slots__ = ("lru", "size")

    def __init__(self, size: int) -> None:
        self.lru: OrderedDict[Stmt, None] = OrderedDict()
        self.size = size

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

    def clear(self) -> None:
        self.lru.clear()


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
