"""Writer tracking against a real primary and streaming replicas: crash, promotion, split brain,
the reader endpoint and the failover timeout."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest

from tests.support.cluster import DBNAME, PASSWORD, USER, ReplicatedCluster
from tests.support.pg import LocalPostgres
from tests.support.proxy import ProxyThread
from tests.support.waits import wait_for

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster() -> Iterator[ReplicatedCluster]:
    with ReplicatedCluster(replicas=1) as c:
        yield c


def _dsn(proxy: ProxyThread, db: str = DBNAME) -> str:
    return f"postgresql://{USER}:{PASSWORD}@{proxy.host}:{proxy.port}/{db}"


def _writer_address(proxy: ProxyThread) -> str | None:
    def read() -> str | None:
        assert proxy.server is not None
        writer = proxy.server.topologies[DBNAME].writer
        return writer.address if writer is not None else None

    return proxy.call(read)


class WriteLoop:
    """Clients inserting rows through the proxy, recording each COMMIT they saw and when."""

    def __init__(self, dsn: str, clients: int = 4) -> None:
        self.dsn = dsn
        self.clients = clients
        self.committed: list[tuple[int, float]] = []
        self.errors: list[tuple[float, str]] = []
        self._next = 0
        self._stop = False
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._run(k)) for k in range(self.clients)]

    async def stop(self) -> None:
        self._stop = True
        await asyncio.gather(*self._tasks)

    async def _run(self, k: int) -> None:
        conn: asyncpg.Connection | None = None
        while not self._stop:
            try:
                if conn is None or conn.is_closed():
                    conn = await asyncpg.connect(self.dsn, statement_cache_size=0)
                self._next += 1
                i = self._next
                await conn.execute("INSERT INTO writes (id, client) VALUES ($1, $2)", i, k)
                self.committed.append((i, time.monotonic()))
            except (
                asyncpg.PostgresError,
                asyncpg.InterfaceError,
                asyncpg.InternalClientError,
                OSError,
            ) as exc:
                self.errors.append((time.monotonic(), f"{type(exc).__name__}: {exc}"))
                if conn is not None and not conn.is_closed():
                    conn.terminate()
                conn = None
                await asyncio.sleep(0.02)  # reconnect pacing after an error, not a wait
        if conn is not None:
            await conn.close()


async def test_crash_and_promotion_keep_idle_clients_and_every_commit(
    cluster: ReplicatedCluster,
) -> None:
    old_primary, new_primary = cluster.primary, cluster.replicas[0]
    with ProxyThread(cluster.config()) as proxy:
        old_address = f"{old_primary.host}:{old_primary.port}"
        await wait_for(lambda: _writer_address(proxy) == old_address, what="the first writer")
        idle = [await asyncpg.connect(_dsn(proxy), statement_cache_size=0) for _ in range(10)]
        for conn in idle:
            assert await conn.fetchval("SELECT pg_is_in_recovery()") is False
        loop = WriteLoop(_dsn(proxy))
        loop.start()
        await wait_for(lambda: len(loop.committed) >= 20, what="writes before the crash")
        await asyncio.to_thread(old_primary.stop, "immediate")
        await wait_for(lambda: _writer_address(proxy) is None, what="the proxy to see the crash")
        await asyncio.to_thread(new_primary.promote)
        promoted_at = time.monotonic()

        def resumed() -> list[float]:
            return [t for _, t in loop.committed if t > promoted_at]

        await wait_for(
            lambda: len(resumed()) >= 20,
            timeout=30,
            what=f"writes after the promotion (errors: {loop.errors[-5:]})",
        )
        await loop.stop()
        # How fast a promotion is found is the behaviour: polls every 0.5 s (0.1 s while a
        # writer is missing), so 5 s is ten polls' worth, enough on a loaded machine.
        assert min(resumed()) - promoted_at < 5.0
        assert _writer_address(proxy) == f"{new_primary.host}:{new_primary.port}"
        # Idle clients kept their connections and now reach the new writer.
        for conn in idle:
            assert not conn.is_closed()
            assert await conn.fetchval("SELECT pg_is_in_recovery()") is False
        ids = {r["id"] for r in await idle[0].fetch("SELECT id FROM writes")}
        lost = [i for i, _ in loop.committed if i not in ids]
        assert lost == [], f"{len(lost)} committed rows missing on the new writer"
        # Only transactions in flight at the crash saw errors.
        assert len(loop.errors) <= 2 * loop.clients, loop.errors
        failovers = proxy.call(lambda: proxy.server.topologies[DBNAME].failovers)  # type: ignore[union-attr]
        assert failovers == 1

        # Split brain: the old primary comes back unrewound, on timeline 1, claiming to be
        # primary. The promoted server (timeline 2) stays the writer; writes never go back.
        await asyncio.to_thread(old_primary.start)

        def roles() -> dict[str, str]:
            return proxy.call(
                lambda: {h.address: h.role for h in proxy.server.topologies[DBNAME].hosts}  # type: ignore[union-attr]
            )

        await wait_for(lambda: roles()[old_address] == "stale", what="the old primary seen stale")
        assert _writer_address(proxy) == f"{new_primary.host}:{new_primary.port}"
        loop2 = WriteLoop(_dsn(proxy), clients=2)
        loop2._next = 10_000_000
        loop2.start()
        await wait_for(lambda: len(loop2.committed) >= 20, what="writes after the split brain")
        await loop2.stop()
        on_old = old_primary.psql("SELECT count(*) FROM writes WHERE id >= 10000000", dbname=DBNAME)
        assert on_old == "0"
        assert roles()[old_address] == "stale"
        for conn in idle:
            await conn.close()


async def test_no_writer_within_failover_timeout_is_a_clear_error(
    cluster: ReplicatedCluster,
) -> None:
    config = cluster.config(topology={"failover_timeout_s": 1.0})
    with ProxyThread(config) as proxy:
        await wait_for(lambda: _writer_address(proxy) is not None, what="a writer")
        conn = await asyncpg.connect(_dsn(proxy), statement_cache_size=0)
        assert await conn.fetchval("SELECT 1") == 1
        await asyncio.to_thread(cluster.primary.stop, "immediate")
        await wait_for(lambda: _writer_address(proxy) is None, what="the proxy to see the crash")
        started = time.monotonic()
        with pytest.raises(asyncpg.PostgresError) as info:
            await conn.fetchval("SELECT 1")
        waited = time.monotonic() - started
        # asyncpg reports a FATAL error followed by the close as 08003, with the server's
        # message (the proxy sends 08001).
        assert info.value.sqlstate in ("08001", "08003"), str(info.value)
        assert "failover_timeout_s" in str(info.value)
        # The timeout is the behaviour: not before failover_timeout_s (1 s), and within 5x it.
        assert 0.8 <= waited < 5.0
        # The replica still serves the reader endpoint meanwhile.
        ro = await asyncpg.connect(_dsn(proxy, f"{DBNAME}-ro"), statement_cache_size=0)
        assert await ro.fetchval("SELECT pg_is_in_recovery()") is True
        await ro.close()
        conn.terminate()


async def test_reader_endpoint_balances_replicas_and_skips_lagging_ones() -> None:
    with ReplicatedCluster(replicas=2, sync=False) as cluster:
        r1, r2 = cluster.replicas
        config = cluster.config(
            databases=[
                {"name": DBNAME, "hosts": cluster.hosts(), "user": USER, "password": PASSWORD},
                {
                    "name": "ro",
                    "dbname": DBNAME,
                    "hosts": cluster.hosts(),
                    "role": "reader",
                    "max_replica_lag_bytes": 64 * 1024,
                    "reader_fallback": False,
                    "user": USER,
                    "password": PASSWORD,
                },
            ],
            pool={"default_pool_size": 4},
        )
        with ProxyThread(config) as proxy:

            def replicas_known() -> bool:
                topo = proxy.call(lambda: proxy.server.topologies[DBNAME])  # type: ignore[union-attr]
                replicas = topo.replicas()
                # Lag figures for both: the reader pool balances only over measured replicas.
                return (
                    len(replicas) == 2
                    and topo.writer is not None
                    and all(r.lag_bytes is not None for r in replicas)
                )

            await wait_for(replicas_known, what="both replicas with lag figures")
            # Four clients each holding a transaction need four server connections: two per
            # replica, none on the writer.
            conns = [await asyncpg.connect(_dsn(proxy, "ro")) for _ in range(4)]
            ports = []
            for c in conns:
                await c.execute("BEGIN")
                ports.append(await c.fetchval("SELECT inet_server_port()"))
                assert await c.fetchval("SELECT pg_is_in_recovery()") is True
            assert sorted(ports) == sorted([r1.port, r1.port, r2.port, r2.port])
            for c in conns:
                await c.execute("COMMIT")

            # r1 stops replaying while the primary writes: its lag passes the bound and the
            # reader pool moves to r2 alone.
            r1.psql("SELECT pg_wal_replay_pause()")
            cluster.primary.psql(
                "INSERT INTO writes (id, client) SELECT g, 0 FROM generate_series(1, 20000) g",
                dbname=DBNAME,
            )

            def r1_excluded() -> bool:
                def read() -> bool:
                    assert proxy.server is not None
                    pool = proxy.server.pools[("ro", USER)]
                    return (r1.host, r1.port) in pool._lagging

                return proxy.call(read)

            await wait_for(r1_excluded, what="the lagging replica excluded")
            for c in conns:
                await c.execute("BEGIN")
                assert await c.fetchval("SELECT inet_server_port()") == r2.port
                await c.execute("COMMIT")
            r1.psql("SELECT pg_wal_replay_resume()")
            for c in conns:
                await c.close()


class _Login:
    def __init__(self, user: str, password: str) -> None:
        self.user, self.password = user, password

    async def candidates(self, failed: str | None) -> list[tuple[str, str | None]]:
        return [(self.user, self.password)] if failed is None else []

    def succeeded(self, user: str, password: str | None) -> None:
        pass


async def test_a_host_that_stays_down_is_probed_at_the_steady_pace(pg: LocalPostgres) -> None:
    from pgpool_proxy.config import TopologySettings
    from pgpool_proxy.net.connect import NO_TLS
    from pgpool_proxy.pool.monitor import TopologyMonitor
    from pgpool_proxy.pool.topology import Topology

    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    dead_port = closed.getsockname()[1]
    closed.close()  # nothing listens there: connects are refused
    topo = Topology("t", [(pg.host, pg.port), ("127.0.0.1", dead_port)])
    tasks: list[asyncio.Task[None]] = []

    def spawn(coro: Any, name: str) -> None:
        tasks.append(asyncio.get_running_loop().create_task(coro, name=name))

    settings = TopologySettings(poll_interval_s=0.5, fast_poll_interval_s=0.1)
    monitor = TopologyMonitor(
        topo, settings, "postgres", _Login(pg.superuser, pg.superuser_password), NO_TLS, spawn
    )
    monitor.start()
    # The observation window is the test: how many probes a dead host gets in 2.5 s.
    await asyncio.sleep(2.5)
    monitor.stop()
    await asyncio.gather(*tasks, return_exceptions=True)
    live, dead = topo.hosts
    assert topo.writer is live
    assert dead.role == "down"
    # About 2.5 s / 0.5 s each, plus the fast probes until the dead host was known down.
    assert dead.probes <= 12, dead.probes
    assert live.probes <= 30, live.probes
    assert not topo.fast


async def test_connects_hung_on_the_old_writer_do_not_delay_the_new_one(pg: LocalPostgres) -> None:
    from pgpool_proxy.pool.pool import Pool
    from pgpool_proxy.pool.topology import ProbeResult, Topology
    from tests.support.poolspec import pool_spec

    async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # accepts, never answers: a hung host

    hung = await asyncio.start_server(hang, "127.0.0.1", 0)
    hung_port = hung.sockets[0].getsockname()[1]
    tasks: list[asyncio.Task[None]] = []

    def spawn(coro: Any, name: str) -> None:
        tasks.append(asyncio.get_running_loop().create_task(coro, name=name))

    spec = pool_spec(
        host="127.0.0.1",
        port=hung_port,
        dbname="postgres",
        user=pg.superuser,
        secret=pg.superuser_password,
        size=2,
        query_wait_timeout_s=60,
        connect_timeout_s=10,
    )
    pool = Pool(spec, spawn)
    topo = Topology("t", [("127.0.0.1", hung_port), (pg.host, pg.port)])
    old, new = topo.hosts
    now = asyncio.get_running_loop().time
    topo.observe(old, ProbeResult(False, timeline=1), now())
    pool.attach_topology(topo)

    class Waiter:
        wait_since = 0.0
        served_at: float | None = None

        def is_waiting(self) -> bool:
            return self.served_at is None

        def backend_assigned(self, backend: Any) -> None:
            self.served_at = time.monotonic()

        def pool_failed(self, err: Any, reason: Any = None) -> None:
            raise AssertionError(f"failed: {err.message}")

    waiters = [Waiter(), Waiter()]
    for w in waiters:
        assert pool.acquire(w) is None  # type: ignore[arg-type]
    # Both stuck in login on the hung host.
    await wait_for(lambda: pool.connecting == 2, what="two connects to the hung host")
    topo.observe_failure(old, "lost", now(), definitive=True)
    promoted = time.monotonic()
    topo.observe(new, ProbeResult(False, timeline=2), now())
    await wait_for(
        lambda: all(w.served_at is not None for w in waiters), what="both waiters served"
    )
    # Not delayed by the hung connects means well under their connect_timeout_s (10 s); a
    # login on a loaded machine may take a second or two.
    assert all(w.served_at is not None and w.served_at - promoted < 5.0 for w in waiters)
    assert pool.total == 2
    pool.close()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    hung.close()
