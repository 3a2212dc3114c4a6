"""The command line as users run it: check-config, run --config, and demo, in subprocesses."""

from __future__ import annotations

import argparse
import json
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

from pgpool_proxy.cli import build_parser
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


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_run_serves_and_stops_on_sigterm(
    pg: LocalPostgres, tmp_path: Path, log_format: str
) -> None:
    cfg = tmp_path / "proxy.toml"
    cfg.write_text(
        f'[proxy]\nlisten = "127.0.0.1:0"\nlog_format = "{log_format}"\n'
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
        # Either format names the event: text as key=value, JSON as a key of its own.
        login = _read_until(proc, r"^.*client login: .*$", 10).group(0)
        if log_format == "text":
            assert login.endswith(" user=alice db=app mode=transaction event=client_connect")
        else:
            record = json.loads(login)
            assert (record["event"], record["user"], record["db"]) == (
                "client_connect",
                "alice",
                "app",
            )
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _busy_port() -> socket.socket:
    """A listening socket on 127.0.0.1 holding a free port (close it when done)."""
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    return busy


def _one_line_error(out: subprocess.CompletedProcess[str], *fragments: str) -> str:
    """The operator error: exit status 1, no traceback, exactly one line of stderr naming it
    (log lines before it, such as "starting", are allowed)."""
    assert out.returncode == 1, out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    lines = [line for line in out.stderr.splitlines() if all(f in line for f in fragments)]
    assert len(lines) == 1, out.stderr
    errors = [line for line in out.stderr.splitlines() if " ERROR " in line]
    assert len(errors) <= 1, out.stderr
    return lines[0]


def _config(tmp_path: Path, *, listen_port: int = 0, workers: int = 1, extra: str = "") -> Path:
    cfg = tmp_path / "proxy.toml"
    cfg.write_text(
        f'[proxy]\nlisten = "127.0.0.1:{listen_port}"\nworkers = {workers}\n'
        '[[databases]]\nname = "app"\nhost = "127.0.0.1"\nport = 1\n'
        '[[users]]\nname = "alice"\npassword = "secret"\n'
        f"{extra}"
    )
    return cfg


def _run(
    *args: str, timeout: float = 60, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, env=env)


# With workers the supervisor reserves both ports before forking; alone, the server binds them.
@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("which", ["listen", "metrics"])
def test_run_with_a_port_in_use_says_so_in_one_line(
    tmp_path: Path, workers: int, which: str
) -> None:
    with _busy_port() as busy:
        port = busy.getsockname()[1]
        if which == "listen":
            cfg = _config(tmp_path, listen_port=port, workers=workers)
        else:
            metrics = f'[metrics]\nlisten = "127.0.0.1:{port}"\n'
            cfg = _config(tmp_path, workers=workers, extra=metrics)
        out = _run("run", "--config", str(cfg))
    line = _one_line_error(out, "cannot start:")
    assert str(port) in line and "address already in use" in line, out.stderr


@pytest.mark.parametrize("workers", [1, 2])
def test_run_with_an_unknown_listen_host_names_it(tmp_path: Path, workers: int) -> None:
    cfg = _config(tmp_path, workers=workers)
    cfg.write_text(cfg.read_text().replace("127.0.0.1:0", "nosuchhost.invalid:0", 1))
    out = _run("run", "--config", str(cfg))
    line = _one_line_error(out, "cannot start:")
    assert "nosuchhost.invalid" in line, out.stderr


def test_run_with_unusable_tls_files_says_so_in_one_line(tmp_path: Path) -> None:
    cert, key = tmp_path / "proxy.crt", tmp_path / "proxy.key"
    cert.write_text("not a certificate\n")
    key.write_text("not a key\n")
    tls = f'[client_tls]\nmode = "require"\ncert_file = "{cert}"\nkey_file = "{key}"\n'
    out = _run("run", "--config", str(_config(tmp_path, extra=tls)))
    line = _one_line_error(out, "cannot start:")
    assert "client_tls" in line and str(cert) in line, out.stderr


@pytest.mark.parametrize("what", ["missing", "directory", "not utf-8", "not toml"])
def test_run_and_check_config_with_an_unreadable_file_say_so_in_one_line(
    tmp_path: Path, what: str
) -> None:
    path = tmp_path / "proxy.toml"
    if what == "directory":
        path.mkdir()
    elif what == "not utf-8":
        path.write_bytes(b"\xff\xfe[proxy]\n")
    elif what == "not toml":
        path.write_text("[proxy\n")
    for args in (["run", "--config", str(path)], ["check-config", str(path)]):
        out = _run(*args)
        assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
        assert out.stderr.strip().splitlines() == [out.stderr.strip()], out.stderr
        assert out.stderr.startswith(f"{path}: "), out.stderr


def test_demo_with_no_postgresql_binaries_says_so_in_one_line(tmp_path: Path) -> None:
    out = _run("demo", "--port", "0", env={**os.environ, "PGPOOL_PG_BINDIR": str(tmp_path)})
    line = _one_line_error(out, "PGPOOL_PG_BINDIR")
    assert "has no executable initdb" in line and line.startswith("pgpool-proxy demo: ")
    assert out.stderr.strip() == line


def test_every_command_has_a_description_and_option_help() -> None:
    parser = build_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert set(commands.choices) == {
        "run",
        "check-config",
        "convert",
        "demo",
        "token",
        "healthcheck",
    }
    for name, sub in commands.choices.items():
        assert sub.description, name
        for action in sub._actions:
            assert action.help, (name, action.option_strings or action.dest)
    out = _run("demo", "--help")
    assert out.returncode == 0, out.stderr
    assert "PGPOOL_PG_BINDIR" in out.stdout and "pgpool-proxy[embedded]" in out.stdout


@pytest.mark.slow
def test_demo_refuses_a_bad_log_level_and_a_busy_port() -> None:
    out = subprocess.run(
        [*CLI, "demo", "--log-level", "nonsense"], capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 2 and "invalid choice: 'nonsense'" in out.stderr, out.stderr
    out = subprocess.run(
        [*CLI, "demo", "--port", "70000"], capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 2 and "port must be between 0 and 65535" in out.stderr, out.stderr
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
    # Said before a PostgreSQL server is started for nothing, with the way out.
    assert "--port 0" in out.stderr, out.stderr
    assert "Starting a local PostgreSQL" not in out.stdout, out.stdout


# Twice: an impatient second Ctrl-C during the cleanup must not leave the server behind.
@pytest.mark.parametrize("interrupts", [1, 2])
def test_demo_starts_postgres_and_cleans_up(pg: LocalPostgres, interrupts: int) -> None:
    # The binaries the demo runs are the ones PGPOOL_PG_BINDIR names, and it says so.
    bindir = str(pg.source_bindir)
    proc = subprocess.Popen(
        [*CLI, "demo", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PGPOOL_PG_BINDIR": bindir},
    )
    try:
        binaries = _read_until(proc, r"binaries: (\S+) \(found by ([^;,]+)", 30)
        assert binaries.groups() == (bindir, "PGPOOL_PG_BINDIR")
        version = _read_until(proc, r"serving PostgreSQL (\d+)\.(\d+) ", 90).groups()
        num = pg.version()
        assert (int(version[0]), int(version[1])) == (num // 10000, num % 10000)
        url = _read_until(proc, r"psql '(postgresql://[^']+)'", 5).group(1)
        # psql by name when the shell finds it, else by its path beside the server's binaries.
        admin = _read_until(proc, r"admin: +\S*psql '(postgresql://[^']+)'", 5).group(1)
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
        for _ in range(interrupts):
            proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0
        assert proc.stderr is not None and "Traceback" not in proc.stderr.read()
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
