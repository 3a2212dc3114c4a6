"""``<key>_env`` references in [[databases]]: host, port, hosts and secret_arn from variables."""

from __future__ import annotations

import pytest

from pgpool_proxy.config import ConfigError, parse_config

BASE = """
[[databases]]
name = "app"
{db}

[[users]]
name = "alice"
password = "pw"
"""
ARN = "arn:aws:secretsmanager:us-east-1:123456789012:secret:app-db-AbCdEf"


def _problems(db: str, env: dict[str, str]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(BASE.format(db=db), source="p.toml", env=env)
    return info.value.problems


def test_values_come_from_the_named_variables() -> None:
    db_lines = 'host_env = "H"\nport_env = "P"\nsecret_arn_env = "S"'
    config = parse_config(
        BASE.format(db=db_lines), env={"H": " db.internal ", "P": "6543", "S": ARN}
    )
    (db,) = config.databases
    assert (db.host, db.port, db.secret_arn) == ("db.internal", 6543, ARN)


def test_hosts_from_a_comma_separated_variable() -> None:
    db_lines = 'hosts_env = "HOSTS"\nuser = "u"\npassword = "p"'
    config = parse_config(BASE.format(db=db_lines), env={"HOSTS": "h1:5432, h2:5433"})
    assert config.databases[0].hosts == (("h1", 5432), ("h2", 5433))


def test_unset_and_empty_variables_are_named() -> None:
    problems = _problems('host_env = "H"\nport_env = "P"', {"P": " "})
    assert problems == [
        "p.toml: databases[0].host_env: environment variable H is not set",
        "p.toml: databases[0].port_env: environment variable P is set but empty",
    ]


def test_values_are_checked_as_if_written_in_the_file() -> None:
    problems = _problems('port_env = "P"', {"P": "70000"})
    assert problems == [
        "p.toml: databases[0].port (from environment variable P): "
        "must be between 1 and 65535, got 70000"
    ]
    problems = _problems('port_env = "P"', {"P": "54x"})
    assert problems == [
        'p.toml: databases[0].port (from environment variable P): expected an integer, got "54x"'
    ]
    problems = _problems('secret_arn_env = "S"', {"S": "not-an-arn"})
    assert any("secret_arn" in p for p in problems), problems


def test_key_and_reference_together_is_an_error() -> None:
    problems = _problems('host = "a"\nhost_env = "H"', {"H": "b"})
    assert problems == ["p.toml: databases[0].host_env: give either host or host_env, not both"]


def test_reference_must_name_a_variable() -> None:
    problems = _problems("host_env = 5", {})
    assert problems == ["p.toml: databases[0].host_env: expected a string, got integer"]
