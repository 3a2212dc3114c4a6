"""Real clients (psql, pgbench, asyncpg, psycopg) against a test proxy: run, connect, read back."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
from dataclasses import dataclass
from typing import Any

import asyncpg
import psycopg

from .pg import LocalPostgres
from .proxy import PASSWORDS, ProxyThread, StartProxy


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


MODES = ("transaction", "session")


class Boom(Exception):
    """Raised by a test inside a transaction block to make the client roll back."""


def start(start_proxy: StartProxy, mode: str, size: int = 3, **sections: Any) -> ProxyThread:
    proxy_section = {"pool_mode": mode, **sections.pop("proxy", {})}
    pool_section = {"default_pool_size": size, **sections.pop("pool", {})}
    proxy = start_proxy(proxy=proxy_section, pool=pool_section, **sections)
    assert proxy.config.proxy.pool_mode.value == mode
    return proxy


def table(prefix: str) -> str:
    """A fresh table name, so tests never see each other's rows."""
    return f"tc_{prefix}_{secrets.token_hex(4)}"


async def apg(proxy: ProxyThread, **kwargs: Any) -> asyncpg.Connection:
    user = kwargs.pop("user", "alice")
    password = kwargs.pop("password", None)
    dbname = kwargs.pop("dbname", "app")
    kwargs.setdefault("statement_cache_size", 0)
    return await asyncpg.connect(proxy.dsn(user, dbname, password), **kwargs)


async def direct(pg: LocalPostgres) -> asyncpg.Connection:
    """A superuser connection straight to the server (no proxy) to check what was committed."""
    return await asyncpg.connect(pg.dsn(dbname="app"))


def pconnect(proxy: ProxyThread, mode: str, **kwargs: Any) -> psycopg.Connection[Any]:
    # Transaction mode: no server-side prepared statements. Session mode keeps psycopg's default
    # (prepare after 5 executions), which must work because the client owns its backend.
    if mode == "transaction":
        kwargs.setdefault("prepare_threshold", None)
    return psycopg.connect(proxy.dsn(), sslmode="disable", connect_timeout=10, **kwargs)


def direct_rows(pg: LocalPostgres, sql: str) -> list[str]:
    out = pg.psql(sql, dbname="app")
    return out.splitlines() if out else []
