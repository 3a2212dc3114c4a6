"""Owns the probing of a topology's hosts: one monitoring connection and one loop per host.

Each loop logs in once (the pools' login code, TLS and credentials), then asks every
``poll_interval_s`` whether the server is in recovery, its timeline and WAL position, and feeds
the answer to `Topology`. Once anything fails every loop switches to ``fast_poll_interval_s``
until a writer is confirmed again. A lost connection is a definitive failure (the server
restarted or died); a slow answer is a soft one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from ..auth.scram import DEFAULT_MAX_SERVER_ITERATIONS
from ..auth.server_login import BackendLoginError
from ..config import TopologySettings
from ..errors import DisconnectReason, ProxyError, SqlState
from ..net.connect import ServerTls, open_server_transport
from . import server_connect
from .backend import BackendConnection, BackendProtocol
from .backend_state import BackendState
from .topology import DOWN, HostState, ProbeResult, Topology

log = logging.getLogger("pgpool_proxy.topology")


class MonitorLogin(Protocol):
    """Who the monitor logs in as; follows Secrets Manager rotation like the pools do."""

    async def candidates(self, failed_password: str | None) -> list[tuple[str, str | None]]:
        """Logins to try: the current one, or after ``failed_password`` was refused the
        refreshed ones (empty: nothing new to try)."""
        ...

    def succeeded(self, user: str, password: str | None) -> None: ...


Spawn = Callable[[Coroutine[Any, Any, None], str], None]

# Aurora has no timeline or WAL file names; it names its writer in aurora_replica_status().
DETECT_SQL = "SELECT to_regproc('aurora_replica_status') IS NOT NULL"
PROBE_SQL = (
    "SELECT pg_is_in_recovery(), "
    "CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END, "
    "CASE WHEN pg_is_in_recovery() THEN "
    "(SELECT received_tli FROM pg_stat_wal_receiver) "
    "ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int END"
)
AURORA_PROBE_SQL = (
    "SELECT pg_is_in_recovery(), aurora_db_instance_identifier(), "
    "(SELECT server_id FROM aurora_replica_status() "
    "WHERE session_id = 'MASTER_SESSION_ID' LIMIT 1)"
)


def parse_lsn(text: str | None) -> int | None:
    """'16/B374D848' -> its byte position."""
    if not text or "/" not in text:
        return None
    hi, _, lo = text.partition("/")
    try:
        return (int(hi, 16) << 32) | int(lo, 16)
    except ValueError:
        return None


def parse_probe(row: list[str | None], aurora: bool) -> ProbeResult:
    """One probe row -> ProbeResult; raises ValueError when it is not what was asked for."""
    if len(row) != 3 or row[0] not in ("t", "f"):
        raise ValueError(f"unexpected probe row {row!r}")
    in_recovery = row[0] == "t"
    if aurora:
        return ProbeResult(in_recovery, instance_id=row[1], writer_instance_id=row[2])
    timeline = int(row[2]) if row[2] is not None else None
    return ProbeResult(in_recovery, timeline=timeline, lsn=parse_lsn(row[1]))


class _ProbeSpec:
    __slots__ = ("max_prepared_statements", "max_scram_iterations")

    def __init__(self) -> None:
        self.max_prepared_statements = 0
        self.max_scram_iterations = DEFAULT_MAX_SERVER_ITERATIONS


class ProbeConnection:
    """A monitoring connection: the pool's BackendConnection with this object as its owner."""

    def __init__(self, name: str, host: str, port: int, connect_timeout_s: float) -> None:
        self.name = name
        self.spec = _ProbeSpec()
        self.backend_address = (host, port)
        self.connect_timeout_s = connect_timeout_s
        self.backend: BackendConnection | None = None
        self._waiting: asyncio.Future[tuple[list[dict[str, str]], list[list[str | None]]]] | None
        self._waiting = None
        self.aurora = False

    # The slice of Pool that BackendConnection calls into.
    def backend_closed(self, backend: BackendConnection, prev: BackendState) -> None:
        fut = self._waiting
        if fut is not None and not fut.done():
            fut.set_exception(ConnectionError("monitoring connection lost"))
        if backend is self.backend:
            self.backend = None

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        coro.close()  # monitoring connections never send cancel requests

    def release(self, backend: BackendConnection) -> None:
        pass

    async def connect(self, tls: ServerTls, dbname: str, login: MonitorLogin) -> None:
        attempts = await login.candidates(None)
        i = 0
        while True:
            user, secret = attempts[i]
            try:
                await self._connect_as(tls, dbname, user, secret)
            except BackendLoginError as exc:
                if exc.sqlstate != SqlState.INVALID_PASSWORD or secret is None:
                    raise
                if i == 0:
                    # Rotation: the server may already have the new password (as for pools).
                    attempts += await login.candidates(secret)
                i += 1
                if i >= len(attempts):
                    raise
                continue
            if i:
                login.succeeded(user, secret)
            return

    async def _connect_as(self, tls: ServerTls, dbname: str, user: str, secret: str | None) -> None:
        backend = BackendProtocol(self, 0)  # type: ignore[arg-type]
        backend.address = self.backend_address
        self.backend = backend
        host, port = self.backend_address
        try:
            await open_server_transport(lambda: backend, host, port, tls)
            if backend.transport is None:
                raise ConnectionError("connection closed before login")
            await server_connect.login(backend, user, dbname, secret)
            rows = await self.query(DETECT_SQL)
            self.aurora = bool(rows) and rows[0][0] == "t"
        except BaseException:
            # This attempt's own connection, even if stop() already forgot it.
            if not backend.is_closed():
                backend.close(DisconnectReason.POOL_CLOSED)
            if self.backend is backend:
                self.backend = None
            raise

    async def query(self, sql: str) -> list[list[str | None]]:
        backend = self.backend
        if backend is None or backend.state != BackendState.IDLE:
            raise ConnectionError("monitoring connection not ready")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[tuple[list[dict[str, str]], list[list[str | None]]]]
        fut = loop.create_future()
        self._waiting = fut

        def done(
            b: BackendConnection, errors: list[dict[str, str]], rows: list[list[str | None]]
        ) -> None:
            if not fut.done():
                fut.set_result((errors, rows))

        backend.run_own([sql], done)
        try:
            errors, rows = await fut
        finally:
            self._waiting = None
        if not backend.is_closed():
            backend.to_idle()
        if errors:
            raise RuntimeError(f"{errors[0].get('C', '?')} {errors[0].get('M', 'probe failed')}")
        return rows

    def close(self) -> None:
        backend = self.backend
        if backend is not None and backend.state != BackendState.CLOSED:
            backend.close(DisconnectReason.POOL_CLOSED)
        self.backend = None


class TopologyMonitor:
    """Runs one probe loop per host of a topology until `stop()`."""

    def __init__(
        self,
        topology: Topology,
        settings: TopologySettings,
        dbname: str,
        login: MonitorLogin,
        tls: ServerTls,
        spawn: Spawn,
    ) -> None:
        self.topology = topology
        self.settings = settings
        self.dbname = dbname
        self.login = login
        self.tls = tls
        self._spawn = spawn
        self._loops: dict[tuple[str, int], asyncio.Event] = {}
        self._probes: dict[tuple[str, int], ProbeConnection] = {}
        self.stopped = False
        topology.on_fast = self.wake_all

    def start(self) -> None:
        for state in self.topology.hosts:
            self.watch(state)

    def watch(self, state: HostState) -> None:
        """Start probing a host (discovery calls this for hosts that appear later)."""
        if state.key in self._loops or self.stopped:
            return
        self._loops[state.key] = asyncio.Event()
        self._spawn(self._loop(state), f"monitor:{self.topology.name}:{state.address}")

    def forget(self, state: HostState) -> None:
        wake = self._loops.pop(state.key, None)
        if wake is not None:
            wake.set()
        probe = self._probes.pop(state.key, None)
        if probe is not None:
            probe.close()

    def wake_all(self) -> None:
        for event in self._loops.values():
            event.set()

    def stop(self) -> None:
        self.stopped = True
        self.wake_all()
        for probe in self._probes.values():
            probe.close()
        self._probes.clear()

    async def _loop(self, state: HostState) -> None:
        settings = self.settings
        topo = self.topology
        key = state.key
        wake = self._loops[key]
        try:
            while not self.stopped and self._loops.get(key) is wake:
                try:
                    await self._probe_once(state)
                except Exception:
                    # A bug here must not freeze this host's last role for good.
                    log.exception("topology %s: probing %s failed", topo.name, state.address)
                    self._drop_probe(key)
                    with contextlib.suppress(Exception):
                        self._failed(state, "internal error while probing", definitive=False)
                # Wakes raised by this probe's own outcome are already reflected in the pace.
                wake.clear()
                fast = topo.fast and state.role != DOWN  # dead hosts: retried at the steady pace
                interval = settings.fast_poll_interval_s if fast else settings.poll_interval_s
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(interval):
                        await wake.wait()
        finally:
            if self._loops.get(key) is wake:  # not replaced by a newer loop for this host
                del self._loops[key]
                self._drop_probe(key)

    async def _probe_once(self, state: HostState) -> None:
        key = state.key
        topo = self.topology
        state.probes += 1
        try:
            async with asyncio.timeout(self.settings.probe_timeout_s):
                result = await self._probe(state)
        except TimeoutError:
            self._drop_probe(key)
            self._failed(state, "no answer within probe_timeout_s", definitive=False)
            return
        except (OSError, ConnectionError, EOFError) as exc:
            self._drop_probe(key)
            self._failed(state, _describe(exc), definitive=True)
            return
        except (ProxyError, ssl.SSLError, RuntimeError, ValueError) as exc:
            self._drop_probe(key)
            self._failed(state, _describe(exc), definitive=False)
            return
        was = state.role
        topo.observe(state, result, asyncio.get_running_loop().time())
        if was != state.role:
            log.info(
                "topology %s: %s is now %s (timeline %s)",
                topo.name,
                state.address,
                state.role,
                state.timeline,
                extra={
                    "event": "topology",
                    "topology": topo.name,
                    "host": state.address,
                    "role": state.role,
                },
            )

    async def _probe(self, state: HostState) -> ProbeResult:
        probe = self._probes.get(state.key)
        if probe is None or probe.backend is None:
            probe = ProbeConnection(
                f"monitor:{self.topology.name}",
                state.host,
                state.port,
                self.settings.probe_timeout_s,
            )
            self._probes[state.key] = probe
            await probe.connect(self.tls, self.dbname, self.login)
        rows = await probe.query(AURORA_PROBE_SQL if probe.aurora else PROBE_SQL)
        if len(rows) != 1:
            raise ValueError(f"probe returned {len(rows)} rows")
        return parse_probe(rows[0], probe.aurora)

    def _drop_probe(self, key: tuple[str, int]) -> None:
        probe = self._probes.pop(key, None)
        if probe is not None:
            probe.close()

    def _failed(self, state: HostState, error: str, definitive: bool) -> None:
        was = state.role
        self.topology.observe_failure(state, error, asyncio.get_running_loop().time(), definitive)
        if was != state.role:
            log.warning(
                "topology %s: %s is now %s: %s",
                self.topology.name,
                state.address,
                state.role,
                error,
                extra={
                    "event": "topology",
                    "topology": self.topology.name,
                    "host": state.address,
                    "role": state.role,
                },
            )


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ProxyError):
        return f"{exc.sqlstate} {exc.message}"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
