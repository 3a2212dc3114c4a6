"""Faults between the proxy and a real PostgreSQL, and of PostgreSQL itself.

Network faults go through tests.support.chaos.ChaosRelay (RST, a black hole that keeps the
socket open, 1-byte fragmentation, latency); real faults hit a private PostgreSQL (SIGKILL of a
backend, which makes PostgreSQL restart every backend, and `pg_ctl restart -m fast`) under 50
writing clients. Each test asserts: every affected client gets an ErrorResponse with a proper
SQLSTATE within a bound (never a hang), the pool recovers by itself, and no acknowledged COMMIT
is lost (rows counted directly on the server). pg_terminate_backend of a server connection in
use, idle and with clients queued is covered in test_failures.py.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TypeVar

import asyncpg
import pytest

from pgpool_proxy.errors import DisconnectReason
from pgpool_proxy.protocol import messages as m
from pgpool_proxy.runtime.lifecycle import apply_config
from tests.support.chaos import ChaosRelay, Mode
from tests.support.pg import LocalPostgres
from tests.support.proxy import PASSWORDS, ProxyThread, StartProxy, make_config
from tests.support.rawpg import RawClient, RawError, raw_login
from tests.support.robustness import backends, one_value, settle
from tests.support.waits import eventually, wait_for

T = TypeVar("T")


@pytest.fixture
async def relay(pg: LocalPostgres) -> AsyncIterator[ChaosRelay]:
    r = await ChaosRelay(pg.host, pg.port).start()
    try:
        yield r
    finally:
        r.mode = Mode.PASS
        await r.cut()


@pytest.fixture
async def chaos_table(admin: asyncpg.Connection) -> AsyncIterator[str]:
    await admin.execute(
        "DROP TABLE IF EXISTS chaos_t; CREATE TABLE chaos_t (marker text);"
        "GRANT ALL ON chaos_t TO PUBLIC"
    )
    yield "chaos_t"
    await admin.execute("DROP TABLE IF EXISTS chaos_t")


def via(relay: ChaosRelay, **pool: object) -> dict[str, object]:
    return {
        "databases": [{"name": "app", "host": "127.0.0.1", "port": relay.port}],
        "pool": {"query_wait_timeout_s": 10, "server_connect_timeout_s": 1, **pool},
    }


async def markers(admin: asyncpg.Connection, marker: str) -> int:
    return int(await admin.fetchval("select count(*) from chaos_t where marker = $1", marker))


def disconnects(proxy: ProxyThread, reason: DisconnectReason) -> int:
    def read() -> int:
        assert proxy.server is not None
        pool = proxy.server.pools.get(("app", "alice"))
        return pool.server_disconnects[reason] if pool else 0

    return proxy.call(read)


async def until(probe: Callable[[], Awaitable[T]], ok: Callable[[T], bool], timeout: float) -> T:
    value, _ = await eventually(probe, ok, timeout)
    return value


# --- keepalive --------------------------------------------------------------------------------


async def test_keepalive_and_user_timeout_on_both_sides(
    pg: LocalPostgres, start_proxy: StartProxy
) -> None:
    proxy = start_proxy(
        pool={"tcp_keepidle_s": 7, "tcp_keepintvl_s": 3, "tcp_keepcnt": 4, "tcp_user_timeout_s": 9}
    )
    c = await raw_login(proxy)
    try:
        assert await one_value(c, "select 1") == "1"

        def options() -> list[tuple[int, ...]]:
            assert proxy.server is not None
            socks = [
                b.transport.get_extra_info("socket")
                for b in proxy.server.pools[("app", "alice")].backends
                if b.transport is not None
            ]
            socks += [
                cl.transport.get_extra_info("socket")
                for cl in proxy.server._all_clients
                if cl.transport is not None
            ]
            out = []
            for s in socks:
                vals = [s.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)]
                for name in ("TCP_KEEPIDLE", "TCP_KEEPINTVL", "TCP_KEEPCNT", "TCP_USER_TIMEOUT"):
                    if hasattr(socket, name):
                        vals.append(s.getsockopt(socket.IPPROTO_TCP, getattr(socket, name)))
                out.append(tuple(vals))
            return out

        got = proxy.call(options)
        assert len(got) == 2, got  # one server socket, one client socket
        want = (1, 7, 3, 4, 9000)[: len(got[0])]
        assert all(v == want for v in got), got
        # A reload (or the console's SET) applies to clients accepted and servers opened
        # from then on.
        new = make_config(pg, pool={"tcp_keepidle_s": 8, "tcp_user_timeout_s": 2})
        proxy.call(lambda: apply_config(proxy.server, new))  # type: ignore[arg-type]
        pool = proxy.call(lambda: proxy.server.pools[("app", "alice")])  # type: ignore[union-attr]
        proxy.call(lambda: pool.retire(DisconnectReason.POOL_CLOSED))  # the idle server goes
        await c.close()
        c = await raw_login(proxy)
        assert await one_value(c, "select 1") == "1"
        got = proxy.call(options)
        assert len(got) == 2, got
        want = (1, 8, 5, 3, 2000)[: len(got[0])]
        assert all(v == want for v in got), got
    finally:
        await c.close()


# --- RST ------------------------------------------------------------------------------------


async def test_rst_mid_transaction(
    start_proxy: StartProxy, relay: ChaosRelay, admin: asyncpg.Connection, chaos_table: str
) -> None:
    proxy = start_proxy(**via(relay, default_pool_size=3))
    busy = await raw_login(proxy)
    idle = await raw_login(proxy)
    try:
        assert await idle.simple_query(f"INSERT INTO {chaos_table} VALUES ('rst-committed')") == []
        assert await busy.simple_query("BEGIN") == []
        assert await busy.simple_query(f"INSERT INTO {chaos_table} VALUES ('rst-open')") == []
        assert relay.reset() >= 2
        # Told at once (read_error's 3 s), not when something times out.
        err = await busy.read_error(3)
        assert err["C"] == "08006", err
        assert "server connection lost" in err["M"]
        assert await busy.closed(3)
        # The idle client held no server connection: it notices nothing, its next query runs
        # on a fresh one.
        assert await one_value(idle, "select 'after rst'") == "after rst"
        assert await markers(admin, "rst-committed") == 1
        assert await markers(admin, "rst-open") == 0
        # No server connection of the reset ones lingers on PostgreSQL; the pool is back to
        # what its clients use.
        left = await until(lambda: backends(admin, "alice"), lambda n: n == 1, 5)
        assert left == 1
        assert proxy.pool_stats()["total"] == 1
    finally:
        await busy.close()
        await idle.close()


# --- black hole -----------------------------------------------------------------------------


async def test_blackhole_mid_transaction_is_bounded_by_query_timeout(
    start_proxy: StartProxy, relay: ChaosRelay, admin: asyncpg.Connection, chaos_table: str
) -> None:
    await settle(admin, "alice")
    proxy = start_proxy(**via(relay, default_pool_size=2, query_timeout_s=1))
    a = await raw_login(proxy)
    b = await raw_login(proxy)
    try:
        assert await a.simple_query(f"INSERT INTO {chaos_table} VALUES ('bh-committed')") == []
        assert await a.simple_query("BEGIN") == []
        assert await a.simple_query(f"INSERT INTO {chaos_table} VALUES ('bh-open')") == []
        relay.mode = Mode.BLACKHOLE
        t0 = time.monotonic()
        a.send(m.query("select 'into the void'"))
        b.send(m.query("select 'into the void'"))  # a new server connection, blackholed too
        err_a = await a.read_error(10)
        elapsed_a = time.monotonic() - t0
        err_b = await b.read_error(15)
        assert err_a["C"] == "57014", err_a
        assert "query_timeout" in err_a["M"] and "server connection closed" in err_a["M"]
        # query_timeout_s (1 s) is the behaviour: not before it, and within 5x it.
        assert 0.9 <= elapsed_a < 5, elapsed_a
        # B could not even get a server (logins are blackholed too): told once the pool's
        # connects have timed out (server_connect_timeout_s = 1; the slot A's connection gave
        # back starts a second attempt), not left waiting for query_wait_timeout (10 s).
        assert err_b["C"] in ("57014", "08001"), err_b
        assert "query_wait_timeout" not in err_b["M"], err_b
        assert await a.closed(3) and await b.closed(3)
        assert disconnects(proxy, DisconnectReason.QUERY_TIMEOUT) == 1
        relay.mode = Mode.PASS
        # Connects already sent into the black hole still time out; after them the pool
        # recovers by itself: a new client commits, and the black-holed slots were given back.
        stats = await until(
            lambda: asyncio.to_thread(proxy.pool_stats), lambda s: s.get("connecting") == 0, 5
        )
        assert stats["connecting"] == 0, stats
        c = await raw_login(proxy)
        try:
            assert await c.simple_query(f"INSERT INTO {chaos_table} VALUES ('bh-after')") == []
        finally:
            await c.close()
        assert await markers(admin, "bh-committed") == 1
        assert await markers(admin, "bh-after") == 1
        assert await markers(admin, "bh-open") == 0
        assert proxy.pool_stats()["total"] <= 2
        left = await until(lambda: backends(admin, "alice"), lambda n: n <= 1, 5)
        assert left <= 1
    finally:
        await a.close()
        await b.close()


async def test_blackhole_during_settings_replay_is_bounded_without_query_timeout(
    start_proxy: StartProxy, relay: ChaosRelay, admin: asyncpg.Connection
) -> None:
    """query_timeout_s is off (the default): the proxy's own statements are still bounded."""
    await settle(admin, "alice")
    proxy = start_proxy(**via(relay, default_pool_size=1, server_check_timeout_s=0.5))
    a = await raw_login(proxy, application_name="tenant-a")
    b = await raw_login(proxy, application_name="tenant-b")
    try:
        assert await one_value(a, "show application_name") == "tenant-a"
        relay.mode = Mode.BLACKHOLE
        t0 = time.monotonic()
        # B takes the one server connection; its settings must be replayed there first.
        b.send(m.query("show application_name"))
        err = await b.read_error(5)
        elapsed = time.monotonic() - t0
        assert err["C"] == "08006", err
        assert "server_check_timeout_s" in err["M"]
        # server_check_timeout_s (0.5 s) is the behaviour: not before it, within 5x it.
        assert 0.4 <= elapsed < 2.5, elapsed
        assert await b.closed(3)
        assert disconnects(proxy, DisconnectReason.SERVER_SILENT) == 1
        relay.mode = Mode.PASS
        stats = await until(
            lambda: asyncio.to_thread(proxy.pool_stats), lambda s: s.get("total") == 0, 5
        )
        assert stats["total"] == 0, stats
        assert await one_value(a, "show application_name") == "tenant-a"
    finally:
        await a.close()
        await b.close()


async def test_blackholed_idle_server_is_checked_and_replaced(
    start_proxy: StartProxy, relay: ChaosRelay, admin: asyncpg.Connection
) -> None:
    await settle(admin, "alice")
    proxy = start_proxy(
        **via(
            relay,
            default_pool_size=2,
            min_pool_size=2,
            server_check_delay_s=0.3,
            server_check_timeout_s=0.5,
        )
    )
    c = await raw_login(proxy)
    try:
        assert await one_value(c, "select 1") == "1"
        stats = await until(
            lambda: asyncio.to_thread(proxy.pool_stats), lambda s: s.get("idle") == 2, 5
        )
        assert stats["idle"] == 2, stats

        # Checks pass on a healthy server and keep the connection: after two rounds of
        # checks, the same server process still serves the client.
        def checked_rounds() -> float:
            assert proxy.server is not None
            pool = proxy.server.pools[("app", "alice")]
            return min(b.checked_at - b.created_at for b in pool.backends) / 0.3

        def pool_pids() -> set[int]:
            assert proxy.server is not None
            return {b.pid for b in proxy.server.pools[("app", "alice")].backends}

        before = proxy.call(pool_pids)
        rounds = await until(
            lambda: asyncio.to_thread(proxy.call, checked_rounds), lambda r: r >= 2, 5
        )
        assert rounds >= 2
        assert proxy.pool_stats()["total"] == 2
        assert proxy.call(pool_pids) == before
        assert disconnects(proxy, DisconnectReason.SERVER_SILENT) == 0

        relay.mode = Mode.BLACKHOLE
        t0 = time.monotonic()
        n = await until(
            lambda: asyncio.to_thread(disconnects, proxy, DisconnectReason.SERVER_SILENT),
            lambda n: n == 2,
            5,
        )
        assert n == 2
        # Found by the checks (after server_check_delay_s 0.3 + server_check_timeout_s 0.5),
        # within 5x that.
        assert time.monotonic() - t0 < 4
        relay.mode = Mode.PASS
        # Refilled to min_pool_size without any client asking.
        stats = await until(
            lambda: asyncio.to_thread(proxy.pool_stats), lambda s: s.get("idle") == 2, 8
        )
        assert stats["idle"] == 2, stats
        assert await one_value(c, "select 'served'") == "served"
    finally:
        await c.close()


# --- a live server that is slow: timeouts must not fire, or fire as PgBouncer's would ---------


async def test_latency_is_not_a_timeout(
    start_proxy: StartProxy, relay: ChaosRelay, admin: asyncpg.Connection, chaos_table: str
) -> None:
    # A server login is several round trips: give it time at this latency.
    proxy = start_proxy(
        **via(relay, default_pool_size=4, query_timeout_s=1, server_connect_timeout_s=10)
    )
    relay.mode = Mode.LATENCY
    relay.latency_s = 0.2  # per chunk and direction: each round trip >= 0.4 s

    async def one(i: int) -> float:
        c = await raw_login(proxy)
        try:
            t0 = time.monotonic()
            rows = await c.simple_query(
                f"BEGIN; INSERT INTO {chaos_table} VALUES ('lat-{i}'); COMMIT; select {i}"
            )
            assert rows == [[str(i)]]
            return time.monotonic() - t0
        finally:
            await c.close()

    took = await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(8))), 30)
    assert min(took) >= 0.4, took
    assert disconnects(proxy, DisconnectReason.QUERY_TIMEOUT) == 0
    for i in range(8):
        assert await markers(admin, f"lat-{i}") == 1


async def test_query_timeout_cancels_a_long_query(
    start_proxy: StartProxy, admin: asyncpg.Connection
) -> None:
    await settle(admin, "alice")
    proxy = start_proxy(pool={"default_pool_size": 1, "query_timeout_s": 0.5})
    c = await raw_login(proxy)
    try:
        pid = int(await one_value(c, "select pg_backend_pid()") or 0)
        t0 = time.monotonic()
        c.send(m.query("select pg_sleep(30)"))
        err = await c.read_error(5)
        assert err["C"] == "57014", err
        # query_timeout_s (0.5 s) is the behaviour, within 5x it (the query would take 30 s).
        assert time.monotonic() - t0 < 2.5
        assert await c.closed(3)
        # The server process stopped sleeping and left: the pool's promise to the database
        # (one connection) holds, and the next client gets a fresh one at once.
        gone = await until(
            lambda: admin.fetchval("select count(*) from pg_stat_activity where pid = $1", pid),
            lambda n: n == 0,
            5,
        )
        assert gone == 0
        d = await raw_login(proxy)
        try:
            assert await one_value(d, "select 'next'") == "next"
        finally:
            await d.close()
    finally:
        await c.close()


# --- 1-byte fragmentation -------------------------------------------------------------------


async def test_one_byte_fragments_change_nothing(
    start_proxy: StartProxy, relay: ChaosRelay, admin: asyncpg.Connection, chaos_table: str
) -> None:
    proxy = start_proxy(**via(relay, default_pool_size=2))
    relay.mode = Mode.FRAGMENT  # the server login (SCRAM) is fragmented too
    conn = await asyncpg.connect(proxy.dsn(), statement_cache_size=100)
    try:
        rows = await conn.fetch("select g, repeat('x', g) from generate_series(1, 60) g")
        assert [(r[0], len(r[1])) for r in rows] == [(g, g) for g in range(1, 61)]
        stmt = await conn.prepare("select $1::int * 2, $2::text")
        for i in range(5):
            assert tuple(await stmt.fetchrow(i, f"v{i}")) == (2 * i, f"v{i}")
        async with conn.transaction():
            await conn.executemany(
                f"INSERT INTO {chaos_table} VALUES ($1)", [(f"frag-{i}",) for i in range(10)]
            )
        try:
            await conn.execute("select 1/0")
        except asyncpg.DivisionByZeroError:
            pass
        else:
            raise AssertionError("division by zero passed")
        assert await conn.fetchval("select 'still in sync'") == "still in sync"
    finally:
        await conn.close()
    raw = await raw_login(proxy)
    try:
        raw.send(m.query(f"COPY {chaos_table} FROM STDIN"))
        t, _ = await raw.read_message(5)
        assert t == b"G"
        raw.send(m.frame(b"d", b"frag-copy\n") + m.frame(b"c", b""))
        assert await raw.read_until_ready(5) == ord("I")
    finally:
        await raw.close()
    assert (
        int(await admin.fetchval("select count(*) from chaos_t where marker like 'frag-%'")) == 11
    )


# --- real faults on a private PostgreSQL ----------------------------------------------------


@pytest.fixture(scope="module")
def own_pg() -> Iterator[LocalPostgres]:
    """A server of its own: SIGKILL and restarts must not disturb the session's server."""
    # synchronous_commit on: the harness turns it off for speed, and then PostgreSQL itself
    # may lose its last acknowledged commits in a crash (fsync stays off: a process crash
    # keeps what reached the kernel).
    server = LocalPostgres(settings={"max_connections": "100", "synchronous_commit": "on"})
    server.start()
    try:
        server.create_role("alice", PASSWORDS["alice"])
        server.create_database("app", owner="alice")
        server.set_hba(["host all alice 127.0.0.1/32 scram-sha-256"])
        server.psql(
            "CREATE TABLE w (id int primary key); ALTER TABLE w OWNER TO alice", dbname="app"
        )
        yield server
    finally:
        server.cleanup()


ALLOWED = ("08", "57P")  # connection failure / operator intervention (shutdown, crash, restart)


class Writers:
    """Clients that commit one row per transaction and remember which COMMITs were answered."""

    def __init__(self, proxy: ProxyThread, n: int) -> None:
        self.proxy = proxy
        self.n = n
        self.acked: set[int] = set()
        self.attempted: set[int] = set()
        self.errors: list[str] = []
        self.acked_after: dict[int, int] = {}
        self.after = float("inf")  # transactions begun after this prove recovery
        self.stop = False
        self.hang_stats: dict[str, int] | None = None
        self.slowest = 0.0  # the longest acknowledged transaction, queueing included
        self._next = 0

    async def run(self, w: int) -> None:
        client: RawClient | None = None
        while not self.stop:
            phase = "login"
            try:
                if client is None:
                    client = await asyncio.wait_for(
                        RawClient.connect(self.proxy.host, self.proxy.port), 10
                    )
                    await asyncio.wait_for(client.login("alice", PASSWORDS["alice"], "app"), 15)
                self._next += 1
                i = self._next
                self.attempted.add(i)
                started = time.monotonic()
                phase = "query"
                await asyncio.wait_for(
                    client.simple_query(f"BEGIN; INSERT INTO w VALUES ({i}); COMMIT"), 15
                )
                self.acked.add(i)
                self.slowest = max(self.slowest, time.monotonic() - started)
                if started > self.after:
                    self.acked_after[w] = self.acked_after.get(w, 0) + 1
            except RawError as exc:
                self.errors.append(exc.sqlstate)
                await self._drop(client)
                client = None
            except TimeoutError:
                self.errors.append(f"hang:{phase}")
                if self.hang_stats is None:
                    self.hang_stats = await asyncio.to_thread(self.proxy.pool_stats)
                await self._drop(client)
                client = None
            except (OSError, asyncio.IncompleteReadError) as exc:
                # The proxy closed without an ErrorResponse.
                self.errors.append(f"closed:{type(exc).__name__}")
                await self._drop(client)
                client = None

    async def _drop(self, client: RawClient | None) -> None:
        if client is not None:
            client.writer.transport.abort()
        await asyncio.sleep(0.05)  # reconnect pacing, not synchronisation
        return None


@pytest.mark.parametrize("fault", ["sigkill_backend", "restart_fast"])
async def test_real_fault_under_50_writers(
    own_pg: LocalPostgres, start_proxy: StartProxy, fault: str
) -> None:
    proxy = start_proxy(
        databases=[{"name": "app", "host": own_pg.host, "port": own_pg.port}],
        # A client waits at most query_wait_timeout_s (10) for a server: a writer that waits
        # 15 s for an answer has found a hang.
        pool={"default_pool_size": 10, "query_wait_timeout_s": 10, "server_login_retry_s": 0.2},
    )
    writers = Writers(proxy, 50)
    tasks = [asyncio.create_task(writers.run(w)) for w in range(50)]
    try:
        # Load first: every writer has committed at least once.
        await wait_for(
            lambda: len(writers.acked) >= 100,
            timeout=20,
            what=lambda: f"100 commits ({len(writers.acked)}, errors {writers.errors[:5]})",
        )
        if fault == "sigkill_backend":
            admin = await asyncpg.connect(own_pg.dsn(dbname="app"))
            try:
                pid = await admin.fetchval(
                    "select pid from pg_stat_activity where usename = 'alice' limit 1"
                )
            finally:
                await admin.close()
            os.kill(int(pid), signal.SIGKILL)
            # PostgreSQL restarts every backend: wait until the clients have felt it.
            await wait_for(lambda: writers.errors, what="the clients to feel the restart")
        else:
            await asyncio.to_thread(own_pg.restart)
        # Recovery: every writer must commit again, in a transaction begun after the fault.
        writers.after = time.monotonic()
        t1 = time.monotonic()
        await wait_for(
            lambda: len(writers.acked_after) == 50,
            timeout=25,
            what=lambda: (
                f"all 50 writers to commit again ({len(writers.acked_after)}, "
                f"errors {writers.errors[-10:]})"
            ),
        )
        recovered_s = time.monotonic() - t1
    finally:
        writers.stop = True
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)
    bad = [e for e in writers.errors if not e.startswith(ALLOWED)]
    assert not bad, (bad, writers.hang_stats)
    assert writers.errors, "the fault was not noticed at all"
    admin = await asyncpg.connect(own_pg.dsn(dbname="app"))
    try:
        present = {r[0] for r in await admin.fetch("select id from w")}
        await admin.execute("TRUNCATE w")
    finally:
        await admin.close()
    lost = writers.acked - present
    # For the record (pytest -s): what the clients saw.
    print(
        f"{fault}: {len(writers.acked)} commits acknowledged, {len(present)} rows, errors "
        f"{dict(Counter(writers.errors))}, all 50 writers committing again after "
        f"{recovered_s:.2f}s, slowest acknowledged transaction {writers.slowest:.2f}s"
    )
    assert not lost, f"{len(lost)} acknowledged commits lost"
    assert present <= writers.attempted
