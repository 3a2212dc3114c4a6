"""Robustness against a real PostgreSQL: pool limits (query wait timeout, max_client_conn,
waiting clients that leave) and server connection lifetimes.

Every check that counts server connections asks PostgreSQL itself (pg_stat_activity over a direct
superuser connection), never the proxy's own bookkeeping alone.
"""

from __future__ import annotations

import asyncio
import secrets
import time

import asyncpg
import pytest

from pgpool_proxy.protocol import messages as m
from tests.support.proxy import PASSWORDS, ProxyThread, StartProxy
from tests.support.rawpg import RawClient, RawError, raw_login
from tests.support.robustness import (
    backends,
    one_value,
    proxy_client_count,
    settle,
)
from tests.support.waits import eventually, wait_for

# --- 5. pool limits --------------------------------------------------------------------------


async def test_query_wait_timeout(start_proxy: StartProxy) -> None:
    proxy = start_proxy(pool={"default_pool_size": 1, "query_wait_timeout_s": 1})
    a = await raw_login(proxy)
    b = await raw_login(proxy)
    try:
        assert await a.simple_query("BEGIN") == []
        assert await one_value(a, "SELECT 1") == "1"
        t0 = time.monotonic()
        b.send(m.query("SELECT 'b'"))
        err = await b.read_error(10)
        elapsed = time.monotonic() - t0
        assert err["C"] == "57014", err
        assert "query_wait_timeout" in err["M"]
        # query_wait_timeout_s (1 s) is the behaviour: not before it, and within 5x it.
        assert 0.8 <= elapsed < 5, elapsed
        assert await b.closed(3)
        # A's transaction is untouched; after it commits new clients are served.
        assert await one_value(a, "SELECT 2") == "2"
        assert await a.simple_query("COMMIT") == []
        c = await raw_login(proxy)
        assert await one_value(c, "SELECT 'c'") == "c"
        await c.close()
        assert await one_value(a, "SELECT 3") == "3"
    finally:
        await a.close()
        await b.close()


async def test_max_client_conn(start_proxy: StartProxy) -> None:
    proxy = start_proxy(proxy={"max_client_conn": 3})
    clients = [await raw_login(proxy) for _ in range(3)]
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
        again = await raw_login(proxy)
        clients.append(again)
        assert await one_value(again, "select 'again'") == "again"
    finally:
        for c in clients:
            await c.close()


async def test_waiting_client_that_leaves_is_forgotten(start_proxy: StartProxy) -> None:
    proxy = start_proxy(pool={"default_pool_size": 1, "query_wait_timeout_s": 10})
    a = await raw_login(proxy)
    waiters = [await raw_login(proxy) for _ in range(3)]
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


# --- 8. server connection lifetimes ----------------------------------------------------------


async def test_server_idle_timeout(start_proxy: StartProxy, admin: asyncpg.Connection) -> None:
    user = "carol"
    await settle(admin, user)
    proxy = start_proxy(pool={"default_pool_size": 3, "server_idle_timeout_s": 0.5})
    clients = [await raw_login(proxy, user) for _ in range(3)]
    try:
        for c in clients:
            assert await c.simple_query("BEGIN") == []
        for c in clients:
            assert await c.simple_query("COMMIT") == []
        assert await backends(admin, user) == 3
        n, elapsed = await eventually(lambda: backends(admin, user), lambda n: n == 0, 5)
        # server_idle_timeout_s (0.5 s, checked on janitor ticks) is the behaviour: within 5x.
        assert n == 0 and elapsed < 2.5, (n, elapsed)
        assert proxy.pool_stats(user=user)["total"] == 0
        # Clients stay connected and get a fresh backend on demand.
        assert await one_value(clients[0], "select 'still here'") == "still here"
    finally:
        for c in clients:
            await c.close()


def count_janitor_ticks(proxy: ProxyThread, key: tuple[str, str]) -> list[int]:
    """Count the pool's janitor ticks from now on (in [0] of the list returned)."""
    ticks = [0]

    def install() -> None:
        assert proxy.server is not None
        pool = proxy.server.pools[key]
        tick = pool.tick

        def counted(now: float) -> None:
            ticks[0] += 1
            tick(now)

        pool.tick = counted  # type: ignore[method-assign]

    proxy.call(install)
    return ticks


async def test_min_pool_size(start_proxy: StartProxy, admin: asyncpg.Connection) -> None:
    user = "carol"
    await settle(admin, user)
    proxy = start_proxy(pool={"min_pool_size": 2})
    c = await raw_login(proxy, user)
    try:
        n, _ = await eventually(lambda: backends(admin, user), lambda n: n >= 2, 3)
        assert n == 2
        # A few janitor ticks: no more than the minimum is opened.
        ticks = count_janitor_ticks(proxy, ("app", user))
        await wait_for(lambda: ticks[0] >= 3, what="three janitor ticks")
        assert await backends(admin, user) == 2
        assert proxy.pool_stats(user=user)["total"] == 2
    finally:
        await c.close()


async def test_server_lifetime(start_proxy: StartProxy, admin: asyncpg.Connection) -> None:
    proxy = start_proxy(pool={"default_pool_size": 1, "server_lifetime_s": 0.5})
    c = await raw_login(proxy)
    try:
        first = await one_value(c, "select pg_backend_pid()")
        # Time passing is the test: the server connection outlives server_lifetime_s.
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


async def test_extended_protocol_copy_releases_the_backend(start_proxy: StartProxy) -> None:
    """libpq's PQexecParams("COPY ... FROM STDIN") sends Parse/Bind/Describe/Execute/Sync, then
    the data, CopyDone and another Sync. The server ignores the first Sync (it arrives in
    copy-in mode) and answers once; the proxy must still see the transaction end and hand the
    single backend to the next client."""
    proxy = start_proxy(pool={"default_pool_size": 1, "query_wait_timeout_s": 3})
    a = await RawClient.connect(proxy.host, proxy.port)
    b = await RawClient.connect(proxy.host, proxy.port)
    try:
        await a.login("alice", PASSWORDS["alice"], "app")
        await b.login("alice", PASSWORDS["alice"], "app")
        table = f"ext_copy_{secrets.token_hex(4)}"
        await a.simple_query(f"create table {table} (x int)")
        a.send(
            m.frame(b"P", f"\0copy {table} from stdin\0\0\0".encode())
            + m.frame(b"B", b"\0\0\0\0\0\0\0\0")
            + m.frame(b"D", b"P\0")
            + m.frame(b"E", b"\0\0\0\0\0")
            + m.frame(b"S")
        )
        seen = []
        while not seen or seen[-1] != b"G":
            seen.append((await a.read_message(5))[0])
        assert seen == [b"1", b"2", b"n", b"G"]
        a.send(m.frame(b"d", b"1\n2\n3\n") + m.frame(b"c") + m.frame(b"S"))
        assert (await a.read_message(5))[0] == b"C"
        assert await a.read_until_ready(5) == ord("I")
        # a stays connected and idle: b must get the only backend.
        assert await b.simple_query(f"select count(*) from {table}") == [["3"]]
        assert (await a.simple_query(f"drop table {table}")) == []
    finally:
        await a.close()
        await b.close()
