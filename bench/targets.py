"""What pgbench talks to: PostgreSQL direct, PgBouncer and pgpool-proxy; start, stop, account.

Every target listens on 127.0.0.1 on an ephemeral port. PgBouncer and the proxy run as
subprocesses in their own session (a terminal's Ctrl-C reaches the harness, whose `finally`
stops them); `stop()` is idempotent and always called.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from pgpool_devkit.pgserver import LocalPostgres

HOST = "127.0.0.1"
REPO_ROOT = Path(__file__).resolve().parent.parent

BENCH_DB = "bench"
BENCH_USER = "bench"
BENCH_PASSWORD = "bench-pw"  # a throwaway local role

# Enough for 5,000 pgbench clients plus the memory test's idle clients.
MAX_CLIENT_CONN = 12000
_START_TIMEOUT_S = 30.0
_STOP_TIMEOUT_S = 15.0


class TargetError(Exception):
    """A target could not be started (or died)."""


# --------------------------------------------------------------------------------------------
# Process plumbing


def raise_nofile_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft == resource.RLIM_INFINITY or soft >= hard:
        return int(hard if soft == resource.RLIM_INFINITY else soft)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return int(resource.getrlimit(resource.RLIMIT_NOFILE)[0])


def preexec_child() -> None:
    """preexec_fn for every subprocess: many sockets need a high `ulimit -n`."""
    raise_nofile_limit()


def free_port() -> int:
    """A port that was free on 127.0.0.1 a moment ago (for programs that cannot bind port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def child_env() -> dict[str, str]:
    """The environment for the pooler subprocesses: this checkout first on sys.path, and no
    PGPOOL_* overrides or libpq settings leaking in from the caller's shell."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PGPOOL_", "PG")) or k == "PGPOOL_PG_BINDIR"
    }
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p
    )
    return env


def process_tree(pid: int) -> list[int]:
    """pid and its live descendants (a pooler may fork workers)."""
    try:
        import psutil  # type: ignore[import-untyped]
    except ImportError:
        return [pid]
    try:
        proc = psutil.Process(pid)
        return [pid, *(c.pid for c in proc.children(recursive=True))]
    except psutil.Error:
        return [pid]


def cpu_seconds(pid: int, pids: list[int] | None = None) -> float:
    """User + system CPU seconds used so far by pid and its live descendants (or `pids`)."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for p in pids if pids is not None else process_tree(pid):
        try:
            stat = Path(f"/proc/{p}/stat").read_text()
        except OSError:
            continue
        # The command name may contain spaces; fields after the closing paren are fixed.
        fields = stat[stat.rindex(")") + 2 :].split()
        total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return total


def rss_bytes(pid: int) -> int:
    """Resident set size of pid and its live descendants."""
    total = 0
    for p in process_tree(pid):
        try:
            status = Path(f"/proc/{p}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
    return total


def _stop_process(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(_STOP_TIMEOUT_S)


# --------------------------------------------------------------------------------------------
# The PostgreSQL server


@dataclass
class Database:
    """The benchmark database on a throwaway local server; role `bench` logs in with md5."""

    pg: LocalPostgres
    max_connections: int
    name: str = BENCH_DB
    user: str = BENCH_USER
    password: str = BENCH_PASSWORD

    @property
    def host(self) -> str:
        return self.pg.host

    @property
    def port(self) -> int:
        return self.pg.port


def start_postgres(max_connections: int = 300) -> Database:
    """Start a LocalPostgres with an md5 role and database `bench` (tables not yet created)."""
    pg = LocalPostgres(
        settings={
            "max_connections": str(max_connections),
            "shared_buffers": "256MB",
            "log_min_messages": "warning",
        }
    )
    try:
        pg.start()
        # md5 everywhere (client to pooler, pooler to server, and pgbench direct), so every
        # target pays the same kind of login.
        pg.create_role(BENCH_USER, BENCH_PASSWORD, password_encryption="md5")
        pg.create_database(BENCH_DB, owner=BENCH_USER)
        pg.set_hba([f"host all {BENCH_USER} {HOST}/32 md5"])
    except BaseException:
        pg.cleanup()
        raise
    return Database(pg=pg, max_connections=max_connections)


# --------------------------------------------------------------------------------------------
# Targets


class Target:
    """Something pgbench connects to. `pid` is the process whose CPU and memory are accounted."""

    name = "target"
    label = "target"

    def __init__(self, db: Database, pool_size: int) -> None:
        self.db = db
        self.pool_size = pool_size
        self.host = HOST
        self.port = 0

    @property
    def pid(self) -> int | None:
        return None

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def alive(self) -> bool:
        return True

    def log_tail(self, lines: int = 20) -> str:
        return ""

    def __enter__(self) -> Target:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class DirectTarget(Target):
    """PostgreSQL itself: every client is a backend process."""

    name = "direct"
    label = "PostgreSQL direct"

    def __init__(self, db: Database, pool_size: int = 0) -> None:
        super().__init__(db, pool_size)
        self.host = db.host
        self.port = db.port

    def alive(self) -> bool:
        return self.db.pg.running

    def log_tail(self, lines: int = 20) -> str:
        return self.db.pg.log_tail(lines)


class _ProcessTarget(Target):
    """A pooler run as a subprocess from a config file in its own temporary directory."""

    def __init__(self, db: Database, pool_size: int) -> None:
        super().__init__(db, pool_size)
        self.proc: subprocess.Popen[bytes] | None = None
        self.work_dir: Path | None = None
        self._log: IO[bytes] | None = None
        # The CPUs the pooler may run on (bench.scaling); None leaves it the caller's. Set before
        # exec, so every process the pooler forks (the proxy's workers) inherits it.
        self.cpus: frozenset[int] | None = None

    def _preexec(self) -> None:
        preexec_child()
        if self.cpus is not None:
            os.sched_setaffinity(0, self.cpus)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def log_path(self) -> Path:
        assert self.work_dir is not None
        return self.work_dir / f"{self.name}.log"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except (OSError, AssertionError):
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def env(self) -> dict[str, str]:
        return child_env()

    # Subclasses: write the config for self.port and return the command (and the OS user).
    def _prepare(self) -> tuple[list[str], pwd.struct_passwd | None]:
        raise NotImplementedError

    def start(self) -> None:
        if self.alive():
            return
        self.stop()
        self.work_dir = Path(tempfile.mkdtemp(prefix=f"pgpool-bench-{self.name}-"))
        last_error = ""
        for _attempt in range(3):
            self.port = free_port()
            cmd, account = self._prepare()
            self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
            extra: dict[str, Any] = {}
            if account is not None:
                extra = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
            self.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                cwd=self.work_dir,
                env=self.env(),
                start_new_session=True,
                preexec_fn=self._preexec,
                **extra,
            )
            deadline = time.monotonic() + _START_TIMEOUT_S
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break
                if port_open(self.host, self.port):
                    return
                time.sleep(0.05)
            last_error = self.log_tail()
            _stop_process(self.proc)
            self._log.close()
            self._log = None
            if "in use" not in last_error:
                break
        self.stop()
        raise TargetError(f"{self.label} did not start on {self.host}:{self.port}:\n{last_error}")

    def stop(self) -> None:
        if self.proc is not None:
            _stop_process(self.proc)
            self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None
        if self.work_dir is not None:
            shutil.rmtree(self.work_dir, ignore_errors=True)
            self.work_dir = None


class ProxyTarget(_ProcessTarget):
    """pgpool-proxy from this checkout: `python -m pgpool_proxy run --config <tmp toml>`."""

    name = "proxy"
    label = "pgpool-proxy"

    def __init__(
        self, db: Database, pool_size: int, extra: dict[str, dict[str, Any]] | None = None
    ) -> None:
        super().__init__(db, pool_size)
        self.extra = extra or {}
        self.metrics_port = 0  # its Prometheus endpoint (bench.looplag scrapes the loop lag)

    def config_text(self) -> str:
        sections: dict[str, dict[str, Any]] = {
            "proxy": {
                "listen": f"{HOST}:{self.port}",
                "pool_mode": "transaction",
                "max_client_conn": MAX_CLIENT_CONN,
                "log_level": "warning",
            },
            "pool": {"default_pool_size": self.pool_size, "query_wait_timeout_s": 120},
            "auth": {"type": "md5"},
        }
        if self.metrics_port:
            sections["metrics"] = {"listen": f"{HOST}:{self.metrics_port}"}
        for section, values in self.extra.items():
            sections.setdefault(section, {}).update(values)
        lines: list[str] = []
        for section, values in sections.items():
            lines.append(f"[{section}]")
            lines += [f"{key} = {_toml_value(value)}" for key, value in values.items()]
            lines.append("")
        lines += [
            "[[databases]]",
            f'name = "{self.db.name}"',
            *self.server_lines(),
            "",
            "[[users]]",
            f'name = "{self.db.user}"',
            f'password = "{self.db.password}"',
            "",
        ]
        return "\n".join(lines)

    def server_lines(self) -> list[str]:
        """Where the database's server is, in the [[databases]] entry."""
        return [f'host = "{self.db.host}"', f"port = {self.db.port}"]

    def _prepare(self) -> tuple[list[str], pwd.struct_passwd | None]:
        assert self.work_dir is not None
        config = self.work_dir / "proxy.toml"
        self.metrics_port = free_port()
        config.write_text(self.config_text())
        return [sys.executable, "-m", "pgpool_proxy", "run", "--config", str(config)], None


class PureProxyTarget(ProxyTarget):
    """The same checkout with PGPOOL_PURE_PYTHON=1: the pure-Python hot path, to measure what
    the compiled twin buys within the same run (README, "Compiled hot path")."""

    name = "proxy-pure"
    label = "pgpool-proxy (pure Python)"

    def env(self) -> dict[str, str]:
        return {**child_env(), "PGPOOL_PURE_PYTHON": "1"}


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


# --------------------------------------------------------------------------------------------
# PgBouncer


def find_pgbouncer() -> str | None:
    found = shutil.which("pgbouncer")
    if found:
        return found
    for candidate in ("/usr/sbin/pgbouncer", "/usr/local/sbin/pgbouncer", "/usr/bin/pgbouncer"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def ensure_pgbouncer(install: bool = True, log: Any = print) -> tuple[str | None, str]:
    """The pgbouncer binary, installing the OS package when missing and allowed.

    Returns (path, "") or (None, why it cannot be had).
    """
    found = find_pgbouncer()
    if found:
        return found, ""
    if not install:
        return None, "PgBouncer is not installed (and --no-install was given)"
    apt = shutil.which("apt-get")
    if apt is None:
        return None, "PgBouncer is not installed and there is no apt-get to install it with"
    if os.geteuid() != 0:
        return None, "PgBouncer is not installed; install it with `sudo apt-get install pgbouncer`"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}

    def apt_get(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [apt, *args],
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )

    log("PgBouncer not found: apt-get install -y pgbouncer ...")
    result = apt_get("install", "-y", "pgbouncer")
    if result.returncode != 0:
        log("apt-get install failed; running apt-get update and trying again ...")
        apt_get("update")
        result = apt_get("install", "-y", "pgbouncer")
    found = find_pgbouncer()
    if found:
        return found, ""
    tail = "\n".join((result.stdout + result.stderr).splitlines()[-5:])
    return None, f"PgBouncer could not be installed with apt-get:\n{tail}"


def pgbouncer_version(binary: str) -> str:
    try:
        out = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    first = out.strip().splitlines()[0] if out.strip() else "unknown"
    return first.removeprefix("PgBouncer ").strip()


class PgBouncerTarget(_ProcessTarget):
    """PgBouncer in transaction mode, md5 auth from an auth_file, as an unprivileged user when
    we are root (it refuses to run as root)."""

    name = "pgbouncer"
    label = "PgBouncer"

    def __init__(self, db: Database, pool_size: int, binary: str) -> None:
        super().__init__(db, pool_size)
        self.binary = binary

    def _account(self) -> pwd.struct_passwd | None:
        if os.geteuid() != 0:
            return None
        return pwd.getpwnam(self.db.pg.run_as)

    def config_text(self, auth_file: Path) -> str:
        db = self.db
        return "\n".join(
            [
                "[databases]",
                f"{db.name} = host={db.host} port={db.port} dbname={db.name}",
                "",
                "[pgbouncer]",
                f"listen_addr = {HOST}",
                f"listen_port = {self.port}",
                "unix_socket_dir =",
                "auth_type = md5",
                f"auth_file = {auth_file}",
                "pool_mode = transaction",
                f"max_client_conn = {MAX_CLIENT_CONN}",
                f"default_pool_size = {self.pool_size}",
                "min_pool_size = 0",
                "reserve_pool_size = 0",
                "listen_backlog = 4096",
                "query_wait_timeout = 120",
                "server_login_retry = 1",
                "log_connections = 0",
                "log_disconnections = 0",
                "log_pooler_errors = 1",
                "stats_period = 3600",
                "",
            ]
        )

    def _prepare(self) -> tuple[list[str], pwd.struct_passwd | None]:
        assert self.work_dir is not None
        account = self._account()
        auth_file = self.work_dir / "userlist.txt"
        # A plaintext secret: md5 to clients, and whatever the server asks for to PostgreSQL.
        auth_file.write_text(f'"{self.db.user}" "{self.db.password}"\n')
        ini = self.work_dir / "pgbouncer.ini"
        ini.write_text(self.config_text(auth_file))
        for path in (auth_file, ini):
            path.chmod(0o600)
        if account is not None:
            for path in (self.work_dir, auth_file, ini):
                os.chown(path, account.pw_uid, account.pw_gid)
        return [self.binary, str(ini)], account
