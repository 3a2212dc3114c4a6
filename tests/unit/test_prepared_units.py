"""Sans-IO tests of named prepared statements in transaction mode: the shared statement registry,
per-server LRU caches, the frames the proxy writes itself, and the reply-unit bookkeeping of both
frame scanners. Streams are fed whole, in chunks, one byte at a time and with trailing garbage."""

from __future__ import annotations

import struct
from collections import deque
from typing import Any

import pytest

from pgpool_proxy.link.prepared import (
    A_INJECTED_CLOSE,
    A_INJECTED_PARSE,
    A_PARSE,
    A_SYNTH,
    A_USE,
    CLOSE_COMPLETE,
    PARSE_COMPLETE,
    Action,
    ServerStatements,
    StatementRegistry,
    Stmt,
    command_complete,
    describe_statement,
    duplicate_parse,
    rebuilt_bind_head,
)
from pgpool_proxy.protocol import messages as m
from pgpool_proxy.protocol.client_scan import (
    CEV_INSPECT,
    CEV_NEED,
    CEV_NONE,
    INSPECT_LIMIT,
    ClientScanner,
)
from pgpool_proxy.protocol.constants import TX_IDLE, TX_IN_BLOCK
from pgpool_proxy.protocol.framing import FrameError
from pgpool_proxy.protocol.server_scan import (
    EV_AFTER,
    EV_ERROR,
    EV_FATAL,
    EV_NEED,
    EV_NONE,
    EV_NOTIFY,
    EV_PARAM,
    EV_READY,
    EV_ROW,
    EV_UNIT,
    BackendScanner,
)
from pgpool_proxy.protocol.sqltables import SQL_ALL, SQL_DEALLOCATE, SQL_SESSION, SQL_SETTINGS
from pgpool_proxy.protocol.units import (
    TERMINATES,
    U_BIND,
    U_CLOSE,
    U_DESCRIBE,
    U_EXECUTE,
    U_FZ,
    U_PARAMS,
    U_PARSE,
    U_QUERY,
    U_QZ,
    U_UPARSE,
    U_Z,
    UNIT_STOP,
)

LIMIT = 1 << 20
CHUNKS = [1, 2, 3, 5, 7, 64, 100_000]

# --- frame helpers ---------------------------------------------------------------------------


def decode(data: bytes) -> list[tuple[bytes, bytes]]:
    """Split bytes into (type, body) frames; every length must count itself and fit exactly."""
    out: list[tuple[bytes, bytes]] = []
    pos = 0
    while pos < len(data):
        assert len(data) - pos >= 5, "truncated header"
        length = struct.unpack_from("!I", data, pos + 1)[0]
        assert length >= 4
        body = data[pos + 5 : pos + 1 + length]
        assert len(body) == length - 4, "truncated body"
        out.append((data[pos : pos + 1], body))
        pos += 1 + length
    return out


def key_of(query: bytes, *oids: int) -> bytes:
    """The Parse body after the name: query, NUL, parameter count and types."""
    return (
        query + b"\0" + struct.pack("!H", len(oids)) + b"".join(struct.pack("!I", o) for o in oids)
    )


def parse(name: bytes, query: bytes, *oids: int) -> bytes:
    return m.frame(b"P", name + b"\0" + key_of(query, *oids))


def bind(portal: bytes, stmt: bytes, *params: bytes) -> bytes:
    body = portal + b"\0" + stmt + b"\0" + struct.pack("!HH", 0, len(params))
    for p in params:
        body += struct.pack("!I", len(p)) + p
    return m.frame(b"B", body + struct.pack("!H", 0))


def describe(kind: bytes, name: bytes) -> bytes:
    return m.frame(b"D", kind + name + b"\0")


def close(kind: bytes, name: bytes) -> bytes:
    return m.frame(b"C", kind + name + b"\0")


def execute(portal: bytes = b"", max_rows: int = 0) -> bytes:
    return m.frame(b"E", portal + b"\0" + struct.pack("!I", max_rows))


SYNC = m.frame(b"S")
FLUSH = m.frame(b"H")
TERMINATE = m.frame(b"X")


def function_call() -> bytes:
    return m.frame(b"F", struct.pack("!IHHH", 1234, 0, 0, 0))


# Backend frames.
PARSE_OK = m.frame(b"1")
BIND_OK = m.frame(b"2")
CLOSE_OK = m.frame(b"3")
NO_DATA = m.frame(b"n")
EMPTY_QUERY = m.frame(b"I")
SUSPENDED = m.frame(b"s")
PARAM_DESC = m.frame(b"t", struct.pack("!HI", 1, 23))
NOTICE = m.frame(b"N", b"SNOTICE\0Mhello\0\0")


def row_description() -> bytes:
    field = b"a\0" + struct.pack("!IhIhih", 0, 0, 23, 4, -1, 0)
    return m.frame(b"T", struct.pack("!H", 1) + field)


def data_row(value: bytes) -> bytes:
    return m.frame(b"D", struct.pack("!HI", 1, len(value)) + value)


def complete(tag: bytes) -> bytes:
    return command_complete(tag)


def error() -> bytes:
    return m.error_response("ERROR", "42601", "syntax error")


def rfq(status: int = TX_IDLE) -> bytes:
    return m.ready_for_query(status)


def frame_end(buf: bytes | bytearray, pos: int) -> int:
    return pos + 1 + int(struct.unpack_from("!I", buf, pos + 1)[0])


# --- drivers ---------------------------------------------------------------------------------


def run_client(
    data: bytes,
    chunk: int,
    sc: ClientScanner | None = None,
    *,
    rename: bool = False,
) -> tuple[ClientScanner, list[tuple[str, int, int]], int]:
    """Feed data in chunks to a ClientScanner on a growing buffer (absolute positions).

    Acts as the caller does at CEV_INSPECT: a Query is counted (as the client connection does
    after looking at it), another message gets a marker unit ('I', type byte); scanning resumes
    after the frame. Returns the scanner, the events as (name, position,
    type byte or need) and the position reached.
    """
    if sc is None:
        sc = ClientScanner(LIMIT)
        sc.rename = rename
    buf = bytearray()
    pos = 0
    events: list[tuple[str, int, int]] = []
    for i in range(0, len(data), chunk):
        buf += data[i : i + chunk]
        while True:
            pos = sc.scan(buf, pos, len(buf))
            if sc.terminated:
                return sc, events, pos
            if sc.event == CEV_INSPECT:
                t = buf[pos]
                events.append(("inspect", pos, t))
                if t == ord("Q"):
                    sc.pending += 1
                    if sc.units:
                        sc.units.append(U_Z)
                else:
                    sc.units.append(("I", t))
                pos = frame_end(buf, pos)
                continue
            if sc.event == CEV_NEED:
                events.append(("need", pos, sc.need))
            break
    return sc, events, pos


def without_needs(events: list[tuple[str, int, int]]) -> list[tuple[str, int, int]]:
    return [e for e in events if e[0] != "need"]


BEV_NAMES = {
    EV_NONE: "none",
    EV_READY: "ready",
    EV_PARAM: "param",
    EV_NOTIFY: "notify",
    EV_ERROR: "error",
    EV_FATAL: "fatal",
    EV_NEED: "need",
    EV_ROW: "row",
    EV_UNIT: "unit",
    EV_AFTER: "after",
}


def run_backend(
    data: bytes, chunk: int, units: list[Any], *, internal: bool = False
) -> tuple[BackendScanner, list[tuple[str, int, int]], int]:
    """Feed data in chunks to a BackendScanner whose `units` is a copy of units, acting as the
    client connection does: at EV_READY the oldest U_Z (and any unit before it) is popped; at
    EV_UNIT the head unit is popped (an ErrorResponse also drops the units up to the next U_Z)
    and the frame is passed; at EV_AFTER a synthesized reply at the head is emitted (popped).
    Events are (name, position, type byte of the frame at/before it or need)."""
    sc = BackendScanner()
    sc.internal = internal
    q: deque[Any] = deque(units)
    sc.units = q
    buf = bytearray()
    pos = 0
    events: list[tuple[str, int, int]] = []
    for i in range(0, len(data), chunk):
        buf += data[i : i + chunk]
        while True:
            pos = sc.scan(buf, pos, len(buf))
            ev = sc.event
            if ev == EV_READY:
                events.append(("ready", pos, sc.status))
                while q:
                    if q.popleft() is U_Z:
                        break
                continue
            if ev == EV_UNIT:
                t = buf[pos]
                events.append(("unit", pos, t))
                q.popleft()
                if t == ord("E"):
                    while q and q[0] is not U_Z:
                        q.popleft()
                pos = frame_end(buf, pos)
                continue
            if ev == EV_AFTER:
                events.append(("after", pos, 0))
                while q and q[0].__class__ is Action and q[0].kind == A_SYNTH:
                    q.popleft()
                continue
            if ev in (EV_ROW, EV_ERROR, EV_PARAM, EV_NOTIFY, EV_FATAL):
                events.append((BEV_NAMES[ev], pos, buf[pos]))
                pos = frame_end(buf, pos)
                continue
            if ev == EV_NEED:
                events.append(("need", pos, sc.need))
            break
    return sc, events, pos


# --- StatementRegistry -----------------------------------------------------------------------


def test_registry_add_and_by_key() -> None:
    reg = StatementRegistry(10)
    k1 = key_of(b"select 1")
    k2 = key_of(b"select $1", 23)
    s1 = reg.add(k1, 0)
    s2 = reg.add(k2, SQL_SESSION)
    assert reg.by_key == {k1: s1, k2: s2}
    assert (s1.name, s1.key, s1.flags) == (b"pgpool_1", k1, 0)
    assert (s2.name, s2.key, s2.flags) == (b"pgpool_2", k2, SQL_SESSION)
    assert reg.counter == 2


def test_registry_names_are_hex_unique_and_never_reused() -> None:
    reg = StatementRegistry(4)
    names = []
    for i in range(40):
        stmt = reg.add(key_of(b"select %d" % i), 0)
        names.append(stmt.name)
    assert len(set(names)) == 40
    assert names[9] == b"pgpool_a"
    assert names[15] == b"pgpool_10"
    assert names[-1] == b"pgpool_28"
    # The same key added again (after the caller found it missing) still gets a new name.
    again = reg.add(key_of(b"select 39"), 0)
    assert again.name == b"pgpool_29"


def test_registry_limit_evicts_least_recently_used() -> None:
    reg = StatementRegistry(2)
    k1, k2, k3 = key_of(b"a"), key_of(b"b"), key_of(b"c")
    s1 = reg.add(k1, 0)
    s2 = reg.add(k2, 0)
    assert len(reg.by_key) == 2
    s3 = reg.add(k3, 0)
    assert reg.by_key == {k2: s2, k3: s3}
    assert s1.evicted and not s2.evicted and reg.evictions == 1
    # Statements clients hold stay valid objects.
    assert s1.name == b"pgpool_1"
    assert s1.parse_frame.startswith(b"P")


def test_registry_retire() -> None:
    reg = StatementRegistry(10)
    k = key_of(b"select * from t")
    old = reg.add(k, 0)
    reg.retire(old)
    assert k not in reg.by_key
    reg.retire(old)  # twice: nothing to do
    new = reg.add(k, 0)
    assert new is not old and new.name != old.name
    # Retiring the stale statement again must not remove its replacement.
    reg.retire(old)
    assert reg.by_key[k] is new


# --- ServerStatements ------------------------------------------------------------------------


def _stmts(n: int) -> list[Stmt]:
    return [Stmt(b"pgpool_%x" % (i + 1), key_of(b"select %d" % i), 0) for i in range(n)]


def test_server_statements_add_within_size() -> None:
    a, b = _stmts(2)
    ss = ServerStatements(2)
    assert ss.add(a) is None
    assert ss.add(b) is None
    assert len(ss) == 2
    assert a in ss and b in ss


def test_server_statements_add_returns_lru_victim() -> None:
    a, b, c, d = _stmts(4)
    ss = ServerStatements(2)
    ss.add(a)
    ss.add(b)
    assert ss.add(c) is a
    assert a not in ss
    assert list(ss.lru) == [b, c]
    assert ss.add(d) is b
    assert list(ss.lru) == [c, d]


def test_server_statements_touch_moves_to_end() -> None:
    a, b, c = _stmts(3)
    ss = ServerStatements(2)
    ss.add(a)
    ss.add(b)
    ss.touch(a)
    assert list(ss.lru) == [b, a]
    assert ss.add(c) is b
    assert list(ss.lru) == [a, c]


def test_server_statements_readd_existing_keeps_position() -> None:
    """Observed: add() of a statement already held does not move it (touch does)."""
    a, b = _stmts(2)
    ss = ServerStatements(2)
    ss.add(a)
    ss.add(b)
    assert ss.add(a) is None
    assert list(ss.lru) == [a, b]


def test_server_statements_discard_and_clear() -> None:
    a, b, c = _stmts(3)
    ss = ServerStatements(3)
    for s in (a, b, c):
        ss.add(s)
    ss.discard(b)
    ss.discard(b)  # absent: no error
    assert list(ss.lru) == [a, c]
    ss.clear()
    assert len(ss) == 0
    assert a not in ss


def test_server_statements_size_zero_evicts_at_once() -> None:
    (a,) = _stmts(1)
    ss = ServerStatements(0)
    assert ss.add(a) is a
    assert len(ss) == 0


# --- frames the proxy writes -----------------------------------------------------------------


def test_stmt_parse_frame_layout() -> None:
    k = key_of(b"select $1, $2", 23, 25)
    stmt = Stmt(b"pgpool_1f", k, SQL_SESSION)
    frames = decode(stmt.parse_frame)
    assert frames == [(b"P", b"pgpool_1f\0select $1, $2\0\x00\x02\x00\x00\x00\x17\x00\x00\x00\x19")]
    assert stmt.parse_frame == parse(b"pgpool_1f", b"select $1, $2", 23, 25)


def test_stmt_close_frame_layout() -> None:
    stmt = Stmt(b"pgpool_2", key_of(b"select 1"), 0)
    assert decode(stmt.close_frame) == [(b"C", b"Spgpool_2\0")]
    assert stmt.close_frame == close(b"S", b"pgpool_2")


def test_constant_replies() -> None:
    assert decode(PARSE_COMPLETE) == [(b"1", b"")]
    assert decode(CLOSE_COMPLETE) == [(b"3", b"")]


def test_rebuilt_bind_head() -> None:
    original = bind(b"portal", b"client_name", b"42", b"x")
    t, body = decode(original)[0]
    assert t == b"B"
    rest = body[len(b"portal\0client_name\0") :]
    head = rebuilt_bind_head(memoryview(b"portal"), b"pgpool_7", len(rest))
    rebuilt = head + rest
    assert rebuilt == bind(b"portal", b"pgpool_7", b"42", b"x")
    assert decode(rebuilt) == [(b"B", b"portal\0pgpool_7\0" + rest)]


def test_rebuilt_bind_head_unnamed_portal() -> None:
    head = rebuilt_bind_head(b"", b"pgpool_1", 6)
    assert head == b"B" + struct.pack("!I", 4 + 1 + 9 + 6) + b"\0pgpool_1\0"
    rest = struct.pack("!HHH", 0, 0, 0)
    assert decode(head + rest) == [(b"B", b"\0pgpool_1\0" + rest)]


def test_describe_statement() -> None:
    assert decode(describe_statement(b"pgpool_3")) == [(b"D", b"Spgpool_3\0")]
    assert describe_statement(b"pgpool_3") == describe(b"S", b"pgpool_3")


def test_command_complete() -> None:
    assert decode(command_complete(b"DEALLOCATE")) == [(b"C", b"DEALLOCATE\0")]
    assert decode(command_complete(b"")) == [(b"C", b"\0")]


def test_duplicate_parse() -> None:
    held = Stmt(b"pgpool_5", key_of(b"select 1"), 0)
    new_key = key_of(b"select $1", 23)
    frame = duplicate_parse(held, new_key)
    assert decode(frame) == [(b"P", b"pgpool_5\0" + new_key)]
    # The held statement's name with the new query, not the held query.
    assert frame != held.parse_frame
    assert frame == parse(b"pgpool_5", b"select $1", 23)


def test_action_defaults() -> None:
    stmt = Stmt(b"pgpool_1", key_of(b"select 1"), 0)
    a = Action(A_USE, U_BIND, stmt)
    assert (a.kind, a.unit, a.stmt, a.reply, a.client_name, a.prev, a.z) == (
        A_USE,
        U_BIND,
        stmt,
        b"",
        b"",
        None,
        False,
    )


# --- units tables ----------------------------------------------------------------------------


def test_terminates_table() -> None:
    expected = {
        U_Z: b"",
        U_PARSE: b"1",
        U_BIND: b"2",
        U_DESCRIBE: b"Tn",
        U_EXECUTE: b"CIs",
        U_CLOSE: b"3",
        U_UPARSE: b"1",
        U_PARAMS: b"t",
    }
    assert (U_Z, U_PARSE, U_BIND, U_DESCRIBE, U_EXECUTE, U_CLOSE) == (0, 1, 2, 3, 4, 5)
    for u, types in expected.items():
        assert {t for t in range(256) if TERMINATES[u][t]} == set(types)
    assert {t for t in range(256) if UNIT_STOP[t]} == set(b"123TnCIsEt")


# --- ClientScanner: reply units --------------------------------------------------------------

UNNAMED_PIPELINE = (
    parse(b"", b"select $1", 23) + bind(b"", b"", b"1") + describe(b"P", b"") + execute() + SYNC
)
# Bytes after the tested frames that do not form a complete header.
GARBAGE = b"Q\0\0"


@pytest.mark.parametrize("rename", [False, True])
@pytest.mark.parametrize("chunk", CHUNKS)
def test_client_unnamed_pipeline_units(chunk: int, rename: bool) -> None:
    sc, events, pos = run_client(UNNAMED_PIPELINE, chunk, rename=rename)
    assert without_needs(events) == []
    # Transaction mode keeps what an unnamed Parse made (U_UPARSE): see test_client_unnamed_*.
    parse_unit = U_UPARSE if rename else U_PARSE
    assert list(sc.units) == [parse_unit, U_BIND, U_DESCRIBE, U_EXECUTE, U_Z]
    assert sc.pending == 1
    assert not sc.unsynced
    assert sc.event == CEV_NONE
    assert pos == len(UNNAMED_PIPELINE)


@pytest.mark.parametrize("chunk", CHUNKS)
def test_client_unnamed_pipeline_trailing_garbage(chunk: int) -> None:
    sc, events, pos = run_client(UNNAMED_PIPELINE + GARBAGE, chunk, rename=True)
    assert without_needs(events) == []
    assert list(sc.units) == [U_UPARSE, U_BIND, U_DESCRIBE, U_EXECUTE, U_Z]
    assert pos == len(UNNAMED_PIPELINE)
    assert sc.event == CEV_NONE


def test_client_describe_statement_and_close_units() -> None:
    data = parse(b"", b"select 1") + describe(b"S", b"") + close(b"P", b"") + SYNC
    sc, _, _ = run_client(data, 100_000, rename=True)
    assert list(sc.units) == [U_UPARSE, U_DESCRIBE, U_CLOSE, U_Z]


def test_client_unsynced_until_sync() -> None:
    sc, _, _ = run_client(parse(b"", b"select 1") + bind(b"", b"") + execute(), 100_000)
    assert sc.unsynced
    assert sc.pending == 0
    assert list(sc.units) == [U_PARSE, U_BIND, U_EXECUTE]
    sc, _, _ = run_client(SYNC, 100_000, sc)
    assert not sc.unsynced
    assert list(sc.units) == [U_PARSE, U_BIND, U_EXECUTE, U_Z]


def test_client_flush_marks_unsynced_without_unit() -> None:
    sc, _, _ = run_client(parse(b"", b"select 1") + FLUSH, 100_000)
    assert list(sc.units) == [U_PARSE]
    assert sc.unsynced


@pytest.mark.parametrize("chunk", CHUNKS)
def test_client_queries_only_count_pending(chunk: int) -> None:
    data = m.query("select 1") + m.query("select 2") + function_call() + SYNC
    sc, events, _ = run_client(data, chunk)
    assert without_needs(events) == []
    assert sc.pending == 4
    assert list(sc.units) == []
    # A FunctionCall runs a function by OID: the proxy cannot see what it leaves behind.
    assert sc.dirty == SQL_ALL


@pytest.mark.parametrize("chunk", CHUNKS)
def test_client_extended_after_queries_pushes_pending_u_z(chunk: int) -> None:
    data = m.query("select 1") + m.query("select 2") + UNNAMED_PIPELINE + m.query("select 3")
    sc, _, _ = run_client(data, chunk)
    # The Query after the batch's Sync has its own code (it drops the unnamed statement).
    assert list(sc.units) == [U_Z, U_Z, U_PARSE, U_BIND, U_DESCRIBE, U_EXECUTE, U_Z, U_QUERY]
    assert sc.pending == 4


@pytest.mark.parametrize(
    "first", [bind(b"", b""), describe(b"P", b""), close(b"P", b""), execute()]
)
def test_client_each_extended_message_pushes_pending(first: bytes) -> None:
    sc, _, _ = run_client(m.query("select 1") + first, 100_000)
    assert len(sc.units) == 2
    assert sc.units[0] == U_Z
    assert sc.pending == 1


def test_client_function_call_appends_u_z_when_units() -> None:
    """Inside an open batch (no Sync since the Parse) it is a U_FZ: after an error in the batch
    PostgreSQL skips it, ReadyForQuery included."""
    sc, _, _ = run_client(parse(b"", b"select 1") + function_call(), 100_000)
    assert list(sc.units) == [U_PARSE, U_FZ]
    assert sc.pending == 1
    sc, _, _ = run_client(parse(b"", b"select 1") + SYNC + function_call(), 100_000)
    assert list(sc.units) == [U_PARSE, U_Z, U_Z]


def test_client_query_inside_a_batch_is_u_qz() -> None:
    sc, _, _ = run_client(parse(b"", b"select 1") + m.query("select 2") + SYNC, 100_000)
    assert list(sc.units) == [U_PARSE, U_QZ, U_Z]
    assert sc.pending == 2


# --- ClientScanner: rename (named statements) ------------------------------------------------

NAMED = [
    ("parse", parse(b"s1", b"select $1", 23)),
    ("bind", bind(b"", b"s1", b"1")),
    ("bind-named-portal", bind(b"p1", b"s1", b"1")),
    ("describe-S", describe(b"S", b"s1")),
    ("close-S", close(b"S", b"s1")),
]
UNNAMED_OR_PORTAL = [
    ("parse", parse(b"", b"select $1", 23), U_PARSE),
    ("bind", bind(b"", b"", b"1"), U_BIND),
    ("bind-named-portal", bind(b"p1", b"", b"1"), U_BIND),
    ("describe-S", describe(b"S", b""), U_DESCRIBE),
    ("describe-P", describe(b"P", b"p1"), U_DESCRIBE),
    ("close-S", close(b"S", b""), U_CLOSE),
    ("close-P", close(b"P", b"p1"), U_CLOSE),
]


@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize(("label", "msg"), NAMED, ids=[n for n, _ in NAMED])
def test_client_rename_stops_at_named(label: str, msg: bytes, chunk: int) -> None:
    prefix = m.query("select 0") + parse(b"", b"select 1") + bind(b"", b"")
    data = prefix + msg + execute() + SYNC + GARBAGE
    sc, events, pos = run_client(data, chunk, rename=True)
    assert without_needs(events) == [("inspect", len(prefix), msg[0])]
    # The pending Query was turned into a unit before the named message's own.
    assert list(sc.units) == [U_Z, U_UPARSE, U_BIND, ("I", msg[0]), U_EXECUTE, U_Z]
    assert pos == len(data) - len(GARBAGE)


@pytest.mark.parametrize("chunk", [1, 100_000])
@pytest.mark.parametrize("rename", [False, True])
@pytest.mark.parametrize(
    ("label", "msg", "unit"), UNNAMED_OR_PORTAL, ids=[n for n, _, _ in UNNAMED_OR_PORTAL]
)
def test_client_unnamed_not_inspected(
    label: str, msg: bytes, unit: int, rename: bool, chunk: int
) -> None:
    """While the linked server holds the client's own unnamed statement (the common case: Parse
    and Bind in one batch), nothing about it needs the session layer beyond the Parse."""
    sc, events, _ = run_client(msg + SYNC, chunk, rename=rename)
    assert without_needs(events) == []
    assert list(sc.units) == [U_UPARSE if rename and unit == U_PARSE else unit, U_Z]


@pytest.mark.parametrize(
    ("label", "msg", "stops"),
    [
        ("bind", bind(b"", b"", b"1"), True),
        ("bind-named-portal", bind(b"p1", b"", b"1"), True),
        ("describe-S", describe(b"S", b""), True),
        ("describe-P", describe(b"P", b""), False),
        ("close-S", close(b"S", b""), False),
        ("execute", execute(), False),
    ],
)
def test_client_unnamed_inspected_on_a_server_without_it(
    label: str, msg: bytes, stops: bool
) -> None:
    """After a relink (or the proxy's own Query) the server's unnamed statement is not the
    client's: a Bind or Describe of it stops the scan so the session layer can give it again."""
    sc = ClientScanner(LIMIT)
    sc.rename = True
    sc.unnamed_here = False
    sc.scan(bytearray(msg + SYNC), 0, len(msg) + len(SYNC))
    assert (sc.event == CEV_INSPECT) == stops
    if label == "close-S":
        assert sc.unnamed_here and sc.unnamed is None  # the server drops its own too


def test_client_unnamed_bind_of_a_statement_with_flags_is_inspected() -> None:
    """Its flags are noted again each time it runs (it may have been parsed in an earlier,
    already checked transaction)."""
    sc = ClientScanner(LIMIT)
    sc.rename = True
    sc.unnamed_flags = 8
    data = bytearray(bind(b"", b"") + SYNC)
    sc.scan(data, 0, len(data))
    assert sc.event == CEV_INSPECT


def test_client_query_drops_the_unnamed_statement() -> None:
    sc = ClientScanner(LIMIT)
    sc.rename = True
    sc.unnamed = (b"P", 0, [])
    sc.unnamed_here = False
    data = bytearray(m.query("select 1"))
    sc.scan(data, 0, len(data))
    # Nothing in flight: known at once (else when the Query's ReadyForQuery comes).
    assert sc.unnamed is None and sc.unnamed_here


@pytest.mark.parametrize(("label", "msg"), NAMED, ids=[n for n, _ in NAMED])
def test_client_named_not_inspected_without_rename(label: str, msg: bytes) -> None:
    sc, events, _ = run_client(msg + SYNC, 1)
    assert without_needs(events) == []
    assert len(sc.units) == 2


@pytest.mark.parametrize("cut", [1, 5, 6, 10])
def test_client_incomplete_named_parse_needs_whole_frame(cut: int) -> None:
    msg = parse(b"s1", b"select $1 " + b"x" * 50, 23)
    sc = ClientScanner(LIMIT)
    sc.rename = True
    buf = bytearray(msg[:-cut])
    assert sc.scan(buf, 0, len(buf)) == 0
    assert sc.event == CEV_NEED
    assert sc.need == len(msg)
    assert list(sc.units) == []
    buf += msg[-cut:] + GARBAGE
    assert sc.scan(buf, 0, len(buf)) == 0
    assert sc.event == CEV_INSPECT


def test_client_incomplete_named_parse_byte_by_byte() -> None:
    msg = parse(b"s1", b"select 1")
    _, events, _ = run_client(msg, 1, rename=True)
    needs = [e for e in events if e[0] == "need"]
    # One CEV_NEED per byte from a complete header until the frame is whole, always its size.
    assert needs == [("need", 0, len(msg))] * (len(msg) - 5)
    assert without_needs(events) == [("inspect", 0, ord("P"))]


@pytest.mark.parametrize(
    "msg", [bind(b"", b"s1"), describe(b"S", b"s1"), close(b"S", b"s1"), bind(b"", b"")]
)
def test_client_incomplete_bind_describe_close_need_with_rename(msg: bytes) -> None:
    sc = ClientScanner(LIMIT)
    sc.rename = True
    buf = bytearray(msg[:-1])
    assert sc.scan(buf, 0, len(buf)) == 0
    assert sc.event == CEV_NEED
    assert sc.need == len(msg)


def test_client_incomplete_bind_streams_without_rename() -> None:
    msg = bind(b"", b"s1", b"1")
    sc = ClientScanner(LIMIT)
    buf = bytearray(msg[:-3])
    assert sc.scan(buf, 0, len(buf)) == len(buf)
    assert sc.event == CEV_NONE
    assert sc.skip == 3
    assert list(sc.units) == [U_BIND]


def test_client_incomplete_unnamed_parse_also_needs() -> None:
    """Every Parse is looked into (its query text is classified), named or not."""
    msg = parse(b"", b"select 1")
    sc = ClientScanner(LIMIT)
    buf = bytearray(msg[:-1])
    assert sc.scan(buf, 0, len(buf)) == 0
    assert sc.event == CEV_NEED
    assert sc.need == len(msg)


@pytest.mark.parametrize(
    "msg",
    [m.frame(b"P"), m.frame(b"B"), m.frame(b"D"), m.frame(b"C"), m.frame(b"D", b"S")],
    ids=["P", "B", "D", "C", "D-S"],
)
def test_client_malformed_short_frame_at_buffer_end(msg: bytes) -> None:
    sc = ClientScanner(LIMIT)
    sc.rename = True
    buf = bytearray(msg)
    sc.scan(buf, 0, len(buf))
    assert sc.event in (CEV_NONE, CEV_INSPECT)


# --- ClientScanner: DEALLOCATE and dirty -----------------------------------------------------


@pytest.mark.parametrize("rename", [False, True])
@pytest.mark.parametrize("chunk", CHUNKS)
def test_client_deallocate_query_inspected_when_complete(chunk: int, rename: bool) -> None:
    q = m.query("DEALLOCATE s1")
    data = m.query("select 1") + q + GARBAGE
    sc, events, pos = run_client(data, chunk, rename=rename)
    assert without_needs(events) == [("inspect", len(m.query("select 1")), ord("Q"))]
    # Needs only for the Query frames, each with its own size.
    for _, at, need in (e for e in events if e[0] == "need"):
        assert need == (len(q) if at else len(m.query("select 1")))
    # The scanner neither counts nor flags the inspected query: that is the caller's job.
    assert sc.pending == 2  # one by the scanner, one by the driver acting as caller
    assert sc.dirty == 0
    assert pos == len(data) - len(GARBAGE)


def test_client_deallocate_incomplete_needs() -> None:
    q = m.query("DISCARD ALL")
    sc = ClientScanner(LIMIT)
    buf = bytearray(q[:-1])
    assert sc.scan(buf, 0, len(buf)) == 0
    assert sc.event == CEV_NEED
    assert sc.need == len(q)
    assert sc.pending == 0


@pytest.mark.parametrize("chunk", CHUNKS)
def test_client_dirty_from_query(chunk: int) -> None:
    sc, _, _ = run_client(m.query("select 1") + m.query("SET x=1"), chunk)
    assert sc.dirty == SQL_SESSION | SQL_SETTINGS
    assert sc.names == ["x"]
    assert sc.pending == 2


@pytest.mark.parametrize("rename", [False, True])
def test_client_dirty_from_unnamed_parse(rename: bool) -> None:
    sc, _, _ = run_client(parse(b"", b"select set_config('a','b',false)") + SYNC, 1, rename=rename)
    assert sc.dirty == SQL_SESSION | SQL_SETTINGS
    assert sc.names == ["a"]
    sc, _, _ = run_client(parse(b"", b"SET LOCAL x=1") + SYNC, 1, rename=rename)
    assert sc.dirty == 0


def test_client_dirty_not_set_by_plain_statements() -> None:
    data = m.query("UPDATE t SET a=1") + m.query("BEGIN") + parse(b"", b"select 1") + SYNC
    sc, _, _ = run_client(data, 3)
    assert sc.dirty == 0


def test_client_dirty_accumulates_and_caller_clears() -> None:
    sc, _, _ = run_client(m.query("SET x=1"), 100_000)
    assert sc.dirty == SQL_SESSION | SQL_SETTINGS
    sc.dirty = 0
    sc, _, _ = run_client(m.query("select 1"), 100_000, sc)
    assert sc.dirty == 0
    assert not sc.dirty & SQL_DEALLOCATE


# --- ClientScanner: COPY FROM STDIN ----------------------------------------------------------

COPY_DATA = m.frame(b"d", b"1\t2\n")
COPY_DONE = m.frame(b"c")
COPY_FAIL = m.frame(b"f", b"stop\0")


@pytest.mark.parametrize("end_copy", [COPY_DONE, COPY_FAIL], ids=["done", "fail"])
@pytest.mark.parametrize("chunk", CHUNKS)
def test_client_copy_in_removes_ignored_syncs(chunk: int, end_copy: bytes) -> None:
    head = parse(b"", b"COPY t FROM STDIN") + bind(b"", b"") + execute() + SYNC
    sc, _, _ = run_client(m.query("select 1") + head, chunk)
    assert list(sc.units) == [U_Z, U_PARSE, U_BIND, U_EXECUTE, U_Z]
    assert sc.pending == 2
    assert sc.syncs_since_execute == 1
    sc.copy_in = True  # the server's CopyInResponse arrived
    sc, _, _ = run_client(COPY_DATA + SYNC + COPY_DATA + end_copy, chunk, sc)
    assert not sc.copy_in
    assert sc.syncs_since_execute == 0
    # Both Syncs after the Execute are ignored; the Query's ReadyForQuery is still owed.
    assert sc.pending == 1
    assert list(sc.units) == [U_Z, U_PARSE, U_BIND, U_EXECUTE]
    sc, _, _ = run_client(SYNC, chunk, sc)
    assert list(sc.units) == [U_Z, U_PARSE, U_BIND, U_EXECUTE, U_Z]
    assert sc.pending == 2


def test_client_copy_done_without_copy_in_keeps_units() -> None:
    head = parse(b"", b"COPY t FROM STDIN") + bind(b"", b"") + execute() + SYNC
    sc, _, _ = run_client(head + COPY_DATA + COPY_DONE, 100_000)
    assert list(sc.units) == [U_PARSE, U_BIND, U_EXECUTE, U_Z]
    assert sc.pending == 1


def test_client_copy_in_simple_query_removes_nothing() -> None:
    sc, _, _ = run_client(m.query("COPY t FROM STDIN"), 100_000)
    sc.copy_in = True
    sc, _, _ = run_client(COPY_DATA + COPY_DONE, 1, sc)
    assert sc.pending == 1
    assert list(sc.units) == []
    assert not sc.copy_in


def test_client_copy_in_ignored_syncs_when_units_empty() -> None:
    """Syncs counted in `pending` only (no units owed): only the count is corrected."""
    sc = ClientScanner(LIMIT)
    sc.copy_in = True
    sc, _, _ = run_client(SYNC + SYNC + COPY_DONE, 1, sc)
    assert sc.pending == 0
    assert list(sc.units) == []


# --- ClientScanner: misc -----------------------------------------------------------------


def test_client_terminate_stops_before_it() -> None:
    data = m.query("select 1") + TERMINATE + m.query("select 2")
    sc, _, pos = run_client(data, 1)
    assert sc.terminated
    assert pos == len(m.query("select 1"))
    assert sc.pending == 1


@pytest.mark.parametrize("length", [0, 3, LIMIT + 1])
def test_client_bad_length(length: int) -> None:
    sc = ClientScanner(LIMIT)
    buf = bytearray(b"B" + struct.pack("!I", length) + b"\0\0\0\0")
    with pytest.raises(FrameError):
        sc.scan(buf, 0, len(buf))


def test_client_reset_clears_units() -> None:
    sc, _, _ = run_client(UNNAMED_PIPELINE + parse(b"", b"x"), 100_000)
    sc.copy_in = True
    sc.reset()
    assert (sc.pending, sc.unsynced, sc.copy_in, sc.syncs_since_execute) == (0, False, False, 0)
    assert list(sc.units) == []


# --- BackendScanner: reply units -------------------------------------------------------------

PIPELINE_REPLY = (
    PARSE_OK
    + BIND_OK
    + row_description()
    + data_row(b"1")
    + data_row(b"2")
    + complete(b"SELECT 2")
    + rfq()
)
PIPELINE_UNITS: list[Any] = [U_PARSE, U_BIND, U_DESCRIBE, U_EXECUTE, U_Z]


@pytest.mark.parametrize("chunk", CHUNKS)
def test_backend_plain_units_popped_inline(chunk: int) -> None:
    sc, events, pos = run_backend(PIPELINE_REPLY, chunk, PIPELINE_UNITS)
    assert without_needs(events) == [("ready", len(PIPELINE_REPLY), TX_IDLE)]
    assert pos == len(PIPELINE_REPLY)
    assert sc.units is not None and list(sc.units) == []


def test_backend_ready_leaves_u_z_to_caller() -> None:
    sc = BackendScanner()
    sc.units = deque(PIPELINE_UNITS)
    buf = bytearray(PIPELINE_REPLY + GARBAGE)
    assert sc.scan(buf, 0, len(buf)) == len(PIPELINE_REPLY)
    assert sc.event == EV_READY
    assert list(sc.units) == [U_Z]
    # The trailing partial header: a header is needed.
    assert sc.scan(buf, len(PIPELINE_REPLY), len(buf)) == len(PIPELINE_REPLY)
    assert sc.event == EV_NEED
    assert sc.need == 5


@pytest.mark.parametrize(
    ("units", "reply"),
    [
        ([U_DESCRIBE, U_Z], PARAM_DESC + NO_DATA),
        ([U_DESCRIBE, U_Z], PARAM_DESC + row_description()),
        ([U_EXECUTE, U_Z], EMPTY_QUERY),
        ([U_EXECUTE, U_Z], data_row(b"x") + SUSPENDED),
        ([U_EXECUTE, U_Z], NOTICE + complete(b"INSERT 0 1")),
        ([U_CLOSE, U_Z], CLOSE_OK),
        ([U_PARSE, U_CLOSE, U_BIND, U_Z], PARSE_OK + CLOSE_OK + BIND_OK),
    ],
    ids=["nodata", "rowdesc", "empty", "suspended", "complete", "close", "mixed"],
)
@pytest.mark.parametrize("chunk", [1, 4, 100_000])
def test_backend_terminators(units: list[Any], reply: bytes, chunk: int) -> None:
    sc, events, _ = run_backend(reply + rfq(TX_IN_BLOCK), chunk, units)
    assert without_needs(events) == [("ready", len(reply) + 6, TX_IN_BLOCK)]
    assert sc.units is not None and list(sc.units) == []


def test_backend_non_terminator_does_not_pop() -> None:
    """A unit-stop frame that does not end the head unit passes without popping it."""
    sc = BackendScanner()
    sc.units = deque([U_BIND, U_Z])
    buf = bytearray(complete(b"SELECT 1") + PARSE_OK)
    assert sc.scan(buf, 0, len(buf)) == len(buf)
    assert sc.event == EV_NONE
    assert list(sc.units) == [U_BIND, U_Z]


def test_backend_u_z_head_streams_everything() -> None:
    """While the head is a Query/Sync unit, terminators and errors pass without a stop."""
    reply = row_description() + data_row(b"1") + complete(b"SELECT 1") + error()
    sc, events, _ = run_backend(reply + rfq(), 1, [U_Z, U_PARSE, U_Z])
    assert without_needs(events) == [("ready", len(reply) + 6, TX_IDLE)]
    assert sc.units is not None and list(sc.units) == [U_PARSE, U_Z]


def test_backend_u_z_head_incomplete_terminator_streams() -> None:
    sc = BackendScanner()
    sc.units = deque([U_Z, U_PARSE])
    frame = complete(b"SELECT 1")
    buf = bytearray(frame[:-2])
    assert sc.scan(buf, 0, len(buf)) == len(buf)
    assert sc.event == EV_NONE
    assert sc.skip == 2


@pytest.mark.parametrize("chunk", CHUNKS)
def test_backend_error_with_extended_unit_at_head(chunk: int) -> None:
    reply = PARSE_OK + error() + rfq(TX_IN_BLOCK)
    sc, events, _ = run_backend(reply, chunk, [U_PARSE, U_BIND, U_EXECUTE, U_Z])
    assert without_needs(events) == [
        ("unit", len(PARSE_OK), ord("E")),
        ("ready", len(reply), TX_IN_BLOCK),
    ]
    assert sc.units is not None and list(sc.units) == []


@pytest.mark.parametrize("chunk", [1, 100_000])
def test_backend_action_head_stops_at_next_terminator(chunk: int) -> None:
    stmt = Stmt(b"pgpool_1", key_of(b"select 1"), 0)
    injected = Action(A_INJECTED_PARSE, U_PARSE, stmt)
    pre = NOTICE + m.parameter_status("application_name", "x")
    reply = pre + PARSE_OK + BIND_OK + rfq()
    _, events, _ = run_backend(reply, chunk, [injected, U_BIND, U_Z])
    assert without_needs(events) == [
        ("param", len(NOTICE), ord("S")),
        ("unit", len(pre), ord("1")),
        ("ready", len(reply), TX_IDLE),
    ]


def test_backend_action_head_stops_at_any_unit_stop_type() -> None:
    """The scanner does not check the action's own unit: the caller (replies.on_unit) does."""
    stmt = Stmt(b"pgpool_1", key_of(b"select 1"), 0)
    sc = BackendScanner()
    sc.units = deque([Action(A_USE, U_BIND, stmt), U_Z])
    buf = bytearray(PARAM_DESC + NO_DATA + BIND_OK)
    # A ParameterDescription stops it too (the proxy's own Describe drops it: U_PARAMS).
    assert sc.scan(buf, 0, len(buf)) == 0
    assert sc.event == EV_UNIT
    assert sc.scan(buf, len(PARAM_DESC), len(buf)) == len(PARAM_DESC)
    assert sc.event == EV_UNIT
    assert len(sc.units) == 2


@pytest.mark.parametrize("chunk", CHUNKS)
def test_backend_pop_to_action_stops_after(chunk: int) -> None:
    stmt = Stmt(b"pgpool_1", key_of(b"select 1"), 0)
    synth = Action(A_SYNTH, U_CLOSE, stmt, reply=CLOSE_COMPLETE)
    use = Action(A_USE, U_EXECUTE, stmt)
    reply = PARSE_OK + BIND_OK + data_row(b"1") + complete(b"SELECT 1") + rfq()
    sc, events, _ = run_backend(reply, chunk, [U_PARSE, U_BIND, synth, use, U_Z])
    assert without_needs(events) == [
        ("after", len(PARSE_OK + BIND_OK), 0),
        ("unit", len(PARSE_OK + BIND_OK + data_row(b"1")), ord("C")),
        ("ready", len(reply), TX_IDLE),
    ]
    assert sc.units is not None and list(sc.units) == []


def test_backend_after_returns_just_after_frame() -> None:
    stmt = Stmt(b"pgpool_1", key_of(b"select 1"), 0)
    sc = BackendScanner()
    action = Action(A_INJECTED_CLOSE, U_CLOSE, stmt)
    sc.units = deque([U_PARSE, action, U_Z])
    buf = bytearray(PARSE_OK + CLOSE_OK + rfq())
    assert sc.scan(buf, 0, len(buf)) == len(PARSE_OK)
    assert sc.event == EV_AFTER
    assert list(sc.units) == [action, U_Z]
    # Rescanning with the action still at the head stops at its terminator.
    assert sc.scan(buf, len(PARSE_OK), len(buf)) == len(PARSE_OK)
    assert sc.event == EV_UNIT


def test_backend_no_after_when_next_is_plain() -> None:
    sc = BackendScanner()
    sc.units = deque([U_PARSE, U_BIND, U_Z])
    buf = bytearray(PARSE_OK + BIND_OK)
    assert sc.scan(buf, 0, len(buf)) == len(buf)
    assert sc.event == EV_NONE
    assert list(sc.units) == [U_Z]


@pytest.mark.parametrize(
    ("head", "frame"),
    [
        (U_EXECUTE, complete(b"SELECT 123")),
        (U_EXECUTE, error()),
        (U_DESCRIBE, row_description()),
        ("action", complete(b"SELECT 1")),
    ],
    ids=["execute", "error", "describe", "action"],
)
def test_backend_incomplete_terminator_needs(head: Any, frame: bytes) -> None:
    if head == "action":
        head = Action(A_PARSE, U_PARSE, Stmt(b"pgpool_1", key_of(b"x"), 0))
    assert len(frame) > 5
    for cut in range(len(frame) - 5):
        sc = BackendScanner()
        sc.units = deque([head, U_Z])
        buf = bytearray(data_row(b"r") + frame[: len(frame) - 1 - cut])
        assert sc.scan(buf, 0, len(buf)) == len(data_row(b"r"))
        assert sc.event == EV_NEED
        assert sc.need == len(frame)
        assert len(sc.units) == 2


def test_backend_empty_terminator_frames_never_split() -> None:
    """ParseComplete has no body: once its header is there it is complete."""
    sc = BackendScanner()
    sc.units = deque([U_PARSE, U_Z])
    buf = bytearray(PARSE_OK[:4])
    assert sc.scan(buf, 0, len(buf)) == 0
    assert sc.event == EV_NEED
    assert sc.need == 5
    buf += PARSE_OK[4:]
    assert sc.scan(buf, 0, len(buf)) == len(buf)
    assert sc.event == EV_NONE
    assert list(sc.units) == [U_Z]


@pytest.mark.parametrize("chunk", CHUNKS)
def test_backend_internal_rows_and_errors(chunk: int) -> None:
    rows = data_row(b"a") + data_row(b"b")
    reply = row_description() + rows + complete(b"SELECT 2") + error() + rfq()
    _, events, _ = run_backend(reply, chunk, [], internal=True)
    rd = len(row_description())
    assert without_needs(events) == [
        ("row", rd, ord("D")),
        ("row", rd + len(data_row(b"a")), ord("D")),
        ("error", rd + len(rows) + len(complete(b"SELECT 2")), ord("E")),
        ("ready", len(reply), TX_IDLE),
    ]


def test_backend_internal_error_precedes_units() -> None:
    sc = BackendScanner()
    sc.internal = True
    sc.units = deque([U_PARSE, U_Z])
    buf = bytearray(error())
    assert sc.scan(buf, 0, len(buf)) == 0
    assert sc.event == EV_ERROR
    assert list(sc.units) == [U_PARSE, U_Z]


def test_backend_internal_incomplete_row_needs() -> None:
    frame = data_row(b"hello")
    sc = BackendScanner()
    sc.internal = True
    buf = bytearray(frame[:-1])
    assert sc.scan(buf, 0, len(buf)) == 0
    assert sc.event == EV_NEED
    assert sc.need == len(frame)


def test_backend_rows_stream_when_not_internal() -> None:
    frame = data_row(b"x" * 100)
    sc = BackendScanner()
    sc.units = deque([U_EXECUTE, U_Z])
    buf = bytearray(frame[:50])
    assert sc.scan(buf, 0, len(buf)) == 50
    assert sc.event == EV_NONE
    assert sc.skip == len(frame) - 50


def test_backend_copy_in_flag() -> None:
    sc = BackendScanner()
    sc.units = deque([U_EXECUTE, U_Z])
    buf = bytearray(m.frame(b"G", struct.pack("!bH", 0, 0)))
    sc.scan(buf, 0, len(buf))
    assert sc.copy_in
    assert list(sc.units) == [U_EXECUTE, U_Z]


def test_backend_bad_length() -> None:
    sc = BackendScanner()
    sc.units = deque([U_PARSE])
    buf = bytearray(b"1" + struct.pack("!I", 2))
    with pytest.raises(FrameError):
        sc.scan(buf, 0, len(buf))


@pytest.mark.parametrize("chunk", CHUNKS)
def test_backend_client_round_trip(chunk: int) -> None:
    """Units recorded by the client scanner are consumed exactly by the server's replies."""
    client = m.query("select 1") + UNNAMED_PIPELINE + parse(b"", b"bad") + SYNC
    csc, _, _ = run_client(client, chunk)
    units = list(csc.units)
    assert units == [U_Z, U_PARSE, U_BIND, U_DESCRIBE, U_EXECUTE, U_Z, U_PARSE, U_Z]
    reply = (
        row_description()
        + data_row(b"1")
        + complete(b"SELECT 1")
        + rfq()
        + PIPELINE_REPLY
        + error()
        + rfq()
    )
    sc, events, _ = run_backend(reply, chunk, units)
    first = len(row_description() + data_row(b"1") + complete(b"SELECT 1") + rfq())
    second = first + len(PIPELINE_REPLY)
    assert without_needs(events) == [
        ("ready", first, TX_IDLE),
        ("ready", second, TX_IDLE),
        ("unit", second, ord("E")),
        ("ready", len(reply), TX_IDLE),
    ]
    assert sc.units is not None and list(sc.units) == []


def test_client_unnamed_parses_settle_in_reply_order() -> None:
    """Each unnamed Parse has a U_UPARSE unit, popped without a callback on ParseComplete: the
    records whose unit is gone were accepted, the refused or skipped ones are said so."""
    sc = ClientScanner(LIMIT)
    sc.rename = True
    a, b, c = parse(b"", b"select 'a'"), parse(b"", b"select 'b'"), parse(b"", b"select 'c'")
    data = bytearray(a + SYNC + b + SYNC + c + SYNC)
    sc.scan(data, 0, len(data))
    assert list(sc.units) == [U_UPARSE, U_Z, U_UPARSE, U_Z, U_UPARSE, U_Z]
    assert len(sc.unnamed_fifo) == 3
    sc.units.popleft()  # ParseComplete for a (the backend pops it inline)
    sc.units.popleft()  # its ReadyForQuery
    sc.units.popleft()  # b fails: the error handler pops its unit, then says so
    sc.unnamed_refused(answered=True)
    assert sc.unnamed is None  # a was accepted, then b's failure dropped it
    sc.units.popleft()  # b's ReadyForQuery
    sc.settle_unnamed()  # c still owed: nothing more settles
    assert len(sc.unnamed_fifo) == 1
    sc.units.popleft()  # ParseComplete for c
    sc.settle_unnamed()
    assert sc.unnamed is not None and sc.unnamed[0] == c and not sc.unnamed_fifo


def test_client_skipped_unnamed_parse_keeps_the_one_before() -> None:
    sc = ClientScanner(LIMIT)
    sc.rename = True
    a, b = parse(b"", b"select 'a'"), parse(b"", b"select 'b'")
    data = bytearray(a + SYNC + bind(b"", b"", b"1") + b + SYNC)  # the Bind will fail
    sc.scan(data, 0, len(data))
    sc.units.popleft()  # ParseComplete for a
    sc.units.popleft()  # ReadyForQuery
    sc.units.popleft()  # the Bind fails; the server skips b
    sc.units.popleft()
    sc.unnamed_refused(answered=False)
    assert sc.unnamed is not None and sc.unnamed[0] == a


def test_client_unnamed_parse_too_long_to_keep_still_marks_its_binds() -> None:
    """A Parse streamed through (longer than the scanner looks into) is not given again
    elsewhere, but each Bind of it on this server connection is judged unseen."""
    sc = ClientScanner(4 * LIMIT)
    sc.rename = True
    big = parse(b"", b"select " + b"1" * (INSPECT_LIMIT + 10))
    data = bytearray(big[:INSPECT_LIMIT])
    sc.scan(data, 0, len(data))  # as much as is looked into: the rest streams
    assert sc.unnamed_fifo and sc.unnamed_fifo[-1][0] is None
    sc.units.clear()  # answered
    sc.settle_unnamed()
    assert sc.unnamed is not None and sc.unnamed[0] is None
    assert sc.unnamed_flags == SQL_ALL


@pytest.mark.parametrize("chunk", CHUNKS)
def test_client_repeated_unnamed_parse_is_judged_as_its_text(chunk: int) -> None:
    """A driver's unnamed Parse of the text it sent last is recorded without classifying it
    again only when that text is harmless: a repeated SET still marks every time, and a text of
    the same length that differs is classified afresh."""
    harmless, setter, other = b"select $1::int", b"SET a.b = '1'", b"select f(1)"
    assert len(harmless) != len(setter)
    same_len = b"SET a.b TO '1'"[: len(harmless)]
    assert len(same_len) == len(harmless) and same_len != harmless
    batch = parse(b"", harmless) + bind(b"", b"", b"1") + execute() + SYNC
    sc, _, _ = run_client(batch + batch + batch, chunk, rename=True)
    assert sc.dirty == 0
    assert sc.unnamed_fifo is not None and [r[1] for r in sc.unnamed_fifo] == [0, 0, 0]
    frames = {id(r[0]) for r in sc.unnamed_fifo}
    assert len(frames) == 1  # one copy of the text for all three
    sc.units.clear()
    sc.settle_unnamed()
    assert sc.unnamed is not None and sc.unnamed[1] == 0

    # Settled harmless text, then a different text of the same length: classified.
    sc, _, _ = run_client(parse(b"", same_len) + SYNC, chunk, sc)
    assert sc.dirty & SQL_SESSION
    assert sc.unnamed_fifo[-1][1] != 0

    for text in (setter, other):
        sc = ClientScanner(LIMIT)
        sc.rename = True
        for _ in range(3):
            sc.dirty = 0
            sc, _, _ = run_client(parse(b"", text) + SYNC, chunk, sc)
            sc.units.clear()
            sc.settle_unnamed()
            assert sc.dirty & SQL_SESSION, text
            assert sc.unnamed is not None and sc.unnamed[1] != 0
