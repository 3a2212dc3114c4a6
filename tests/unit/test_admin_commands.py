"""The admin console's command parser: verbs, arguments, quoting, and the errors it names."""

from __future__ import annotations

import pytest

from pgpool_proxy.admin.commands import (
    Command,
    CommandError,
    parse_command,
    split_statements,
)


def test_split_statements_respects_quotes_and_drops_blanks() -> None:
    assert split_statements("SHOW POOLS;") == ["SHOW POOLS"]
    assert split_statements("show pools ; show stats;;  ") == ["show pools", "show stats"]
    assert split_statements("SET server_reset_query = 'DISCARD ALL; SELECT 1'; RELOAD") == [
        "SET server_reset_query = 'DISCARD ALL; SELECT 1'",
        "RELOAD",
    ]
    assert split_statements('PAUSE "a;b"') == ['PAUSE "a;b"']
    assert split_statements("  ;  ") == []


@pytest.mark.parametrize(
    ("text", "verb", "arg"),
    [
        ("SHOW POOLS", "SHOW", "POOLS"),
        ("show stats;", "SHOW", "STATS"),
        ("Show Stats_Totals", "SHOW", "STATS_TOTALS"),
        ("SHOW USERS", "SHOW", "USERS"),
        ("show peers;", "SHOW", "PEERS"),
        ("SHOW FDS", "SHOW", "FDS"),
        ("PAUSE", "PAUSE", None),
        ("pause app", "PAUSE", "app"),
        ('PAUSE "My DB"', "PAUSE", "My DB"),
        ('resume "quo""ted"', "RESUME", 'quo"ted'),
        ("RECONNECT", "RECONNECT", None),
        ("KILL app;", "KILL", "app"),
        ("reload", "RELOAD", None),
        ("SHUTDOWN", "SHUTDOWN", None),
    ],
)
def test_commands(text: str, verb: str, arg: str | None) -> None:
    cmd = parse_command(text)
    assert (cmd.verb, cmd.arg) == (verb, arg)
    assert cmd.mutating == (verb != "SHOW")


def test_set_forms() -> None:
    assert parse_command("SET default_pool_size = 10") == Command(
        "SET", "default_pool_size", "10", text="SET default_pool_size = 10"
    )
    assert parse_command("set Pool.Server_Reset_Query TO 'DISCARD ALL'").value == "DISCARD ALL"
    assert parse_command("SET log_level='debug'").value == "debug"
    assert parse_command("SET x = 'it''s'").value == "it's"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("SHOW FOO", "invalid command 'SHOW FOO', use SHOW HELP;"),
        ("SELECT 1", "invalid command 'SELECT 1'"),
        ("SHOW", "invalid command 'SHOW'"),
        ("SHOW POOLS extra", "invalid command"),
        ("KILL", "syntax: KILL db"),
        ("PAUSE a b", "syntax: PAUSE [db]"),
        ("RELOAD now", "syntax: RELOAD"),
        ("SET x", "syntax: SET key = value"),
        ("SET x = = 1", "syntax: SET key = value"),
        ("'quoted'", "invalid command"),
    ],
)
def test_errors_name_the_command(text: str, fragment: str) -> None:
    with pytest.raises(CommandError) as exc:
        parse_command(text)
    assert exc.value.sqlstate == "42601"
    assert fragment in exc.value.message
