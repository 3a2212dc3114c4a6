"""Sans-IO tests of protocol.sqlscan: which SQL texts are flagged as changing session state or
dropping prepared statements, and the DEALLOCATE / DISCARD ALL parsers."""

from __future__ import annotations

import pytest

from pgpool_proxy.protocol.sqlscan import (
    SQL_DEALLOCATE,
    SQL_SESSION,
    classify,
    drops_all_statements,
    parse_deallocate,
)

S = SQL_SESSION
D = SQL_SESSION | SQL_DEALLOCATE

CASES: list[tuple[str, int]] = [
    # Settings.
    ("SET x=1", S),
    ("set x = 1", S),
    ("Set search_path TO a, b", S),
    (" SET x=1", S),
    ("SET\tx=1", S),
    ("SET/**/x=1", S),
    ("set", S),
    ("SET LOCAL x=1", 0),
    ("set local x to 1", 0),
    ("SET\nLOCAL x=1", 0),
    ("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", 0),
    ("SET CONSTRAINTS ALL DEFERRED", 0),
    ("SET SESSION x=1", S),
    ("SET SESSION AUTHORIZATION bob", S),
    ("SET ROLE bob", S),
    # Not the LOCAL / TRANSACTION keywords, only names that start with them.
    ("SET LOCALE=1", S),
    ("set transactionx=1", S),
    ("RESET x", S),
    ("RESET ALL", S),
    ("reset", S),
    # Statements that drop prepared statements.
    ("DISCARD ALL", D),
    ("discard plans", D),
    ("DISCARD TEMP", D),
    ("DEALLOCATE x", D),
    ("deallocate all", D),
    ("DEALLOCATE PREPARE x", D),
    # Session objects.
    ("LISTEN ch", S),
    ("UNLISTEN *", S),
    ("DECLARE c CURSOR WITH HOLD FOR SELECT 1", S),
    ("declare c cursor for select 1", S),
    ("PREPARE p AS SELECT 1", S),
    ("CLOSE c", S),
    ("CLOSE ALL", S),
    ("DROP TABLE t", S),
    ("LOAD 'auto_explain'", S),
    ("CREATE TEMP TABLE t(a int)", S),
    ("CREATE TEMPORARY TABLE t(a int)", S),
    ("CREATE GLOBAL TEMP TABLE t(a int)", S),
    ("create local temporary table t(a int)", S),
    ("CREATE TEMP SEQUENCE s", S),
    ("CREATE TABLE t(a int)", 0),
    ("CREATE UNLOGGED TABLE t(a int)", 0),
    # Comments before the keyword.
    ("/* x */ SET x=1", S),
    ("-- c\nSET x=1", S),
    ("/* a */ /* b */ reset all", S),
    ("/* a /* nested */ b */ SET x=1", S),
    ("-- c\nselect 1", 0),
    ("-- only a comment", 0),
    ("/* unterminated SET x=1", 0),
    # Multi-statement texts: every statement start is checked.
    ("select 1; set x=1", S),
    ("select 1;set x=1", S),
    ("select 1; reset x", S),
    ("select 'x'; -- a\n set y=1", S),
    ("SELECT 'x';DISCARD ALL", D),
    ("BEGIN; SET LOCAL x=1; COMMIT", 0),
    # Functions with session effects, anywhere.
    ("select pg_advisory_lock(1)", S),
    ("SELECT PG_ADVISORY_LOCK(1)", S),
    ("select pg_try_advisory_lock(1)", S),
    ("select set_config('a','b',false)", S),
    ("SELECT SET_CONFIG('a','b',false)", S),
    ("select set_config ('a','b',false)", S),
    # Common statements: not flagged.
    ("SELECT 1", 0),
    ("  select 1", 0),
    ("\tSELECT 1", 0),
    ("UPDATE t SET a=1", 0),
    ("update t set a = 1 where b = 2", 0),
    ("INSERT INTO t VALUES (1)", 0),
    ("DELETE FROM t", 0),
    ("BEGIN", 0),
    ("COMMIT", 0),
    ("ROLLBACK", 0),
    ("SHOW x", 0),
    ("LOCK TABLE t", 0),
    ("CLUSTER t", 0),
    ("SELECT settings FROM t", 0),
    ("select reset_count, setting from pg_settings", 0),
    ("SETX", 0),
    ("settings", 0),
    ("resetx", 0),
    ("se", 0),
    ("select current_setting('a')", 0),
    ("SELECT 'pg_advisory_lock'", 0),  # function name without '(' in the text
    # A keyword only counts where a statement starts: inside a literal it is not flagged...
    ("select 'reset'", 0),
    ("select 'set x=1'", 0),
    # ...unless a ';' inside the literal makes it look like a statement start (a false positive
    # that costs one probe round trip; the scanner does not track quotes).
    ("select 'a;reset'", S),
    ("select 'a; set x'", S),
    ("select 1 /* ; */", 0),
    ("", 0),
]


def _id(case: tuple[str, int]) -> str:
    return repr(case[0])


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_classify_whole(case: tuple[str, int]) -> None:
    sql, flags = case
    b = sql.encode()
    assert classify(b, 0, len(b)) == flags
    assert classify(bytearray(b), 0, len(b)) == flags


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_classify_within_frame_ignores_surrounding_bytes(case: tuple[str, int]) -> None:
    """classify looks at buf[start:end] only: a Query frame header before, and the NUL plus the
    next frame's bytes (garbage that would itself be flagged) after."""
    sql, flags = case
    head = b"Q\0\0\0\x10"
    tail = b"\0; set y=1; select pg_advisory_lock(1)"
    buf = bytearray(head + sql.encode() + tail)
    assert classify(buf, len(head), len(head) + len(sql.encode())) == flags


@pytest.mark.parametrize(
    ("text", "end", "flags"),
    [
        # The range ends in the middle of the keyword: too short to be SET.
        (b"set x=1", 2, 0),
        # The end of the range is the end of the text: SET at the end is a complete keyword.
        (b"SETX", 3, S),
        (b"SET LOCAL x=1", 3, S),
        (b"select 1; set x=1", 8, 0),
        (b"select f(1) pg_advisory_lock", 11, 0),
        (b"select pg_advisory_lock(1)", 23, 0),  # the '(' lies outside the range
    ],
)
def test_classify_respects_end(text: bytes, end: int, flags: int) -> None:
    assert classify(text, 0, end) == flags


def test_classify_start_offset() -> None:
    buf = b"SET x=1; select 1"
    assert classify(buf, 8, len(buf)) == 0
    assert classify(buf, 0, len(buf)) == S
    # A start in the middle of a word: the text from there is what is checked.
    buf2 = b"xxreset"
    assert classify(buf2, 2, len(buf2)) == S
    assert classify(buf2, 1, len(buf2)) == 0


def test_classify_prefix_at_every_end_never_raises() -> None:
    """Every prefix of a tricky text (as when a Query arrives cut short)."""
    text = b"/* c */ SET x=1; -- d\nDISCARD ALL; select pg_advisory_lock(1)"
    for end in range(len(text) + 1):
        flags = classify(text, 0, end)
        assert flags in (0, S, D)
    assert classify(text, 0, len(text)) == D


@pytest.mark.parametrize("sql", ["select Set_Config('a','b',false)", "select pg_adVisory_lock(1)"])
def test_classify_mixed_case_functions(sql: str) -> None:
    b = sql.encode()
    assert classify(b, 0, len(b)) == S


def test_classify_create_or_replace_temp_view() -> None:
    b = b"CREATE OR REPLACE TEMP VIEW v AS SELECT 1"
    assert classify(b, 0, len(b)) & S


@pytest.mark.xfail(
    strict=True,
    reason="known limit (README): SELECT ... INTO TEMP is not looked for, to keep the check of "
    "every SELECT to two byte searches; use CREATE TEMP TABLE ... AS",
)
@pytest.mark.parametrize(
    "sql", ["SELECT * INTO TEMP t FROM x", "SELECT * INTO TEMPORARY TABLE t FROM x"]
)
def test_classify_select_into_temp(sql: str) -> None:
    b = sql.encode()
    assert classify(b, 0, len(b)) & S


# --- parse_deallocate ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("DEALLOCATE x", (False, "x")),
        ("deallocate MyStmt", (False, "mystmt")),
        ('DEALLOCATE "MyStmt"', (False, "MyStmt")),
        ('DEALLOCATE "a""b"', (False, 'a"b')),
        ('DEALLOCATE """"', (False, '"')),
        ('DEALLOCATE "a;b"', (False, "a;b")),
        ('DEALLOCATE "with space"', (False, "with space")),
        ('DEALLOCATE "all"', (False, "all")),
        ("DEALLOCATE PREPARE x", (False, "x")),
        ("Deallocate Prepare X", (False, "x")),
        ("DEALLOCATE ALL", (True, "")),
        ("deallocate prepare all", (True, "")),
        ("DEALLOCATE allx", (False, "allx")),
        # A statement may itself be called "prepare".
        ("DEALLOCATE prepare", (False, "prepare")),
        ("DEALLOCATE x;", (False, "x")),
        ("  DEALLOCATE x ; ", (False, "x")),
        ("DEALLOCATE x\n", (False, "x")),
        ("DEALLOCATE ALL;", (True, "")),
        # Not exactly one DEALLOCATE.
        ("DEALLOCATE x; SELECT 1", None),
        ("DEALLOCATE x; DEALLOCATE y", None),
        ("DEALLOCATE x;;", None),
        ("DEALLOCATE", None),
        ("DEALLOCATE ;", None),
        ('DEALLOCATE ""', None),
        ('DEALLOCATE "unterminated', None),
        ('DEALLOCATE "x" y', None),
        ("DEALLOCATE x y", None),
        ("DISCARD ALL", None),
        ("SELECT 1", None),
        # Comments are not understood: the query goes to the server unchanged.
        ("/* c */ DEALLOCATE x", None),
        ("DEALLOCATE x -- c", None),
    ],
)
def test_parse_deallocate(sql: str, expected: tuple[bool, str] | None) -> None:
    assert parse_deallocate(sql) == expected


def test_parse_deallocate_folds_only_ascii() -> None:
    assert parse_deallocate("DEALLOCATE ÄB") == (False, "Äb")


# --- drops_all_statements --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("DISCARD ALL", True),
        ("discard all;", True),
        ("DISCARD   ALL", True),
        ("SELECT 1; DISCARD ALL", True),
        ("select 1;discard all", True),
        ("BEGIN;\n  DISCARD ALL", True),
        ("DEALLOCATE ALL", True),
        ("deallocate prepare all", True),
        ("DEALLOCATE x", False),
        ('DEALLOCATE "all"', False),
        ("DISCARD PLANS", False),
        ("DISCARD TEMP", False),
        ("DISCARD ALLx", False),
        ("select 'x discard all'", False),
        ("SELECT 1", False),
        ("", False),
        # A leading comment hides it (observed behaviour; the post-transaction probe corrects
        # the proxy's view of the server's statements).
        ("/* c */ DISCARD ALL", False),
    ],
)
def test_drops_all_statements(sql: str, expected: bool) -> None:
    assert drops_all_statements(sql) is expected
