"""Run real client programs (psql, pgbench) against a proxy and read their results."""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass

from .pg import LocalPostgres
from .proxy import PASSWORDS, ProxyThread


def client_env(password: str | None) -> dict[str, str]:
    """The environment for a libpq program: no inherited PG* variables, TLS off, no prompt."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["PGSSLMODE"] = "disable"
    env["PGCONNECT_TIMEOUT"] = "10"
    env["PGCLIENTENCODING"] = "UTF8"
    if password is not None:
        env["PGPASSWORD"] = password
    return env


def conn_args(proxy: ProxyThread, user: str, dbname: str) -> list[str]:
    return ["-h", proxy.host, "-p", str(proxy.port), "-U", user, "-d", dbname]


def run_psql(
    pg: LocalPostgres,
    proxy: ProxyThread,
    *args: str,
    user: str = "alice",
    dbname: str = "app",
    password: str | None = None,
    no_password: bool = False,
    stdin: str | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    """psql -X -At -w through the proxy; `args` follow the connection options. Not checked."""
    pw = None if no_password else (PASSWORDS.get(user) if password is None else password)
    cmd = [pg.bin("psql"), "-X", "-At", "-w", *conn_args(proxy, user, dbname), *args]
    return subprocess.run(
        cmd,
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=client_env(pw),
        timeout=timeout,
        check=False,
    )


@dataclass(frozen=True)
class BenchResult:
    processed: int
    expected: int
    failed: int
    tps: float
    output: str


_PROCESSED = re.compile(r"number of transactions actually processed: (\d+)/(\d+)")
_FAILED = re.compile(r"number of failed transactions: (\d+)")
_TPS = re.compile(r"tps = ([0-9.]+) \(without initial connection time\)")


def run_pgbench(
    pg: LocalPostgres,
    proxy: ProxyThread,
    *args: str,
    user: str = "alice",
    dbname: str = "app",
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    cmd = [
        pg.bin("pgbench"),
        "-h",
        proxy.host,
        "-p",
        str(proxy.port),
        "-U",
        user,
        *args,
        dbname,
    ]
    return subprocess.run(
        cmd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=client_env(PASSWORDS[user]),
        timeout=timeout,
        check=False,
    )


def parse_pgbench(proc: subprocess.CompletedProcess[str]) -> BenchResult:
    """The summary of a pgbench run; AssertionError (with its output) when it is missing."""
    out = proc.stdout + proc.stderr
    processed = _PROCESSED.search(out)
    tps = _TPS.search(out)
    assert processed is not None and tps is not None, f"unexpected pgbench output:\n{out}"
    failed = _FAILED.search(out)
    return BenchResult(
        processed=int(processed.group(1)),
        expected=int(processed.group(2)),
        # pgbench < 15 reports no failures line: an aborted client shows in `processed` instead.
        failed=int(failed.group(1)) if failed else 0,
        tps=float(tps.group(1)),
        output=out,
    )
