"""A PostgreSQL of its own for the outside suites: they create databases, roles and extensions,
run ALTER SYSTEM and expect a superuser, which must not disturb the rest of the test session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.pg import LocalPostgres
from tests.support.tlsfiles import TlsDir

from .harness import SUPERUSER, SUPERUSER_PASSWORD, OutsideServer


@pytest.fixture(scope="session")
def outside_server() -> Iterator[OutsideServer]:
    tls = TlsDir()
    server = LocalPostgres(
        superuser=SUPERUSER,
        superuser_password=SUPERUSER_PASSWORD,
        settings={"max_connections": "200", "max_prepared_transactions": "10"},
    )
    files = tls.issue("pg", ["127.0.0.1", "localhost"], owner=server.run_as)
    server.settings.update(
        {"ssl": "on", "ssl_cert_file": str(files.cert_file), "ssl_key_file": str(files.key_file)}
    )
    try:
        server.start()
        # The auth methods pg8000's CI configures per database (those databases do not exist:
        # its tests expect 3D000 after a successful login).
        server.set_hba(
            [
                "host pg8000_md5 all 127.0.0.1/32 md5",
                "host pg8000_password all 127.0.0.1/32 password",
                "host all all 127.0.0.1/32 scram-sha-256",
            ]
        )
        yield OutsideServer(server, tls)
    finally:
        server.cleanup()
        tls.remove()
