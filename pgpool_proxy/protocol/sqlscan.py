"""Spotting SQL that changes session state, without decoding or copying the query text.

Transaction pooling hands a client a different server connection per transaction, so anything a
statement leaves behind in the session (a setting, an advisory lock, a temporary table) must be
noticed. The proxy does not parse SQL: it looks for the few keywords that can leave such state
and, when one appears, asks the server afterwards what the session really holds (see
`session.state`). A false positive costs one extra round trip; the checks below are tuned so the
common statements (SELECT, INSERT, UPDATE, BEGIN, COMMIT) cost two `find` calls.
"""

from __future__ import annotations

import re

# Flags returned by classify().
SQL_SESSION = 1  # may change settings or session objects: ask the server after the transaction
SQL_DEALLOCATE = 2  # a DEALLOCATE or DISCARD: prepared statements may be gone

# A statement (at the start of the text or after a ';') that can change session state.
_LEAD = re.compile(
    rb"(?:\s+|--[^\n]*(?:\n|$)|/\*.*?\*/)*"
    rb"(?:(set(?!\s+(?:local|transaction|constraints)\b)|reset|listen|unlisten|declare|prepare"
    rb"|close|drop|load|create\s+(?:or\s+replace\s+)?(?:(?:global|local)\s+)?temp(?:orary)?)|(deallocate|discard))\b",
    re.IGNORECASE | re.DOTALL,
)
# Functions with session effects, anywhere in the text (only looked for when there is a '(').
_FUNCS = re.compile(rb"advisory|set_config", re.IGNORECASE)

# How a triggering statement can start: whitespace or a comment (then the regex decides), or the
# first two letters of a keyword above. SET is told from SELECT/SHOW by its third letter.
_SPACE = frozenset(b" \t\r\n\f\v-/")
_PREFIXES = frozenset(
    (a << 8) | b
    for a, b in (b"se", b"re", b"li", b"un", b"de", b"di", b"pr", b"cl", b"dr", b"lo", b"cr")
)
_SEMICOLON = ord(";")
_PAREN = ord("(")


def _lead_flags(buf: bytes | bytearray, p: int, end: int) -> int:
    c = buf[p]
    if c not in _SPACE:
        if end - p < 3 or ((c | 0x20) << 8) | (buf[p + 1] | 0x20) not in _PREFIXES:
            return 0
        if c | 0x20 == 0x73 and buf[p + 2] | 0x20 != 0x74:  # "se" but not "set": SELECT
            return 0
    m = _LEAD.match(buf, p, end)
    if m is None:
        return 0
    return SQL_SESSION | SQL_DEALLOCATE if m.group(2) else SQL_SESSION


def classify(buf: bytes | bytearray, start: int, end: int) -> int:
    """Flags for the SQL text in buf[start:end] (no NUL inside the range)."""
    flags = 0
    p = start
    while p < end:
        flags |= _lead_flags(buf, p, end)
        i = buf.find(_SEMICOLON, p, end)
        if i < 0:
            break
        p = i + 1
    if (
        not flags & SQL_SESSION
        and buf.find(_PAREN, start, end) >= 0
        and _FUNCS.search(buf, start, end)
    ):
        flags |= SQL_SESSION
    return flags


_DEALLOCATE = re.compile(
    r"\s*deallocate\s+(?:prepare\s+)?(?:(all)|\"((?:[^\"]|\"\")+)\"|([^\s;\"]+))\s*;?\s*",
    re.IGNORECASE,
)


_DROPS_ALL = re.compile(r"(?:^|;)\s*(?:discard\s+all|deallocate\s+(?:prepare\s+)?all)\b", re.I)


def drops_all_statements(sql: str) -> bool:
    """True when the text runs DISCARD ALL or DEALLOCATE ALL."""
    return _DROPS_ALL.search(sql) is not None


def parse_deallocate(sql: str) -> tuple[bool, str] | None:
    """For a text that is exactly one DEALLOCATE: (is ALL, name); else None."""
    m = _DEALLOCATE.fullmatch(sql)
    if m is None:
        return None
    if m.group(1):
        return True, ""
    if m.group(2) is not None:
        return False, m.group(2).replace('""', '"')
    # An unquoted name folds to lower case as PostgreSQL folds identifiers: ASCII letters only.
    return False, m.group(3).translate(_ASCII_LOWER)


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
