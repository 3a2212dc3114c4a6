"""Robustness against a real PostgreSQL: many clients on few backends, transaction isolation,
and cancel requests that reach only their own query.

Every check that counts server connections asks PostgreSQL itself (pg_stat_activity over a direct
superuser connection), never the proxy's own bookkeeping alone.
"""

from __future__ import annotations

import asyncio
import random
import time

import asyncpg
import pytest

from tests.support.pg import LocalPostgres
from tests.support.proxy import StartProxy
from tests.support.rawpg import RawError, raw_login
from tests.support.robustness import (
    backends,
    client_count,
    one_value,
    proxy_client_count,
    raw_cancel,
    settle,
)
from tests.support.waits import wait_for

# --- 1. many clients, few backends -----------------------------------------------------------


@pytest.mark.slow
async def test_2000_clients_share_10_backends(
    pg: LocalPostgres, start_proxy: StartProxy, admin: asyncpg.Connection
) -> None:
    user, n_clients, pool_size = "bob", 2000, 10
    proxy = start_proxy(
        pool={"default_pool_size": pool_size, "query_wait_timeout_s": 60}, auth={"type": "md5"}
    )
    await settle(admin, user)
    samples: list[int] = []
    stop_sampling = asyncio.Event()

    async def sampler(conn: asyncpg.Connection) -> None:
        while not stop_sampling.is_set():
            samples.append(await backends(conn, user))
            await asyncio.sleep(0.05)  # the sampling period, not a wait

    connect_gate = asyncio.Semaphore(100)
    logged_in = 0
    all_in = asyncio.Event()
    go = asyncio.Event()
    done = 0

    async def one(i: int) -> None:
        nonlocal logged_in, done
        async with connect_gate:
            client = await raw_login(proxy, user)
        try:
            logged_in += 1
            if logged_in == n_clients:
                all_in.set()
            await go.wait()
            # A multi-statement transaction (three round trips on one backend) ...
            assert await client.simple_query("BEGIN") == []
            rows = await client.simple_query(f"SELECT {i}, txid_current() = txid_current()")
            assert rows == [[str(i), "t"]]
            assert await client.simple_query("COMMIT") == []
            # ... then single statements, each its own transaction.
            assert await one_value(client, f"SELECT {i} * 2") == str(i * 2)
            assert await one_value(client, "SELECT current_user") == user
            done += 1
        finally:
            await client.close()

    t0 = time.monotonic()
    sampler_conn = await asyncpg.connect(pg.dsn(dbname="app"))
    sampler_task = asyncio.create_task(sampler(sampler_conn))
    try:
        async with asyncio.timeout(90):
            async with asyncio.TaskGroup() as tg:
                for i in range(n_clients):
                    tg.create_task(one(i))
                await all_in.wait()
                t_login = time.monotonic() - t0
                # Every client is logged in and none has left yet: all 2,000 are held at once.
                assert client_count(proxy) == n_clients
                assert proxy.pool_stats(user=user)["clients"] == n_clients
                go.set()
    finally:
        stop_sampling.set()
        await sampler_task
        await sampler_conn.close()
    elapsed = time.monotonic() - t0
    print(
        f"\n2000 clients: logins {t_login:.1f}s, total {elapsed:.1f}s, "
        f"{len(samples)} samples, max backends {max(samples)}"
    )
    assert done == n_clients
    assert samples and 0 < max(samples) <= pool_size, samples
    assert proxy.pool_stats(user=user)["total"] <= pool_size
    assert await proxy_client_count(proxy, 0) == 0


# --- 2. transaction isolation ----------------------------------------------------------------


async def test_concurrent_transactions_see_only_their_own_state(
    start_proxy: StartProxy,
) -> None:
    proxy = start_proxy(pool={"default_pool_size": 3, "query_wait_timeout_s": 60})
    n_clients, iterations = 50, 12
    seen_pids: set[int] = set()

    async def one(i: int) -> None:
        conn = await asyncpg.connect(proxy.dsn(), statement_cache_size=0)
        try:
            for k in range(iterations):
                marker = f"{i}:{k}"
                async with conn.transaction():
                    await conn.execute("SELECT set_config('test.marker', $1, true)", marker)
                    pid = await conn.fetchval("SELECT pg_backend_pid()")
                    await conn.execute("SELECT pg_sleep(random() * 0.005)")
                    assert await conn.fetchval("SELECT current_setting('test.marker')") == marker
                    # The whole transaction stays on one backend.
                    assert await conn.fetchval("SELECT pg_backend_pid()") == pid
                    seen_pids.add(pid)
                row = await conn.fetchrow(f"SELECT {i}::int AS id, pg_sleep(random() * 0.01)")
                assert row is not None and row["id"] == i
                assert await conn.fetchval("SELECT $1::int + 0", i) == i
                # A transaction-local setting never outlives its transaction on the backend.
                leftover = await conn.fetchval("SELECT current_setting('test.marker', true)")
                assert leftover in (None, ""), leftover
        finally:
            await conn.close()

    async with asyncio.timeout(60):
        async with asyncio.TaskGroup() as tg:
            for i in range(n_clients):
                tg.create_task(one(i))
    # 50 clients really were multiplexed onto at most 3 server connections.
    assert 1 <= len(seen_pids) <= 3, seen_pids
    assert proxy.pool_stats()["total"] <= 3


# --- 4. cancel -------------------------------------------------------------------------------


async def test_asyncpg_timeout_cancels_the_query(
    start_proxy: StartProxy, admin: asyncpg.Connection
) -> None:
    proxy = start_proxy(pool={"default_pool_size": 2})
    conn = await asyncpg.connect(proxy.dsn(), statement_cache_size=0)
    try:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(conn.fetchval("select pg_sleep(30) /* robust-cancel */"), 0.5)
        # Uncancelled, the connection would be busy for the rest of the 30 s sleep.
        assert await asyncio.wait_for(conn.fetchval("select 41 + 1"), 15) == 42

        # The server really stopped sleeping (asyncpg's CancelRequest reached the backend).
        async def stopped() -> bool:
            return not await running(admin, "robust-cancel")

        await wait_for(stopped, what="the server to stop the cancelled query")
    finally:
        await conn.close()


async def running(admin: asyncpg.Connection, marker: str) -> bool:
    """Whether a query containing `marker` is running on the server."""
    n = await admin.fetchval(
        "select count(*) from pg_stat_activity where state = 'active' and query like $1 "
        "and pid <> pg_backend_pid()",
        f"%{marker}%",
    )
    return bool(n)


async def test_cancel_keys_reach_only_their_own_query(
    start_proxy: StartProxy, admin: asyncpg.Connection
) -> None:
    proxy = start_proxy(pool={"default_pool_size": 1, "query_wait_timeout_s": 30})
    a = await raw_login(proxy)
    b = await raw_login(proxy)
    try:
        assert a.pid and b.pid and a.pid != b.pid
        # A is idle (holds no backend): its 50 cancels must not touch B's query on the one
        # backend both share.
        b_query = asyncio.create_task(b.simple_query("select pg_sleep(1.5), 'b-done'"))
        await wait_for(lambda: running(admin, "'b-done'"), what="B's query on the server")
        await asyncio.gather(
            *(raw_cancel(proxy.host, proxy.port, a.pid, a.secret) for _ in range(50))
        )
        # A wrong secret for B's own key does nothing either.
        await raw_cancel(proxy.host, proxy.port, b.pid, b.secret ^ 0x5A5A5A5A)
        # Nor an unknown key.
        await raw_cancel(proxy.host, proxy.port, (b.pid ^ 0x1234) or 1, b.secret)
        # Its result, not 57014: B's query ran to its end.
        assert await b_query == [["", "b-done"]]

        # A's own cancel stops A's own query.
        a_query = asyncio.create_task(a.simple_query("select pg_sleep(20), 'a-long'"))
        await wait_for(lambda: running(admin, "'a-long'"), what="A's query on the server")
        await raw_cancel(proxy.host, proxy.port, a.pid, a.secret)
        with pytest.raises(RawError) as err:
            await asyncio.wait_for(a_query, 10)  # uncancelled, it would run 20 s
        assert err.value.sqlstate == "57014"
        # Both connections remain usable, on the same single backend.
        assert await one_value(a, "select 'a-ok'") == "a-ok"
        assert await one_value(b, "select 'b-ok'") == "b-ok"
    finally:
        await a.close()
        await b.close()


async def test_late_cancel_never_hits_the_next_client(start_proxy: StartProxy) -> None:
    """Cancels that race the end of A's query must not land on B's query, which runs next on the
    same (single) backend."""
    proxy = start_proxy(pool={"default_pool_size": 1, "query_wait_timeout_s": 30})
    a = await raw_login(proxy)
    b = await raw_login(proxy)
    rng = random.Random(11)
    b_errors: list[str] = []
    stop = asyncio.Event()

    async def b_loop() -> int:
        n = 0
        while not stop.is_set():
            try:
                assert await one_value(b, "select 'b' || pg_sleep(0.02)") == "b"
                n += 1
            except RawError as exc:
                b_errors.append(exc.sqlstate)
        return n

    try:
        b_task = asyncio.create_task(b_loop())
        a_cancelled = 0
        for _ in range(25):
            a_query = asyncio.create_task(a.simple_query("select pg_sleep(0.03)"))
            # The random delay is the test: cancels that race the end of A's query.
            await asyncio.sleep(rng.uniform(0.0, 0.06))
            await raw_cancel(proxy.host, proxy.port, a.pid, a.secret)
            try:
                await a_query
            except RawError as exc:
                assert exc.sqlstate == "57014"
                a_cancelled += 1
        stop.set()
        b_done = await b_task
        print(f"\nlate cancel: A cancelled {a_cancelled}/25, B ran {b_done} queries")
        assert b_errors == [], f"B's queries were cancelled by A's key: {b_errors}"
        assert b_done > 0 and a_cancelled > 0
        assert await one_value(a, "select 'a-ok'") == "a-ok"
    finally:
        stop.set()
        await a.close()
        await b.close()
