"""Fixtures shared by the integration tests (the server and proxies come from tests/conftest.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest

from tests.support.pg import LocalPostgres


@pytest.fixture
async def admin(pg: LocalPostgres) -> AsyncIterator[asyncpg.Connection]:
    """A direct superuser connection to the "app" database (bypasses the proxy)."""
    conn = await asyncpg.connect(pg.dsn(dbname="app"))
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture(scope="module")
def atk(pg: LocalPostgres) -> Iterator[LocalPostgres]:
    """The test server with the session-attack tests' objects (roles, schema, functions), made
    once per module that asks for them."""
    from tests.integration.test_session_attacks import SETUP, TEARDOWN

    pg.psql(SETUP, dbname="app")
    yield pg
    pg.psql(TEARDOWN, dbname="app")
