"""[[client_rules]]: parsing, problems named by key, and the first-match lookup."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from pgpool_proxy.config import ConfigError, build_config, client_address, match_client_rule

BASE: dict[str, Any] = {
    "auth": {"type": "scram-sha-256"},
    "databases": [{"name": "app", "host": "db"}],
    "users": [{"name": "alice", "password": "pw"}],
}


def _rules(rules: list[dict[str, Any]]) -> Any:
    return build_config({**BASE, "client_rules": rules}, env={}).client_rules


def test_no_rules_is_an_empty_allow_list() -> None:
    assert build_config(BASE, env={}).client_rules == ()


def test_problems_name_the_key() -> None:
    with pytest.raises(ConfigError) as exc:
        _rules(
            [
                {"address": "10.0.0.0/33"},
                {"address": "10.0.0.1/8"},  # host bits set: a typo more often than not
                {"address": "example.com"},
                {"method": "trust"},
                {"address": "all", "method": "peer"},
                {"address": "all", "users": []},
                {"address": "all", "host": "x"},
            ]
        )
    text = "\n".join(exc.value.problems)
    for path in (
        "client_rules[0].address",
        "client_rules[1].address",
        "client_rules[2].address",
        "client_rules[3].address: required",
        "client_rules[4].method",
        "client_rules[5].users",
        "client_rules[6].host",
    ):
        assert path in text, (path, text)


def test_first_match_wins() -> None:
    rules = _rules(
        [
            {"address": "10.1.0.0/16", "users": ["bob"], "method": "reject"},
            {"address": "10.0.0.0/8", "databases": ["app"], "method": "md5"},
            {"address": "fd00::/8"},
            {"address": "local", "method": "trust"},
            {"address": "all", "method": "reject"},
        ]
    )

    def method(host: str | None, user: str = "alice", db: str = "app") -> str | None:
        addr = client_address(host) if host is not None else None
        rule = match_client_rule(rules, addr, user, db)
        assert rule is not None
        return rule.method

    assert method("10.1.2.3", "bob") == "reject"
    assert method("10.1.2.3") == "md5"
    assert method("10.9.9.9", db="other") == "reject"
    assert method("fd00::5") is None  # auth.type
    assert method(None) == "trust"  # a Unix-socket client
    assert method("192.168.0.1") == "reject"
    # A dual-stack listener sees IPv4 clients as IPv4-mapped IPv6 addresses.
    assert method("::ffff:10.1.2.3", "bob") == "reject"
    assert client_address("::ffff:10.1.2.3") == ipaddress.ip_address("10.1.2.3")
    assert client_address("fe80::1%eth0") == ipaddress.ip_address("fe80::1")


def test_nothing_matches() -> None:
    rules = _rules([{"address": "10.0.0.0/8"}])
    assert match_client_rule(rules, client_address("127.0.0.1"), "alice", "app") is None
    # A network rule never matches a Unix-socket client.
    assert match_client_rule(rules, None, "alice", "app") is None
