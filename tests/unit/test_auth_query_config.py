"""auth_query's pieces without a server: the configuration's rules and the look-up's bytes."""

from __future__ import annotations

import struct
from typing import Any

import pytest

from pgpool_proxy.config import ConfigError, build_config
from pgpool_proxy.protocol import messages as m


def config(auth: dict[str, Any], users: list[dict[str, Any]], **db: Any) -> Any:
    return build_config(
        {
            "auth": auth,
            "databases": [{"name": "app", **db}, {"name": "other"}],
            "users": users,
        },
        source="<t>",
        env={},
    )


def problems(*args: Any, **kwargs: Any) -> str:
    with pytest.raises(ConfigError) as err:
        config(*args, **kwargs)
    return str(err.value)


def test_lookup_settings_resolve_per_database() -> None:
    cfg = config(
        {"auth_user": "pgb", "auth_dbname": "other"},
        [{"name": "pgb", "password": "pw"}, {"name": "rep", "password": "rep-pw"}],
        auth_user="rep",
        auth_query="SELECT * FROM f($1)",
    )
    default = "SELECT usename, passwd FROM pg_shadow WHERE usename=$1"
    assert cfg.auth_lookup_for(cfg.database("other")) == ("pgb", default, "other")
    assert cfg.auth_lookup_for(cfg.database("app")) == ("rep", "SELECT * FROM f($1)", "other")
    plain = config({}, [{"name": "pgb", "password": "pw"}])
    assert plain.auth_lookup_for(plain.database("app")) is None


def test_auth_user_must_be_a_user_the_proxy_can_log_in_as() -> None:
    assert "auth.auth_user" in problems({"auth_user": "ghost"}, [])
    verifier = "SCRAM-SHA-256$4096:c2FsdA==$" + "A" * 43 + "=:" + "A" * 43 + "="
    text = problems({"auth_user": "pgb"}, [{"name": "pgb", "password": verifier}])
    assert "auth.auth_user" in text and "[[users]] entry with a password" in text
    assert "databases.app.auth_user" in problems({}, [], auth_user="ghost")


def test_auth_dbname_must_name_a_database_and_needs_an_auth_user() -> None:
    users = [{"name": "pgb", "password": "pw"}]
    assert "auth.auth_dbname" in problems({"auth_user": "pgb", "auth_dbname": "nope"}, users)
    assert "auth.auth_dbname: has no effect" in problems({"auth_dbname": "app"}, users)
    assert "databases.app.auth_dbname: has no effect" in problems({}, users, auth_dbname="app")


def test_the_user_name_is_a_bound_parameter_not_sql() -> None:
    name = "o'brien\"; drop table x --"
    data = m.internal_batch([("SELECT $1", [name, None])])
    frames = []
    pos = 0
    while pos < len(data):
        t, n = data[pos : pos + 1], struct.unpack_from("!I", data, pos + 1)[0]
        frames.append((t, data[pos + 5 : pos + 1 + n]))
        pos += 1 + n
    assert [t for t, _ in frames] == [b"C", b"P", b"B", b"E", b"C", b"S"]
    parse = frames[1][1]
    assert b"SELECT $1\0" in parse and name.encode() not in parse
    bind = frames[2][1]
    portal_end = bind.index(b"\0")
    stmt_end = bind.index(b"\0", portal_end + 1)
    rest = bind[stmt_end + 1 :]
    formats, count = struct.unpack_from("!hh", rest)
    assert (formats, count) == (0, 2)
    (length,) = struct.unpack_from("!i", rest, 4)
    assert rest[8 : 8 + length] == name.encode()
    assert struct.unpack_from("!ih", rest, 8 + length) == (-1, 0)
