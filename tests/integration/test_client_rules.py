"""[[client_rules]]: the client address allow-list, decided at login as pg_hba.conf decides,
through the real proxy in front of real PostgreSQL."""

from __future__ import annotations

import socket
from typing import Any

import asyncpg
import pytest

from pgpool_proxy.counters import AUTH_CLIENT_RULES
from tests.support.proxy import ProxyThread, StartProxy


async def _refused(dsn: str) -> asyncpg.PostgresError:
    with pytest.raises(asyncpg.PostgresError) as exc:
        await asyncpg.connect(dsn)
    return exc.value


async def _served(dsn: str, **kw: Any) -> None:
    c = await asyncpg.connect(dsn, **kw)
    try:
        assert await c.fetchval("SELECT current_user") is not None
    finally:
        await c.close()


def _refusals(proxy: ProxyThread) -> int:
    def read() -> int:
        assert proxy.server is not None
        return proxy.server.counters.auth_failures[AUTH_CLIENT_RULES]

    return proxy.call(read)


async def test_no_rule_matches_is_pg_hba_no_entry(start_proxy: StartProxy) -> None:
    proxy = start_proxy(client_rules=[{"address": "10.0.0.0/8"}])
    err = await _refused(proxy.dsn())
    assert err.sqlstate == "28000"
    # PostgreSQL's wording (auth.c, uaImplicitReject), so tools that match it keep working.
    assert str(err) == (
        'no pg_hba.conf entry for host "127.0.0.1", user "alice", database "app", no encryption'
    )
    assert _refusals(proxy) == 1


async def test_first_match_wins_and_reject_is_pg_hba_rejects(start_proxy: StartProxy) -> None:
    proxy = start_proxy(
        client_rules=[
            {"address": "127.0.0.1/32", "users": ["bob"], "method": "reject"},
            {"address": "127.0.0.1/32", "databases": ["postgres"], "method": "reject"},
            {"address": "127.0.0.0/8"},
            {"address": "all", "method": "reject"},
        ]
    )
    err = await _refused(proxy.dsn("bob"))
    assert err.sqlstate == "28000"
    assert str(err) == (
        'pg_hba.conf rejects connection for host "127.0.0.1", user "bob", database "app", '
        "no encryption"
    )
    err = await _refused(proxy.dsn("alice", dbname="postgres"))
    assert err.sqlstate == "28000" and 'database "postgres"' in str(err)
    # alice on app passes the rule for 127.0.0.0/8 and still needs her password.
    await _served(proxy.dsn("alice"))
    err = await _refused(proxy.dsn("alice", password="wrong"))
    assert err.sqlstate == "28P01"
    assert _refusals(proxy) == 2


async def test_rule_method_overrides_auth_type(start_proxy: StartProxy) -> None:
    proxy = start_proxy(
        client_rules=[
            {"address": "127.0.0.1", "users": ["carol"], "method": "trust"},
            {"address": "127.0.0.1", "users": ["bob"], "method": "md5"},
            {"address": "all"},
        ]
    )
    # trust: no password asked at all.
    await _served(proxy.dsn("carol", password="not-her-password"))
    # md5 (bob's password is stored in plaintext, so md5 can check it), and a wrong one fails.
    await _served(proxy.dsn("bob"))
    assert (await _refused(proxy.dsn("bob", password="nope"))).sqlstate == "28P01"
    # Everyone else: auth.type (scram-sha-256).
    await _served(proxy.dsn("alice"))
    assert (await _refused(proxy.dsn("alice", password="nope"))).sqlstate == "28P01"


async def test_rules_apply_to_the_admin_console(start_proxy: StartProxy) -> None:
    proxy = start_proxy(
        admin={"admin_users": ["alice"]},
        client_rules=[{"address": "all", "databases": ["app"]}],
    )
    err = await _refused(proxy.dsn("alice", dbname="pgbouncer"))
    assert err.sqlstate == "28000" and 'database "pgbouncer"' in str(err)


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback on this host")
async def test_ipv6_networks(start_proxy: StartProxy) -> None:
    proxy = start_proxy(
        proxy={"listen": "[::1]:0"},
        client_rules=[
            {"address": "127.0.0.0/8"},
            {"address": "::1/128", "users": ["alice"]},
        ],
    )
    host = f"[{proxy.host}]" if ":" in proxy.host else proxy.host
    dsn = f"postgresql://alice:alice-pw@{host}:{proxy.port}/app"
    await _served(dsn)
    err = await _refused(f"postgresql://bob:bob-pw@{host}:{proxy.port}/app")
    assert str(err) == (
        'no pg_hba.conf entry for host "::1", user "bob", database "app", no encryption'
    )
