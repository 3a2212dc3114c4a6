"""Owns LocalPostgres: one throwaway cluster's initdb, configuration, lifecycle and SQL."""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import shutil
import signal
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

from ._util import HOST, PgServerError, _conf_value, _hba_word, quote_ident, quote_literal
from .binaries import (
    _SERVER_BINARIES,
    _install_reachable,
    _reachable,
    _resolve_account,
    find_pg_bindir,
    shared_install_copy,
)
from .process import _clean_env, _free_port, _pid_alive, _Result, _run

_WORKDIR_PREFIX = "pgpool-proxy-srv-"
_START_TIMEOUT_S = 60
_RELOAD_TIMEOUT_S = 15.0
# sun_path is 108 bytes on Linux including the NUL; postgres refuses longer socket paths.
_MAX_SOCKET_PATH = 107
_STOP_MODES = ("smart", "fast", "immediate")
_GUC_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")


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
    def source_bindir(self) -> Path:
        """The binaries as found (`bindir` is a world-readable copy when run_as needs one)."""
        return self._source_bindir

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

    def promote(self) -> None:
        """Promote a standby (see pgserver.replica) to a primary, returning once it is one."""
        result = self._pg_ctl("promote", "-w", "-t", str(_START_TIMEOUT_S))
        if result.returncode != 0:
            raise PgServerError(f"pg_ctl promote failed: {result.output}")

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
            "# Written by pgpool_devkit.pgserver.LocalPostgres.set_hba",
            "local all all trust",
            "local replication all trust",
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
        lines = ["", "# pgpool_devkit.pgserver"]
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
