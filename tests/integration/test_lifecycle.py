"""The proxy's lifecycle as an operator drives it: `python -m pgpool_proxy run` subprocesses,
signals (SIGHUP reload, SIGTERM drain, SIGINT), the SHUTDOWN command, a rolling restart on a
shared port, and `workers = 2`.

"No committed transaction lost" is checked against PostgreSQL itself: every COMMIT a client saw
succeed must have left its row in the table.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest

from pgpool_proxy.protocol import messages as m
from tests.support.pg import LocalPostgres
from tests.support.proxy import PASSWORDS
from tests.support.proxyproc import Launcher, write_config
from tests.support.rawpg import RawClient, RawError
from tests.support.waits import wait_for

pytestmark = pytest.mark.slow

WORKERS_LISTENING = ("worker 0 listening", "worker 1 listening")


@pytest.fixture
def launch(pg: LocalPostgres, tmp_path: Path) -> Iterator[Launcher]:
    launcher = Launcher(pg, tmp_path)
    yield launcher
    launcher.stop_all()


def dsn(port: int, user: str = "alice", db: str = "app") -> str:
    return f"postgresql://{user}:{PASSWORDS[user]}@127.0.0.1:{port}/{db}"


async def admin_query(port: int, sql: str) -> list[tuple[Any, ...]]:
    async with await psycopg.AsyncConnection.connect(
        dsn(port, db="pgbouncer"), autocommit=True
    ) as conn:
        cur = await conn.execute(sql)
        return await cur.fetchall() if cur.description else []


async def config_value(port: int, key: str) -> str:
    rows = await admin_query(port, "SHOW CONFIG")
    return str({r[0]: r[1] for r in rows}[key])


@pytest.fixture
async def ledger(pg: LocalPostgres) -> Any:
    """A fresh table for committed rows, and a direct connection to read it."""
    conn = await asyncpg.connect(pg.dsn(dbname="app"))
    await conn.execute(
        "DROP TABLE IF EXISTS ledger; CREATE TABLE ledger (writer int, n int, PRIMARY KEY "
        "(writer, n)); GRANT ALL ON ledger TO alice"
    )
    try:
        yield conn
    finally:
        await conn.close()


class Writers:
    """Clients that insert rows in small transactions and remember each COMMIT that succeeded;
    on an error they reconnect (a rolling restart moves them to the other proxy)."""

    def __init__(self, port: int, count: int, reconnect: bool) -> None:
        self.port = port
        self.reconnect = reconnect
        self.committed: set[tuple[int, int]] = set()
        self.errors: list[str] = []
        self.connect_failures: list[str] = []
        self.stop = asyncio.Event()
        self.tasks = [asyncio.ensure_future(self._run(i)) for i in range(count)]

    async def _run(self, writer: int) -> None:
        n = 0
        while not self.stop.is_set():
            try:
                conn = await asyncpg.connect(dsn(self.port), statement_cache_size=0)
            except (OSError, asyncpg.PostgresError) as exc:
                self.connect_failures.append(repr(exc))
                if not self.reconnect:
                    return
                await asyncio.sleep(0.05)  # reconnect pacing, not a wait
                continue
            try:
                while not self.stop.is_set():
                    n += 1
                    async with conn.transaction():
                        await conn.execute("INSERT INTO ledger VALUES ($1, $2)", writer, n)
                        await conn.execute("SELECT pg_sleep(0.005)")
                    self.committed.add((writer, n))
            except (
                OSError,
                asyncpg.PostgresError,
                asyncpg.InterfaceError,
                # asyncpg, closed by the server mid-operation, may fail its own ROLLBACK so.
                asyncpg.exceptions.InternalClientError,
            ) as exc:
                self.errors.append(repr(exc))
                if not self.reconnect:
                    return
            finally:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(conn.close(), 2)

    async def wait_commits(self, more: int = 20) -> None:
        """Wait until `more` transactions beyond those committed so far have committed."""
        want = len(self.committed) + more
        await wait_for(lambda: len(self.committed) >= want, what=f"{more} more commits")

    async def finish(self) -> None:
        self.stop.set()
        await asyncio.wait_for(asyncio.gather(*self.tasks), 30)


async def assert_no_commit_lost(
    direct: asyncpg.Connection, committed: set[tuple[int, int]]
) -> None:
    rows = {(r["writer"], r["n"]) for r in await direct.fetch("SELECT writer, n FROM ledger")}
    lost = committed - rows
    assert not lost, f"{len(lost)} committed rows missing: {sorted(lost)[:10]}"
    assert committed, "no transaction committed at all"


# --- reload --------------------------------------------------------------------------------------


async def test_sighup_reloads_pool_size_and_users(
    launch: Launcher,
) -> None:
    port, config = launch.port, launch.config
    launch.configure(pool_size=2, users=("alice",))
    proxy = launch.start()
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(dsn(port, "bob"))
    alice = await asyncpg.connect(dsn(port))
    try:
        assert await config_value(port, "default_pool_size") == "2"
        launch.configure(pool_size=4, users=("alice", "bob"))
        proxy.signal(signal.SIGHUP)
        proxy.wait_listening("configuration applied")
        assert await config_value(port, "default_pool_size") == "4"
        bob = await asyncpg.connect(dsn(port, "bob"))
        assert await bob.fetchval("SELECT current_user") == "bob"
        await bob.close()
        # An invalid file is reported and the running configuration kept.
        config.write_text(
            config.read_text().replace("default_pool_size = 4", "default_pool_size = 0")
        )
        proxy.signal(signal.SIGHUP)
        proxy.wait_listening("reload failed")
        assert "pool.default_pool_size" in proxy.log()
        assert await config_value(port, "default_pool_size") == "4"
        assert await alice.fetchval("SELECT 1") == 1
        assert proxy.proc.poll() is None
    finally:
        await alice.close()


# --- graceful shutdown ---------------------------------------------------------------------------


async def test_sigterm_drains_under_load(launch: Launcher, ledger: asyncpg.Connection) -> None:
    port = launch.port
    launch.configure(pool_size=6, proxy="shutdown_timeout_s = 3")
    proxy = launch.start()
    writers = Writers(port, 6, reconnect=False)
    idle = await RawClient.connect("127.0.0.1", port)
    await idle.login("alice", PASSWORDS["alice"], "app")
    slow = await asyncpg.connect(dsn(port))
    stuck = await asyncpg.connect(dsn(port))
    try:
        await writers.wait_commits()
        # A transaction in flight when SIGTERM arrives finishes and commits.
        slow_tx = slow.transaction()
        await slow_tx.start()
        await slow.execute("INSERT INTO ledger VALUES (100, 1)")
        # A transaction that never ends is cut at shutdown_timeout_s (and rolled back).
        stuck_tx = stuck.transaction()
        await stuck_tx.start()
        await stuck.execute("INSERT INTO ledger VALUES (200, 1)")
        t0 = time.monotonic()
        proxy.signal(signal.SIGTERM)
        await asyncio.to_thread(proxy.wait_for, "draining: stopped accepting")
        await slow.execute("SELECT pg_sleep(0.5)")
        await slow_tx.commit()
        writers.committed.add((100, 1))
        # New connections are refused while draining.
        with pytest.raises(OSError):
            await asyncpg.connect(dsn(port), timeout=2)
        code = await asyncio.to_thread(proxy.wait, 15)
        elapsed = time.monotonic() - t0
        assert code == 0, proxy.log()
        # The stuck transaction holds the drain until shutdown_timeout_s (3 s) and no longer:
        # the bound is the behaviour, 5x the timeout for a loaded machine.
        assert 2.5 <= elapsed < 15, elapsed
        await writers.finish()
        # The idle client was told why it was closed.
        err = await idle.read_error(1)
        assert err["C"] == "57P01" and "shutting down" in err["M"], err
        assert await idle.closed(1)
        with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError)):
            await stuck_tx.commit()
        await assert_no_commit_lost(ledger, writers.committed)
        assert await ledger.fetchval("SELECT count(*) FROM ledger WHERE writer = 200") == 0
        assert "shutdown_timeout_s = 3 ran out" in proxy.log() or "closed 1 clients" in proxy.log()
    finally:
        await idle.close()
        for conn in (slow, stuck):
            conn.terminate()


async def test_sigterm_ends_logins_under_way_at_once(launch: Launcher) -> None:
    """A login has no transaction for a drain to wait for: a client silent since connecting,
    one that stopped mid-authentication and one whose login waits on the first connection to a
    server that never answers are refused (57P03, as a login reaching admission is) at once,
    not at client_login_timeout_s with an 08P01 that blames the client."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    silent.setblocking(False)
    held: list[socket.socket] = []
    port = launch.port
    launch.configure(
        proxy="client_login_timeout_s = 60\nshutdown_timeout_s = 60",
        pool="server_connect_timeout_s = 60",
        sections=(
            f'[[databases]]\nname = "silent"\nhost = "127.0.0.1"\n'
            f"port = {silent.getsockname()[1]}\n"
        ),
    )
    proxy = launch.start()
    quiet = await RawClient.connect("127.0.0.1", port)
    halfway = await RawClient.connect("127.0.0.1", port)
    waiting = await RawClient.connect("127.0.0.1", port)
    login = asyncio.ensure_future(waiting.login("alice", PASSWORDS["alice"], "silent"))
    try:
        halfway.send(m.startup_message({"user": "alice", "database": "app"}))
        t, _body = await halfway.read_message()
        assert t == b"R"
        # The proxy connected to the silent server: the third login waits on that connection.
        accepted, _addr = await asyncio.wait_for(asyncio.get_running_loop().sock_accept(silent), 10)
        held.append(accepted)

        async def three_logins() -> bool:
            rows = await admin_query(port, "SHOW LISTS")
            return int({r[0]: r[1] for r in rows}["login_clients"]) >= 3

        await wait_for(three_logins, what="three logins under way")
        t0 = time.monotonic()
        proxy.signal(signal.SIGTERM)
        assert await asyncio.to_thread(proxy.wait, 15) == 0, proxy.log()
        # Well inside both 60 s timeouts (bounded loosely for a loaded machine).
        assert time.monotonic() - t0 < 10
        assert "drain: every client finished" in proxy.log(), proxy.log()
        for client in (quiet, halfway):
            err = await client.read_error(5)
            assert err["C"] == "57P03" and "shutting down" in err["M"], err
            assert await client.closed(5)
        with pytest.raises(RawError) as refused:
            await asyncio.wait_for(login, 5)
        assert refused.value.sqlstate == "57P03", refused.value.fields
    finally:
        login.cancel()
        for client in (quiet, halfway, waiting):
            await client.close()
        for sock in [*held, silent]:
            sock.close()


async def test_shutdown_command_and_sigint(
    launch: Launcher,
) -> None:
    port = launch.port
    launch.configure()
    proxy = launch.start("a.log")
    conn = await asyncpg.connect(dsn(port))
    tx = conn.transaction()
    await tx.start()
    assert await admin_query(port, "SHUTDOWN") == []
    await asyncio.to_thread(proxy.wait_for, "draining: stopped accepting")
    assert await conn.fetchval("SELECT 5") == 5  # its transaction goes on
    await tx.commit()
    assert await asyncio.to_thread(proxy.wait, 10) == 0
    await conn.close()
    # SIGINT: immediate, even with a transaction open.
    proxy2 = launch.start("b.log")
    conn2 = await asyncpg.connect(dsn(port))
    tx2 = conn2.transaction()
    await tx2.start()
    proxy2.signal(signal.SIGINT)
    # Immediate: a drain would wait for the open transaction up to shutdown_timeout_s (30 s).
    assert await asyncio.to_thread(proxy2.wait, 10) == 0
    assert "draining" not in proxy2.log(), proxy2.log()
    conn2.terminate()


# --- rolling restart and workers -----------------------------------------------------------------


async def test_rolling_restart_keeps_serving(launch: Launcher, ledger: asyncpg.Connection) -> None:
    port = launch.port
    launch.configure(proxy="reuse_port = true\nshutdown_timeout_s = 5")
    old = launch.start("old.log")
    writers = Writers(port, 6, reconnect=True)
    await writers.wait_commits()
    new = await asyncio.to_thread(launch.start, "new.log")
    old.signal(signal.SIGTERM)
    assert await asyncio.to_thread(old.wait, 10) == 0, old.log()
    await writers.wait_commits()  # through the new proxy
    await writers.finish()
    assert writers.connect_failures == [], writers.connect_failures[:5]
    await assert_no_commit_lost(ledger, writers.committed)
    # Clients moved: the old proxy told them it was shutting down, the new one served them.
    assert "draining" in old.log() and "client login" in new.log()
    expected = ("shutting down", "closed", "InternalClientError")
    assert all(any(x in e for x in expected) for e in writers.errors), writers.errors[:5]


async def test_workers_two_drain_on_sigterm(launch: Launcher, ledger: asyncpg.Connection) -> None:
    port = launch.port
    launch.configure(proxy="workers = 2\nshutdown_timeout_s = 5")
    proxy = launch.start(wait=WORKERS_LISTENING)
    versions = {(await admin_query(port, "SHOW VERSION"))[0][0] for _ in range(20)}
    assert {any(f"worker {i} of 2" in v for v in versions) for i in (0, 1)} == {True}, versions
    writers = Writers(port, 8, reconnect=False)
    slow = await asyncpg.connect(dsn(port))
    try:
        await writers.wait_commits()
        tx = slow.transaction()
        await tx.start()
        await slow.execute("INSERT INTO ledger VALUES (100, 1)")
        proxy.signal(signal.SIGTERM)
        await asyncio.to_thread(proxy.wait_for, "draining: stopped accepting", 2)
        await tx.commit()
        writers.committed.add((100, 1))
        assert await asyncio.to_thread(proxy.wait, 15) == 0, proxy.log()
        # Both drains ended when their clients finished, not at shutdown_timeout_s.
        assert "ran out" not in proxy.log(), proxy.log()
        await writers.finish()
        await assert_no_commit_lost(ledger, writers.committed)
        assert proxy.log().count("drain: every client finished") == 2, proxy.log()
    finally:
        slow.terminate()


async def test_workers_two_shutdown_command_stops_every_worker(
    launch: Launcher,
) -> None:
    port = launch.port
    launch.configure(proxy="workers = 2\nshutdown_timeout_s = 5")
    proxy = launch.start(wait=WORKERS_LISTENING)
    # SHUTDOWN reaches one worker (whichever the kernel picks); the supervisor stops both and
    # exits instead of restarting the one that left.
    assert await admin_query(port, "SHUTDOWN") == []
    assert await asyncio.to_thread(proxy.wait, 15) == 0, proxy.log()
    log = proxy.log()
    assert "told to SHUT DOWN: stopping every worker" in log, log
    assert "restarting it" not in log, log
    assert log.count("drain: every client finished") == 2, log


def test_config_check_accepts_admin_section(pg: LocalPostgres, tmp_path: Path) -> None:
    config = tmp_path / "proxy.toml"
    write_config(config, pg, 6432, proxy="reuse_port = true")
    out = subprocess.run(
        [sys.executable, "-m", "pgpool_proxy", "check-config", str(config)],
        capture_output=True,
        text=True,
        env={**os.environ},
        timeout=30,
    )
    assert out.returncode == 0, out.stdout + out.stderr
