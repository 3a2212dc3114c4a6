"""DEALLOCATE and DISCARD texts, read by the proxy itself.

The proxy keeps the client's view of its prepared statements: a Query that classify() flags
SQL_DEALLOCATE, and the reset query run before a server connection changes hands, are read
here with the sqlscan lexer, to learn which statement they drop, or whether they drop them all.
"""

from __future__ import annotations

from .sqlscan import T_BC, T_CHAR, T_DQ, T_LC, T_QI, T_WORD, T_WS, TOKEN, comment_end, quoted
from .sqltables import CLASSIFY_LIMIT, MAX_STEPS


def _statements(sql: str) -> list[list[tuple[int, bytes]]] | None:
    """The text's statements as lists of (kind, token), comments and whitespace dropped; None
    when the text is too long to look into."""
    raw = sql.encode("utf-8", "surrogatepass")
    if len(raw) > CLASSIFY_LIMIT:
        return None
    out: list[list[tuple[int, bytes]]] = [[]]
    p, end = 0, len(raw)
    budget = MAX_STEPS
    while p < end:
        budget -= 1
        if budget < 0:
            return None
        m = TOKEN.match(raw, p, end)
        assert m is not None
        kind = m.lastindex or 0
        p = m.end()
        if kind == T_WS or kind == T_LC:
            continue
        if kind == T_BC:
            p = comment_end(raw, p, end)
            if p < 0:
                return None
            continue
        tok = m.group()
        if kind == T_DQ:
            close = raw.find(tok, p, end)
            p = end if close < 0 else close + len(tok)
        if kind == T_CHAR and tok == b";":
            out.append([])
            continue
        out[-1].append((kind, tok))
    return out


def deallocation(sql: str) -> tuple[tuple[bool, str] | None, bool]:
    """(parse_deallocate(sql), drops_all_statements(sql)), lexing the text once."""
    stmts = _statements(sql)
    return _parse_deallocate(sql, stmts), _drops_all(stmts)


def drops_all_statements(sql: str) -> bool:
    """True when the text runs DISCARD ALL or DEALLOCATE [PREPARE] ALL."""
    return _drops_all(_statements(sql))


def _drops_all(stmts: list[list[tuple[int, bytes]]] | None) -> bool:
    if stmts is None:
        return False
    for toks in stmts:
        words = [t.lower() if k == T_WORD else b"" for k, t in toks[:3]]
        if words[:2] == [b"discard", b"all"] and len(toks) == 2:
            return True
        if words[:1] == [b"deallocate"]:
            rest = words[2:] if words[1:2] == [b"prepare"] else words[1:]
            if rest == [b"all"] and len(toks) == len(words):
                return True
    return False


def parse_deallocate(sql: str) -> tuple[bool, str] | None:
    """For a text that is exactly one DEALLOCATE without comments: (is ALL, name); else None."""
    return _parse_deallocate(sql, _statements(sql))


def _parse_deallocate(
    sql: str, stmts: list[list[tuple[int, bytes]]] | None
) -> tuple[bool, str] | None:
    if "--" in sql or "/*" in sql:
        return None
    if stmts is None or not stmts[0] or any(stmts[1:2]) or len(stmts) > 2:
        return None
    toks = stmts[0]
    if toks[0][0] != T_WORD or toks[0][1].lower() != b"deallocate":
        return None
    rest = toks[1:]
    if len(rest) == 2 and rest[0][0] == T_WORD and rest[0][1].lower() == b"prepare":
        rest = rest[1:]
    if len(rest) != 1:
        return None
    kind, tok = rest[0]
    if kind == T_WORD:
        if tok.lower() == b"all":
            return True, ""
        # An unquoted name folds to lower case as PostgreSQL folds identifiers: ASCII only.
        return False, tok.decode("utf-8", "surrogatepass").translate(_ASCII_LOWER)
    if kind == T_QI and len(tok) > 2 and tok.endswith(b'"'):
        return False, quoted(tok).decode("utf-8", "surrogatepass")
    return None


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
