"""TLS on both sides of the proxy, with a throwaway CA: client sslmodes, the CVE-2021-3935 class
of plaintext injection, and the proxy's own sslmode toward a PostgreSQL that has ssl = on."""

from __future__ import annotations

import asyncio
import ssl
import struct
from collections.abc import Iterator
from typing import Any

import asyncpg
import psycopg
import pytest

from pgpool_devkit.tls_material import CertFiles
from pgpool_proxy.protocol import messages as m
from tests.support.pg import LocalPostgres
from tests.support.proxy import PASSWORDS, ProxyThread, StartProxy, make_config
from tests.support.robustness import proxy_client_count
from tests.support.tlsfiles import TlsDir

SSL_REQUEST = struct.pack("!II", 8, 80877103)


@pytest.fixture(scope="module")
def tls_dir() -> Iterator[TlsDir]:
    d = TlsDir()
    yield d
    d.remove()


@pytest.fixture(scope="module")
def proxy_cert(tls_dir: TlsDir) -> CertFiles:
    return tls_dir.issue("proxy", ["127.0.0.1", "localhost"])


def client_tls(mode: str, files: CertFiles) -> dict[str, Any]:
    return {"mode": mode, "cert_file": str(files.cert_file), "key_file": str(files.key_file)}


def connect(proxy: ProxyThread, **kw: Any) -> psycopg.Connection[Any]:
    return psycopg.connect(proxy.dsn(), connect_timeout=10, prepare_threshold=None, **kw)


# --------------------------------------------------------------------------------------------
# Client side


def test_allow_serves_tls_and_plaintext(start_proxy: StartProxy, proxy_cert: CertFiles) -> None:
    proxy = start_proxy(client_tls=client_tls("allow", proxy_cert))
    with connect(proxy, sslmode="verify-full", sslrootcert=str(proxy_cert.ca_file)) as conn:
        assert conn.pgconn.ssl_in_use
        assert conn.execute("select current_user").fetchone() == ("alice",)
    with connect(proxy, sslmode="disable") as conn:
        assert not conn.pgconn.ssl_in_use
        assert conn.execute("select 1").fetchone() == (1,)


def test_require_refuses_plaintext(start_proxy: StartProxy, proxy_cert: CertFiles) -> None:
    proxy = start_proxy(client_tls=client_tls("require", proxy_cert))
    with pytest.raises(psycopg.OperationalError) as info:
        connect(proxy, sslmode="disable")
    assert "SSL/TLS is required" in str(info.value)
    with connect(proxy, sslmode="require") as conn:
        assert conn.pgconn.ssl_in_use


async def test_require_refusal_sqlstate(start_proxy: StartProxy, proxy_cert: CertFiles) -> None:
    proxy = start_proxy(client_tls=client_tls("require", proxy_cert))
    with pytest.raises(asyncpg.PostgresError) as info:
        await asyncpg.connect(proxy.dsn(), ssl=False)
    assert info.value.sqlstate == "28000"


def test_disable_answers_n(start_proxy: StartProxy) -> None:
    proxy = start_proxy()
    with pytest.raises(psycopg.OperationalError, match="does not support SSL"):
        connect(proxy, sslmode="require")
    with connect(proxy, sslmode="prefer") as conn:
        assert not conn.pgconn.ssl_in_use


async def test_bulk_and_concurrency_over_tls(
    start_proxy: StartProxy, proxy_cert: CertFiles
) -> None:
    """The hot path (memoryview writes, flow control) works on TLS transports too."""
    proxy = start_proxy(client_tls=client_tls("require", proxy_cert))
    ctx = ssl.create_default_context(cafile=str(proxy_cert.ca_file))

    async def one(i: int) -> int:
        conn = await asyncpg.connect(proxy.dsn(), ssl=ctx, statement_cache_size=0)
        try:
            total = 0
            for _ in range(20):
                total += await conn.fetchval("select $1::int + 1", i)
            return total
        finally:
            await conn.close()

    results = await asyncio.gather(*(one(i) for i in range(20)))
    assert results == [20 * (i + 1) for i in range(20)]
    conn = await asyncpg.connect(proxy.dsn(), ssl=ctx, statement_cache_size=0)
    try:
        big = await conn.fetchval("select repeat('x', 8 * 1024 * 1024)")
        assert len(big) == 8 * 1024 * 1024
        async with conn.transaction():  # COPY FROM STDIN, client -> server, over TLS
            await conn.execute("create temp table t(v text) on commit drop")
            rows = [("y" * 1000,)] * 2000
            await conn.copy_records_to_table("t", records=rows)
            assert await conn.fetchval("select count(*) from t") == 2000
    finally:
        await conn.close()


async def test_plaintext_after_sslrequest_is_refused(
    start_proxy: StartProxy, proxy_cert: CertFiles
) -> None:
    """CVE-2021-3935 class: a StartupMessage pipelined behind SSLRequest (so sent in clear,
    possibly injected by a man in the middle) is never processed."""
    proxy = start_proxy(client_tls=client_tls("allow", proxy_cert))
    reader, writer = await asyncio.open_connection(proxy.host, proxy.port)
    writer.write(SSL_REQUEST + m.startup_message({"user": "alice", "database": "app"}))
    data = await asyncio.wait_for(reader.read(4096), 10)
    assert data[:1] == b"E", data  # not "S": the answer never comes
    fields = m.parse_error_fields(data[5:])
    assert fields["C"] == "08P01"
    assert "unencrypted data after SSL" in fields["M"]
    assert await asyncio.wait_for(reader.read(), 10) == b""
    writer.close()


async def test_plaintext_instead_of_handshake(
    start_proxy: StartProxy, proxy_cert: CertFiles
) -> None:
    """After "S", cleartext protocol bytes fail the handshake: the connection just closes."""
    proxy = start_proxy(client_tls=client_tls("allow", proxy_cert))
    reader, writer = await asyncio.open_connection(proxy.host, proxy.port)
    writer.write(SSL_REQUEST)
    assert await asyncio.wait_for(reader.readexactly(1), 10) == b"S"
    writer.write(m.startup_message({"user": "carol", "database": "app"}))
    rest = await asyncio.wait_for(reader.read(), 10)
    assert b"R" not in rest[:1]  # no authentication request: the login never started
    writer.close()
    assert await proxy_client_count(proxy, 0) == 0


async def _second_request_inside_tls(
    host: str, port: int, ca_file: str, request: bytes
) -> dict[str, str]:
    """SSLRequest, the TLS handshake, then `request` inside TLS: the ErrorResponse's fields."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(SSL_REQUEST)
        assert await asyncio.wait_for(reader.readexactly(1), 10) == b"S"
        ctx = ssl.create_default_context(cafile=ca_file)
        await writer.start_tls(ctx, server_hostname="127.0.0.1")
        writer.write(request)
        head = await asyncio.wait_for(reader.readexactly(5), 10)
        body = await reader.readexactly(struct.unpack("!I", head[1:])[0] - 4)
        assert head[:1] == b"E"
        return m.parse_error_fields(body)
    finally:
        writer.close()


@pytest.mark.parametrize("request_code", [80877103, 80877104], ids=["ssl", "gss"])
async def test_encryption_request_inside_tls_as_postgresql(
    start_proxy: StartProxy,
    proxy_cert: CertFiles,
    ssl_pg: tuple[LocalPostgres, CertFiles],
    request_code: int,
) -> None:
    """Differential: an SSLRequest or a GSSENCRequest once TLS is up is refused by PostgreSQL
    (ssl = on) as an unknown protocol version, FATAL 0A000; the proxy refuses it the same."""
    request = struct.pack("!II", 8, request_code)
    server, files = ssl_pg
    direct = await _second_request_inside_tls(server.host, server.port, str(files.ca_file), request)
    proxy = start_proxy(client_tls=client_tls("allow", proxy_cert))
    through = await _second_request_inside_tls(
        proxy.host, proxy.port, str(proxy_cert.ca_file), request
    )
    assert direct["C"] == "0A000", direct
    assert {k: through[k] for k in "SCM"} == {k: direct[k] for k in "SCM"}


# --------------------------------------------------------------------------------------------
# Server side: the proxy's own connections to a PostgreSQL with ssl = on


@pytest.fixture(scope="module")
def ssl_pg(tls_dir: TlsDir) -> Iterator[tuple[LocalPostgres, CertFiles]]:
    server = LocalPostgres()
    files = tls_dir.issue("pg", ["127.0.0.1"], owner=server.run_as)
    server.settings.update(
        {
            "ssl": "on",
            "ssl_cert_file": str(files.cert_file),
            "ssl_key_file": str(files.key_file),
        }
    )
    try:
        server.start()
        server.create_role("alice", PASSWORDS["alice"])
        server.create_database("app", owner="alice")
        # Only TLS connections may log in as alice.
        server.set_hba(
            ["hostssl all alice 127.0.0.1/32 scram-sha-256", "hostnossl all alice 0.0.0.0/0 reject"]
        )
        yield server, files
    finally:
        server.cleanup()


def start_for(server: LocalPostgres, **sections: Any) -> ProxyThread:
    """A proxy in front of `server`, started by `with`."""
    return ProxyThread(make_config(server, **sections))


@pytest.mark.parametrize("mode", ["prefer", "require", "verify-ca", "verify-full"])
def test_server_tls_modes(ssl_pg: tuple[LocalPostgres, CertFiles], mode: str) -> None:
    server, files = ssl_pg
    tls = {"mode": mode, "ca_file": str(files.ca_file)}
    with start_for(server, server_tls=tls) as proxy, connect(proxy, sslmode="disable") as conn:
        row = conn.execute("select ssl from pg_stat_ssl where pid = pg_backend_pid()").fetchone()
        assert row == (True,)


def test_server_tls_disable_is_refused_by_hostssl(ssl_pg: tuple[LocalPostgres, CertFiles]) -> None:
    server, _ = ssl_pg
    with start_for(server) as proxy:
        with pytest.raises(psycopg.OperationalError) as info:
            connect(proxy, sslmode="disable")
        assert "no encryption" in str(info.value) or "rejects connection" in str(info.value)


async def refusal(proxy: ProxyThread) -> asyncpg.PostgresError:
    with pytest.raises(asyncpg.PostgresError) as info:
        await asyncpg.connect(proxy.dsn(), ssl=False)
    return info.value


async def test_server_verify_ca_wrong_ca(ssl_pg: tuple[LocalPostgres, CertFiles]) -> None:
    server, _ = ssl_pg
    other = TlsDir()
    try:
        wrong_ca = other.issue("x", ["127.0.0.1"]).ca_file
        with start_for(server, server_tls={"mode": "verify-ca", "ca_file": str(wrong_ca)}) as p:
            err = await refusal(p)
            assert err.sqlstate == "08001"
            assert "certificate verify failed" in str(err).lower()
    finally:
        other.remove()


async def test_server_verify_full_wrong_host(ssl_pg: tuple[LocalPostgres, CertFiles]) -> None:
    """The certificate names 127.0.0.1; reaching the server as "localhost" must fail."""
    server, files = ssl_pg
    config_db = [{"name": "app", "host": "localhost", "port": server.port}]
    with start_for(
        server,
        databases=config_db,
        server_tls={"mode": "verify-full", "ca_file": str(files.ca_file)},
    ) as proxy:
        err = await refusal(proxy)
        assert err.sqlstate == "08001"
        assert "hostname mismatch" in str(err).lower()


async def test_server_require_without_server_ssl(pg: LocalPostgres) -> None:
    with start_for(pg, server_tls={"mode": "require"}) as proxy:
        err = await refusal(proxy)
        assert err.sqlstate == "08001"
        assert "does not support SSL" in str(err)
    with (
        start_for(pg, server_tls={"mode": "prefer"}) as proxy,
        connect(proxy, sslmode="disable") as conn,
    ):
        assert conn.execute("select 1").fetchone() == (1,)
