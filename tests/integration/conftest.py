"""Fixtures shared by the integration tests (the server and proxies come from tests/conftest.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

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
