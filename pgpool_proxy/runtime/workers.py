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


def supervise(
    count: int, host: str, port: int, run_worker: Callable[[WorkerIdentity, int], int]
) -> int:
    """Fork `count` workers running `run_worker(identity, port)` and wait for a stop signal.

    SIGTERM, SIGINT and SIGHUP are passed on to every worker (each drains and exits, or reloads,
    by itself); a worker that dies on its own is restarted. A worker that exits with
    EXIT_SHUTDOWN_ALL (the admin SHUTDOWN) stops them all, as a SIGTERM would.
    """
    reservation, port = reserve_port(host, port)
    peer_dir = tempfile.mkdtemp(prefix="pgpool-proxy-peers-")
    children: dict[int, int] = {}  # pid -> worker index
    last_start: dict[int, float] = {}
    stopping: list[int] = []

    def start(index: int) -> None:
        ident = WorkerIdentity(index, count, peer_dir)
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
                children[pid] = index
                last_start[index] = time.monotonic()
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _FORWARDED)
        if pid == 0:
            # The child must not keep the parent's reservation open.
            reservation.close()
            code = 1
            try:
                code = run_worker(ident, port)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)

    def on_signal(signum: int, _frame: object) -> None:
        if signum != signal.SIGHUP:
            stopping.append(signum)
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    old_term = signal.signal(signal.SIGTERM, on_signal)
    old_int = signal.signal(signal.SIGINT, on_signal)
    old_hup = signal.signal(signal.SIGHUP, on_signal)
    try:
        for i in range(count):
            start(i)
        log.info("listening on %s:%s with %d workers", host, port, count)
        status = 0
        while children:
            try:
                pid, wstatus = os.wait()
            except ChildProcessError:
                break
            except InterruptedError:
                continue
            index = children.pop(pid, None)
            if index is None:
                continue
            code = os.waitstatus_to_exitcode(wstatus)
            if code == EXIT_SHUTDOWN_ALL:
                code = 0
                if not stopping:
                    log.info("worker %d was told to SHUT DOWN: stopping every worker", index)
                    on_signal(signal.SIGTERM, None)
            if stopping:
                if code not in (0, -signal.SIGTERM, -signal.SIGINT):
                    status = 1
                continue
            log.error("worker %d (pid %d) exited with %s; restarting it", index, pid, code)
            wait = RESTART_BACKOFF_S - (time.monotonic() - last_start.get(index, 0.0))
            if wait > 0:
                time.sleep(wait)
            if not stopping:
                start(index)
        return status
    finally:
        signal.signal(signal.SIGTERM, old_term)
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGHUP, old_hup)
        reservation.close()
        shutil.rmtree(peer_dir, ignore_errors=True)
