"""Shared fixtures: one real PostgreSQL server per test session, and proxies in front of it."""

from __future__ import annotations

import resource
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.support.pg import LocalPostgres
from tests.support.proxy import PASSWORDS, ProxyThread, make_config

# Thousands of client sockets live in this one process (clients and the in-thread proxy).
_soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
if _soft < _hard:
    resource.setrlimit(resource.RLIMIT_NOFILE, (_hard, _hard))


@pytest.fixture(scope="session")
def pg() -> Iterator[LocalPostgres]:
    """A PostgreSQL server with roles alice (SCRAM), bob (md5) and carol (trust on TCP)."""
    server = LocalPostgres(settings={"max_connections": "300"})
    server.start()
    try:
        server.create_role("alice", PASSWORDS["alice"])
        server.create_role("bob", PASSWORDS["bob"], password_encryption="md5")
        server.create_role("carol", PASSWORDS["carol"])
        server.create_database("app", owner="alice")
        server.psql(
            "GRANT ALL ON DATABASE app TO bob, carol; GRANT ALL ON SCHEMA public TO bob, carol;",
            dbname="app",
        )
        server.set_hba(
            [
                "host all alice 127.0.0.1/32 scram-sha-256",
                "host all bob 127.0.0.1/32 md5",
                "host all carol 127.0.0.1/32 trust",
            ]
        )
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def start_proxy(pg: LocalPostgres) -> Iterator[Callable[..., ProxyThread]]:
    """Start proxies in front of `pg` (config sections as keyword overrides); all are stopped at
    the end of the test."""
    started: list[ProxyThread] = []

    def start(**sections: Any) -> ProxyThread:
        proxy = ProxyThread(make_config(pg, **sections)).start()
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.stop()


@pytest.fixture
def proxy(start_proxy: Callable[..., ProxyThread]) -> ProxyThread:
    """A transaction-mode proxy with a pool of 5 per user."""
    return start_proxy()


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """moto's HTTP server (Secrets Manager, RDS, ...) on an ephemeral port; yields its URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()
