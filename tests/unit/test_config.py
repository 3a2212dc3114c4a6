"""Unit tests for the pgpool_proxy.config package, check_config_main included (no sockets)."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import os
from pathlib import Path
from typing import Any

import pytest

from pgpool_proxy.config import (
    AuthSettings,
    AuthType,
    Config,
    ConfigError,
    DatabaseConfig,
    PoolMode,
    PoolSettings,
    ProxySettings,
    UserConfig,
    build_config,
    check_config_main,
    load_config,
    parse_config,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = REPO_ROOT / "proxy.example.toml"

MINIMAL = """
[auth]
type = "trust"

[[databases]]
name = "app"
"""


def problems_of(text: str, env: dict[str, str] | None = None, source: str = "t.toml") -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, source=source, env=env or {})
    return info.value.problems


def only_problem(text: str, env: dict[str, str] | None = None) -> str:
    problems = problems_of(text, env)
    assert len(problems) == 1, problems
    return problems[0]


def scram_verifier(password: str) -> str:
    salt = b"0123456789abcdef"
    iterations = 4096
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.digest(salted, b"Server Key", "sha256")

    def b64(raw: bytes) -> str:
        return base64.b64encode(raw).decode()

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


@pytest.fixture
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests that read os.environ must not see the developer's own PGPOOL_* settings."""
    for name in list(os.environ):
        if name.startswith("PGPOOL_"):
            monkeypatch.delenv(name)


# -- the example file and defaults -------------------------------------------------------------


def test_example_file_loads() -> None:
    config = load_config(EXAMPLE, env={})
    assert config.source == str(EXAMPLE)
    assert config.proxy == ProxySettings()
    assert config.pool == PoolSettings()
    assert config.auth == AuthSettings()
    app = config.database("app")
    assert app == DatabaseConfig(name="app", host="127.0.0.1", port=5432, dbname="app")
    alice = config.user("alice")
    assert alice is not None and alice.password is not None


def test_example_file_mentions_every_key() -> None:
    text = EXAMPLE.read_text()
    keys = [f.name for f in dataclasses.fields(ProxySettings) if not f.name.startswith("listen_")]
    keys += ["listen", "type", "password_env"]
    keys += [f.name for f in dataclasses.fields(PoolSettings)]
    keys += [f.name for f in dataclasses.fields(DatabaseConfig)]
    keys += [f.name for f in dataclasses.fields(UserConfig)]
    for key in keys:
        assert f"{key} = " in text, key


def test_docs_mention_every_key() -> None:
    text = (REPO_ROOT / "docs" / "configuration.md").read_text()
    for key in ["listen", "type", "password_env", "PGPOOL_POOL_DEFAULT_POOL_SIZE"]:
        assert f"`{key}`" in text, key
    for cls in (ProxySettings, PoolSettings, DatabaseConfig, UserConfig):
        for f in dataclasses.fields(cls):
            if not f.name.startswith("listen_"):
                assert f"`{f.name}`" in text, f.name


def test_defaults() -> None:
    config = parse_config(MINIMAL, env={})
    assert config.source == "<string>"
    assert config.proxy.listen_host == "127.0.0.1"
    assert config.proxy.listen_port == 6432
    assert config.proxy.pool_mode is PoolMode.TRANSACTION
    assert config.proxy.max_client_conn == 10000
    assert config.proxy.client_login_timeout_s == 10.0
    assert config.proxy.max_message_size_bytes == 64 * 1024 * 1024
    assert (config.proxy.log_level, config.proxy.log_format) == ("info", "text")
    assert config.pool == PoolSettings(
        default_pool_size=20,
        min_pool_size=0,
        query_wait_timeout_s=120.0,
        server_idle_timeout_s=600.0,
        server_lifetime_s=3600.0,
        server_connect_timeout_s=15.0,
        server_reset_query="DISCARD ALL",
    )
    assert AuthSettings().type is AuthType.SCRAM_SHA_256
    (db,) = config.databases
    assert db == DatabaseConfig(name="app", host="127.0.0.1", port=5432, dbname="app")
    assert db.user is None and db.password is None
    assert db.pool_size is None and db.pool_mode is None
    assert config.users == ()


def test_full_values_are_typed() -> None:
    config = parse_config(
        """
        [proxy]
        listen = "0.0.0.0:7000"
        pool_mode = "SESSION"
        max_client_conn = 50
        client_login_timeout_s = 3
        max_message_size_bytes = 1048576
        log_level = "debug"
        log_format = "json"
        [pool]
        default_pool_size = 5
        min_pool_size = 5
        query_wait_timeout_s = 0
        server_idle_timeout_s = 1.5
        server_lifetime_s = 0
        server_connect_timeout_s = 2
        server_reset_query = ""
        [auth]
        type = "md5"
        [[databases]]
        name = "app"
        host = "db.internal"
        port = 5433
        dbname = "app_prod"
        user = "owner"
        password = "pw"
        pool_size = 7
        pool_mode = "transaction"
        [[users]]
        name = "alice"
        password = "md50123456789abcdef0123456789abcdef"
        """,
        env={},
    )
    assert config.proxy == ProxySettings(
        listen_host="0.0.0.0",
        listen_port=7000,
        pool_mode=PoolMode.SESSION,
        max_client_conn=50,
        client_login_timeout_s=3.0,
        max_message_size_bytes=1048576,
        log_level="debug",
        log_format="json",
    )
    assert isinstance(config.proxy.client_login_timeout_s, float)
    assert isinstance(config.pool.server_connect_timeout_s, float)
    assert config.pool.server_reset_query == ""
    assert config.auth.type is AuthType.MD5
    assert config.databases[0] == DatabaseConfig(
        name="app",
        host="db.internal",
        port=5433,
        dbname="app_prod",
        user="owner",
        password="pw",
        pool_size=7,
        pool_mode=PoolMode.TRANSACTION,
    )
    assert config.users[0].password == "md50123456789abcdef0123456789abcdef"


@pytest.mark.parametrize(
    ("listen", "host", "port"),
    [
        ("127.0.0.1:6432", "127.0.0.1", 6432),
        ("0.0.0.0:6432", "0.0.0.0", 6432),
        ("[::1]:6432", "::1", 6432),
        ("[::]:0", "::", 0),
        ("localhost:65535", "localhost", 65535),
    ],
)
def test_listen_forms(listen: str, host: str, port: int) -> None:
    config = parse_config(f'[proxy]\nlisten = "{listen}"\n' + MINIMAL, env={})
    assert (config.proxy.listen_host, config.proxy.listen_port) == (host, port)


# -- [proxy] workers ---------------------------------------------------------------------------


def test_workers_defaults_to_one() -> None:
    assert ProxySettings().workers == 1
    assert parse_config(MINIMAL, env={}).proxy.workers == 1


@pytest.mark.parametrize("workers", [1, 8, 64])
def test_workers_valid(workers: int) -> None:
    config = parse_config(f"[proxy]\nworkers = {workers}\n" + MINIMAL, env={})
    assert config.proxy.workers == workers
    from_env = parse_config(MINIMAL, env={"PGPOOL_PROXY_WORKERS": str(workers)})
    assert from_env.proxy.workers == workers


@pytest.mark.parametrize("workers", [0, 65, -1])
def test_workers_out_of_range_names_file_and_key(tmp_path: Path, workers: int) -> None:
    path = tmp_path / "proxy.toml"
    path.write_text(f"[proxy]\nworkers = {workers}\n" + MINIMAL)
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert info.value.problems == [
        f"{path}: proxy.workers: must be between 1 and 64, got {workers}"
    ]


def test_workers_bad_env_value_names_the_variable() -> None:
    problem = only_problem(MINIMAL, env={"PGPOOL_PROXY_WORKERS": "65"})
    assert problem == (
        "t.toml: proxy.workers (from environment variable PGPOOL_PROXY_WORKERS): "
        "must be between 1 and 64, got 65"
    )
    problem = only_problem("[proxy]\nworkers = 2.0\n" + MINIMAL)
    assert problem == "t.toml: proxy.workers: expected an integer, got float"


# -- one class of problem at a time ------------------------------------------------------------


@pytest.mark.parametrize(
    "listen",
    ["6432", "::1:6432", ":6432", "127.0.0.1:", "127.0.0.1:http", "[::1]6432", "[nope]:6432",
     "127.0.0.1:70000", "300.1.1.1:6432", "host name:6432"],
)  # fmt: skip
def test_bad_listen(listen: str) -> None:
    problem = only_problem(f'[proxy]\nlisten = "{listen}"\n' + MINIMAL)
    assert problem.startswith("t.toml: proxy.listen: "), problem


def test_unknown_section_and_key_suggest_a_name() -> None:
    problems = problems_of(
        MINIMAL
        + "[proxi]\nx = 1\n[pool]\ndefault_pool_sise = 3\nwhatever = 1\n"
        + '[[users]]\nname = "a"\npasword = "x"\n'
    )
    assert 't.toml: proxi: unknown section; did you mean "proxy"?' in problems
    assert 't.toml: pool.default_pool_sise: unknown key; did you mean "default_pool_size"?' in (
        problems
    )
    assert "t.toml: pool.whatever: unknown key" in problems
    assert 't.toml: users[0].pasword: unknown key; did you mean "password"?' in problems


def test_pgbouncer_names_point_to_the_new_key() -> None:
    problem = only_problem("[proxy]\nlisten_port = 6432\n" + MINIMAL)
    assert problem == 't.toml: proxy.listen_port: unknown key; use listen = "host:port"'


@pytest.mark.parametrize(
    ("section", "key", "value", "expected"),
    [
        ("proxy", "max_client_conn", "true", "expected an integer, got boolean"),
        ("proxy", "max_client_conn", '"100"', "expected an integer, got string"),
        ("proxy", "max_message_size_bytes", "2e6", "expected an integer, got float"),
        ("proxy", "client_login_timeout_s", "false", "expected a number, got boolean"),
        ("proxy", "client_login_timeout_s", '"10s"', "expected a number, got string"),
        ("proxy", "log_level", "3", "expected a string, got integer"),
        ("proxy", "pool_mode", "[]", "expected a string, got array"),
        ("pool", "server_reset_query", "{}", "expected a string, got table"),
        ("pool", "server_idle_timeout_s", "1979-05-27", "expected a number, got date/time"),
    ],
)
def test_wrong_types(section: str, key: str, value: str, expected: str) -> None:
    problem = only_problem(f"[{section}]\n{key} = {value}\n" + MINIMAL)
    assert problem == f"t.toml: {section}.{key}: {expected}"


@pytest.mark.parametrize(
    ("section", "key", "value", "expected"),
    [
        ("proxy", "max_client_conn", "0", "must be >= 1, got 0"),
        ("proxy", "client_login_timeout_s", "0", "must be > 0, got 0"),
        ("proxy", "client_login_timeout_s", "nan", "must be a finite number, got nan"),
        ("proxy", "max_message_size_bytes", "1000", "must be between 1048576 and 1073741824"),
        ("proxy", "max_message_size_bytes", "1073741825", "must be between 1048576 and"),
        ("pool", "default_pool_size", "0", "must be >= 1, got 0"),
        ("pool", "min_pool_size", "-1", "must be >= 0, got -1"),
        ("pool", "query_wait_timeout_s", "-0.5", "must be >= 0, got -0.5"),
        ("pool", "server_lifetime_s", "inf", "must be a finite number"),
        ("pool", "server_connect_timeout_s", "0", "must be > 0, got 0"),
    ],
)
def test_out_of_range(section: str, key: str, value: str, expected: str) -> None:
    problem = only_problem(f"[{section}]\n{key} = {value}\n" + MINIMAL)
    assert problem.startswith(f"t.toml: {section}.{key}: {expected}"), problem


@pytest.mark.parametrize(
    ("section", "key", "value", "allowed"),
    [
        ("proxy", "pool_mode", "statement", '"transaction", "session"'),
        ("proxy", "log_level", "verbose", '"debug", "info", "warning", "error"'),
        ("proxy", "log_format", "xml", '"text", "json"'),
        ("auth", "type", "password", '"scram-sha-256", "md5", "trust"'),
    ],
)
def test_bad_enum_lists_allowed_values(section: str, key: str, value: str, allowed: str) -> None:
    text = f'[{section}]\n{key} = "{value}"\n[[databases]]\nname = "app"\n'
    if section != "auth":
        text += '[auth]\ntype = "trust"\n'
    problem = only_problem(text)
    assert problem == f't.toml: {section}.{key}: must be one of {allowed}; got "{value}"'


def test_bad_pool_mode_in_database_and_user() -> None:
    problems = problems_of(
        MINIMAL + 'pool_mode = "statement"\n[[users]]\nname = "u"\npool_mode = 1\n'
    )
    assert problems == [
        't.toml: databases[0].pool_mode: must be one of "transaction", "session"; got "statement"',
        "t.toml: users[0].pool_mode: expected a string, got integer",
    ]


def test_min_pool_size_above_default_pool_size() -> None:
    problem = only_problem("[pool]\ndefault_pool_size = 5\nmin_pool_size = 6\n" + MINIMAL)
    assert problem == (
        "t.toml: pool.min_pool_size: must not exceed pool.default_pool_size (5), got 6"
    )


def test_min_pool_size_above_database_pool_size() -> None:
    problem = only_problem("[pool]\nmin_pool_size = 4\n" + MINIMAL + "pool_size = 2\n")
    assert problem == (
        "t.toml: databases[0].pool_size: must be at least pool.min_pool_size (4), got 2"
    )


def test_duplicate_names() -> None:
    problems = problems_of(
        MINIMAL
        + '[[databases]]\nname = "other"\n[[databases]]\nname = "app"\n'
        + '[[users]]\nname = "u"\n[[users]]\nname = "u"\n'
    )
    assert problems == [
        't.toml: databases[2].name: duplicate database "app" (first defined at databases[0])',
        't.toml: users[1].name: duplicate user "u" (first defined at users[0])',
    ]


def test_names_required_and_non_empty() -> None:
    problems = problems_of(
        '[auth]\ntype = "trust"\n[[databases]]\nhost = "h"\n[[databases]]\nname = ""\n'
        '[[users]]\nname = ""\n[[users]]\npool_mode = "session"\n'
    )
    assert problems == [
        "t.toml: databases[0].name: required",
        "t.toml: databases[1].name: must not be empty",
        "t.toml: users[0].name: must not be empty",
        "t.toml: users[1].name: required",
    ]


def test_ports() -> None:
    problems = problems_of(
        MINIMAL + 'port = 0\n[[databases]]\nname = "b"\nport = 65536\n'
        '[[databases]]\nname = "c"\nport = 65535\n'
    )
    assert problems == [
        "t.toml: databases[0].port: must be between 1 and 65535, got 0",
        "t.toml: databases[1].port: must be between 1 and 65535, got 65536",
    ]


def test_at_least_one_database() -> None:
    assert problems_of('[auth]\ntype = "trust"\n') == [
        "t.toml: databases: at least one [[databases]] entry is required"
    ]
    assert problems_of('[databases]\nname = "app"\n[auth]\ntype = "trust"\n') == [
        "t.toml: databases: expected an array of tables ([[databases]]), got table"
    ]


def test_section_of_wrong_type() -> None:
    assert problems_of("proxy = 3\n" + MINIMAL) == [
        "t.toml: proxy: expected a table ([proxy]), got integer"
    ]


def test_user_needs_password_unless_trust() -> None:
    text = '[[databases]]\nname = "app"\n[[users]]\nname = "alice"\n'
    assert problems_of(text) == [
        't.toml: users[0].password: required when auth.type is "scram-sha-256" '
        "(set password or password_env)"
    ]
    assert problems_of('[auth]\ntype = "md5"\n' + text) == [
        't.toml: users[0].password: required when auth.type is "md5" (set password or password_env)'
    ]
    config = parse_config('[auth]\ntype = "trust"\n' + text, env={})
    assert config.users == (UserConfig(name="alice"),)


def test_password_forms_must_fit_auth_type() -> None:
    md5_hash = "md5" + hashlib.md5(b"secretalice").hexdigest()
    verifier = scram_verifier("secret")
    base = '[[databases]]\nname = "app"\n[[users]]\nname = "alice"\n'

    def with_auth(auth: str, password: str) -> str:
        return f'[auth]\ntype = "{auth}"\n{base}password = "{password}"\n'

    assert parse_config(with_auth("scram-sha-256", verifier), env={}).users[0].password == verifier
    assert parse_config(with_auth("md5", md5_hash), env={}).users[0].password == md5_hash
    assert parse_config(with_auth("md5", "plain"), env={}).users[0].password == "plain"

    problem = only_problem(with_auth("scram-sha-256", md5_hash))
    assert problem.startswith("t.toml: users[0].password: an md5 hash cannot be used")
    problem = only_problem(with_auth("md5", verifier))
    assert problem.startswith("t.toml: users[0].password: a SCRAM verifier cannot")
    problem = only_problem(with_auth("scram-sha-256", "SCRAM-SHA-256$4096:abc$def"))
    assert problem.startswith("t.toml: users[0].password: looks like a SCRAM verifier")


def test_secrets_are_not_echoed() -> None:
    problems = problems_of(
        '[[databases]]\nname = "app"\n[[users]]\nname = "alice"\n'
        'password = "SCRAM-SHA-256$hunter2"\n'
    )
    assert len(problems) == 1
    assert "hunter2" not in problems[0]
    config = parse_config(
        MINIMAL + 'password = "dbsecret"\n[[users]]\nname = "u"\npassword = "usersecret"\n',
        env={},
    )
    assert "dbsecret" not in repr(config)
    assert "usersecret" not in repr(config)


def test_invalid_toml_reports_line_and_column() -> None:
    problems = problems_of('[proxy]\nlisten = "127.0.0.1:6432"\nmax_client_conn = = 3\n')
    assert len(problems) == 1
    assert problems[0].startswith("t.toml: line 3, column 19: invalid TOML: "), problems


def test_invalid_toml_at_end_of_file() -> None:
    (problem,) = problems_of('[proxy]\nlog_level = "info')
    assert problem.startswith("t.toml: "), problem
    assert "invalid TOML" in problem


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_config(missing, env={})
    assert info.value.problems == [f"{missing}: cannot read file: No such file or directory"]

    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe[proxy]\n")
    with pytest.raises(ConfigError) as info:
        load_config(binary, env={})
    assert info.value.problems[0].startswith(f"{binary}: file is not valid UTF-8")


# -- many problems at once ---------------------------------------------------------------------


def test_all_problems_reported_together(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text(
        """
[proxy]
listen = "nowhere"
pool_mod = "session"
max_client_conn = true

[pool]
default_pool_size = 2
min_pool_size = 3

[auth]
type = "md5"

[[databases]]
name = "app"
port = 99999

[[databases]]
name = "app"

[[users]]
name = "alice"
"""
    )
    with pytest.raises(ConfigError) as info:
        load_config(path, env={"PGPOOL_POOL_SERVER_LIFETIME_S": "forever"})
    err = info.value
    keys = [
        "proxy.listen",
        "proxy.pool_mod",
        "proxy.max_client_conn",
        "pool.server_lifetime_s (from environment variable PGPOOL_POOL_SERVER_LIFETIME_S)",
        "databases[0].port",
        "pool.min_pool_size",
        "databases[1].name",
        "users[0].password",
    ]
    assert len(err.problems) == len(keys), err.problems
    for key in keys:
        assert any(p.startswith(f"{path}: {key}: ") for p in err.problems), key
    assert str(err) == "\n".join(err.problems)


# -- environment -------------------------------------------------------------------------------


def test_env_overrides_each_section() -> None:
    env = {
        "PGPOOL_PROXY_LISTEN": "[::]:7432",
        "PGPOOL_PROXY_POOL_MODE": "session",
        "PGPOOL_PROXY_CLIENT_LOGIN_TIMEOUT_S": "2.5",
        "PGPOOL_POOL_DEFAULT_POOL_SIZE": "50",
        "PGPOOL_POOL_SERVER_RESET_QUERY": "",
        "PGPOOL_AUTH_TYPE": "trust",
        "PGPOOL_PROXY_UNRELATED_THING": "ignored",
    }
    config = parse_config(
        '[proxy]\nlisten = "127.0.0.1:1"\n[pool]\ndefault_pool_size = 3\n'
        '[auth]\ntype = "md5"\n[[databases]]\nname = "app"\n',
        env=env,
    )
    assert (config.proxy.listen_host, config.proxy.listen_port) == ("::", 7432)
    assert config.proxy.pool_mode is PoolMode.SESSION
    assert config.proxy.client_login_timeout_s == 2.5
    assert config.pool.default_pool_size == 50
    assert config.pool.server_reset_query == ""
    assert config.auth.type is AuthType.TRUST


def test_env_override_bad_value_names_the_variable() -> None:
    problems = problems_of(
        MINIMAL,
        env={
            "PGPOOL_POOL_DEFAULT_POOL_SIZE": "lots",
            "PGPOOL_POOL_MIN_POOL_SIZE": "-2",
            "PGPOOL_PROXY_LISTEN": "6432",
            "PGPOOL_AUTH_TYPE": "none",
        },
    )
    assert len(problems) == 4, problems
    for var in [
        "PGPOOL_POOL_DEFAULT_POOL_SIZE",
        "PGPOOL_POOL_MIN_POOL_SIZE",
        "PGPOOL_PROXY_LISTEN",
        "PGPOOL_AUTH_TYPE",
    ]:
        assert any(p.startswith("t.toml: ") and var in p for p in problems), var
    assert (
        "t.toml: pool.default_pool_size (from environment variable "
        'PGPOOL_POOL_DEFAULT_POOL_SIZE): expected an integer, got "lots"'
    ) in problems


@pytest.mark.usefixtures("clean_environ")
def test_env_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGPOOL_POOL_DEFAULT_POOL_SIZE", "33")
    monkeypatch.setenv("TEST_ALICE_PW", "from-env")
    config = parse_config(MINIMAL + '[[users]]\nname = "alice"\npassword_env = "TEST_ALICE_PW"\n')
    assert config.pool.default_pool_size == 33
    user = config.user("alice")
    assert user is not None and user.password == "from-env"


def test_password_env() -> None:
    config = parse_config(
        MINIMAL
        + 'user = "owner"\npassword_env = "DB_PW"\n'
        + '[[users]]\nname = "alice"\npassword_env = "ALICE_PW"\n',
        env={"DB_PW": "db-secret", "ALICE_PW": "alice-secret"},
    )
    assert config.databases[0].password == "db-secret"
    assert config.users[0].password == "alice-secret"


def test_password_env_problems() -> None:
    problems = problems_of(
        '[[databases]]\nname = "app"\npassword_env = "UNSET_DB_PW"\n'
        '[[users]]\nname = "a"\npassword_env = "EMPTY_PW"\n'
        '[[users]]\nname = "b"\npassword = "x"\npassword_env = "B_PW"\n'
        '[[users]]\nname = "c"\npassword_env = ""\n',
        env={"EMPTY_PW": "", "B_PW": "y"},
    )
    assert problems == [
        "t.toml: databases[0].password_env: environment variable UNSET_DB_PW is not set",
        "t.toml: users[0].password_env: environment variable EMPTY_PW is set but empty",
        "t.toml: users[1].password_env: give either password or password_env, not both",
        "t.toml: users[2].password_env: must not be empty",
    ]


def test_admin_user_with_unset_password_env_is_one_problem() -> None:
    # The user is in [[users]]; only its password is missing, so that is the one problem.
    problems = problems_of(
        '[[databases]]\nname = "app"\n'
        '[[users]]\nname = "alice"\npassword_env = "ALICE_PW"\n'
        '[admin]\nadmin_users = ["alice"]\nstats_users = ["alice", "bob"]\n',
        env={},
    )
    assert problems == [
        "t.toml: users[0].password_env: environment variable ALICE_PW is not set",
        't.toml: admin.stats_users: user "bob" is not in [[users]]; admin users log in like any '
        "other user",
    ]


# -- the Config object -------------------------------------------------------------------------


def test_config_is_immutable() -> None:
    config = parse_config(MINIMAL + '[[users]]\nname = "u"\n', env={})
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.source = "x"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.proxy.listen_port = 1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.pool.default_pool_size = 1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.auth.type = AuthType.TRUST  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.databases[0].port = 1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.users[0].name = "v"  # type: ignore[misc]
    assert isinstance(config.databases, tuple) and isinstance(config.users, tuple)
    hash(config)


def test_lookups_and_effective_settings() -> None:
    config = build_config(
        {
            "proxy": {"pool_mode": "transaction"},
            "pool": {"default_pool_size": 10},
            "auth": {"type": AuthType.TRUST},
            "databases": [
                {"name": "app"},
                {"name": "reports", "dbname": "warehouse", "pool_size": 3, "pool_mode": "session"},
            ],
            "users": [{"name": "alice"}, {"name": "bob", "pool_mode": PoolMode.SESSION}],
        },
        env={},
    )
    assert config.source == "<dict>"
    app, reports = config.database("app"), config.database("reports")
    alice, bob = config.user("alice"), config.user("bob")
    assert app is not None and reports is not None and alice is not None and bob is not None
    assert config.database("missing") is None and config.user("missing") is None
    assert reports.dbname == "warehouse"
    assert config.pool_size_for(app) == 10
    assert config.pool_size_for(reports) == 3
    assert config.pool_mode_for(app, None) is PoolMode.TRANSACTION
    assert config.pool_mode_for(app, alice) is PoolMode.TRANSACTION
    assert config.pool_mode_for(reports, alice) is PoolMode.SESSION
    assert config.pool_mode_for(app, bob) is PoolMode.SESSION
    user_forces_transaction = UserConfig(name="t", pool_mode=PoolMode.TRANSACTION)
    assert config.pool_mode_for(reports, user_forces_transaction) is PoolMode.TRANSACTION


def test_hand_built_config_and_replace() -> None:
    db = DatabaseConfig(name="app", dbname="app")
    config = Config(
        proxy=ProxySettings(), pool=PoolSettings(), auth=AuthSettings(), databases=(db,), users=()
    )
    assert config.source == "<defaults>"
    assert config.database("app") is db
    other = dataclasses.replace(config, databases=(DatabaseConfig(name="b"),))
    assert other.database("app") is None and other.database("b") is not None
    assert dataclasses.asdict(config)["databases"][0]["name"] == "app"
    with pytest.raises(ValueError):
        Config(
            proxy=ProxySettings(),
            pool=PoolSettings(),
            auth=AuthSettings(),
            databases=(db, db),
            users=(),
        )


def test_build_config_rejects_non_mapping_entries() -> None:
    data: dict[str, Any] = {"auth": {"type": "trust"}, "databases": [{"name": "app"}, "oops"]}
    with pytest.raises(ConfigError) as info:
        build_config(data, source="d", env={})
    assert info.value.problems == ["d: databases[1]: expected a table ([[databases]]), got string"]


# -- check_config_main -------------------------------------------------------------------------


@pytest.mark.usefixtures("clean_environ")
def test_check_config_main_ok(capsys: pytest.CaptureFixture[str]) -> None:
    assert check_config_main(str(EXAMPLE)) == 0
    out, err = capsys.readouterr()
    assert out == f"OK: {EXAMPLE}: 1 databases, 1 users, pool_mode=transaction\n"
    assert err == ""


@pytest.mark.usefixtures("clean_environ")
def test_check_config_main_problems(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[proxy]\nlog_level = "loud"\nmax_client_conn = 0\n')
    assert check_config_main(str(path)) == 1
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert lines == [
        f'{path}: proxy.log_level: must be one of "debug", "info", "warning", "error"; got "loud"',
        f"{path}: proxy.max_client_conn: must be >= 1, got 0",
        f"{path}: databases: at least one [[databases]] entry is required",
    ]
