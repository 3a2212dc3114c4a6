"""The proxy on asyncio's own event loop, where uvloop is not installed (cli.run_loop falls back
to it). asyncio drives a buffered protocol only when it is an asyncio.BufferedProtocol, which
the connection classes the listener and the pool create are (session.client.ClientProtocol,
pool.backend.BackendProtocol) while their compiled bases cannot be: this runs the link, TLS
included, on that loop."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import asyncpg
import psycopg
import pytest

from pgpool_devkit.tls_material import CertFiles
from tests.support.pg import LocalPostgres
from tests.support.proxy import ProxyThread, make_config
from tests.support.tlsfiles import TlsDir


@pytest.fixture(scope="module")
def proxy_cert() -> Iterator[CertFiles]:
    d = TlsDir()
    yield d.issue("proxy", ["127.0.0.1", "localhost"])
    d.remove()


@pytest.fixture
def asyncio_proxy(pg: LocalPostgres, proxy_cert: CertFiles) -> Iterator[ProxyThread]:
    config = make_config(
        pg,
        pool={"default_pool_size": 2},
        client_tls={
            "mode": "allow",
            "cert_file": str(proxy_cert.cert_file),
            "key_file": str(proxy_cert.key_file),
        },
    )
    proxy = ProxyThread(config, loop_factory=asyncio.new_event_loop).start()
    assert type(proxy.loop).__module__.startswith("asyncio")
    yield proxy
    proxy.stop()


def test_tls_and_plaintext_clients(asyncio_proxy: ProxyThread, proxy_cert: CertFiles) -> None:
    dsn = asyncio_proxy.dsn()
    ca = str(proxy_cert.ca_file)
    with psycopg.connect(dsn, sslmode="verify-full", sslrootcert=ca, connect_timeout=10) as conn:
        assert conn.pgconn.ssl_in_use
        assert conn.execute("select %s::int + 1", (41,)).fetchone() == (42,)
    with psycopg.connect(dsn, sslmode="disable", connect_timeout=10) as conn:
        assert conn.execute("select current_user").fetchone() == ("alice",)


async def test_many_clients_share_the_pool(asyncio_proxy: ProxyThread) -> None:
    """Twelve clients over two server connections, simple and extended protocol: each sees only
    its own results."""

    async def client(i: int) -> list[int]:
        conn = await asyncpg.connect(asyncio_proxy.dsn(), ssl=False, statement_cache_size=0)
        try:
            got = []
            for j in range(15):
                got.append(await conn.fetchval("select $1::int * 1000 + $2::int", i, j))
                rows = await conn.fetch(f"select {i} as i, generate_series(1, 50) as n")
                assert [r["i"] for r in rows] == [i] * 50
            return got
        finally:
            await conn.close()

    results = await asyncio.gather(*(client(i) for i in range(12)))
    assert results == [[i * 1000 + j for j in range(15)] for i in range(12)]
    assert asyncio_proxy.pool_stats("app", "alice")["total"] <= 2
