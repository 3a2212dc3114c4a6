"""Robustness against a real PostgreSQL: many clients, isolation, cancel, pool limits, dead or
missing servers, clients that vanish mid-transaction, and server-side connection lifetimes.

Every check that counts server connections asks PostgreSQL itself (pg_stat_activity over a direct
superuser connection), never the proxy's own bookkeeping alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import asyncpg
import pytest

from pgpool_proxy.protocol import messages as m
from tests.support.pg import LocalPostgres
from tests.support.proxy import PASSWORDS, ProxyThread
from tests.support.rawpg import RawClient, RawError

T = TypeVar("T")
StartProxy = Callable[..., ProxyThread]

COUNT_SQL = (
    "select count(*) from pg_stat_activity "
    "where usename = $1 and datname = 'app' and backend_type = 'client backend'"
)


# --- helpers ---------------------------------------------------------------------------------


@pytest.fixture
async def admin(pg: LocalPostgres) -> AsyncIterator[asyncpg.Connection]:
    """A direct superuser connection to the "app" database (bypasses the proxy)."""
    conn = await asyncpg.connect(pg.dsn(dbname="app"))
    try:
        yield conn
    finally:
        await conn.close()


async def backends(admin: asyncpg.Connection, user: str) -> int:
    return int(await admin.fetchval(COUNT_SQL, user))


async def eventually(
    probe: Callable[[], Awaitable[T]], ok: Callable[[T], bool], timeout: float
) -> tuple[T, float]:
    """Poll probe() every 20 ms until ok(value) or timeout; return the last value and the time
    it took."""
    t0 = time.monotonic()
    while True:
        value = await probe()
        elapsed = time.monotonic() - t0
        if ok(value) or elapsed > timeout:
            return value, elapsed
        await asyncio.sleep(0.02)


async def settle(admin: asyncpg.Connection, user: str, timeout: float = 10) -> None:
    """Wait until no backend of `user` is left over from an earlier test."""
    n, _ = await eventually(lambda: backends(admin, user), lambda n: n == 0, timeout)
    assert n == 0, f"{n} backends of {user} left over"


async def login(proxy: ProxyThread, user: str = "alice", **params: str) -> RawClient:
    client = await RawClient.connect(proxy.host, proxy.port)
    await client.login(user, PASSWORDS[user], "app", **params)
    return client


async def raw_cancel(host: str, port: int, pid: int, secret: int) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(m.cancel_request(pid, secret))
    await writer.drain()
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()


async def one_value(client: RawClient, sql: str) -> str | None:
    rows = await client.simple_query(sql)
    assert len(rows) == 1 and len(rows[0]) == 1, rows
    return rows[0][0]


def client_count(proxy: ProxyThread) -> int:
    return proxy.call(lambda: proxy.server.client_count if proxy.server else -1)


async def proxy_client_count(proxy: ProxyThread, want: int, timeout: float = 5) -> int:
    async def probe() -> int:
        return client_count(proxy)

    n, _ = await eventually(probe, lambda n: n == want, timeout)
    return n


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
            await asyncio.sleep(0.05)

    connect_gate = asyncio.Semaphore(100)
    logged_in = 0
    all_in = asyncio.Event()
    go = asyncio.Event()
    done = 0

    async def one(i: int) -> None:
        nonlocal logged_in, done
        async with connect_gate:
            client = await login(proxy, user)
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
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(conn.fetchval("select pg_sleep(30) /* robust-cancel */"), 0.5)
        assert await conn.fetchval("select 41 + 1") == 42
        assert time.monotonic() - t0 < 5
        # The server really stopped sleeping (asyncpg's CancelRequest reached the backend).
        running, _ = await eventually(
            lambda: admin.fetchval(
                "select count(*) from pg_stat_activity where state = 'active' "
                "and query like '%robust-cancel%' and pid <> pg_backend_pid()"
            ),
            lambda n: n == 0,
            3,
        )
        assert running == 0
    finally:
        await conn.close()


async def test_cancel_keys_reach_only_their_own_query(start_proxy: StartProxy) -> None:
    proxy = start_proxy(pool={"default_pool_size": 1, "query_wait_timeout_s": 30})
    a = await login(proxy)
    b = await login(proxy)
    try:
        assert a.pid and b.pid and a.pid != b.pid
        # A is idle (holds no backend): its 50 cancels must not touch B's query on the one
        # backend both share.
        t0 = time.monotonic()
        b_query = asyncio.create_task(b.simple_query("select pg_sleep(1.5), 'b-done'"))
        await asyncio.sleep(0.3)
        await asyncio.gather(
            *(raw_cancel(proxy.host, proxy.port, a.pid, a.secret) for _ in range(50))
        )
        # A wrong secret for B's own key does nothing either.
        await raw_cancel(proxy.host, proxy.port, b.pid, b.secret ^ 0x5A5A5A5A)
        # Nor an unknown key.
        await raw_cancel(proxy.host, proxy.port, (b.pid ^ 0x1234) or 1, b.secret)
        assert await b_query == [["", "b-done"]]
        assert time.monotonic() - t0 >= 1.4

        # A's own cancel stops A's own query.
        t0 = time.monotonic()
        a_query = asyncio.create_task(a.simple_query("select pg_sleep(20)"))
        await asyncio.sleep(0.3)
        await raw_cancel(proxy.host, proxy.port, a.pid, a.secret)
        with pytest.raises(RawError) as err:
            await a_query
        assert err.value.sqlstate == "57014"
        assert time.monotonic() - t0 < 3
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
    a = await login(proxy)
    b = await login(proxy)
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


# --- 5. pool limits --------------------------------------------------------------------------


async def test_query_wait_timeout(start_proxy: StartProxy) -> None:
    proxy = start_proxy(pool={"default_pool_size": 1, "query_wait_timeout_s": 1})
    a = await login(proxy)
    b = await login(proxy)
    try:
        assert await a.simple_query("BEGIN") == []
        assert await one_value(a, "SELECT 1") == "1"
        t0 = time.monotonic()
        b.send(m.query("SELECT 'b'"))
        err = await b.read_error(5)
        elapsed = time.monotonic() - t0
        assert err["C"] == "57014", err
        assert "query_wait_timeout" in err["M"]
        assert 0.8 <= elapsed <= 3, elapsed
        assert await b.closed(3)
        # A's transaction is untouched; after it commits new clients are served.
        assert await one_value(a, "SELECT 2") == "2"
        assert await a.simple_query("COMMIT") == []
        c = await login(proxy)
        assert await one_value(c, "SELECT 'c'") == "c"
        await c.close()
        assert await one_value(a, "SELECT 3") == "3"
    finally:
        await a.close()
        await b.close()


async def test_max_client_conn(start_proxy: StartProxy) -> None:
    proxy = start_proxy(proxy={"max_client_conn": 3})
    clients = [await login(proxy) for _ in range(3)]
    try:
        extra = await RawClient.connect(proxy.host, proxy.port)
        with pytest.raises(RawError) as err:
            await extra.login("alice", PASSWORDS["alice"], "app")
        assert err.value.sqlstate == "53300"
        assert await extra.closed(3)
        # A burst of refused clients leaves nothing behind.
        burst = [await RawClient.connect(proxy.host, proxy.port) for _ in range(30)]
        for b in burst:
            b.send(m.startup_message({"user": "alice", "database": "app"}))
        for b in burst:
            assert (await b.read_error(5))["C"] == "53300"
            assert await b.closed(3)
        assert await proxy_client_count(proxy, 3) == 3
        for c in clients:
            assert await one_value(c, "select 1") == "1"
        await clients.pop().close()
        assert await proxy_client_count(proxy, 2) == 2
        again = await login(proxy)
        clients.append(again)
        assert await one_value(again, "select 'again'") == "again"
    finally:
        for c in clients:
            await c.close()


async def test_waiting_client_that_leaves_is_forgotten(start_proxy: StartProxy) -> None:
    proxy = start_proxy(pool={"default_pool_size": 1, "query_wait_timeout_s": 10})
    a = await login(proxy)
    waiters = [await login(proxy) for _ in range(3)]
    try:
        assert await a.simple_query("BEGIN") == []
        for w in waiters:
            w.send(m.query("select 'queued'"))

        async def waiting() -> int:
            return proxy.pool_stats()["waiting"]

        n, _ = await eventually(waiting, lambda n: n == 3, 3)
        assert n == 3
        # Two of the queued clients vanish; one stays.
        waiters[0].writer.transport.abort()
        waiters[1].writer.transport.abort()
        n, _ = await eventually(waiting, lambda n: n == 1, 1.5)
        assert n == 1, "departed clients are still queued for a backend"
        assert await proxy_client_count(proxy, 2, 1) == 2
        assert await a.simple_query("COMMIT") == []
        # The backend goes to the one live waiter.
        assert [(await waiters[2].read_message(5))[0] for _ in range(4)] == [b"T", b"D", b"C", b"Z"]
        assert await one_value(a, "select 'a'") == "a"
        assert proxy.pool_stats()["waiting"] == 0
    finally:
        await a.close()
        for w in waiters:
            await w.close()


# --- 6. dead backends ------------------------------------------------------------------------


async def test_backend_terminated_mid_transaction(
    start_proxy: StartProxy, admin: asyncpg.Connection
) -> None:
    proxy = start_proxy(pool={"default_pool_size": 3})
    await settle(admin, "alice")
    a = await login(proxy)
    b = await login(proxy)
    try:
        assert await a.simple_query("BEGIN") == []
        pid_a = int(await one_value(a, "select pg_backend_pid()") or 0)
        assert await b.simple_query("BEGIN") == []
        pid_b = int(await one_value(b, "select pg_backend_pid()") or 0)
        assert pid_a != pid_b
        assert await admin.fetchval("select pg_terminate_backend($1)", pid_a) is True
        # A learns at once, without sending anything: the server's FATAL and/or the proxy's
        # connection-failure error, then the proxy closes it.
        err = await a.read_error(5)
        assert err["C"] in ("57P01", "08006"), err
        assert await a.closed(3)
        # B's transaction on another backend is untouched.
        assert await one_value(b, "select pg_backend_pid()") == str(pid_b)
        assert await b.simple_query("COMMIT") == []
        # New clients work, and the dead backend's slot was given back: three clients can hold
        # three backends at once again.
        holders = [await login(proxy) for _ in range(3)]
        pids = set()
        for h in holders:
            assert await h.simple_query("BEGIN") == []
            pids.add(await one_value(h, "select pg_backend_pid()"))
        assert len(pids) == 3 and str(pid_a) not in pids
        assert proxy.pool_stats()["total"] == 3
        for h in holders:
            assert await h.simple_query("COMMIT") == []
            await h.close()
        total = proxy.pool_stats()["total"]
        assert total == await backends(admin, "alice") == 3
    finally:
        await a.close()
        await b.close()


async def test_idle_pooled_backend_terminated(
    start_proxy: StartProxy, admin: asyncpg.Connection
) -> None:
    proxy = start_proxy(pool={"default_pool_size": 1})
    c = await login(proxy)
    try:
        pid = int(await one_value(c, "select pg_backend_pid()") or 0)
        assert await admin.fetchval("select pg_terminate_backend($1)", pid) is True
        gone, _ = await eventually(
            lambda: admin.fetchval("select count(*) from pg_stat_activity where pid = $1", pid),
            lambda n: n == 0,
            3,
        )
        assert gone == 0

        async def stats_now() -> dict[str, int]:
            return proxy.pool_stats()

        stats, _ = await eventually(stats_now, lambda s: s["total"] == 0, 2)
        assert stats["total"] == 0, stats
        # The client never held that backend across the kill: its next query just works.
        new_pid = await one_value(c, "select pg_backend_pid()")
        assert new_pid is not None and int(new_pid) != pid
    finally:
        await c.close()


async def test_backend_terminated_while_others_wait(
    start_proxy: StartProxy, admin: asyncpg.Connection
) -> None:
    """The only backend dies under A while B is queued for it: B gets a new backend."""
    proxy = start_proxy(pool={"default_pool_size": 1, "query_wait_timeout_s": 10})
    a = await login(proxy)
    b = await login(proxy)
    try:
        assert await a.simple_query("BEGIN") == []
        pid = int(await one_value(a, "select pg_backend_pid()") or 0)
        b_query = asyncio.create_task(b.simple_query("select pg_backend_pid()"))
        await asyncio.sleep(0.2)
        assert not b_query.done()
        assert await admin.fetchval("select pg_terminate_backend($1)", pid) is True
        err = await a.read_error(5)
        assert err["C"] in ("57P01", "08006"), err
        rows = await asyncio.wait_for(b_query, 5)
        assert rows and rows[0][0] is not None and int(rows[0][0]) != pid
    finally:
        await a.close()
        await b.close()


# --- 7. clients that vanish mid-transaction --------------------------------------------------


@pytest.fixture
async def marker_table(admin: asyncpg.Connection) -> AsyncIterator[str]:
    await admin.execute(
        "DROP TABLE IF EXISTS robust_t7; CREATE TABLE robust_t7 (marker text);"
        "GRANT ALL ON robust_t7 TO PUBLIC"
    )
    yield "robust_t7"
    await admin.execute("DROP TABLE IF EXISTS robust_t7")


async def _idle_in_tx(admin: asyncpg.Connection, user: str) -> int:
    return int(
        await admin.fetchval(
            "select count(*) from pg_stat_activity where usename = $1 and datname = 'app' "
            "and state like 'idle in transaction%'",
            user,
        )
    )


async def _rows(admin: asyncpg.Connection, marker: str) -> int:
    return int(await admin.fetchval("select count(*) from robust_t7 where marker = $1", marker))


@pytest.mark.parametrize("how", ["abort", "terminate_message", "mid_copy"])
async def test_client_vanishes_mid_transaction(
    start_proxy: StartProxy, admin: asyncpg.Connection, marker_table: str, how: str
) -> None:
    user = "carol"
    proxy = start_proxy(pool={"default_pool_size": 1, "query_wait_timeout_s": 5})
    a = await login(proxy, user)
    assert await a.simple_query("BEGIN") == []
    pid = int(await one_value(a, "select pg_backend_pid()") or 0)
    assert await a.simple_query(f"INSERT INTO {marker_table} VALUES ('vanish-{how}')") == []
    if how == "mid_copy":
        a.send(m.query(f"COPY {marker_table} FROM STDIN"))
        t, _ = await a.read_message(5)
        assert t == b"G"  # CopyInResponse
        a.send(m.frame(b"d", f"copy-{how}\n".encode()))
        await a.writer.drain()
        await asyncio.sleep(0.05)
    if how in ("abort", "mid_copy"):
        a.writer.transport.abort()
    else:
        a.send(m.TERMINATE)
        assert await a.closed(3)
        a.writer.close()
    left, elapsed = await eventually(lambda: _idle_in_tx(admin, user), lambda n: n == 0, 3)
    assert left == 0 and elapsed < 1.0, (left, elapsed)
    gone, _ = await eventually(
        lambda: admin.fetchval("select count(*) from pg_stat_activity where pid = $1", pid),
        lambda n: n == 0,
        3,
    )
    assert gone == 0, "the backend of the vanished transaction was kept"
    assert await _rows(admin, f"vanish-{how}") == 0
    assert await _rows(admin, f"copy-{how}") == 0
    # The single pool slot is free again.
    c = await login(proxy, user)
    try:
        assert await c.simple_query(f"INSERT INTO {marker_table} VALUES ('after-{how}')") == []
        assert await one_value(c, "select 'next'") == "next"
    finally:
        await c.close()
    assert await _rows(admin, f"after-{how}") == 1


async def test_client_vanishes_while_query_runs(
    start_proxy: StartProxy, admin: asyncpg.Connection
) -> None:
    proxy = start_proxy(pool={"default_pool_size": 1, "query_wait_timeout_s": 5})
    a = await login(proxy, "carol")
    a.send(m.query("select pg_sleep(2)"))
    await asyncio.sleep(0.3)
    a.writer.transport.abort()
    # The busy backend is not handed to the next client (its reply would go to the wrong
    # client): a new one is opened, so the next query does not wait for the sleep to end.
    t0 = time.monotonic()
    c = await login(proxy, "carol")
    try:
        assert await one_value(c, "select 'fresh'") == "fresh"
        assert await one_value(c, "select 'again'") == "again"
        assert time.monotonic() - t0 < 1.5
    finally:
        await c.close()


# --- 8. server connection lifetimes ----------------------------------------------------------


async def test_server_idle_timeout(start_proxy: StartProxy, admin: asyncpg.Connection) -> None:
    user = "carol"
    await settle(admin, user)
    proxy = start_proxy(pool={"default_pool_size": 3, "server_idle_timeout_s": 0.5})
    clients = [await login(proxy, user) for _ in range(3)]
    try:
        for c in clients:
            assert await c.simple_query("BEGIN") == []
        for c in clients:
            assert await c.simple_query("COMMIT") == []
        assert await backends(admin, user) == 3
        n, elapsed = await eventually(lambda: backends(admin, user), lambda n: n == 0, 5)
        assert n == 0 and elapsed <= 1.5, (n, elapsed)
        assert proxy.pool_stats(user=user)["total"] == 0
        # Clients stay connected and get a fresh backend on demand.
        assert await one_value(clients[0], "select 'still here'") == "still here"
    finally:
        for c in clients:
            await c.close()


async def test_min_pool_size(start_proxy: StartProxy, admin: asyncpg.Connection) -> None:
    user = "carol"
    await settle(admin, user)
    proxy = start_proxy(pool={"min_pool_size": 2})
    c = await login(proxy, user)
    try:
        n, _ = await eventually(lambda: backends(admin, user), lambda n: n >= 2, 3)
        assert n == 2
        await asyncio.sleep(0.6)  # a few janitor ticks: no more than the minimum is opened
        assert await backends(admin, user) == 2
        assert proxy.pool_stats(user=user)["total"] == 2
    finally:
        await c.close()


async def test_server_lifetime(start_proxy: StartProxy, admin: asyncpg.Connection) -> None:
    proxy = start_proxy(pool={"default_pool_size": 1, "server_lifetime_s": 0.5})
    c = await login(proxy)
    try:
        first = await one_value(c, "select pg_backend_pid()")
        await asyncio.sleep(1.0)
        second = await one_value(c, "select pg_backend_pid()")
        assert first != second
        gone, _ = await eventually(
            lambda: admin.fetchval(
                "select count(*) from pg_stat_activity where pid = $1", int(first or 0)
            ),
            lambda n: n == 0,
            3,
        )
        assert gone == 0
    finally:
        await c.close()


# --- 9. the server is down -------------------------------------------------------------------


async def test_backend_down_gives_08001(start_proxy: StartProxy) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proxy = start_proxy(databases=[{"name": "app", "host": "127.0.0.1", "port": port}])
    for _ in range(2):  # the second attempt must not hang behind the first failure either
        t0 = time.monotonic()
        client = await RawClient.connect(proxy.host, proxy.port)
        with pytest.raises(RawError) as err:
            await client.login("alice", PASSWORDS["alice"], "app")
        elapsed = time.monotonic() - t0
        assert err.value.sqlstate == "08001", err.value.fields
        assert f"127.0.0.1:{port}" in err.value.fields["M"]
        assert elapsed < 3, elapsed
        assert await client.closed(3)
    assert await proxy_client_count(proxy, 0) == 0
    assert proxy.pool_stats().get("total", 0) == 0


class Relay:
    """A TCP relay in front of PostgreSQL that a test can cut (a server crash), restart on the
    same port, or turn into a black hole that accepts and never answers."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = 0
        self.blackhole = False
        self.reject = False  # accept, then reset at once (a server that cannot take logins)
        self.accepted = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> Relay:
        self._server = await asyncio.start_server(
            self._handle, "127.0.0.1", self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self.reject:
            writer.transport.abort()
            return
        self._writers.add(writer)
        if self.blackhole:
            with contextlib.suppress(OSError):
                while await reader.read(65536):
                    pass
            return
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self._writers.add(up_writer)
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    async def cut(self) -> None:
        """Stop listening and reset every relayed connection."""
        assert self._server is not None
        self._server.close()
        for w in list(self._writers):
            w.transport.abort()
        self._writers.clear()
        await self._server.wait_closed()


async def test_server_crash_and_recovery(pg: LocalPostgres, start_proxy: StartProxy) -> None:
    relay = await Relay(pg.host, pg.port).start()
    proxy = start_proxy(
        databases=[{"name": "app", "host": "127.0.0.1", "port": relay.port}],
        pool={"default_pool_size": 2, "query_wait_timeout_s": 30},
    )
    try:
        idle = await login(proxy)
        assert await one_value(idle, "select 'up'") == "up"
        busy = await login(proxy)
        assert await busy.simple_query("BEGIN") == []
        await relay.cut()
        # Mid-transaction: told at once that the server connection is gone, then closed.
        err = await busy.read_error(5)
        assert err["C"] == "08006", err
        assert await busy.closed(3)
        # Idle: the next query cannot get a server; the client hears why well before
        # query_wait_timeout (30 s).
        t0 = time.monotonic()
        idle.send(m.query("select 'down'"))
        err = await idle.read_error(5)
        assert err["C"] == "08001", err
        assert f"127.0.0.1:{relay.port}" in err["M"]
        assert time.monotonic() - t0 < 3
        # The server comes back on the same address: new clients are served again.
        await relay.start()
        async with asyncio.timeout(10):
            while True:
                try:
                    again = await login(proxy)
                    assert await one_value(again, "select 'back'") == "back"
                    await again.close()
                    break
                except RawError as exc:
                    assert exc.sqlstate == "08001", exc.fields
                    await asyncio.sleep(0.2)
        assert proxy.pool_stats()["total"] <= 2
    finally:
        await relay.cut()


async def test_server_that_never_answers(pg: LocalPostgres, start_proxy: StartProxy) -> None:
    relay = await Relay(pg.host, pg.port).start()
    relay.blackhole = True
    proxy = start_proxy(
        databases=[{"name": "app", "host": "127.0.0.1", "port": relay.port}],
        pool={"server_connect_timeout_s": 1},
    )
    try:
        t0 = time.monotonic()
        client = await RawClient.connect(proxy.host, proxy.port)
        with pytest.raises(RawError) as err:
            await client.login("alice", PASSWORDS["alice"], "app")
        elapsed = time.monotonic() - t0
        assert err.value.sqlstate == "08001", err.value.fields
        assert "timed out" in err.value.fields["M"]
        assert 0.9 <= elapsed < 2.5, elapsed
        assert await client.closed(3)
    finally:
        await relay.cut()


async def test_failed_server_connects_are_paced(pg: LocalPostgres, start_proxy: StartProxy) -> None:
    relay = await Relay(pg.host, pg.port).start()
    proxy = start_proxy(
        databases=[{"name": "app", "host": "127.0.0.1", "port": relay.port}],
        pool={"default_pool_size": 2, "query_wait_timeout_s": 2},
    )
    try:
        a = await login(proxy)
        assert await a.simple_query("BEGIN") == []  # one healthy backend stays in use
        relay.reject = True  # from now on every new server connection is reset at once
        relay.accepted = 0
        b = await login(proxy)
        b.send(m.query("select 'b'"))  # needs a second backend, which cannot be had
        err = await b.read_error(6)
        assert err["C"] in ("57014", "08001", "08006"), err
        # Waiting 2 s for a server that refuses: a handful of attempts, not a busy loop.
        assert relay.accepted <= 20, f"{relay.accepted} server connection attempts in ~2 s"
        assert await a.simple_query("COMMIT") == []
    finally:
        await relay.cut()
