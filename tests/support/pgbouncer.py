"""A real PgBouncer in front of the test server, for tests that compare the proxy with it.

PgBouncer is not a dependency: `pgbouncer_binary()` says whether this machine has one, and tests
skip (naming why) when it does not. PgBouncer refuses to run as root, so under root it runs as
the account that runs the test server.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType

from tests.support.pg import LocalPostgres
from tests.support.proxyproc import free_port
from tests.support.waits import wait_for_sync

_CANDIDATES = ("/usr/sbin/pgbouncer", "/usr/local/sbin/pgbouncer", "/usr/bin/pgbouncer")


def pgbouncer_binary() -> str | None:
    found = shutil.which("pgbouncer")
    if found:
        return found
    return next((c for c in _CANDIDATES if os.access(c, os.X_OK)), None)


class PgBouncer:
    """PgBouncer serving database "app" of `pg` in transaction mode; `users` (name -> plaintext
    password) log in with md5 and the first of them is an admin."""

    def __init__(self, pg: LocalPostgres, users: dict[str, str], binary: str) -> None:
        self.pg, self.users, self.binary = pg, users, binary
        self.host = "127.0.0.1"
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.dir = Path(tempfile.mkdtemp(prefix="pgpool-test-pgbouncer-"))

    def dsn(self, user: str, dbname: str) -> str:
        return f"postgresql://{user}:{self.users[user]}@{self.host}:{self.port}/{dbname}"

    def log(self) -> str:
        path = self.dir / "pgbouncer.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def start(self) -> PgBouncer:
        account = pwd.getpwnam(self.pg.run_as) if os.geteuid() == 0 else None
        self.port = free_port()
        auth_file = self.dir / "userlist.txt"
        auth_file.write_text("".join(f'"{u}" "{p}"\n' for u, p in self.users.items()))
        ini = self.dir / "pgbouncer.ini"
        ini.write_text(
            "\n".join(
                [
                    "[databases]",
                    f"app = host={self.pg.host} port={self.pg.port} dbname=app",
                    "[pgbouncer]",
                    f"listen_addr = {self.host}",
                    f"listen_port = {self.port}",
                    "unix_socket_dir =",
                    "auth_type = md5",
                    f"auth_file = {auth_file}",
                    f"admin_users = {next(iter(self.users))}",
                    "pool_mode = transaction",
                    f"logfile = {self.dir / 'pgbouncer.log'}",
                    "",
                ]
            )
        )
        if account is not None:
            for path in (self.dir, auth_file, ini):
                os.chown(path, account.pw_uid, account.pw_gid)
        self.proc = subprocess.Popen(
            [self.binary, str(ini)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            user=account.pw_uid if account else None,
            group=account.pw_gid if account else None,
        )
        wait_for_sync(self._listening, timeout=20, what=f"PgBouncer on port {self.port}")
        return self

    def _listening(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"PgBouncer exited ({self.proc.returncode}):\n{self.log()}")
        try:
            socket.create_connection((self.host, self.port), timeout=1).close()
        except OSError:
            return False
        return True

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> PgBouncer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
