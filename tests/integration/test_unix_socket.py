"""proxy.unix_socket_dir: a Unix-socket listener beside TCP, served by the same ProxyServer, with
psql and asyncpg; with workers, one socket every worker accepts on."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import stat
import subprocess
from pathlib import Path

import asyncpg
import pytest

from pgpool_proxy.runtime.workers import WORKER_SHIFT
from tests.support.clients import client_env
from tests.support.pg import LocalPostgres
from tests.support.proxy import PASSWORDS, ProxyThread, StartProxy, make_config
from tests.support.proxyproc import ProxyProcess, free_port, write_config
from tests.support.waits import wait_for


def _socket_dir(tmp_path: Path) -> Path:
    # sun_path holds 107 bytes: pytest's tmp_path can be longer than that allows.
    d = Path(f"/tmp/pgpp-{os.getpid()}-{tmp_path.name[-20:]}")
    d.mkdir(exist_ok=True)
    return d


@pytest.fixture
def sockdir(tmp_path: Path) -> Path:
    d = _socket_dir(tmp_path)
    yield d
    for f in d.iterdir():
        f.unlink()
    d.rmdir()


async def test_psql_and_asyncpg_over_the_socket(
    start_proxy: StartProxy, pg: LocalPostgres, sockdir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pgpool_proxy.login")
    proxy = start_proxy(proxy={"unix_socket_dir": str(sockdir), "unix_socket_mode": 0o700})
    path = sockdir / f".s.PGSQL.{proxy.port}"
    # PostgreSQL's name for the socket file, with the configured mode.
    assert stat.S_ISSOCK(path.stat().st_mode)
    assert stat.S_IMODE(path.stat().st_mode) == 0o700
    where = ["-h", str(sockdir), "-p", str(proxy.port), "-U", "alice", "-d", "app"]
    out = subprocess.run(
        [pg.bin("psql"), "-X", "-At", "-w", *where, "-c", "select 'over unix', current_user"],
        capture_output=True,
        text=True,
        env=client_env(PASSWORDS["alice"]),
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "over unix|alice"
    c = await asyncpg.connect(
        host=str(sockdir), port=proxy.port, user="bob", password=PASSWORDS["bob"], database="app"
    )
    try:
        assert await c.fetchval("SELECT 40 + 2") == 42
        # A cancel request comes over the socket too.
        with pytest.raises(asyncio.TimeoutError):
            await c.fetchval("SELECT pg_sleep(30)", timeout=0.3)
        assert await c.fetchval("SELECT 'still served'") == "still served"
    finally:
        await c.close()
    # The TCP listener is the same server's.
    t = await asyncpg.connect(proxy.dsn())
    assert await t.fetchval("SELECT 1") == 1
    await t.close()
    # The peer of a Unix-socket client is shown as "unix".
    logins = [r.getMessage() for r in caplog.records if "client login" in r.getMessage()]
    assert any(msg.startswith("client login: unix user=alice") for msg in logins), logins
    proxy.stop()
    assert not path.exists()  # removed when the proxy stops


async def test_tls_required_does_not_apply_to_the_socket(
    start_proxy: StartProxy, sockdir: Path
) -> None:
    # client_rules "local" picks Unix-socket clients; a network never matches them.
    proxy = start_proxy(
        proxy={"unix_socket_dir": str(sockdir)},
        client_rules=[{"address": "local", "method": "trust"}, {"address": "all"}],
    )
    c = await asyncpg.connect(
        host=str(sockdir), port=proxy.port, user="carol", password="wrong", database="app"
    )
    assert await c.fetchval("SELECT current_user") == "carol"
    await c.close()
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(proxy.dsn("carol", password="wrong"))


def test_stale_socket_is_replaced_live_one_is_not(pg: LocalPostgres, sockdir: Path) -> None:
    port = free_port()
    path = sockdir / f".s.PGSQL.{port}"
    config = make_config(pg, proxy={"listen": f"127.0.0.1:{port}", "unix_socket_dir": str(sockdir)})
    live = socket.socket(socket.AF_UNIX)
    live.bind(str(path))
    live.listen()
    try:
        with pytest.raises(OSError, match="another process is listening on it"):
            ProxyThread(config).start()
    finally:
        live.close()
    # Left behind by a process that died: nobody accepts on it, so it is replaced.
    assert path.exists()
    with ProxyThread(config) as proxy:
        assert proxy.port == port and stat.S_ISSOCK(path.stat().st_mode)
        probe = socket.socket(socket.AF_UNIX)
        probe.connect(str(path))
        probe.close()


async def test_workers_share_one_socket(pg: LocalPostgres, tmp_path: Path, sockdir: Path) -> None:
    cfg = tmp_path / "proxy.toml"
    write_config(
        cfg, pg, 0, pool_size=4, users=("alice",),
        proxy=f'workers = 2\nunix_socket_dir = "{sockdir}"',
    )  # fmt: skip
    proc = ProxyProcess(cfg, 0, tmp_path / "proxy.log")
    try:
        (found,) = proc.wait_for(r"listening on 127\.0\.0\.1:(\d+) with")
        port = int(found.group(1))
        proc.wait_for(r"\[w\d+\]: .*listening on Unix socket", count=2)
        path = sockdir / f".s.PGSQL.{port}"

        async def served() -> set[int]:
            workers: set[int] = set()
            for _ in range(30):
                c = await asyncpg.connect(
                    host=str(sockdir), port=port, user="alice", password=PASSWORDS["alice"],
                    database="app",
                )  # fmt: skip
                # The cancel pid the proxy hands out names the worker in its top bits.
                workers.add(c.get_server_pid() >> WORKER_SHIFT)
                assert await c.fetchval("SELECT 1") == 1
                await c.close()
            return workers

        assert (await served()) <= {0, 1}
        # A restarted worker accepts on the supervisor's socket again.
        log_before = proc.log().count("listening on Unix socket")
        children = Path(f"/proc/{proc.proc.pid}/task/{proc.proc.pid}/children").read_text()
        os.kill(int(children.split()[0]), signal.SIGKILL)
        await asyncio.to_thread(proc.wait_for, "listening on Unix socket", log_before + 1)
        assert await served()
        assert path.exists()
    finally:
        proc.stop(signal.SIGTERM)
    await wait_for(lambda: not path.exists(), what="the supervisor to remove the socket")
