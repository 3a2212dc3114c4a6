"""Owns the admin console's command language: splitting a query into commands and parsing each.

Pure (no I/O). Keywords are case-insensitive, trailing semicolons are fine, and database names
may be double-quoted identifiers; SET values may be single-quoted literals.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from ..errors import SqlState

SHOW_TOPICS: Final = frozenset(
    {
        "HELP",
        "POOLS",
        "STATS",
        "STATS_TOTALS",
        "STATS_AVERAGES",
        "TOTALS",
        "CLIENTS",
        "SERVERS",
        "DATABASES",
        "CONFIG",
        "VERSION",
        "LISTS",
        "STATE",
        "USERS",
        "PEERS",
        # Refused with a reason (PgBouncer's online restart); parsed so the refusal says so.
        "FDS",
    }
)
# Commands that change something: admin_users only (stats_users may SHOW).
MUTATING: Final = frozenset({"PAUSE", "RESUME", "RELOAD", "RECONNECT", "KILL", "SHUTDOWN", "SET"})
# verb -> (least, most) arguments
_ARITY: Final = {
    "PAUSE": (0, 1),
    "RESUME": (0, 1),
    "RECONNECT": (0, 1),
    "KILL": (1, 1),
    "RELOAD": (0, 0),
    "SHUTDOWN": (0, 0),
}

_TOKEN_RE: Final = re.compile(
    # Possessive: console text never makes the matcher backtrack.
    r"\s*+(?:(?P<sq>'(?:[^']++|'')*+')|(?P<dq>\"(?:[^\"]++|\"\")*+\")|(?P<eq>=)"
    r"|(?P<word>[^\s='\"]++))"
)

HELP_TEXT: Final = """\
SHOW HELP|POOLS|STATS|STATS_TOTALS|STATS_AVERAGES|TOTALS|CLIENTS|SERVERS|DATABASES|CONFIG
SHOW VERSION|LISTS|STATE|USERS|PEERS
SET key = value
RELOAD
PAUSE [db]
RESUME [db]
RECONNECT [db]
KILL db
SHUTDOWN"""


class CommandError(Exception):
    """A command the console refuses; becomes an ErrorResponse (severity ERROR)."""

    def __init__(
        self, sqlstate: str, message: str, *, detail: str | None = None, hint: str | None = None
    ) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.message = message
        self.detail = detail
        self.hint = hint


@dataclass(frozen=True, slots=True)
class Command:
    verb: str  # upper case: SHOW, PAUSE, RESUME, RELOAD, RECONNECT, KILL, SHUTDOWN, SET
    arg: str | None = None  # SHOW topic (upper case), database name, or SET key (lower case)
    value: str | None = None  # SET value, unquoted
    text: str = ""  # the statement as sent, for messages

    @property
    def mutating(self) -> bool:
        return self.verb in MUTATING


def split_statements(query: str) -> list[str]:
    """Split on semicolons outside quotes; blank statements are dropped."""
    out: list[str] = []
    cur: list[str] = []
    quote = ""
    for ch in query:
        if quote:
            if ch == quote:
                quote = ""
        elif ch in ("'", '"'):
            quote = ch
        elif ch == ";":
            out.append("".join(cur))
            cur = []
            continue
        cur.append(ch)
    out.append("".join(cur))
    return [s.strip() for s in out if s.strip()]


def _tokens(text: str) -> list[tuple[str, str]]:
    """(kind, value) tokens: kind is "word", "ident" (double-quoted), "literal" or "="."""
    out: list[tuple[str, str]] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        match = _TOKEN_RE.match(text, pos)
        if match is None or match.end() == pos:
            raise _invalid(text)
        pos = match.end()
        if match["sq"] is not None:
            out.append(("literal", match["sq"][1:-1].replace("''", "'")))
        elif match["dq"] is not None:
            out.append(("ident", match["dq"][1:-1].replace('""', '"')))
        elif match["eq"] is not None:
            out.append(("=", "="))
        else:
            out.append(("word", match["word"]))
    return out


def _invalid(text: str) -> CommandError:
    return CommandError(
        SqlState.SYNTAX_ERROR, f"invalid command '{text}', use SHOW HELP;", hint="SHOW HELP;"
    )


def parse_command(text: str) -> Command:
    """One statement (no semicolons) -> Command; raises CommandError naming what is wrong."""
    text = text.strip().rstrip(";").strip()
    tokens = _tokens(text)
    if not tokens or tokens[0][0] != "word":
        raise _invalid(text)
    verb = tokens[0][1].upper()
    args = tokens[1:]
    if verb == "SHOW":
        if len(args) != 1 or args[0][0] != "word" or args[0][1].upper() not in SHOW_TOPICS:
            raise _invalid(text)
        return Command("SHOW", args[0][1].upper(), text=text)
    if verb == "SET":
        return _parse_set(text, args)
    arity = _ARITY.get(verb)
    if arity is None:
        raise _invalid(text)
    least, most = arity
    if not least <= len(args) <= most or any(kind not in ("word", "ident") for kind, _ in args):
        usage = {0: verb, 1: f"{verb} db"}[most] if least == most else f"{verb} [db]"
        raise CommandError(SqlState.SYNTAX_ERROR, f"syntax: {usage}", hint="SHOW HELP;")
    return Command(verb, args[0][1] if args else None, text=text)


def _parse_set(text: str, args: list[tuple[str, str]]) -> Command:
    # SET key = value | SET key TO value
    if (
        len(args) != 3
        or args[0][0] != "word"
        or not (args[1][0] == "=" or (args[1][0] == "word" and args[1][1].upper() == "TO"))
        or args[2][0] == "="
    ):
        raise CommandError(SqlState.SYNTAX_ERROR, "syntax: SET key = value", hint="SHOW CONFIG;")
    return Command("SET", args[0][1].lower(), args[2][1], text=text)
