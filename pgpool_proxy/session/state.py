"""Session state the proxy learns from the server: the probe query and what its rows mean.

After a transaction whose statements may have changed the session (see protocol.sqlscan), the
proxy asks the server, in one query, which settings the session has changed and whether it holds
anything that cannot be moved to another server connection: advisory locks, LISTEN channels,
WITH HOLD cursors, SQL-level prepared statements, temporary tables. Settings are then replayed
wherever the client goes next; the rest pins the client to this connection until it is gone.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..protocol.messages import quote_literal

# Per-transaction settings that appear with source 'session' but are not session state.
_NOT_SESSION = "'transaction_isolation', 'transaction_read_only', 'transaction_deferrable'"

_SETTINGS = (
    "SELECT 's', name, setting FROM pg_catalog.pg_settings "
    f"WHERE source = 'session' AND name NOT IN ({_NOT_SESSION})"
)
_PINS = (
    "SELECT 'p', ("
    "(SELECT count(*) FROM pg_catalog.pg_locks "
    "WHERE locktype = 'advisory' AND pid = pg_catalog.pg_backend_pid())"
    " + (SELECT count(*) FROM pg_catalog.pg_listening_channels())"
    " + (SELECT count(*) FROM pg_catalog.pg_cursors WHERE is_holdable)"
    " + (SELECT count(*) FROM pg_catalog.pg_prepared_statements WHERE from_sql)"
    " + (SELECT count(*) FROM pg_catalog.pg_class "
    "WHERE relnamespace = pg_catalog.pg_my_temp_schema())"
    ")::text, NULL"
)
_STATEMENTS = "SELECT 'x', name, NULL FROM pg_catalog.pg_prepared_statements WHERE NOT from_sql"


def probe_sql(*, statements: bool) -> str:
    """One query answering: changed settings, pinning state, and (optionally) which
    protocol-level prepared statements the session holds."""
    parts = [_SETTINGS, _PINS]
    if statements:
        parts.append(_STATEMENTS)
    return " UNION ALL ".join(parts)


@dataclass(frozen=True, slots=True)
class SessionState:
    settings: dict[str, str]  # lower-case name -> value, for settings changed in the session
    pins: int  # objects that tie the session to this server connection
    statements: frozenset[str] | None  # names of protocol-level prepared statements, if asked


def read_probe(rows: list[list[str | None]], *, statements_asked: bool) -> SessionState:
    settings: dict[str, str] = {}
    pins = 0
    statements: set[str] | None = set() if statements_asked else None
    for row in rows:
        if len(row) != 3:
            continue
        kind, a, b = row
        if kind == "s" and a is not None:
            settings[a.lower()] = b or ""
        elif kind == "p":
            pins = int(a or 0)
        elif kind == "x" and a is not None and statements is not None:
            statements.add(a)
    return SessionState(settings, pins, frozenset(statements) if statements is not None else None)


def set_sql(values: dict[str, str]) -> str:
    """Statement giving each setting its value, with the server parsing the value as it parses a
    startup option (so a list such as search_path keeps its meaning)."""
    return "SELECT " + ", ".join(
        f"pg_catalog.set_config({quote_literal(k)}, {quote_literal(v)}, false)"
        for k, v in values.items()
    )
