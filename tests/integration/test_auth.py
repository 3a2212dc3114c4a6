"""Client authentication through the proxy (SCRAM, md5, trust; SCRAM verifier pass-through).

Every test checks an outcome the server produced: rows read back over a direct connection,
server-reported settings, backend pids, SQLSTATEs. Tests that take a `mode` run in both pool
modes.
"""

from __future__ import annotations

import asyncio

import asyncpg
import psycopg
import pytest

from pgpool_proxy.auth.scram import ScramVerifier
from tests.support.clients import MODES, apg, run_psql, start
from tests.support.pg import LocalPostgres
from tests.support.proxy import PASSWORDS, ProxyThread, StartProxy

# --------------------------------------------------------------------------------------------
# 7. Authentication


async def test_auth_scram_login_and_refusals(proxy: ProxyThread) -> None:
    conn = await apg(proxy)
    try:
        assert await conn.fetchval("select current_user") == "alice"
    finally:
        await conn.close()

    with pytest.raises(asyncpg.InvalidPasswordError) as wrong:
        await apg(proxy, password="not-the-password")
    assert wrong.value.sqlstate == "28P01"
    assert 'password authentication failed for user "alice"' in str(wrong.value)

    with pytest.raises(asyncpg.InvalidPasswordError) as unknown:
        await apg(proxy, user="mallory", password="whatever")
    assert unknown.value.sqlstate == "28P01"
    assert 'password authentication failed for user "mallory"' in str(unknown.value)

    with pytest.raises(asyncpg.InvalidCatalogNameError) as nodb:
        await apg(proxy, dbname="no_such_db")
    assert nodb.value.sqlstate == "3D000"
    assert "no_such_db" in str(nodb.value)

    # A wrong password from psycopg (libpq) gets the same refusal.
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        await psycopg.AsyncConnection.connect(
            proxy.dsn(password="nope"), sslmode="disable", connect_timeout=10
        )


def test_auth_md5(pg: LocalPostgres, start_proxy: StartProxy) -> None:
    proxy = start_proxy(auth={"type": "md5"})
    # require_auth makes libpq refuse anything but an md5 exchange.
    with psycopg.connect(
        proxy.dsn(), sslmode="disable", require_auth="md5", prepare_threshold=None
    ) as conn:
        assert conn.execute("select current_user").fetchone() == ("alice",)
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(proxy.dsn(), sslmode="disable", require_auth="scram-sha-256")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(proxy.dsn(password="nope"), sslmode="disable", require_auth="md5")
    out = run_psql(pg, proxy, "-c", "select current_user, 1 + 1")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "alice|2"
    out = run_psql(pg, proxy, "-c", "select 1", password="nope")
    assert out.returncode != 0
    assert "password authentication failed" in out.stderr


def test_auth_trust(pg: LocalPostgres, start_proxy: StartProxy) -> None:
    proxy = start_proxy(auth={"type": "trust"})
    with psycopg.connect(
        host=proxy.host,
        port=proxy.port,
        user="alice",
        dbname="app",
        sslmode="disable",
        require_auth="none",
        prepare_threshold=None,
    ) as conn:
        assert conn.execute("select current_user").fetchone() == ("alice",)
    out = run_psql(pg, proxy, "-c", "select current_user", no_password=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "alice"
    # Trust still refuses users the proxy does not know.
    with pytest.raises(psycopg.OperationalError, match="mallory"):
        psycopg.connect(
            host=proxy.host, port=proxy.port, user="mallory", dbname="app", sslmode="disable"
        )


@pytest.mark.parametrize("mode", MODES)
async def test_backend_auth_methods(start_proxy: StartProxy, mode: str) -> None:
    """alice: server SCRAM; bob: server md5; carol: server trust."""
    proxy = start(start_proxy, mode)
    conns = {u: await apg(proxy, user=u) for u in ("alice", "bob", "carol")}
    try:
        for user, conn in conns.items():
            assert await conn.fetchval("select session_user") == user
            async with conn.transaction():
                assert await conn.fetchval("select $1::int", 5) == 5
        for user in conns:
            assert proxy.pool_stats("app", user)["total"] >= 1
    finally:
        for conn in conns.values():
            await conn.close()


# --------------------------------------------------------------------------------------------
# 8. SCRAM pass-through with a stored verifier


def _alice_verifier(pg: LocalPostgres) -> str:
    text = pg.psql("select rolpassword from pg_authid where rolname = 'alice'")
    assert ScramVerifier.parse(text) is not None, text
    return text


async def test_scram_verifier_passthrough(pg: LocalPostgres, start_proxy: StartProxy) -> None:
    verifier = _alice_verifier(pg)
    proxy = start(
        start_proxy, "transaction", size=3, users=[{"name": "alice", "password": verifier}]
    )
    conns = [await apg(proxy) for _ in range(3)]
    try:
        # Three transactions open at once: three server logins, each with the client's key.
        trs = [c.transaction() for c in conns]
        for tr in trs:
            await tr.start()
        pids = {await c.fetchval("select pg_backend_pid()") for c in conns}
        assert len(pids) == 3
        for c in conns:
            assert await c.fetchval("select current_user") == "alice"
        for tr in trs:
            await tr.commit()
    finally:
        for c in conns:
            await c.close()
    # libpq's SCRAM implementation through the same pass-through.
    async with await psycopg.AsyncConnection.connect(
        proxy.dsn(), sslmode="disable", prepare_threshold=None, connect_timeout=10
    ) as pconn:
        cur = await pconn.execute("select current_user, 6 * 7")
        assert await cur.fetchone() == ("alice", 42)
    with pytest.raises(asyncpg.InvalidPasswordError):
        await apg(proxy, password="wrong")


async def test_scram_verifier_mismatch_is_refused(
    pg: LocalPostgres, start_proxy: StartProxy
) -> None:
    """A verifier with another salt than the server's: the client proves the password to the
    proxy, but the recovered key cannot log into the server. The client gets a clear error."""
    verifier = ScramVerifier.from_password(PASSWORDS["alice"]).to_text()
    assert verifier != _alice_verifier(pg)
    proxy = start(
        start_proxy, "transaction", size=1, users=[{"name": "alice", "password": verifier}]
    )
    with pytest.raises(asyncpg.PostgresError) as err:
        await asyncio.wait_for(apg(proxy), 20)
    assert err.value.sqlstate == "28P01", err.value
