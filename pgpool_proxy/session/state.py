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

import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ..protocol.messages import quote_ident, quote_literal

# Per-transaction settings that appear with source 'session' but are not session state.
_NOT_SESSION = "'{transaction_isolation,transaction_read_only,transaction_deferrable}'"

_EQ = "OPERATOR(pg_catalog.=)"
_PLUS = "OPERATOR(pg_catalog.+)"
_SETTINGS = (
    "SELECT 's', name, {value} FROM pg_catalog.pg_settings "
    f"WHERE source {_EQ} 'session' "
    f"AND name OPERATOR(pg_catalog.<>) ALL ({_NOT_SESSION}::pg_catalog.text[])"
)
# Temporary objects are counted by their dependency on the session's temporary schema: types,
# domains, functions and operators as well as relations (a temporary domain named `text` shadows
# the built-in type for whoever gets the session next). pg_depend is indexed on the referenced
# object, and nothing is scanned until the session has a temporary schema.
_PINS = (
    "SELECT 'p', ("
    "(SELECT pg_catalog.count(*) FROM pg_catalog.pg_locks "
    f"WHERE locktype {_EQ} 'advisory' AND pid {_EQ} pg_catalog.pg_backend_pid())"
    f" {_PLUS} (SELECT pg_catalog.count(*) FROM pg_catalog.pg_listening_channels())"
    f" {_PLUS} (SELECT pg_catalog.count(*) FROM pg_catalog.pg_cursors WHERE is_holdable)"
    f" {_PLUS} (SELECT pg_catalog.count(*) FROM pg_catalog.pg_prepared_statements "
    "WHERE from_sql)"
    f" {_PLUS} (CASE WHEN pg_catalog.pg_my_temp_schema() {_EQ} 0::pg_catalog.oid THEN 0 "
    "ELSE (SELECT pg_catalog.count(*) FROM pg_catalog.pg_depend "
    f"WHERE refclassid {_EQ} 'pg_catalog.pg_namespace'::pg_catalog.regclass "
    f"AND refobjid {_EQ} pg_catalog.pg_my_temp_schema()) END)"
    ")::pg_catalog.text, NULL"
)
_TIMEOUT_NAMES = "'{statement_timeout,lock_timeout}'::pg_catalog.text[]"
_TIMEOUTS = (
    f"SELECT 'u', n, pg_catalog.current_setting(n) FROM pg_catalog.unnest({_TIMEOUT_NAMES}) AS n"
)
_TIMEOUT_RESETS = (
    "SELECT 'w', name, reset_val FROM pg_catalog.pg_settings "
    f"WHERE name {_EQ} ANY ({_TIMEOUT_NAMES})"
)
_HEX = "pg_catalog.encode(pg_catalog.convert_to({}, 'UTF8'), 'hex')"
_STATEMENTS = "SELECT 'x', name, NULL FROM pg_catalog.pg_prepared_statements WHERE NOT from_sql"

# Read by name on every settings probe: no view lists them, and row-level security is often
# keyed on them (SET ROLE, SET SESSION AUTHORIZATION).
ALWAYS_READ = ("session_authorization", "role")
# How many settings by name one probe reads at most (the rest are left to a reset).
MAX_READ = 64

# Before another client may use a session that ran code the proxy could not see into: every
# setting back to the connection's own, custom ones included. RESET ALL leaves the role alone;
# SET SESSION AUTHORIZATION DEFAULT resets both. The random generator is seeded afresh: setseed()
# in the last client's code must not make the next client's random() predictable.
_RESET_SETTINGS = "SET SESSION AUTHORIZATION DEFAULT; RESET ALL"
# Before a session serves a client of another identity (several client users sharing one server
# login): everything DISCARD ALL drops except the proxy's own prepared statements.
_RESET_IDENTITY = (
    "SET SESSION AUTHORIZATION DEFAULT; RESET ALL; CLOSE ALL; UNLISTEN *; "
    "SELECT pg_catalog.pg_advisory_unlock_all(); DISCARD TEMP; DISCARD SEQUENCES; "
    # Statement texts show in pg_prepared_statements: another user must not read them.
    "DEALLOCATE ALL"
)
_SEED = secrets.SystemRandom()

# The proxy's own statements run in the client's session, under its statement_timeout and
# lock_timeout: a client that sets them to 1 ms must not make a check fail (and lose its pinned
# session) or a replay be refused. SET LOCAL lasts for the implicit transaction of the one Query.
UNTIMED_STATEMENTS = ("SET LOCAL statement_timeout = 0", "SET LOCAL lock_timeout = 0")
UNTIMED = "; ".join(UNTIMED_STATEMENTS) + "; "
# The same in an extended-protocol batch (BackendConnection.run_own with batch), which is
# no transaction block: there SET LOCAL draws a WARNING in the server's log each time, and
# set_config(..., true) does not. Its row has two columns, which read_probe passes over.
UNTIMED_EXTENDED = (
    "SELECT pg_catalog.set_config('statement_timeout', '0', true), "
    "pg_catalog.set_config('lock_timeout', '0', true)",
)


def reset_settings_sql() -> str:
    return f"{_RESET_SETTINGS}; {_reseed()}"


def reset_identity_sql() -> str:
    return f"{_RESET_IDENTITY}; {_reseed()}"


def _reseed() -> str:
    return f"SELECT pg_catalog.setseed({_SEED.uniform(-1.0, 1.0)!r})"


def probe_sql(
    *,
    full: bool,
    pins: bool,
    names: Iterable[str] = (),
    statements: bool = False,
    hex_values: bool = False,
    untimed: bool = False,
) -> str:
    """probe_statements as the text of one Query."""
    return "; ".join(
        probe_statements(
            full=full,
            pins=pins,
            names=names,
            statements=statements,
            hex_values=hex_values,
            untimed=UNTIMED_STATEMENTS if untimed else (),
        )
    )


def probe_statements(
    *,
    full: bool,
    pins: bool,
    names: Iterable[str] = (),
    statements: bool = False,
    hex_values: bool = False,
    untimed: Sequence[str] = (),
) -> list[str]:
    """The statements of one check answering what the session holds (one unless `untimed`),
    to run in one transaction.

    full: every setting changed in the session ('s' rows, from pg_settings);
    names: these settings' current values ('n' rows; NULL when the server has no such setting);
    pins: the count of objects tying the session to this connection ('p' row);
    statements: the protocol-level prepared statements the session holds ('x' rows);
    hex_values: values as the hex of their UTF-8 bytes, for a session whose client_encoding is
    not UTF8 (the server would send them converted to it; see read_probe);
    untimed: statements turning statement_timeout and lock_timeout off for the rest of the
    transaction (UNTIMED_STATEMENTS, UNTIMED_EXTENDED), to count objects after them; this makes
    it several statements.
    """
    wrap = _HEX if hex_values else "{}"
    settings = [_SETTINGS.replace("{value}", wrap.format("setting"))] if full else []
    settings.extend(
        f"SELECT 'n', {q}, " + wrap.format(f"pg_catalog.current_setting({q}, true)")
        for q in (quote_literal(n) for n in names)
    )
    objects = [_PINS] if pins or not settings else []
    if statements:
        objects.append(_STATEMENTS)
    body = " UNION ALL ".join(settings + objects)
    if not untimed:
        return [body]
    # Everything runs with the timeouts off, except a first statement of microseconds that
    # reads the two timeouts themselves ('u' rows): under the SET LOCAL they read as 0 with a
    # 'session' source. A full read also gets their reset values ('w' rows, see read_probe).
    if full:
        body = f"{body} UNION ALL {_TIMEOUT_RESETS}"
    return [_TIMEOUTS, *untimed, body]


@dataclass(frozen=True, slots=True)
class SessionState:
    settings: dict[str, str]  # lower-case name -> value, for settings changed in the session
    named: dict[str, str | None]  # lower-case name -> current value (None: no such setting)
    pins: int | None  # objects that tie the session to this server connection, if asked
    statements: frozenset[str] | None  # names of protocol-level prepared statements, if asked


def read_probe(
    rows: list[list[str | None]], *, statements_asked: bool, hex_values: bool = False
) -> SessionState:
    settings: dict[str, str] = {}
    named: dict[str, str | None] = {}
    pins: int | None = None
    statements: set[str] | None = set() if statements_asked else None
    timeouts: dict[str, str] = {}
    resets: dict[str, str] = {}
    for row in rows:
        if len(row) != 3:
            continue
        kind, a, b = row
        if hex_values and b is not None and (kind == "s" or kind == "n"):
            b = bytes.fromhex(b).decode("utf-8", "surrogateescape")
        if kind == "s" and a is not None:
            settings[a.translate(_ASCII_LOWER)] = b or ""
        elif kind == "n" and a is not None:
            named[a.translate(_ASCII_LOWER)] = b
        elif kind == "p":
            pins = int(a or 0)
        elif kind == "x" and a is not None and statements is not None:
            statements.add(a)
        elif kind == "u" and a is not None and b is not None:
            timeouts[a] = b
        elif kind == "w" and a is not None and b is not None:
            resets[a] = b
    for name, value in timeouts.items():
        # The rows after the proxy's SET LOCAL show these as 0, set in the session: take what
        # the first statement read. For a full read, set in the session means other than what
        # RESET gives (a value SET equal to it then counts as reset: the startup value, if the
        # client gave one, comes back).
        settings.pop(name, None)
        if name in named:
            named[name] = value
        if name in resets and resets[name] != value:
            settings[name] = value
    return SessionState(
        settings, named, pins, frozenset(statements) if statements is not None else None
    )


# PostgreSQL folds setting names in ASCII only ("app.É" and "app.é" are two settings).
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def _order(name: str) -> int:
    # Session authorization first: setting it resets the role, which must come after.
    return 0 if name == "session_authorization" else 1 if name == "role" else 2


def set_sql(values: dict[str, str]) -> str:
    """Statement giving each setting its value, with the server parsing the value as it parses a
    startup option (so a list such as search_path keeps its meaning)."""
    return "SELECT " + ", ".join(
        f"pg_catalog.set_config({quote_literal(k)}, {_value(values[k])}, false)"
        for k in sorted(values, key=_order)
    )


def _value(v: str) -> str:
    if v.isascii():
        return quote_literal(v)
    # Sent as hex of its UTF-8 bytes: the statement reaches the server in the session's
    # client_encoding, which may be LATIN1 or SJIS, and hex means the same in all of them.
    data = v.encode("utf-8", "surrogateescape").hex()
    return f"pg_catalog.convert_from(pg_catalog.decode('{data}', 'hex'), 'UTF8')"


def reset_sql(names: Iterable[str]) -> str:
    """Statements returning these settings to the connection's defaults."""
    return "; ".join(f"RESET {quote_ident(k)}" for k in sorted(names, key=_order))


def check_sql(name: str, value: str) -> str:
    """One statement that has the server accept `value` for `name` in a transaction of its own
    (so nothing stays behind) and return the value as the server shows it, as hex of its UTF-8
    bytes (the session's client_encoding may be any)."""
    shown = f"pg_catalog.set_config({quote_literal(name)}, {_value(value)}, true)"
    return f"{UNTIMED}SELECT pg_catalog.encode(pg_catalog.convert_to({shown}, 'UTF8'), 'hex')"
