"""The command line as users run it: check-config, run --config, and demo, in subprocesses."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.support.pg import LocalPostgres
from tests.support.proxy import PASSWORDS

REPO = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "pgpool_proxy"]


def test_check_config_accepts_the_example() -> None:
    out = subprocess.run(
        [*CLI, "check-config", str(REPO / "proxy.example.toml")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("OK: ")


def test_check_config_reports_every_problem(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(
        '[proxy]\nlisten = "nowhere"\npool_mod = "transaction"\n'
        "[pool]\ndefault_pool_size = -1\n"
        '[[databases]]\nname = "app"\nport = 70000\n'
    )
    out = subprocess.run(
        [*CLI, "check-config", str(bad)], capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) >= 4
    assert all(line.startswith(f"{bad}: ") for line in lines)
    text = out.stderr
    for key in ("proxy.listen", "proxy.pool_mod", "pool.default_pool_size", "databases[0].port"):
        assert key in text


def _read_until(proc: subprocess.Popen[str], pattern: str, timeout: float) -> re.Match[str]:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            if proc.poll() is not None:
                break
            continue
        seen.append(line)
        match = re.search(pattern, line)
        if match:
            return match
    raise AssertionError(f"{pattern!r} not seen; output:\n{''.join(seen)}")


def test_run_serves_and_stops_on_sigterm(pg: LocalPostgres, tmp_path: Path) -> None:
    cfg = tmp_path / "proxy.toml"
    cfg.write_text(
        f'[proxy]\nlisten = "127.0.0.1:0"\n'
        f'[[databases]]\nname = "app"\nhost = "{pg.host}"\nport = {pg.port}\n'
        f'[[users]]\nname = "alice"\npassword_env = "ALICE_PW"\n'
    )
    env = {**os.environ, "ALICE_PW": PASSWORDS["alice"]}
    proc = subprocess.Popen(
        [*CLI, "run", "--config", str(cfg)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        port = int(_read_until(proc, r"listening on 127\.0\.0\.1:(\d+)", 30).group(1))
        out = subprocess.run(
            [
                pg.bin("psql"),
                "-X",
                "-At",
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
                "-U",
                "alice",
                "-d",
                "app",
                "-c",
                "select 'through the proxy'",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ, "PGPASSWORD": PASSWORDS["alice"], "PGSSLMODE": "disable"},
        )
        assert out.stdout.strip() == "through the proxy", out.stderr
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_demo_refuses_a_bad_log_level_and_a_busy_port() -> None:
    out = subprocess.run(
        [*CLI, "demo", "--log-level", "nonsense"], capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 2 and "invalid choice: 'nonsense'" in out.stderr, out.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out = subprocess.run(
            [*CLI, "demo", "--port", str(port)], capture_output=True, text=True, timeout=120
        )
    assert out.returncode == 1
    assert "cannot start:" in out.stderr and "address already in use" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr, out.stderr


def test_demo_starts_postgres_and_cleans_up(pg: LocalPostgres) -> None:
    proc = subprocess.Popen(
        [*CLI, "demo", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        url = _read_until(proc, r"psql '(postgresql://[^']+)'", 90).group(1)
        admin = _read_until(proc, r"admin: +psql '(postgresql://[^']+)'", 5).group(1)
        metrics = _read_until(proc, r"metrics: +curl (http://\S+)", 5).group(1)
        server = _read_until(proc, r"server: +127\.0\.0\.1:(\d+) \(data in (.+)\)", 5)
        pg_port, work_dir = int(server.group(1)), Path(server.group(2))
        assert work_dir.is_dir()
        out = subprocess.run(
            [pg.bin("psql"), "-X", "-At", url, "-c", "select current_user, current_database()"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert out.stdout.strip() == "demo|demo", out.stderr
        # The README's console and metrics examples work against the demo as printed.
        out = subprocess.run(
            [pg.bin("psql"), "-X", "-At", admin, "-c", "SHOW POOLS"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert out.returncode == 0 and "demo|demo" in out.stdout, out.stderr
        with urllib.request.urlopen(metrics, timeout=10) as resp:
            assert b"pgpool_proxy_client_logins_total" in resp.read()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # The demo's server is gone and its data directory removed.
    probe = subprocess.run(
        [pg.bin("pg_isready"), "-h", "127.0.0.1", "-p", str(pg_port)], capture_output=True
    )
    assert probe.returncode != 0
    assert not work_dir.exists()
