"""PgBouncer users' files as they are: `pgpool-proxy run --pgbouncer-ini` serving the real server
to psql with a userlist.txt md5 password, SIGHUP converting the file again, and
`pgpool-proxy convert` writing a TOML file that `check-config` accepts."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.integration.test_cli import _read_until
from tests.support.pg import LocalPostgres
from tests.support.proxy import PASSWORDS

CLI = [sys.executable, "-m", "pgpool_proxy"]


def _md5(password: str, user: str) -> str:
    return "md5" + hashlib.md5((password + user).encode()).hexdigest()


def _write_files(tmp_path: Path, pg: LocalPostgres, pool_size: int = 4) -> Path:
    (tmp_path / "conf.d").mkdir(exist_ok=True)
    ini = tmp_path / "pgbouncer.ini"
    ini.write_text(
        "[databases]\n"
        f"app = host={pg.host} port={pg.port} dbname=app\n"
        "* = host=elsewhere\n"
        "[users]\n"
        "bob = pool_mode=session\n"
        "[pgbouncer]\n"
        "listen_addr = 127.0.0.1\n"
        "listen_port = 0\n"
        "auth_type = md5\n"
        "auth_file = conf.d/userlist.txt\n"
        "admin_users = alice\n"
        "pool_mode = transaction\n"
        "%include conf.d/pools.ini\n"
        "logfile = /var/log/pgbouncer/pgbouncer.log\n"
    )
    (tmp_path / "conf.d" / "pools.ini").write_text(f"default_pool_size = {pool_size}\n")
    # bob's md5 hash only: the proxy checks his password against it and logs into the server
    # (md5 in pg_hba.conf there) with it; alice's plaintext also serves her SCRAM login.
    (tmp_path / "conf.d" / "userlist.txt").write_text(
        f'"bob" "{_md5(PASSWORDS["bob"], "bob")}"\n"alice" "{PASSWORDS["alice"]}"\n'
    )
    return ini


def _psql_base(pg: LocalPostgres, port: int) -> list[str]:
    return [pg.bin("psql"), "-X", "-At", "-h", "127.0.0.1", "-p", str(port)]


def _psql(pg: LocalPostgres, port: int, user: str, sql: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*_psql_base(pg, port), "-U", user, "-d", "app", "-c", sql],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "PGPASSWORD": PASSWORDS[user], "PGSSLMODE": "disable"},
    )


def test_run_pgbouncer_ini_serves_userlist_md5_logins(pg: LocalPostgres, tmp_path: Path) -> None:
    ini = _write_files(tmp_path, pg)
    proc = subprocess.Popen(
        [*CLI, "run", "--pgbouncer-ini", str(ini)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        # What was not converted is named with its place, before the proxy serves.
        _read_until(proc, rf"WARNING .*{ini}:3: \[databases\] \*: the fallback database", 30)
        _read_until(proc, rf"WARNING .*{ini}:14: \[pgbouncer\] logfile: not converted", 10)
        port = int(_read_until(proc, r"listening on 127\.0\.0\.1:(\d+)", 30).group(1))
        out = _psql(pg, port, "bob", "select current_user, 'md5 from userlist.txt'")
        assert out.stdout.strip() == "bob|md5 from userlist.txt", out.stderr
        # [users] bob = pool_mode=session came through.
        _read_until(proc, r"client login: .* user=bob db=app mode=session", 10)
        out = _psql(pg, port, "alice", "select current_user")
        assert out.stdout.strip() == "alice", out.stderr
        _read_until(proc, r"client login: .* user=alice db=app mode=transaction", 10)
        wrong = subprocess.run(
            [*_psql_base(pg, port), "-U", "bob", "-d", "app", "-c", "select 1"],
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ, "PGPASSWORD": "not-bobs", "PGSSLMODE": "disable"},
        )
        assert wrong.returncode != 0 and "password authentication failed" in wrong.stderr
        # SIGHUP converts the ini file again (not read as TOML).
        _write_files(tmp_path, pg, pool_size=6)
        proc.send_signal(signal.SIGHUP)
        _read_until(proc, rf"configuration applied from {ini}", 15)
        out = subprocess.run(
            [*_psql_base(pg, port), "-U", "alice", "-d", "pgbouncer", "-c", "SHOW CONFIG"],
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ, "PGPASSWORD": PASSWORDS["alice"], "PGSSLMODE": "disable"},
        )
        assert out.returncode == 0, out.stderr
        rows = dict(line.split("|")[:2] for line in out.stdout.splitlines())
        assert rows.get("pool.default_pool_size", rows.get("default_pool_size")) == "6", rows
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_convert_output_passes_check_config(pg: LocalPostgres, tmp_path: Path) -> None:
    ini = _write_files(tmp_path, pg)
    out = subprocess.run([*CLI, "convert", str(ini)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    warnings = out.stderr.splitlines()
    assert f"warning: {ini}:3: [databases] *: the fallback database is not supported" in "\n".join(
        warnings
    )
    assert all(line.startswith(("warning: ", "note: ")) for line in warnings), warnings
    toml = tmp_path / "proxy.toml"
    toml.write_text(out.stdout)
    check = subprocess.run(
        [*CLI, "check-config", str(toml)], capture_output=True, text=True, timeout=30
    )
    assert check.returncode == 0, check.stderr
    assert check.stdout.startswith(f"OK: {toml}: 1 databases, 2 users, pool_mode=transaction")


def test_convert_refuses_a_broken_file_with_one_line_per_problem(tmp_path: Path) -> None:
    ini = tmp_path / "pgbouncer.ini"
    ini.write_text("[pgbouncer]\nmax_client_conn = many\n%include nowhere.ini\n")
    out = subprocess.run([*CLI, "convert", str(ini)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 1
    assert out.stdout == ""
    assert out.stderr.splitlines() == [
        f"{tmp_path / 'nowhere.ini'}: cannot read file: No such file or directory"
    ]
    ini.write_text("[pgbouncer]\nmax_client_conn = many\n")
    out = subprocess.run([*CLI, "convert", str(ini)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr.splitlines() == [
        f"{ini}:2: [pgbouncer] max_client_conn: expected an integer, got 'many'"
    ]


def test_run_takes_one_configuration_source(tmp_path: Path) -> None:
    out = subprocess.run(
        [*CLI, "run", "--config", "a.toml", "--pgbouncer-ini", "b.ini"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 2
    assert "not allowed with argument" in out.stderr
