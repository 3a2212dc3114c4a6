"""Sans-IO tests of protocol.sqlscan: which SQL texts are flagged as changing session state or
dropping prepared statements, and the DEALLOCATE / DISCARD ALL parsers."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgpool_proxy.protocol import sqlscan
from pgpool_proxy.protocol.deallocate import drops_all_statements, parse_deallocate
from pgpool_proxy.protocol.sqlscan import classify, setting_names
from pgpool_proxy.protocol.sqltables import (
    CLASSIFY_LIMIT,
    MAX_NAMES,
    SQL_ALL,
    SQL_DDL,
    SQL_DEALLOCATE,
    SQL_FULL,
    SQL_OPAQUE,
    SQL_PATH,
    SQL_PINS,
    SQL_SESSION,
    SQL_SETTINGS,
)

S = SQL_SESSION
ST = SQL_SESSION | SQL_SETTINGS  # sets settings the text names
F = ST | SQL_FULL  # may reset settings: read them all
P = SQL_SESSION | SQL_PINS  # may create or drop what pins a session
D = SQL_SESSION | SQL_DEALLOCATE | SQL_PINS
PD = P | SQL_DDL  # creates or drops: pins, and shared statements are planned afresh after it
X = SQL_SESSION | SQL_PINS | SQL_SETTINGS | SQL_OPAQUE  # runs code the proxy cannot see
A = SQL_ALL

CASES: list[tuple[str, int]] = [
    # Settings.
    ("SET x=1", ST),
    ("set x = 1", ST),
    ("Set search_path TO a, b", ST),
    (" SET x=1", ST),
    ("SET\tx=1", ST),
    ("SET/**/x=1", ST),
    ("set", F),
    ("SET LOCAL x=1", 0),
    ("set local x to 1", 0),
    ("SET\nLOCAL x=1", 0),
    ("SET LOCAL search_path = a", SQL_PATH),
    ("set local schema 'a'", SQL_PATH),
    ("SET LOCAL search_path_x = a", 0),
    ("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", 0),
    ("SET CONSTRAINTS ALL DEFERRED", 0),
    ("SET SESSION x=1", ST),
    ("SET SESSION AUTHORIZATION bob", ST),
    ("SET SESSION AUTHORIZATION DEFAULT", F),
    ("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY", F),
    ("SET ROLE bob", ST),
    ("SET x TO DEFAULT", F),
    ("SET x = default", F),
    # Not the LOCAL / TRANSACTION keywords, only names that start with them.
    ("SET LOCALE=1", ST),
    ("set transactionx=1", ST),
    ("RESET x", F),
    ("RESET ALL", F),
    ("reset", F),
    # Statements that drop prepared statements.
    ("DISCARD ALL", D | SQL_SETTINGS | SQL_FULL),
    ("discard plans", D | SQL_SETTINGS | SQL_FULL),
    ("DEALLOCATE x", D),
    ("deallocate all", D),
    ("DEALLOCATE PREPARE x", D),
    # Session objects.
    ("LISTEN ch", P),
    ("UNLISTEN *", P),
    ("DECLARE c CURSOR WITH HOLD FOR SELECT 1", P),
    # PREPARE: the statement runs later where the proxy cannot judge it (EXPLAIN EXECUTE, Bind).
    ("PREPARE p AS SELECT 1", X),
    ("CLOSE c", P),
    ("DROP TABLE t", PD),
    ("CREATE TEMP TABLE t(a int)", PD),
    ("CREATE TEMPORARY TABLE t(a int)", PD),
    ("create local temporary table t(a int)", PD),
    ("CREATE TEMP SEQUENCE s", PD),
    # Any CREATE: with pg_temp first in search_path a plain CREATE TABLE makes a temporary one.
    ("CREATE TABLE t(a int)", PD),
    ("CREATE TABLE pg_temp.t(a int)", PD),
    ('CREATE TABLE "pg_temp".t(a int)', PD),
    # Schema changes: shared statements are planned afresh after them (nothing to check).
    ("ALTER TABLE t ADD COLUMN c int", SQL_DDL),
    ("alter type t add attribute c text", SQL_DDL),
    ("  /* x */ ALTER TABLE t ALTER COLUMN b TYPE text", SQL_DDL),
    ("SELECT 1; ALTER TABLE t RENAME TO u", SQL_DDL),
    ("SELECT * INTO TEMP t FROM x", P),
    ("SELECT * INTO TEMPORARY TABLE t FROM x", P),
    ("select * into t from x", P),
    ("WITH q AS (SELECT 1) SELECT * INTO TEMP t FROM q", P),
    ("INSERT INTO t VALUES (1)", 0),
    ("INSERT INTO t SELECT * FROM u", 0),
    # Code the proxy cannot see into.
    ("LOAD 'auto_explain'", A),
    ("DO $$BEGIN PERFORM set_config('a.b', 'c', false); END$$", A),
    ("do 'begin perform pg_advisory_lock(1); end'", A),
    ("CALL p(1)", A),
    ("EXECUTE stmt(1)", A),
    ("SELECT my_func(1)", X),
    ("SELECT public.lower('x')", X),
    ("SELECT \"lower\"('x')", X),
    ("SELECT U&\"set\\005Fconfig\"('a', 'b', false)", X | SQL_FULL),
    ('SELECT U&"pg_adv\\0069sory_lock"(1)', X | SQL_FULL),
    ("select set_config($1, 'x', false)", X | SQL_FULL),
    ("VACUUMX", A),
    ("", 0),
    # Comments before the keyword.
    ("/* x */ SET x=1", ST),
    ("-- c\nSET x=1", ST),
    # PostgreSQL ends a -- comment at CR as well.
    ("-- c\rSET search_path = evil", ST),
    ("/* a */ /* b */ reset all", F),
    ("/* a /* nested */ b */ SET x=1", ST),
    ("/* a /* nested */ SET x=1 */ select 1", 0),
    ("-- c\nselect 1", 0),
    ("-- only a comment", 0),
    ("/* unterminated SET x=1", 0),
    # Multi-statement texts: every statement start is checked.
    ("select 1; set x=1", ST),
    ("select 1;set x=1", ST),
    ("select 1; reset x", F),
    ("select 'x'; -- a\n set y=1", ST),
    ("SELECT 'x';DISCARD ALL", D | SQL_SETTINGS | SQL_FULL),
    ("BEGIN; SET LOCAL x=1; COMMIT", 0),
    # Functions with session effects, anywhere.
    ("select pg_advisory_lock(1)", P),
    ("SELECT PG_ADVISORY_LOCK(1)", P),
    ("select pg_try_advisory_lock(1)", P),
    ("select pg_catalog.pg_advisory_lock(1)", P),
    ("select set_config('a','b',false)", ST),
    ("SELECT SET_CONFIG('a','b',false)", ST),
    ("select set_config ('a','b',false)", ST),
    ("select pg_catalog.set_config('a.b','c',false)", ST),
    ("select 1 where (select set_config('a', 'b', false)) is null", ST),
    # Common statements: not flagged.
    ("SELECT 1", 0),
    ("  select 1", 0),
    ("\tSELECT 1", 0),
    ("\n" + " " * 40 + "SELECT 1", 0),
    ("UPDATE t SET a=1", 0),
    ("update t set a = 1 where b = 2", 0),
    ("DELETE FROM t", 0),
    ("BEGIN", 0),
    ("COMMIT", 0),
    ("ROLLBACK", 0),
    ("SHOW x", 0),
    ("LOCK TABLE t", 0),
    ("CLUSTER t", 0),
    ("SELECT settings FROM t", 0),
    ("select reset_count, setting from pg_settings", 0),
    ("select current_setting('a')", 0),
    ("SELECT 'pg_advisory_lock'", 0),
    ("SELECT count(*), max(a), now() FROM t WHERE b IN (1, 2) AND c = ANY($1)", 0),
    ("INSERT INTO h (tid, bid, aid, delta, mtime) VALUES (1, 2, 3, 4, CURRENT_TIMESTAMP)", 0),
    ("SELECT x::numeric(10,2), CAST(y AS varchar(3)) FROM t", 0),
    ("WITH q(a) AS (SELECT 1) SELECT * FROM q", 0),
    ("SELECT * FROM generate_series(1, 3) AS g(i)", 0),
    ('SELECT "t"."id" FROM "t" WHERE "t"."id" = $1', 0),
    ("select pg_catalog.lower('X')", 0),
    ("select $q$ SET x = 1; select f() $q$", 0),
    ("select E'\\' ; set x=1 --'", 0),
    # A keyword only counts where a statement starts, and never inside a literal.
    ("select 'reset'", 0),
    ("select 'set x=1'", 0),
    ("select 'a;reset'", 0),
    ("select 'a; set x'", 0),
    ("select 1 /* ; */", 0),
    ("select 'it''s; set x=1'", 0),
    # A backslash in a standard string: where it ends depends on standard_conforming_strings.
    ("select 'a\\'; set x=1 --'", A),
    # Found by tests/integration/test_session_attacks.py: each was a leak.
    # Custom settings named like the keywords that follow SET.
    ("SET local.tenant = 'A'", ST),
    ("SET transaction.tenant = 'A'", ST),
    ("SET constraints.x TO 1", ST),
    ("SET session.tenant = 'A'", ST),
    ("SET SESSION local.tenant = 'A'", ST),
    ("SET role.tenant = 'A'", ST),
    ("SET time.tenant = 'A'", ST),
    ("RESET local.tenant", F),
    # A comment between a function's name and its parenthesis (PostgreSQL drops comments).
    ("SELECT set_config/**/('a.b', 'A', false)", ST),
    ("SELECT set_config--x\n('a.b', 'A', false)", ST),
    ("SELECT my_func /* x */ (1)", X),
    ("SELECT pg_advisory_lock -- x\r(1)", P),
    ("SELECT pg_catalog/**/.set_config('a.b', 'A', false)", X | SQL_FULL),
    ("SELECT evil./**/set_config('a.b', 'A', false)", X),
    ("SELECT 1 INTO /**/ t", P),
    ("SELECT a /* not called */ FROM t", 0),
    # Calls right after ON and USING.
    ("SELECT 1 FROM a JOIN b ON set_config('a.b', 'A', false) <> ''", ST),
    ("DELETE FROM t USING set_config('a.b', 'A', false) s", ST),
    ("SELECT 1 FROM a JOIN b ON pg_advisory_lock(1) IS NOT NULL", P),
    ("SELECT 1 FROM a JOIN b USING (id)", 0),
    # SELECT ... INTO with a column named insert; WITH ... INSERT INTO costs a count.
    ("SELECT 1 AS insert INTO tt", P),
    ("WITH q AS (SELECT 1) INSERT INTO t SELECT * FROM q", P),
    # A byte of a multibyte character before a backslash (SJIS's second byte may be 0x5C).
    ("SELECT E'\x95\\'; SELECT set_config('a.b', 'A', false) -- '", A),
    # `seed` cannot be read back and set again: the random generator's state is opaque.
    ("SET seed = 0.5", A),
    ("SET SESSION seed TO 0.5", A),
    ("RESET seed", A),
    ("SELECT set_config('seed', '0.5', false)", X | SQL_FULL),
    ("SELECT setseed(0.42)", X),
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


def test_classify_start_offset() -> None:
    buf = b"SET x=1; select 1"
    assert classify(buf, 8, len(buf)) == 0
    assert classify(buf, 0, len(buf)) == ST


def test_classify_prefix_at_every_end_never_raises() -> None:
    """Every prefix of a tricky text (as when a Query arrives cut short)."""
    text = b"/* c */ SET x=1; -- d\nDISCARD ALL; select pg_advisory_lock(1); DO $x$ a $x$"
    for end in range(len(text) + 1):
        flags = classify(text, 0, end)
        assert 0 <= flags <= SQL_ALL | SQL_DEALLOCATE | SQL_DDL
    assert classify(text, 0, len(text)) == SQL_ALL | SQL_DEALLOCATE


@pytest.mark.parametrize(
    ("sql", "names"),
    [
        ("SET x=1", ["x"]),
        ("SET app.tenant = 'a'", ["app.tenant"]),
        ('SET "App"."Tenant" TO \'a\'', ["app.tenant"]),
        ("SET SESSION search_path = a", ["search_path"]),
        ("SET ROLE bob", ["role"]),
        ("RESET ROLE", ["role"]),
        ("SET SESSION AUTHORIZATION bob", ["session_authorization", "role"]),
        ("RESET SESSION AUTHORIZATION", ["session_authorization", "role"]),
        ("SET TIME ZONE 'UTC'", ["timezone"]),
        ("SET NAMES 'UTF8'", ["client_encoding"]),
        ("SET SCHEMA 'x'", ["search_path"]),
        ("select set_config('app.Tenant', $1, false)", ["app.tenant"]),
        ("select set_config('a.b', 'x', false), set_config('c.d', 'y', true)", ["a.b", "c.d"]),
        ("SET a.b = 1; SET a.b = 2; RESET c", ["a.b", "c"]),
        ("RESET ALL", []),
        ("select 1", []),
    ],
)
def test_setting_names(sql: str, names: list[str]) -> None:
    b = sql.encode()
    assert setting_names(b, 0, len(b)) == names


@pytest.mark.parametrize(
    ("sql", "names"),
    [
        ("SET local.tenant = 'A'", ["local.tenant"]),
        ("SET time.tenant = 'A'", ["time.tenant"]),
        ("SET role.x TO 'A'", ["role.x"]),
        ("SET SESSION session.x = 1", ["session.x"]),
        ("RESET transaction.x", ["transaction.x"]),
        ("SELECT set_config/**/('a.b', 'A', false)", ["a.b"]),
        ("SELECT 1 FROM a JOIN b ON set_config('a.b', 'A', false) <> ''", ["a.b"]),
    ],
)
def test_setting_names_of_keyword_like_and_hidden_settings(sql: str, names: list[str]) -> None:
    b = sql.encode()
    assert setting_names(b, 0, len(b)) == names


def test_long_qualified_name_is_opaque_at_bounded_cost() -> None:
    text = b"SELECT " + b'"a".' * 4000 + b"b("
    assert classify(text, 0, len(text)) & SQL_OPAQUE


def test_setting_names_bounded() -> None:
    sql = "; ".join(f"SET s.n{i} = 1" for i in range(MAX_NAMES + 10)).encode()
    assert len(setting_names(sql, 0, len(sql))) == MAX_NAMES


def test_text_over_the_limit_is_judged_unseen() -> None:
    sql = b"SELECT 1 " + b" " * CLASSIFY_LIMIT
    assert classify(sql, 0, len(sql)) == SQL_ALL
    assert setting_names(sql, 0, len(sql)) == []


# Texts built to make a backtracking scanner take exponential or quadratic time (the indented
# query froze the proxy before), each at the lexer's limit and far beyond it.
HOSTILE = [
    b"\n" + b" " * 40 + b"SELECT 1",
    b" " * CLASSIFY_LIMIT,
    b"\n \t" * (CLASSIFY_LIMIT // 3),
    b";/*" * (CLASSIFY_LIMIT // 3),
    b"/*" * (CLASSIFY_LIMIT // 2),
    b"/*" + b"*" * (CLASSIFY_LIMIT - 2),
    b"--" * (CLASSIFY_LIMIT // 2),
    b"--\n" * (CLASSIFY_LIMIT // 3),
    b";" * CLASSIFY_LIMIT,
    b"(" * CLASSIFY_LIMIT,
    b"f(" * (CLASSIFY_LIMIT // 2),
    b"a." * (CLASSIFY_LIMIT // 2),
    b"'" + b"''" * (CLASSIFY_LIMIT // 2 - 1),
    b"$a$" * (CLASSIFY_LIMIT // 3),
    b'"' * CLASSIFY_LIMIT,
    b"e'\\" * (CLASSIFY_LIMIT // 3),
    b"set " * (CLASSIFY_LIMIT // 4),
    b"into temp " * (CLASSIFY_LIMIT // 10),
    b"select set_config(" * (CLASSIFY_LIMIT // 18),
]


@pytest.mark.parametrize("text", HOSTILE, ids=lambda t: repr(t[:12]) + f"x{len(t)}")
@pytest.mark.parametrize("scale", [1, 64], ids=["at-limit", "64x"])
def test_classify_is_fast_on_hostile_text(text: bytes, scale: int) -> None:
    """Linear, and bounded: a text at the limit costs milliseconds, a longer one nothing more."""
    text = text * scale
    start = time.process_time()
    for _ in range(3):
        classify(text, 0, len(text))
        setting_names(text, 0, len(text))
    assert time.process_time() - start < 0.5


@given(st.binary(max_size=300))
@settings(max_examples=400, deadline=None)
def test_classify_total_on_any_bytes(data: bytes) -> None:
    flags = classify(data, 0, len(data))
    assert 0 <= flags <= SQL_ALL | SQL_DEALLOCATE | SQL_DDL
    assert classify(bytearray(data), 0, len(data)) == flags
    setting_names(data, 0, len(data))
    drops_all_statements(data.decode("utf-8", "replace"))
    parse_deallocate(data.decode("utf-8", "replace"))


_FRAGMENTS = [
    "SELECT 1",
    "set x = 1",
    "SET LOCAL y = 2",
    "reset all",
    "'it''s'",
    "E'\\''",
    "$$ ; $$",
    "/* ; */",
    "-- ;\n",
    "f(1)",
    "count(*)",
    "pg_advisory_lock(1)",
    '"q"',
    " ",
    "\n",
    ";",
    "into temp t",
    "pg_temp.t",
    "DO $$ x $$",
]


@given(st.lists(st.sampled_from(_FRAGMENTS), max_size=12))
@settings(max_examples=300, deadline=None)
def test_classify_never_misses_a_statement_after_a_semicolon(parts: list[str]) -> None:
    """Whatever precedes it, a SET that starts a statement is always flagged: a separate
    statement after text the lexer has closed (strings, comments and dollar quotes balanced)."""
    text = (" ".join(parts) + " ;\n SET app.tenant = 'a'").encode()
    flags = classify(text, 0, len(text))
    assert flags & SQL_SESSION
    if not flags & SQL_OPAQUE:
        assert "app.tenant" in setting_names(text, 0, len(text))


_FAST_TOKENS = [
    b"SELECT",
    b"select",
    b"SeLeCt",
    b"UPDATE",
    b"with",
    b"Values",
    b"End",
    b"endx",
    b"EXPLAIN",
    b"Into",
    b"INTO",
    b"inTo",
    b"iNt",
    b"tEmP",
    b"TEMP",
    b"TEM",
    b"tE",
    b"pg_temp",
    b"t",
    b"i",
    b"T",
    b"I",
    b"x",
    b"1",
    b"$1",
    b"$",
    b"$a$",
    b"-",
    b"--",
    b"/",
    b"/*",
    b"*/",
    b";",
    b"'",
    b'"',
    b"(",
    b"f(",
    b"\\",
    b"\xc3\xa9",
    b"set",
    b"SET x = 1",
    b" ",
    b"\n",
    b"\t",
]


@given(st.lists(st.sampled_from(_FAST_TOKENS), min_size=1, max_size=12))
@settings(max_examples=1500, deadline=None)
def test_fast_pattern_never_hides_what_the_full_pass_flags(parts: list[bytes]) -> None:
    """The C-speed pattern only settles texts the full pass would also find harmless: it may
    send a harmless text to the full pass, never a flagged one past it."""
    text = b"".join(parts)
    if sqlscan._FAST.fullmatch(text) is not None:
        assert sqlscan._scan(text, 0, len(text), None) == 0


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
        # Comments are lexed as PostgreSQL lexes them.
        ("/* c */ DISCARD ALL", True),
        ("-- DISCARD ALL", False),
        ("select $$; DISCARD ALL$$", False),
    ],
)
def test_drops_all_statements(sql: str, expected: bool) -> None:
    assert drops_all_statements(sql) is expected
