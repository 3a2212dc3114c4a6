"""Sans-IO tests of session.state: the probe query, how its rows are read, and the statement that
replays settings."""

from __future__ import annotations

import pytest

from pgpool_proxy.protocol import messages as m
from pgpool_proxy.session.state import SessionState, probe_sql, read_probe, reset_sql, set_sql


def test_probe_sql_full_with_pins() -> None:
    sql = probe_sql(full=True, pins=True)
    assert sql.startswith("SELECT 's', name, setting FROM pg_catalog.pg_settings")
    assert "source OPERATOR(pg_catalog.=) 'session'" in sql
    for name in ("transaction_isolation", "transaction_read_only", "transaction_deferrable"):
        assert name in sql
    assert "SELECT 'p', (" in sql
    for part in (
        "pg_catalog.pg_locks",
        "locktype OPERATOR(pg_catalog.=) 'advisory'",
        "pg_catalog.pg_backend_pid()",
        "pg_catalog.pg_listening_channels()",
        "pg_catalog.pg_cursors WHERE is_holdable",
        "pg_catalog.pg_prepared_statements WHERE from_sql",
        "pg_catalog.pg_my_temp_schema()",
    ):
        assert part in sql
    assert sql.count(" UNION ALL ") == 1
    assert "SELECT 'x'" not in sql
    assert ";" not in sql


def test_probe_sql_resolves_nothing_through_the_search_path() -> None:
    """Every operator, function, relation and type the probe names carries its schema: the probe
    runs under the client's search_path (PgBouncer CVE-2025-12819's class)."""
    import re

    sql = probe_sql(full=True, pins=True, names=["app.tenant", "role"], statements=True)
    bare = re.sub(r"'(?:[^']|'')*'", "''", sql)  # literals aside
    for op in ("=", "<>", "+"):
        assert f" {op} " not in bare
    assert "OPERATOR(pg_catalog.=)" in sql and "OPERATOR(pg_catalog.+)" in sql
    for name in re.findall(r"(?<![.\w])([a-z_]+)\(", bare):
        assert name in {"any", "all"}, name
    for rel in re.findall(r"\bFROM ([\w.]+)", bare):
        assert rel.startswith("pg_catalog."), rel
    for cast in re.findall(r"::([\w.]+)", bare):
        assert cast.startswith("pg_catalog."), cast


def test_probe_sql_named_settings() -> None:
    sql = probe_sql(full=False, pins=False, names=["app.tenant", "it's"])
    assert sql == (
        "SELECT 'n', 'app.tenant', pg_catalog.current_setting('app.tenant', true) UNION ALL "
        "SELECT 'n', 'it''s', pg_catalog.current_setting('it''s', true)"
    )


def test_probe_sql_with_statements() -> None:
    sql = probe_sql(full=True, pins=True, statements=True)
    assert sql.startswith(probe_sql(full=True, pins=True) + " UNION ALL ")
    assert sql.count(" UNION ALL ") == 2
    assert sql.endswith(
        "SELECT 'x', name, NULL FROM pg_catalog.pg_prepared_statements WHERE NOT from_sql"
    )


def test_probe_sql_never_empty() -> None:
    assert probe_sql(full=False, pins=False).startswith("SELECT 'p'")


def test_probe_sql_is_one_query_frame() -> None:
    sql = probe_sql(full=True, pins=True, names=["a.b"], statements=True)
    frame = m.query(sql)
    assert frame[:1] == b"Q"
    assert int.from_bytes(frame[1:5], "big") == len(frame) - 1
    assert frame.endswith(b"\0")
    assert frame[5:].count(b"\0") == 1


def test_read_probe_settings_pins_statements() -> None:
    rows: list[list[str | None]] = [
        ["s", "TimeZone", "UTC"],
        ["s", "search_path", '"$user", public'],
        ["s", "DateStyle", None],
        ["n", "App.Tenant", "a"],
        ["n", "role", None],
        ["p", "3", None],
        ["x", "pgpool_1", None],
        ["x", "pgpool_a", None],
    ]
    state = read_probe(rows, statements_asked=True)
    assert state == SessionState(
        settings={"timezone": "UTC", "search_path": '"$user", public', "datestyle": ""},
        named={"app.tenant": "a", "role": None},
        pins=3,
        statements=frozenset({"pgpool_1", "pgpool_a"}),
    )


def test_read_probe_statements_not_asked() -> None:
    rows: list[list[str | None]] = [["p", "0", None], ["x", "pgpool_1", None]]
    state = read_probe(rows, statements_asked=False)
    assert state.statements is None
    assert state.pins == 0
    assert state.settings == {}
    assert state.named == {}


def test_read_probe_statements_asked_but_none() -> None:
    state = read_probe([["p", "0", None]], statements_asked=True)
    assert state.statements == frozenset()


def test_read_probe_empty() -> None:
    assert read_probe([], statements_asked=False) == SessionState({}, {}, None, None)
    assert read_probe([], statements_asked=True) == SessionState({}, {}, None, frozenset())


def test_read_probe_skips_malformed_rows() -> None:
    rows: list[list[str | None]] = [
        [],
        ["s"],
        ["s", "a"],
        ["s", "a", "b", "c"],
        ["s", None, "x"],  # no name
        ["x", None, None],  # no statement name
        ["q", "what", "ever"],  # unknown kind
        [None, "a", "b"],
        ["S", "upper", "kind"],  # kinds are case-sensitive
        ["s", "Work_Mem", "64MB"],
        ["p", None, None],  # NULL count: no pins
    ]
    state = read_probe(rows, statements_asked=True)
    assert state.settings == {"work_mem": "64MB"}
    assert state.pins == 0
    assert state.statements == frozenset()


def test_read_probe_last_value_wins() -> None:
    rows: list[list[str | None]] = [
        ["s", "TimeZone", "UTC"],
        ["s", "timezone", "Europe/Paris"],
        ["p", "1", None],
        ["p", "2", None],
    ]
    state = read_probe(rows, statements_asked=False)
    assert state.settings == {"timezone": "Europe/Paris"}
    assert state.pins == 2


def test_read_probe_non_numeric_pins_raise() -> None:
    """Observed behaviour: a pins value that is not an integer is not skipped (the server always
    sends a count, so this only happens with a corrupt reply)."""
    with pytest.raises(ValueError):
        read_probe([["p", "many", None]], statements_asked=False)


def test_read_probe_from_data_rows() -> None:
    """Rows as the backend sends them: DataRow frames decoded by messages.parse_data_row."""

    def data_row(*cols: bytes | None) -> bytes:
        body = len(cols).to_bytes(2, "big")
        for c in cols:
            if c is None:
                body += b"\xff\xff\xff\xff"
            else:
                body += len(c).to_bytes(4, "big") + c
        return m.frame(b"D", body)

    frames = [
        data_row(b"s", b"IntervalStyle", b"iso_8601"),
        data_row(b"p", b"1", None),
        data_row(b"x", b"pgpool_2", None),
    ]
    rows = [m.parse_data_row(memoryview(f)[5:]) for f in frames]
    state = read_probe(rows, statements_asked=True)
    assert state.settings == {"intervalstyle": "iso_8601"}
    assert state.pins == 1
    assert state.statements == frozenset({"pgpool_2"})


def test_set_sql_plain() -> None:
    assert set_sql({"work_mem": "64MB"}) == (
        "SELECT pg_catalog.set_config('work_mem', '64MB', false)"
    )


def test_set_sql_several_in_order() -> None:
    sql = set_sql({"a.b": "1", "TimeZone": "UTC"})
    assert sql == (
        "SELECT pg_catalog.set_config('a.b', '1', false), "
        "pg_catalog.set_config('TimeZone', 'UTC', false)"
    )


def test_set_sql_session_authorization_before_role() -> None:
    """Setting the session authorization resets the role: it must come first."""
    sql = set_sql({"role": "r", "a.b": "1", "session_authorization": "u"})
    assert sql.index("'session_authorization'") < sql.index("'role'") < sql.index("'a.b'")
    assert reset_sql(["role", "x", "session_authorization"]) == (
        'RESET "session_authorization"; RESET "role"; RESET "x"'
    )


def test_set_sql_quotes_values() -> None:
    sql = set_sql({"application_name": "it's", "search_path": '"$user", public'})
    assert sql == (
        "SELECT pg_catalog.set_config('application_name', 'it''s', false), "
        "pg_catalog.set_config('search_path', '\"$user\", public', false)"
    )


def test_set_sql_quotes_names_and_backslashes() -> None:
    sql = set_sql({"x.o'k": "a\\b'; DROP TABLE t; --"})
    assert sql == ("SELECT pg_catalog.set_config('x.o''k', E'a\\\\b''; DROP TABLE t; --', false)")


def test_set_sql_empty_value() -> None:
    assert set_sql({"x.y": ""}) == "SELECT pg_catalog.set_config('x.y', '', false)"


def test_set_sql_round_trips_through_probe() -> None:
    """Settings read from a probe replay as one statement with every name and value quoted."""
    state = read_probe(
        [["s", "Application_Name", "o'brien"], ["s", "search_path", "a,b"]],
        statements_asked=False,
    )
    assert set_sql(state.settings) == (
        "SELECT pg_catalog.set_config('application_name', 'o''brien', false), "
        "pg_catalog.set_config('search_path', 'a,b', false)"
    )
