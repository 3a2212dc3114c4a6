"""A pool of server connections for one (database, server user): FIFO waiters, LIFO idle list."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections import deque
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import DisconnectReason, ProxyError, SqlState
from ..session.prepared import StatementRegistry
from .backend import BackendConnection, BackendLoginError, BackendState
from .connect import NO_TLS, ServerTls, open_server_transport

if TYPE_CHECKING:
    from ..config import PoolMode
    from ..session.client import ClientConnection

log = logging.getLogger("pgpool_proxy.pool")


class CredentialSource(Protocol):
    """Server credentials that can change while the proxy runs (Secrets Manager rotation)."""

    async def current(self) -> tuple[str, str]:
        """(user, password) to log in with now; raises ProxyError when none is known."""
        ...

    async def after_auth_failure(self, failed_password: str) -> list[tuple[str, str]]:
        """Credentials to try after the server refused `failed_password` (refreshed)."""
        ...

    def note_success(self, user: str, password: str) -> None:
        """Credentials from after_auth_failure worked: use them until the secret moves on."""
        ...


@dataclass(frozen=True, slots=True)
class PoolSpec:
    """Everything a pool needs to open server connections, resolved from the config."""

    name: str  # "<database>/<server user>", for logs
    host: str
    port: int
    dbname: str
    user: str
    secret: str | None  # plaintext, md5 hash or SCRAM verifier
    size: int
    min_size: int
    mode: PoolMode
    query_wait_timeout_s: float
    idle_timeout_s: float
    lifetime_s: float
    connect_timeout_s: float
    login_retry_s: float
    reset_query: str
    max_prepared_statements: int
    tls: ServerTls = NO_TLS
    credentials: CredentialSource | None = None  # replaces user/secret when set


class Pool:
    """Owns the server connections of one pool and hands them to clients.

    Acquire and release run synchronously on the hot path: a free backend is linked at once and a
    released one goes straight to the oldest waiter, with no task switch in between.
    """

    def __init__(self, spec: PoolSpec, spawn: Any) -> None:
        self.spec = spec
        self.name = spec.name
        self.backend_address = (spec.host, spec.port)
        self.connect_timeout_s = spec.connect_timeout_s
        self._spawn = spawn
        self.loop = asyncio.get_running_loop()
        self.idle: list[BackendConnection] = []
        self.waiters: deque[ClientConnection] = deque()
        self.total = 0  # connecting + idle + linked + resetting
        self.connecting = 0
        self.generation = 0
        self.server_params: dict[str, str] | None = None
        # Login ParameterStatus blocks by client settings signature (see session.login).
        self.welcome_cache: dict[tuple[object, ...], bytes] = {}
        self._params_waiters: list[asyncio.Future[None]] = []
        self.last_connect_error: ProxyError | None = None
        self.last_connect_failure_at = -1e9
        # SCRAM pass-through: a ClientKey recovered from a client's login, reused for the server.
        self.client_key: bytes | None = None
        self.server_key: bytes | None = None
        self.closed = False
        # Named prepared statements shared by this pool's clients (transaction mode).
        self.registry = StatementRegistry(max(1000, 10 * spec.max_prepared_statements))
        self.pinned = 0  # clients holding a backend between transactions (session state)
        # Plain counters, read at scrape time (never labelled per message).
        self.clients = 0
        self.total_xacts = 0
        self.total_wait_s = 0.0
        self.wait_count = 0

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        self._spawn(coro, f"{self.name}:{name}")

    # --- hot path ----------------------------------------------------------------------------

    def acquire(self, client: ClientConnection) -> BackendConnection | None:
        """A backend for client now, or None after queueing client (FIFO) for the next one."""
        idle = self.idle
        if idle:
            return idle.pop()
        client.wait_since = self.loop.time()
        self.waiters.append(client)
        self._maybe_grow()
        return None

    def release(self, backend: BackendConnection) -> None:
        """Take a backend back; the oldest live waiter gets it immediately."""
        if backend.state == BackendState.CLOSED:
            return
        if backend.cancels_in_flight:
            # Reuse only after the cancel has reached the server, so it cannot hit the next client.
            backend.release_when_cancelled = True
            return
        self.total_xacts += 1
        if backend.generation != self.generation or self.closed:
            backend.close(DisconnectReason.POOL_CLOSED)
            return
        now = self.loop.time()
        lifetime = self.spec.lifetime_s
        if lifetime and now - backend.created_at > lifetime:
            backend.close(DisconnectReason.LIFETIME)
            return
        if backend.state != BackendState.IDLE:
            backend.to(BackendState.IDLE)
        waiters = self.waiters
        while waiters:
            client = waiters.popleft()
            if client.is_waiting():
                self.total_wait_s += now - client.wait_since
                self.wait_count += 1
                client.backend_assigned(backend)
                return
        backend.idle_since = now
        self.idle.append(backend)

    def forget_waiter(self, client: ClientConnection) -> None:
        """Drop a departed waiter now rather than when it reaches the head of the queue."""
        with contextlib.suppress(ValueError):
            self.waiters.remove(client)

    # --- connections -------------------------------------------------------------------------

    def backend_closed(self, backend: BackendConnection, prev: BackendState) -> None:
        self.total -= 1
        if prev == BackendState.IDLE:
            with contextlib.suppress(ValueError):
                self.idle.remove(backend)
        self._maybe_grow()

    def _maybe_grow(self) -> None:
        """Open a connection for queued clients, unless the server just refused one."""
        if (
            self.waiters
            and not self.closed
            and self.total < self.spec.size
            and self.loop.time() - self.last_connect_failure_at >= self.spec.login_retry_s
        ):
            self._launch()

    def _launch(self) -> None:
        self.total += 1
        self.connecting += 1
        self.spawn(self._connect(), "connect")

    async def _connect(self) -> None:
        spec = self.spec
        creds = spec.credentials
        slot_held = True  # the slot _launch took; a failed attempt's backend gives it back
        try:
            attempts = [(spec.user, spec.secret) if creds is None else await creds.current()]
            i = 0
            while True:
                user, secret = attempts[i]
                slot_held = False
                try:
                    backend = await self._attempt(user, secret)
                    if i and creds is not None and secret is not None:
                        creds.note_success(user, secret)
                    break
                except BackendLoginError as exc:
                    if creds is None or exc.sqlstate != SqlState.INVALID_PASSWORD:
                        raise
                    if i == 0:
                        # Rotation: the password changed on the server before (AWSPENDING) or
                        # after (AWSCURRENT) our cached copy; refresh and try those.
                        assert secret is not None
                        attempts += await creds.after_auth_failure(secret)
                    i += 1
                    if i >= len(attempts):
                        raise
                    self.total += 1
                    slot_held = True
                    log.info("server login: pool=%s: retrying with fresh credentials", self.name)
        except (ProxyError, Exception) as exc:
            self.connecting -= 1
            if slot_held:
                self.total -= 1
            if not isinstance(exc, ProxyError):
                # A bug must not leave queued clients waiting for query_wait_timeout.
                log.exception("server connect failed unexpectedly: pool=%s", self.name)
                exc = ProxyError(SqlState.INTERNAL_ERROR, "internal error connecting to server")
            self._connect_failed(exc)
            return
        except BaseException:
            self.connecting -= 1
            if slot_held:
                self.total -= 1
            raise
        self.connecting -= 1
        if backend.state == BackendState.CLOSED:
            return
        self.last_connect_error = None
        log.info("server connected: pool=%s pid=%s", self.name, backend.pid)
        if self.server_params is None:
            self.server_params = dict(backend.params)
        self._wake_params_waiters(None)
        self.release(backend)

    async def _attempt(self, user: str, secret: str | None) -> BackendConnection:
        """Connect and log in one backend; on failure it is closed (giving its slot back)."""
        spec = self.spec
        backend = BackendConnection(self, self.generation)
        try:
            try:
                async with asyncio.timeout(spec.connect_timeout_s):
                    await open_server_transport(lambda: backend, spec.host, spec.port, spec.tls)
                    await backend.login(
                        user,
                        spec.dbname,
                        secret,
                        client_key=self.client_key,
                        server_key=self.server_key,
                    )
            except TimeoutError:
                raise ProxyError(
                    SqlState.SQLCLIENT_UNABLE_TO_ESTABLISH,
                    f"timed out connecting to the server at {spec.host}:{spec.port} "
                    f"after {spec.connect_timeout_s:g}s",
                ) from None
            except ssl.SSLError as exc:
                why = (
                    f"certificate verify failed: {exc.verify_message}"
                    if isinstance(exc, ssl.SSLCertVerificationError)
                    else exc.reason or str(exc)
                )
                raise ProxyError(
                    SqlState.SQLCLIENT_UNABLE_TO_ESTABLISH,
                    f"TLS to the server at {spec.host}:{spec.port} failed "
                    f"(server_tls.mode = {spec.tls.mode.value}): {why}",
                ) from None
            except OSError as exc:
                raise ProxyError(
                    SqlState.SQLCLIENT_UNABLE_TO_ESTABLISH,
                    f"could not connect to the server at {spec.host}:{spec.port}: "
                    f"{exc.strerror or exc}",
                ) from None
        except BaseException:
            # connection_lost may already have closed it and released its slot.
            if backend.state != BackendState.CLOSED:
                backend.close(DisconnectReason.BACKEND_CONNECT_FAILED)
            raise
        return backend

    def _connect_failed(self, exc: ProxyError) -> None:
        log.warning("server login failed: pool=%s: %s %s", self.name, exc.sqlstate, exc.message)
        self.last_connect_error = exc
        self.last_connect_failure_at = self.loop.time()
        self._wake_params_waiters(exc)
        # With no other server connection alive, nobody in the queue can be served soon: tell
        # them why now instead of letting them wait for query_wait_timeout.
        if self.total - 1 <= 0 or isinstance(exc, BackendLoginError):
            waiters = self.waiters
            self.waiters = deque()
            for client in waiters:
                if client.is_waiting():
                    client.pool_failed(exc)

    async def ensure_server_params(self) -> dict[str, str]:
        """The server's reported settings, connecting a first backend if none is known yet."""
        while self.server_params is None:
            fut: asyncio.Future[None] = self.loop.create_future()
            self._params_waiters.append(fut)
            if self.connecting == 0:
                if self.total >= self.spec.size:
                    raise ProxyError(SqlState.CONNECTION_FAILURE, "pool has no usable server")
                self._launch()
            await fut
        return self.server_params

    def _wake_params_waiters(self, exc: ProxyError | None) -> None:
        waiters, self._params_waiters = self._params_waiters, []
        for fut in waiters:
            if not fut.done():
                if exc is None:
                    fut.set_result(None)
                else:
                    fut.set_exception(
                        ProxyError(exc.sqlstate, exc.message, detail=exc.detail, hint=exc.hint)
                    )

    # --- janitor -----------------------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Periodic upkeep: waiter timeouts, idle timeout, lifetime and the minimum size."""
        spec = self.spec
        timeout = spec.query_wait_timeout_s
        waiters = self.waiters
        while waiters:
            head = waiters[0]
            if not head.is_waiting():
                waiters.popleft()
                continue
            if timeout and now - head.wait_since >= timeout:
                waiters.popleft()
                head.pool_failed(
                    ProxyError(
                        SqlState.QUERY_CANCELED,
                        f"query_wait_timeout: no server connection became free within "
                        f"{timeout:g}s (pool {self.name}, size {spec.size})",
                        hint="Raise pool.default_pool_size or pool.query_wait_timeout_s, or "
                        "shorten transactions.",
                    ),
                    reason=DisconnectReason.POOL_TIMEOUT,
                )
                continue
            break
        for backend in list(self.idle):
            if spec.lifetime_s and now - backend.created_at > spec.lifetime_s:
                backend.close(DisconnectReason.LIFETIME)
            elif (
                spec.idle_timeout_s
                and now - backend.idle_since > spec.idle_timeout_s
                and self.total > spec.min_size
            ):
                backend.close(DisconnectReason.IDLE_TIMEOUT)
        # Retry for queued clients and refill to the minimum, pacing attempts after a failure.
        if not self.closed and now - self.last_connect_failure_at >= spec.login_retry_s:
            if self.connecting == 0:
                self._maybe_grow()
            while self.total < spec.min_size:
                self._launch()

    def close(self) -> None:
        self.closed = True
        self.generation += 1
        for backend in list(self.idle):
            backend.close(DisconnectReason.POOL_CLOSED)

    def stats(self) -> dict[str, int]:
        active = self.total - len(self.idle) - self.connecting
        return {
            "total": self.total,
            "idle": len(self.idle),
            "active": active,
            "connecting": self.connecting,
            "waiting": sum(1 for c in self.waiters if c.is_waiting()),
            "clients": self.clients,
            "pinned": self.pinned,
            "prepared_statements": len(self.registry.by_key),
        }
