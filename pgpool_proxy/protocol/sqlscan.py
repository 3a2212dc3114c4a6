"""What a SQL text may leave behind in the session, found by a linear-time lexer.

Transaction pooling hands a client a different server connection per transaction, so anything a
statement leaves in the session (a setting, an advisory lock, a temporary table) must be noticed
before the connection serves anyone else. The proxy does not parse SQL. It lexes it the way
PostgreSQL's scanner does (strings, E'' and dollar quotes, quoted identifiers, nested comments,
`--` comments ended by CR or LF) and reads only statement heads and call sites. The rule is that
a text the lexer cannot vouch for costs a round trip, never a leak: a statement it does not know,
a call of a function it does not know, or anything ambiguous is flagged, and the session is
checked (see `session.state`) or reset before another client gets it.

Everything here is linear in the length of the text: one left-to-right pass of a tokenizer
built from possessive patterns, with `find` for comment and dollar-quote ends. Texts longer
than CLASSIFY_LIMIT are not lexed at all: they get every flag.
"""

from __future__ import annotations

import re

from .sqltables import (
    ADVISORY,
    CALL_STEPS,
    CLASSIFY_LIMIT,
    DDL_FIRST,
    LIST_AFTER,
    MAX_CHAIN,
    MAX_EVENTS,
    MAX_NAMES,
    MAX_STEPS,
    NOT_CALLS,
    OPAQUE_FLAGS,
    PIN_FIRST,
    PINS_FLAGS,
    PURE,
    SAFE_FIRST,
    SPECIAL_SET,
    SQL_ALL,
    SQL_DDL,
    SQL_DEALLOCATE,
    SQL_FULL,
    SQL_PATH,
    SQL_PINS,
    SQL_SESSION,
    SQL_SETTINGS,
    UNREPLAYABLE,
)

# One token per match. Each alternative is possessive (no backtracking), so the whole pass is
# linear. Group numbers are the token kinds below.
TOKEN = re.compile(
    rb"([ \t\n\r\f\v]++)"  # 1 whitespace
    rb"|(--[^\n\r]*+)"  # 2 line comment (PostgreSQL ends it at CR as well as LF)
    rb"|(/\*)"  # 3 block comment start (nesting handled by comment_end)
    rb"|([eE]'(?:[^'\\]++|\\.|'')*+'?)"  # 4 E'' string: backslash escapes
    rb"|('[^']*+(?:''[^']*+)*+'?)"  # 5 standard string
    rb"|([uU]&\"[^\"]*+(?:\"\"[^\"]*+)*+\"?)"  # 6 U&"" identifier (escapes: not decoded)
    rb"|(\"[^\"]*+(?:\"\"[^\"]*+)*+\"?)"  # 7 quoted identifier
    rb"|(\$(?:[A-Za-z_\x80-\xff][A-Za-z0-9_\x80-\xff]*+)?\$)"  # 8 dollar quote start
    rb"|([A-Za-z_\x80-\xff][A-Za-z0-9_$\x80-\xff]*+)"  # 9 word
    rb"|([0-9][0-9A-Za-z_.]*+|\.[0-9][0-9A-Za-z_.]*+|\$[0-9]++)"  # 10 number or parameter
    rb"|((?:[+*<>=~!@#%^&|`?:\[\]{}\\]|-(?!-)|/(?!\*))++)"  # 11 operator run
    rb"|(.)",  # 12 any other single byte: ; ( ) , .
    re.DOTALL,
)
T_WS, T_LC, T_BC, T_ESTR, T_STR, T_UQI, T_QI, T_DQ, T_WORD = range(1, 10)
T_OP, T_CHAR = 11, 12
_COMMENT_EDGE = re.compile(rb"/\*|\*/")
_MB_BACKSLASH = re.compile(rb"[\x80-\xff]\\")
_SEMI, _LPAREN, _DOT, _COMMA = ord(";"), ord("("), ord("."), ord(",")

# Full passes remembered by text: drivers send the same statement texts again and again.
_CACHE_TEXT = 4096
_CACHE_SIZE = 4096
_cache: dict[bytes, int] = {}
_WS = re.compile(rb"[ \t\n\r\f\v]*+")
_WORD = re.compile(rb"[A-Za-z_\x80-\xff][A-Za-z0-9_$\x80-\xff]*+")
_HEAD_WORD = re.compile(rb"[ \t\n\r\f\v]*+([A-Za-z_\x80-\xff][A-Za-z0-9_$\x80-\xff]*+)")
_WS_CHARS = b" \t\n\r\f\v"
_WORD_BYTES = frozenset(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_$"
) | frozenset(range(0x80, 0x100))

# The full pass matches one of these at a time. Group 1 is a run of everything that cannot
# matter (whitespace, comments without nesting, strings without backslashes, names not called,
# numbers, operators), taken at C speed; the others are where Python looks. Every quantifier is
# possessive and every alternative starts differently, so matching is linear.
_W = rb"[ \t\n\r\f\v]"
_NAME = rb"(?:[A-Za-z_\x80-\xff][A-Za-z0-9_$\x80-\xff]*+|\"[^\"]*+(?:\"\"[^\"]*+)*+\")"
_CHAIN = _NAME + rb"(?:" + _W + rb"*+\." + _W + rb"*+(?:" + _NAME + rb"|\*))*+"
_NOTABLE = (
    rb"(?:(?i:into|temp|temporary|execute)(?![A-Za-z0-9_$\x80-\xff])|(?i:pg_temp)|[eE]'"
    rb"|[uU]&['\"])"
)
_INTERESTING = re.compile(
    rb"((?:[+*<>=~!@#%^&|`?:\[\]{},()\\ \t\n\r\f\v]++|-(?!-)|/(?!\*)"
    rb"|(?!" + _NOTABLE + rb")" + _CHAIN + rb"(?!" + _W + rb"*+(?:\(|/\*|--))"
    rb"|(?:[0-9]|\.[0-9])[0-9A-Za-z_.]*+|\$[0-9]++"
    rb"|'[^'\\]*+(?:''[^'\\]*+)*+'"
    rb"|[eE]'(?:[^'\\]++|\\.|'')*+'"
    rb"|--[^\n\r]*+"
    rb"|/\*(?:[^*/]++|\*(?!/)|/(?!\*))*+\*/"
    rb")++)"
    rb"|(;)"
    rb"|(" + _CHAIN + rb")" + _W + rb"*+\("
    rb"|(?!" + _NOTABLE + rb")(" + _CHAIN + rb")(?=" + _W + rb"*+(?:/\*|--))"
    rb"|((?i:into|temp|temporary|execute)(?![A-Za-z0-9_$\x80-\xff])|(?i:pg_temp)[A-Za-z0-9_$\x80-\xff]*+)"
    rb"|(/\*)"
    rb"|(\$(?:[A-Za-z_\x80-\xff][A-Za-z0-9_\x80-\xff]*+)?\$)"
    rb"|([eE]?'|[uU]&['\"]|\")"
    rb"|(.)",
    re.DOTALL,
)
# The literal first argument of set_config, followed by a comma.
_NAME_ARG = re.compile(_W + rb"*+('[^'\\]*+(?:''[^'\\]*+)*+')" + _W + rb"*+,")


# The common case at C speed: one statement that starts harmlessly and has no string, comment,
# quoted name, dollar quote, call, INTO or TEMP in it. Only the keyword folds case: the body
# spells both cases out, because a case-folding class costs a fold per byte (about half the
# match on a pgbench statement). Frequent keywords first: the alternation is tried in order.
_FAST_FIRST = (b"select", b"update", b"insert", b"delete", b"begin", b"commit", b"end")
_FAST = re.compile(
    rb"[ \t\n\r\f\v]*+(?i:"
    + b"|".join(
        [k for k in _FAST_FIRST if k in SAFE_FIRST]
        + sorted(SAFE_FIRST - {b"explain"} - set(_FAST_FIRST))
    )
    + rb")(?![A-Za-z0-9_$\x80-\xff])"
    rb"(?:[^('\"\\$/;\-iItT]++|-(?!-)|/(?!\*)|\$[0-9]|[iI](?![nN][tT][oO])|[tT](?![eE][mM][pP]))*+"
    rb"(?:;[ \t\n\r\f\v]*+)?"
)


def classify(buf: bytes | bytearray, start: int, end: int) -> int:
    """Flags for the SQL text in buf[start:end] (no NUL inside the range)."""
    if end - start > CLASSIFY_LIMIT:
        return SQL_ALL
    if _FAST.fullmatch(buf, start, end) is not None:
        return 0
    if end - start > _CACHE_TEXT:
        return _scan(buf, start, end, None)
    key = bytes(buf[start:end])
    flags = _cache.get(key)
    if flags is None:
        flags = _scan(buf, start, end, None)
        if len(_cache) >= _CACHE_SIZE:
            _cache.clear()
        _cache[key] = flags
    return flags


def clear_cache() -> None:
    """Forget the full passes remembered by text (tests time the pass itself)."""
    _cache.clear()


def setting_names(buf: bytes | bytearray, start: int, end: int) -> list[str]:
    """Lower-case names of the settings the text sets or resets by name (SET x, RESET x,
    set_config('x', ...)), plus role and session_authorization when it touches them."""
    names: list[str] = []
    if end - start <= CLASSIFY_LIMIT:
        _scan(buf, start, end, names)
    return names


def _scan(buf: bytes | bytearray, start: int, end: int, names: list[str] | None) -> int:
    """The full pass: C-speed runs over what cannot matter, Python only at statement starts,
    call sites, a few words, and quotes or comments the runs cannot take whole.

    Hot-path loop: kept in one function because it runs once per event of every text the fast
    pattern does not settle, and a call per event would cost about as much as the event; what
    happens at a statement head, a call site or a nested comment is in helpers already."""
    if _MB_BACKSLASH.search(buf, start, end) is not None:
        # In SJIS, BIG5, GBK, UHC, GB18030 and JOHAB a character's second byte may be 0x5C. The
        # server lexes after converting to UTF-8, so where a string ends is not what the bytes
        # say: the text is judged unseen.
        return SQL_ALL
    flags = 0
    # One budget for every place Python looks in this text: events of the main pass and the
    # tokens the look-aheads take (a statement's head, what follows a name and a comment).
    budget = [MAX_STEPS]
    first, into = _head(buf, start, end, names, budget)
    if first < 0:
        flags |= -first
    search = _INTERESTING.match
    # A '.' that no name or number took: what it qualifies (`s./**/f(`) is not known.
    dotted = False
    p = start
    while p < end:
        budget[0] -= 1
        if budget[0] < 0:
            return SQL_ALL  # a text built to keep Python busy: judged unseen, at bounded cost
        m = search(buf, p, end)
        assert m is not None
        kind = m.lastindex
        p = m.end()
        if kind == 1:
            continue
        if kind == 2:  # ';'
            flags |= _statement_end(first, into)
            first, into = _head(buf, p, end, names, budget)
            if first < 0:
                flags |= -first
            dotted = False
        elif kind == 3:  # a call
            budget[0] -= CALL_STEPS  # judging a call costs Python more than a token
            if dotted:
                flags |= OPAQUE_FLAGS
            else:
                flags |= _call_site(buf, start, m.start(), m.group(3), p, end, names)
            dotted = False
        elif kind == 4:  # a name, then a comment: PostgreSQL drops comments, so `f/**/(` is a call
            budget[0] -= CALL_STEPS
            after = _after_comments(buf, p, end, budget)
            if after < 0 or buf[after] == _DOT:
                flags |= OPAQUE_FLAGS | SQL_FULL
            elif buf[after] == _LPAREN:
                chain = m.group(4)
                if dotted:
                    flags |= OPAQUE_FLAGS
                else:
                    flags |= _call_site(buf, start, m.start(), chain, after + 1, end, names)
                dotted = False
        elif kind == 5:  # INTO, TEMP, pg_temp, EXECUTE...
            w = bytes(m.group()).lower()
            if w == b"into":
                into = True
            elif w == b"execute":
                # EXPLAIN EXECUTE, CREATE TABLE ... AS EXECUTE: a prepared statement runs, made
                # by PREPARE or by a protocol Parse (then named pgpool_N), judged by neither.
                flags |= OPAQUE_FLAGS
            else:
                flags |= PINS_FLAGS
        elif kind == 6:  # a block comment, which may nest
            p = comment_end(buf, p, end)
            if p < 0:
                return SQL_ALL
        elif kind == 7:  # a dollar quote
            close = buf.find(m.group(), p, end)
            p = end if close < 0 else close + len(m.group())
        elif kind == 8:
            # A string or name the runs could not take: with a backslash in a standard string
            # (where it ends depends on standard_conforming_strings, which the client controls),
            # U&"..." escapes, or unterminated. What follows cannot be trusted.
            flags |= OPAQUE_FLAGS | SQL_FULL
            t = TOKEN.match(buf, m.start(), end)
            assert t is not None
            p = t.end()
        elif buf[m.start()] == _DOT:
            dotted = True
    return flags | _statement_end(first, into)


def _after_comments(buf: bytes | bytearray, p: int, end: int, budget: list[int]) -> int:
    """Position of the first byte at or after p that is neither whitespace nor a comment; -1
    at the end of the text or when the comments are too many to follow at bounded cost."""
    while budget[0] > 0:
        budget[0] -= 1
        t = TOKEN.match(buf, p, end)
        if t is None:
            return -1
        kind = t.lastindex
        if kind == T_WS or kind == T_LC:
            p = t.end()
        elif kind == T_BC:
            p = comment_end(buf, t.end(), end)
            if p < 0:
                return -1
        else:
            return p
    return -1


def _head(
    buf: bytes | bytearray, p: int, end: int, names: list[str] | None, budget: list[int]
) -> tuple[int, bool]:
    """(kind of statement, INTO seen) for the statement starting at p. The kind is 1 for one
    that can change nothing by itself, 2 for SELECT-like (INTO matters), 0 for an empty one, or
    minus the flags of one that can."""
    m = _HEAD_WORD.match(buf, p, end)
    if m is not None:
        w = bytes(m.group(1)).lower()
        if w in SAFE_FIRST:
            if w == b"explain":
                return -PINS_FLAGS, False
            return (2 if w == b"select" or w == b"with" else 1), False
    head: list[tuple[int, bytes]] = []
    while p < end and len(head) < 8:
        budget[0] -= 1
        if budget[0] < 0:
            return -SQL_ALL, False
        t = TOKEN.match(buf, p, end)
        assert t is not None
        kind = t.lastindex or 0
        p = t.end()
        if kind == T_WS or kind == T_LC:
            continue
        if kind == T_BC:
            p = comment_end(buf, p, end)
            if p < 0:
                return -SQL_ALL, False
            continue
        tok = bytes(t.group())
        if kind == T_CHAR and tok == b";":
            break
        if kind == T_WORD:
            tok = tok.lower()
        elif kind == T_QI:
            tok = b'"' + quoted(tok)
        head.append((kind, tok))
    if not head:
        return 0, False
    kind, first = head[0]
    if kind == T_CHAR and first == b"(":
        return 2, False
    if kind != T_WORD:
        return -SQL_ALL, False
    if first in SAFE_FIRST:
        return (2 if first == b"select" or first == b"with" else 1), False
    return -_statement([t for _, t in head], names), False


def _statement_end(first: int, into: bool) -> int:
    # SELECT ... INTO creates a table: a temporary one, perhaps. INTO in a SELECT-like statement
    # may also be the target of a WITH ... INSERT INTO; telling them apart would take a parser
    # (a column may be named insert), so both cost a count of what the session holds.
    return PINS_FLAGS if first == 2 and into else 0


def _call_site(
    buf: bytes | bytearray,
    start: int,
    at: int,
    chain: bytes,
    after: int,
    end: int,
    names: list[str] | None,
) -> int:
    """Flags for `name(` at `at` (chain is the possibly qualified name; `after` follows '(')."""
    if len(chain) > MAX_CHAIN:
        return OPAQUE_FLAGS  # no name PostgreSQL accepts is this long: not worth taking apart
    if b'"' in chain:
        parts = [
            b'"' + quoted(t.group()) if t.lastindex == T_QI else bytes(t.group()).lower()
            for t in TOKEN.finditer(chain)
            if t.lastindex in (T_WORD, T_QI)
        ]
    else:
        parts = [x.strip(_WS_CHARS).lower() for x in bytes(chain).split(b".")]
    word = parts[-1]
    qual = parts[-2] if len(parts) > 1 else b""
    if _word_before(buf, start, at) in LIST_AFTER or (not qual and word in NOT_CALLS):
        return 0
    if len(parts) > 2 or (qual and qual != b"pg_catalog"):
        return OPAQUE_FLAGS
    if word in PURE:
        return 0
    if word in ADVISORY:
        return PINS_FLAGS
    if word == b"set_config":
        lit = _NAME_ARG.match(buf, after, end)
        if lit is None:
            # A name the proxy cannot read from the text (a parameter, an expression).
            return OPAQUE_FLAGS | SQL_FULL
        name = _literal(lit.group(1))
        if not name or _unreadable(name):
            return OPAQUE_FLAGS | SQL_FULL
        if names is not None:
            _add_name(names, name)
        return SQL_SESSION | SQL_SETTINGS
    return OPAQUE_FLAGS


def _word_before(buf: bytes | bytearray, start: int, at: int) -> bytes:
    """The word just before position at (within 64 bytes), lower-cased; "" when a comment may
    be near it (`--as` + newline + `f(`: the word is the comment's, not the statement's)."""
    seg = bytes(buf[max(start, at - 64) : at])
    if b"--" in seg or b"/*" in seg or b"*/" in seg:
        return b""
    seg = seg.rstrip(_WS_CHARS)
    i = len(seg)
    while i and seg[i - 1] in _WORD_BYTES:
        i -= 1
    return seg[i:].lower()


def comment_end(buf: bytes | bytearray, p: int, end: int) -> int:
    """End of a block comment whose opening ended at p (comments nest, as in PostgreSQL); -1
    when the nesting is too deep to follow at bounded cost."""
    depth = 1
    budget = MAX_EVENTS
    while depth:
        budget -= 1
        if budget < 0:
            return -1
        m = _COMMENT_EDGE.search(buf, p, end)
        if m is None:
            return end
        depth += 1 if buf[m.start()] == 0x2F else -1
        p = m.end()
    return p


def _statement(head: list[bytes], names: list[str] | None) -> int:
    """Flags for a statement whose first word is not one of the harmless ones."""
    first = head[0]
    if first == b"prepare":
        # The statement runs later by EXECUTE inside another text (EXPLAIN EXECUTE) or by a
        # protocol Bind of its name, judged by neither: the session is treated as having run
        # code the proxy could not see.
        return OPAQUE_FLAGS
    if first in DDL_FIRST:
        # A plan prepared before it may have another result now (link.prepared: epochs).
        return (PINS_FLAGS | SQL_DDL) if first in PIN_FIRST else SQL_DDL
    if first in PIN_FIRST:
        return PINS_FLAGS
    if first == b"set":
        return _set(head[1:], names)
    if first == b"reset":
        return _reset(head[1:], names)
    if first == b"discard":
        return SQL_SESSION | SQL_DEALLOCATE | SQL_PINS | SQL_SETTINGS | SQL_FULL
    if first == b"deallocate":
        return SQL_SESSION | SQL_DEALLOCATE | SQL_PINS
    # DO, CALL, EXECUTE, LOAD and anything the lexer does not know.
    return SQL_ALL


def _set(rest: list[bytes], names: list[str] | None) -> int:
    """SET ...: rest follows the SET keyword."""
    if rest[1:2] == [b"."]:
        # `SET local.tenant`, `SET time.x`: a custom setting named like a keyword.
        return _set_named(_dotted_name(rest), rest, names)
    second = rest[0] if rest else b""
    if second in (b"local", b"transaction", b"constraints"):
        if second == b"local" and rest[1:2] in ([b"search_path"], [b"schema"]):
            return SQL_PATH
        return 0  # over at the end of the transaction
    flags = SQL_SESSION | SQL_SETTINGS
    if second == b"session":
        rest = rest[1:]
        if rest[1:2] == [b"."]:
            return _set_named(_dotted_name(rest), rest, names)
        third = rest[0] if rest else b""
        if b"characteristics" in rest:
            # SET SESSION [SESSION] CHARACTERISTICS AS TRANSACTION ...: several settings.
            return flags | SQL_FULL
        if third == b"authorization":
            _add_names(names, (b"session_authorization", b"role"))
            return flags | (SQL_FULL if b"default" in rest else 0)
    special = SPECIAL_SET.get(rest[0] if rest else b"")
    if special is not None:
        _add_names(names, special)
        return flags | (SQL_FULL if b"default" in rest else 0)
    return _set_named(_dotted_name(rest), rest, names)


def _set_named(name: bytes, rest: list[bytes], names: list[str] | None) -> int:
    flags = SQL_SESSION | SQL_SETTINGS
    if not name:
        return flags | SQL_FULL  # a name the lexer cannot read: read every setting
    if _unreadable(name):
        return SQL_ALL
    _add_names(names, (name,))
    return flags | (SQL_FULL if b"default" in rest else 0)


def _reset(rest: list[bytes], names: list[str] | None) -> int:
    """RESET ...: rest follows the RESET keyword."""
    flags = SQL_SESSION | SQL_SETTINGS | SQL_FULL
    second = rest[0] if rest else b""
    if rest[1:2] == [b"."]:
        name = _dotted_name(rest)
        if _unreadable(name):
            return SQL_ALL
        if name:
            _add_names(names, (name,))
    elif second == b"session":
        _add_names(names, (b"session_authorization", b"role"))
    elif second in SPECIAL_SET:
        _add_names(names, SPECIAL_SET[second])
    elif second != b"all":
        name = _dotted_name(rest)
        if _unreadable(name):
            return SQL_ALL
        if name:
            _add_names(names, (name,))
    return flags


def _dotted_name(tokens: list[bytes]) -> bytes:
    """`a`, `a.b`, `"A"."b"` at the start of tokens, as PostgreSQL names the setting."""
    parts: list[bytes] = []
    expect_part = True
    for t in tokens:
        if expect_part:
            if t[:1] == b'"':
                parts.append(t[1:])
            elif _WORD.fullmatch(t):
                parts.append(t)
            else:
                return b""
            expect_part = False
        elif t == b".":
            expect_part = True
        else:
            break
    return b".".join(parts) if parts and not expect_part else b""


def quoted(tok: bytes | bytearray) -> bytes:
    body = bytes(tok[1:-1] if len(tok) > 1 and tok[-1] == 0x22 else tok[1:])
    return body.replace(b'""', b'"')


def _literal(tok: bytes | bytearray) -> bytes:
    raw = bytes(tok)
    if raw[:1] in (b"e", b"E"):
        if b"\\" in raw:
            return b""  # escapes: not worth decoding for a setting name
        raw = raw[1:]
    body = raw[1:-1] if len(raw) > 1 and raw.endswith(b"'") else raw[1:]
    return body.replace(b"''", b"'").lower()


def _unreadable(name: bytes) -> bool:
    """A setting name the proxy cannot read back by name: `seed`, or a non-ASCII one (whose
    bytes depend on the session's client_encoding, and which PostgreSQL folds as ASCII)."""
    return not name.isascii() or name.lower() in UNREPLAYABLE


def _add_name(names: list[str], name: bytes) -> None:
    if len(names) < MAX_NAMES:
        text = name.lower().decode("ascii", "replace")
        if text not in names:
            names.append(text)


def _add_names(names: list[str] | None, new: tuple[bytes, ...]) -> None:
    if names is not None:
        for n in new:
            _add_name(names, n)
