"""End-to-end smoke: real clients through the proxy to a real PostgreSQL."""

from __future__ import annotations

import subprocess

import asyncpg

from tests.support.pg import LocalPostgres
from tests.support.proxy import ProxyThread


def test_psql_queries(pg: LocalPostgres, proxy: ProxyThread) -> None:
    out = subprocess.run(
        [
            pg.bin("psql"),
            "-X",
            "-At",
            proxy.dsn(),
            "-c",
            "select 40 + 2",
            "-c",
            "select current_user",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert out.stdout.split() == ["42", "alice"]


async def test_asyncpg_roundtrip(proxy: ProxyThread) -> None:
    conn = await asyncpg.connect(proxy.dsn(), statement_cache_size=0)
    try:
        assert await conn.fetchval("select $1::int + 1", 41) == 42
        async with conn.transaction():
            # Both calls run inside one transaction, hence on one backend.
            assert await conn.fetchval("select txid_current() = txid_current()") is True
    finally:
        await conn.close()
