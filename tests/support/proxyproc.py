"""`python -m pgpool_proxy run --config PATH` as a subprocess, its log in a file: for tests that
drive the proxy as an operator does (signals, workers, restarts)."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path
from signal import SIGINT
from typing import Any, TypeVar

from .pg import LocalPostgres
from .proxy import PASSWORDS
from .waits import wait_for_sync

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A port the kernel just handed out, for a proxy whose tests must know its port before it
    starts (restarts on the same port, reuse_port); otherwise listen on port 0."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ProxyProcess:
    def __init__(
        self, config: Path, port: int, log: Path, env: dict[str, str] | None = None
    ) -> None:
        self.port = port  # the configured port (0: read it from the log with wait_for)
        self.log_path = log
        self._log = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pgpool_proxy", "run", "--config", str(config)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env=env,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, pattern: str, count: int = 1, timeout_s: float = 30) -> list[re.Match[str]]:
        """The first ``count`` matches of ``pattern`` in the log, once there are that many."""

        def found() -> list[re.Match[str]] | None:
            got = list(re.finditer(pattern, self.log()))
            if len(got) >= count:
                return got[:count]
            assert self.proc.poll() is None, f"proxy exited:\n{self.log()}"
            return None

        matches = wait_for_sync(
            found,
            timeout=timeout_s,
            what=lambda: f"{count} x {pattern!r} in the proxy's log:\n{self.log()}",
            interval=0.05,
        )
        assert matches is not None
        return matches

    def wait_listening(self, marker: str = "listening on") -> None:
        self.wait_for(re.escape(marker), timeout_s=20)

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def stop(self, sig: int = SIGINT) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


def write_config(
    path: Path,
    pg: LocalPostgres,
    port: int,
    *,
    pool_size: int = 5,
    users: tuple[str, ...] = ("alice", "bob"),
    proxy: str = "",
    pool: str = "",
    admin: str = "",
    auth: str | None = None,
    sections: str = "",
    host: str = "127.0.0.1",
) -> None:
    """A config file for the test server: `proxy`, `pool` and `admin` add lines to their
    sections, `auth` sets the auth type, `sections` adds whole sections (TOML text), `host` is
    the listen address."""
    user_lines = "".join(f'[[users]]\nname = "{u}"\npassword = "{PASSWORDS[u]}"\n\n' for u in users)
    auth_lines = f'[auth]\ntype = "{auth}"\n' if auth else ""
    path.write_text(
        f"""
[proxy]
listen = "{host}:{port}"
{proxy}

[pool]
default_pool_size = {pool_size}
{pool}

[admin]
admin_users = ["alice"]
{admin}

{auth_lines}
{sections}

[[databases]]
name = "app"
host = "{pg.host}"
port = {pg.port}

{user_lines}"""
    )


P = TypeVar("P", bound=ProxyProcess)


def start_workers(
    pg: LocalPostgres,
    tmp_path: Path,
    workers: int,
    *,
    pool_size: int,
    sections: str = "",
    cls: type[P] = ProxyProcess,  # type: ignore[assignment]
) -> P:
    """`workers = N` on a port the kernel picks (read from the log), alice with md5 (cheap
    logins), once every worker listens."""
    cfg = tmp_path / "proxy.toml"
    write_config(
        cfg,
        pg,
        0,
        pool_size=pool_size,
        users=("alice",),
        proxy=f"workers = {workers}",
        auth="md5",
        sections=sections,
    )
    proc = cls(cfg, 0, tmp_path / "proxy.log")
    try:
        (found,) = proc.wait_for(r"listening on 127\.0\.0\.1:(\d+) with")
        proc.port = int(found.group(1))
        proc.wait_for(r"\[w\d+\]: .*listening on", count=workers)
    except BaseException:
        proc.stop()
        raise
    return proc


class Launcher:
    """Proxy processes on one config file and one port (the `launch` fixture): write the
    config, start one or more processes on it (a rolling restart), stop them all at the end."""

    def __init__(self, pg: LocalPostgres, tmp_path: Path) -> None:
        self.pg = pg
        self.tmp_path = tmp_path
        self.port = free_port()
        self.config = tmp_path / "proxy.toml"
        self.started: list[ProxyProcess] = []

    def configure(self, **options: Any) -> None:
        """(Re)write the config: `write_config`'s options."""
        write_config(self.config, self.pg, self.port, **options)

    def start(
        self, log: str = "proxy.log", wait: tuple[str, ...] = ("listening on",)
    ) -> ProxyProcess:
        """Start a process on the config; return once each of `wait` is in its log."""
        proc = ProxyProcess(self.config, self.port, self.tmp_path / log)
        self.started.append(proc)
        for marker in wait:
            proc.wait_listening(marker)
        return proc

    def stop_all(self) -> None:
        for proc in self.started:
            proc.stop()
