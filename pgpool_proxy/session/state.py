"""Session state the proxy learns from the server: the probe query, what its rows mean, and the
statements that reset and replay a session.

After a transaction whose statements may have changed the session (see protocol.sqlscan), the
proxy asks the server, in one query, what the session now holds: the values of the settings the
text named (custom ones such as `app.tenant` and `role` included: `pg_settings` shows neither),
every setting changed in the session when the text may have reset some, and whether it holds
anything that cannot move to another server connection (advisory locks, LISTEN channels, WITH
HOLD cursors, SQL-level prepared statements, temporary tables). Settings are then replayed
wherever the client goes next; the rest pins the client to this connection until it is gone.

Every statement here runs in the client's session, under its search_path: a client may define
`evil.=(text, text)` and put `evil` before `pg_catalog`. So every function, relation, type and
operator is written with its schema (`OPERATOR(pg_catalog.=)`), and nothing resolves through the
path. tests/integration/test_session_isolation.py runs the probe under such a schema.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ..protocol.messages import quote_ident, quote_literal

# Per-transaction settings that appear with source 'session' but are not session state.
_NOT_SESSION = "'{transaction_isolation,transaction_read_only,transaction_deferrable}'"

_EQ = "OPERATOR(pg_catalog.=)"
_PLUS = "OPERATOR(pg_catalog.+)"
_SETTINGS = (
    "SELECT 's', name, setting FROM pg_catalog.pg_settings "
    f"WHERE source {_EQ} 'session' "
    f"AND name OPERATOR(pg_catalog.<>) ALL ({_NOT_SESSION}::pg_catalog.text[])"
)
# The temporary-table count scans pg_class only once the session has a temporary schema.
_PINS = (
    "SELECT 'p', ("
    "(SELECT pg_catalog.count(*) FROM pg_catalog.pg_locks "
    f"WHERE locktype {_EQ} 'advisory' AND pid {_EQ} pg_catalog.pg_backend_pid())"
    f" {_PLUS} (SELECT pg_catalog.count(*) FROM pg_catalog.pg_listening_channels())"
    f" {_PLUS} (SELECT pg_catalog.count(*) FROM pg_catalog.pg_cursors WHERE is_holdable)"
    f" {_PLUS} (SELECT pg_catalog.count(*) FROM pg_catalog.pg_prepared_statements "
    "WHERE from_sql)"
    f" {_PLUS} (CASE WHEN pg_catalog.pg_my_temp_schema() {_EQ} 0::pg_catalog.oid THEN 0 "
    "ELSE (SELECT pg_catalog.count(*) FROM pg_catalog.pg_class "
    f"WHERE relnamespace {_EQ} pg_catalog.pg_my_temp_schema()) END)"
    ")::pg_catalog.text, NULL"
)
_STATEMENTS = "SELECT 'x', name, NULL FROM pg_catalog.pg_prepared_statements WHERE NOT from_sql"

# Read by name on every settings probe: no view lists them, and row-level security is often
# keyed on them (SET ROLE, SET SESSION AUTHORIZATION).
ALWAYS_READ = ("session_authorization", "role")
# How many settings by name one probe reads at most (the rest are left to a reset).
MAX_READ = 64

# Before another client may use a session that ran code the proxy could not see into: every
# setting back to the connection's own, custom ones included. RESET ALL leaves the role alone;
# SET SESSION AUTHORIZATION DEFAULT resets both.
RESET_SETTINGS = "SET SESSION AUTHORIZATION DEFAULT; RESET ALL"
# Before a session serves a client of another identity (several client users sharing one server
# login): everything DISCARD ALL drops except the proxy's own prepared statements.
RESET_IDENTITY = (
    "SET SESSION AUTHORIZATION DEFAULT; RESET ALL; CLOSE ALL; UNLISTEN *; "
    "SELECT pg_catalog.pg_advisory_unlock_all(); DISCARD TEMP; DISCARD SEQUENCES"
)


def probe_sql(
    *, full: bool, pins: bool, names: Iterable[str] = (), statements: bool = False
) -> str:
    """One query answering what the session holds.

    full: every setting changed in the session ('s' rows, from pg_settings);
    names: these settings' current values ('n' rows; NULL when the server has no such setting);
    pins: the count of objects tying the session to this connection ('p' row);
    statements: the protocol-level prepared statements the session holds ('x' rows).
    """
    parts = [_SETTINGS] if full else []
    parts.extend(
        f"SELECT 'n', {q}, pg_catalog.current_setting({q}, true)"
        for q in (quote_literal(n) for n in names)
    )
    if pins:
        parts.append(_PINS)
    if statements:
        parts.append(_STATEMENTS)
    if not parts:
        parts.append(_PINS)
    return " UNION ALL ".join(parts)


@dataclass(frozen=True, slots=True)
class SessionState:
    settings: dict[str, str]  # lower-case name -> value, for settings changed in the session
    named: dict[str, str | None]  # lower-case name -> current value (None: no such setting)
    pins: int | None  # objects that tie the session to this server connection, if asked
    statements: frozenset[str] | None  # names of protocol-level prepared statements, if asked


def read_probe(rows: list[list[str | None]], *, statements_asked: bool) -> SessionState:
    settings: dict[str, str] = {}
    named: dict[str, str | None] = {}
    pins: int | None = None
    statements: set[str] | None = set() if statements_asked else None
    for row in rows:
        if len(row) != 3:
            continue
        kind, a, b = row
        if kind == "s" and a is not None:
            settings[a.lower()] = b or ""
        elif kind == "n" and a is not None:
            named[a.lower()] = b
        elif kind == "p":
            pins = int(a or 0)
        elif kind == "x" and a is not None and statements is not None:
            statements.add(a)
    return SessionState(
        settings, named, pins, frozenset(statements) if statements is not None else None
    )


def _order(name: str) -> int:
    # Session authorization first: setting it resets the role, which must come after.
    return 0 if name == "session_authorization" else 1 if name == "role" else 2


def set_sql(values: dict[str, str]) -> str:
    """Statement giving each setting its value, with the server parsing the value as it parses a
    startup option (so a list such as search_path keeps its meaning)."""
    return "SELECT " + ", ".join(
        f"pg_catalog.set_config({quote_literal(k)}, {quote_literal(values[k])}, false)"
        for k in sorted(values, key=_order)
    )


def reset_sql(names: Iterable[str]) -> str:
    """Statements returning these settings to the connection's defaults."""
    return "; ".join(f"RESET {quote_ident(k)}" for k in sorted(names, key=_order))
