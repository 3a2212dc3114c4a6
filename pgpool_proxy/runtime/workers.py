"""Several proxy processes on one port: the supervisor that forks, watches and stops them.

Each worker binds the same address with SO_REUSEPORT, so the kernel spreads new connections
across them. Cancel keys carry the issuing worker's number; a worker that receives a cancel for
another one relays it over that worker's Unix socket in a private directory (`peer_dir`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn

log = logging.getLogger("pgpool_proxy.workers")

# Cancel pids are 31-bit: the top 7 bits name the worker, the rest is random.
WORKER_SHIFT = 24
MAX_WORKERS = 1 << (31 - WORKER_SHIFT)
# Cancel pids start above every pid a server process can have (PID_MAX_LIMIT on Linux is 2**22),
# so a client never mistakes another session's NotificationResponse pid for its own.
MIN_CLIENT_PID = 1 << 22
# A worker that keeps dying is restarted at most this often.
RESTART_BACKOFF_S = 1.0
# A worker's exit status after the admin SHUTDOWN: the supervisor stops every worker (SIGTERM,
# so each drains) and exits, instead of restarting the one that left.
EXIT_SHUTDOWN_ALL = 75
_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}
# Passed on to every worker: the stop signals, and SIGHUP (each worker reloads its config).
_FORWARDED = _STOP_SIGNALS | {signal.SIGHUP}


@dataclass(frozen=True, slots=True)
class WorkerIdentity:
    """Who this process is among its siblings (index 0 and count 1 when running alone)."""

    index: int = 0
    count: int = 1
    peer_dir: str | None = None
    # The supervisor's listening Unix socket (proxy.unix_socket_dir), inherited by every worker.
    unix_fd: int | None = None
    # The instance's peer_id when picked at startup (runtime.peers.pick_peer_id), 0 otherwise.
    peer_id: int = 0

    def peer_socket(self, index: int) -> str:
        assert self.peer_dir is not None
        return os.path.join(self.peer_dir, f"w{index}.sock")


class BindError(Exception):
    """A port the supervisor reserves cannot be bound (taken, privileged, no such address)."""


def reserve_port(host: str, port: int) -> tuple[socket.socket, int]:
    """Bind (without listening) a SO_REUSEPORT socket: resolves port 0 to one port all workers
    share, and fails early, in the supervisor, when the address is taken (BindError)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        reason = exc.strerror or str(exc)
        raise BindError(f"cannot bind {host}:{port}: {reason.lower()}") from None
    return sock, sock.getsockname()[1]


def unix_socket_path(directory: str, port: int) -> str:
    """Where a listener on `port` puts its Unix socket: PostgreSQL's (and libpq's) name."""
    return os.path.join(directory, f".s.PGSQL.{port}")


def bind_unix_listener(directory: str, port: int, mode: int) -> socket.socket:
    """A listening Unix socket at unix_socket_path(directory, port) with permission `mode`.

    A file left there by a process that died is replaced; one another process still accepts
    on is not (BindError), as PostgreSQL and PgBouncer refuse to steal a live socket."""
    path = unix_socket_path(directory, port)
    if os.path.exists(path):
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except OSError:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        else:
            raise BindError(f"cannot listen on {path}: another process is listening on it")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        os.chmod(path, mode)
        sock.listen(4096)
    except OSError as exc:
        sock.close()
        reason = exc.strerror or str(exc)
        raise BindError(f"cannot listen on {path}: {reason.lower()}") from None
    sock.setblocking(False)
    return sock


def supervise(
    count: int,
    host: str,
    port: int,
    run_worker: Callable[[WorkerIdentity, int], int],
    peer_id: int = 0,
    unix_socket: tuple[str, int] | None = None,
) -> int:
    """Fork `count` workers running `run_worker(identity, port)` and wait for a stop signal.

    SIGTERM, SIGINT and SIGHUP are passed on to every worker (each drains and exits, or reloads,
    by itself); a worker that dies on its own is restarted. A worker that exits with
    EXIT_SHUTDOWN_ALL (the admin SHUTDOWN) stops them all, as a SIGTERM would.

    `unix_socket` (directory, mode): one listening Unix socket on the resolved port's number,
    bound here and inherited by every worker (a socket file cannot be shared as SO_REUSEPORT
    shares a port), so a restarted worker accepts on it again; removed when all have stopped.
    """
    reservation, port = reserve_port(host, port)
    unix: socket.socket | None = None
    if unix_socket is not None:
        try:
            unix = bind_unix_listener(unix_socket[0], port, unix_socket[1])
        except BindError:
            reservation.close()
            raise
    peer_dir = tempfile.mkdtemp(prefix="pgpool-proxy-peers-")
    sup = _Supervisor(count, port, reservation, peer_dir, run_worker, peer_id)
    sup.unix_fd = unix.fileno() if unix is not None else None
    old_term = signal.signal(signal.SIGTERM, sup.on_signal)
    old_int = signal.signal(signal.SIGINT, sup.on_signal)
    old_hup = signal.signal(signal.SIGHUP, sup.on_signal)
    try:
        for i in range(count):
            sup.start(i)
        log.info("listening on %s:%s with %d workers", host, port, count)
        return sup.wait_all()
    finally:
        signal.signal(signal.SIGTERM, old_term)
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGHUP, old_hup)
        reservation.close()
        shutil.rmtree(peer_dir, ignore_errors=True)
        if unix is not None and unix_socket is not None:
            unix.close()
            with contextlib.suppress(OSError):
                os.unlink(unix_socket_path(unix_socket[0], port))


class _Supervisor:
    """What the supervisor holds while its workers run: them by pid, when each last started, and
    the stop signals received."""

    def __init__(
        self,
        count: int,
        port: int,
        reservation: socket.socket,
        peer_dir: str,
        run_worker: Callable[[WorkerIdentity, int], int],
        peer_id: int,
    ) -> None:
        self.peer_id = peer_id
        self.count = count
        self.port = port
        self.reservation = reservation
        self.peer_dir = peer_dir
        self.run_worker = run_worker
        self.children: dict[int, int] = {}  # pid -> worker index
        self.last_start: dict[int, float] = {}
        self.stopping: list[int] = []
        self.unix_fd: int | None = None

    def start(self, index: int) -> None:
        """Fork worker `index`; in the child, run it and exit with its status."""
        ident = WorkerIdentity(
            index, self.count, self.peer_dir, unix_fd=self.unix_fd, peer_id=self.peer_id
        )
        # Signals wait until the child is recorded (parent) or its handlers reset (child):
        # otherwise a SIGTERM in between would never reach this worker.
        signal.pthread_sigmask(signal.SIG_BLOCK, _FORWARDED)
        try:
            pid = os.fork()
            if pid == 0:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                # Ignored until the worker's loop installs its reload handler.
                signal.signal(signal.SIGHUP, signal.SIG_IGN)
            else:
                self.children[pid] = index
                self.last_start[index] = time.monotonic()
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _FORWARDED)
        if pid == 0:
            self._run_child(ident)

    def _run_child(self, ident: WorkerIdentity) -> NoReturn:
        # The child must not keep the parent's reservation open.
        self.reservation.close()
        code = 1
        try:
            code = self.run_worker(ident, self.port)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)

    def on_signal(self, signum: int, _frame: object) -> None:
        if signum != signal.SIGHUP:
            self.stopping.append(signum)
        for pid in list(self.children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def wait_all(self) -> int:
        """Reap workers until none is left; 1 if one failed while they were being stopped."""
        status = 0
        while self.children:
            try:
                pid, wstatus = os.wait()
            except ChildProcessError:
                break
            except InterruptedError:
                continue
            index = self.children.pop(pid, None)
            if index is None:
                continue
            if self._exited(index, pid, os.waitstatus_to_exitcode(wstatus)):
                status = 1
        return status

    def _exited(self, index: int, pid: int, code: int) -> bool:
        """Worker `index` left with `code`: restart it, unless stopping; True when it failed
        while stopping."""
        if code == EXIT_SHUTDOWN_ALL:
            code = 0
            if not self.stopping:
                log.info("worker %d was told to SHUT DOWN: stopping every worker", index)
                self.on_signal(signal.SIGTERM, None)
        if self.stopping:
            return code not in (0, -signal.SIGTERM, -signal.SIGINT)
        log.error("worker %d (pid %d) exited with %s; restarting it", index, pid, code)
        wait = RESTART_BACKOFF_S - (time.monotonic() - self.last_start.get(index, 0.0))
        if wait > 0:
            time.sleep(wait)
        if not self.stopping:
            self.start(index)
        return False
