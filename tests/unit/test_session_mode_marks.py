"""Session mode (no renaming): a Bind runs again what its statement's Parse was judged to do, so
the session check after the Bind's transaction sees it; and the proxy's own statements go in a
batch that leaves the client's unnamed statement alone. Sans-IO: the client scanner fed whole
and byte by byte, and the batch's bytes decoded."""

from __future__ import annotations

import struct

import pytest

from pgpool_proxy.protocol import messages as m
from pgpool_proxy.protocol.client_scan import MAX_KEPT, ClientScanner
from pgpool_proxy.protocol.sqltables import SQL_ALL, SQL_FULL, SQL_SETTINGS
from tests.support import extproto as x
from tests.unit.test_framing import LIMIT, feed_client

CHUNKS = [1, 3, 10_000]


def scanner_after(data: bytes, chunk: int) -> ClientScanner:
    sc, _ = feed_client(data, chunk)
    return sc


def checked(sc: ClientScanner) -> None:
    """What the proxy's check does to the scanner: the session is known again."""
    sc.dirty = 0
    sc.names = []


def feed(sc: ClientScanner, data: bytes) -> None:
    buf = bytearray(data)
    assert sc.scan(buf, 0, len(buf)) == len(buf)


@pytest.mark.parametrize("chunk", CHUNKS)
def test_bind_of_an_unnamed_set_marks_again_after_the_check(chunk: int) -> None:
    sc = scanner_after(x.parse("", "SET application_name = 'x'") + x.SYNC, chunk)
    assert sc.dirty & SQL_SETTINGS and sc.names == ["application_name"]
    checked(sc)
    feed(sc, x.describe("S", "") + x.bind("") + x.execute() + x.SYNC)
    assert sc.dirty & SQL_SETTINGS and sc.names == ["application_name"]


def test_a_later_unnamed_parse_first_in_its_batch_replaces_the_marks() -> None:
    sc = scanner_after(x.parse("", "RESET ALL") + x.SYNC, 10_000)
    checked(sc)
    feed(sc, x.parse("", "SELECT $1::int") + x.SYNC)
    assert not sc.dirty
    feed(sc, x.bind("", ["1"]) + x.execute() + x.SYNC)
    assert not sc.dirty and sc.unnamed_names == []


def test_an_unnamed_parse_the_server_may_skip_keeps_the_marks_before_it() -> None:
    """After an Execute in the same batch, an error may make the server skip the Parse, and
    the statement before it (a SET) stays."""
    sc = scanner_after(x.parse("", "SET work_mem = '1MB'") + x.SYNC, 10_000)
    checked(sc)
    feed(sc, x.bind("") + x.execute() + x.parse("", "SELECT 1") + x.SYNC)
    checked(sc)
    feed(sc, x.bind("") + x.execute() + x.SYNC)
    assert sc.dirty & SQL_SETTINGS and sc.names == ["work_mem"]


@pytest.mark.parametrize("chunk", CHUNKS)
def test_bind_of_a_named_statement_that_resets_marks_it_and_no_other(chunk: int) -> None:
    sc = scanner_after(x.parse("reset", "RESET ALL") + x.parse("plain", "SELECT 1") + x.SYNC, chunk)
    checked(sc)
    feed(sc, x.bind("plain") + x.execute() + x.SYNC)
    assert not sc.dirty
    feed(sc, x.bind("reset") + x.execute() + x.SYNC)
    assert sc.dirty & SQL_FULL


def test_a_named_statement_keeps_its_marks_through_a_failed_reparse() -> None:
    """A Parse of a name in use fails (42P05) and the first statement stays: its marks too."""
    sc = scanner_after(x.parse("s", "SET work_mem = '1MB'") + x.SYNC, 10_000)
    feed(sc, x.parse("s", "SET search_path = public") + x.SYNC)
    checked(sc)
    feed(sc, x.bind("s") + x.execute() + x.SYNC)
    assert sc.dirty & SQL_SETTINGS and sorted(sc.names) == ["search_path", "work_mem"]


def test_past_max_kept_names_every_named_bind_counts_as_opaque() -> None:
    sc = ClientScanner(LIMIT)
    feed(sc, b"".join(x.parse(f"s{i}", "SET work_mem = '1MB'") for i in range(MAX_KEPT + 1)))
    feed(sc, x.SYNC)
    checked(sc)
    feed(sc, x.bind("anything") + x.execute() + x.SYNC)
    assert sc.dirty == SQL_ALL and sc.named_flags is None


def test_a_bind_whose_statement_name_is_not_all_here_marks_what_it_may_run() -> None:
    sc = scanner_after(x.parse("", "SET work_mem = '1MB'") + x.SYNC, 10_000)
    checked(sc)
    bind = x.bind("")
    buf = bytearray(bind[:6])  # header and the portal's terminator only
    sc.scan(buf, 0, len(buf))
    assert sc.dirty & SQL_SETTINGS


def test_transaction_mode_without_renaming_still_marks_named_binds_opaque() -> None:
    sc = ClientScanner(LIMIT)
    sc.opaque_binds = True
    feed(sc, x.parse("s", "SELECT 1") + x.SYNC)
    feed(sc, x.bind("s") + x.SYNC)
    assert sc.dirty == SQL_ALL
    checked(sc)
    feed(sc, x.bind("") + x.SYNC)
    assert not sc.dirty


def _messages(data: bytes) -> list[tuple[bytes, bytes]]:
    out = []
    pos = 0
    while pos < len(data):
        n = struct.unpack_from("!I", data, pos + 1)[0]
        out.append((data[pos : pos + 1], data[pos + 5 : pos + 1 + n]))
        pos += 1 + n
    return out


def test_internal_batch_never_touches_the_unnamed_statement() -> None:
    """Every Parse and Close names the proxy's own statement; the portal is the unnamed one
    (no portal outlives the client's transactions); one Sync ends it."""
    name = m.INTERNAL_STATEMENT + b"\0"
    msgs = _messages(m.internal_batch(["SELECT 1", "SELECT 'a;b'"]))
    assert [t for t, _ in msgs] == [b"C", *[b"P", b"B", b"E", b"C"] * 2, b"S"]
    for t, body in msgs:
        if t == b"C":
            assert body == b"S" + name
        elif t == b"P":
            assert body.startswith(name) and body.endswith(b"\0\0\0")
        elif t == b"B":
            assert body == b"\0" + name + b"\0\0" * 3
    assert [body[len(name) : -3] for t, body in msgs if t == b"P"] == [
        b"SELECT 1",
        b"SELECT 'a;b'",
    ]


def test_a_query_answered_after_a_later_unnamed_parse_was_scanned_leaves_its_marks() -> None:
    """Replies come after the scan: the Query's ReadyForQuery (which drops the unnamed statement
    of before it) must not drop the marks of the Parse sent after it."""
    sc = scanner_after(
        x.parse("", "SELECT 1") + x.SYNC + m.query("SELECT 2") + x.parse("", "RESET ALL") + x.SYNC,
        10_000,
    )
    sc.unnamed_query_ran()
    checked(sc)
    feed(sc, x.bind("") + x.execute() + x.SYNC)
    assert sc.dirty & SQL_FULL
