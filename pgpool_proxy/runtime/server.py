"""The proxy process: listener, pools, cancel keys, janitor, and the owner of every task."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable, Coroutine, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from ..auth.scram import ScramVerifier
from ..config import Config, DatabaseConfig, DatabaseRole, UserConfig
from ..counters import (
    ProxyCounters,
)
from ..errors import DisconnectReason, ProxyError, SqlState
from ..net.connect import tcp_tuning, tune_socket
from ..pool.budget import ServerBudget
from ..pool.pool import Pool
from ..pool.spec import PoolSpec
from ..protocol.constants import TRACKED_PARAMS
from ..session.client import ClientConnection, ClientProtocol
from ..session.client_state import ClientState
from ..session.idle import sweep_idle_clients
from ..session.login import start_login
from . import cancels
from .authquery import AuthLookups
from .awscaller import CallerServer, TopologyFollower, start_caller
from .loopwatch import LoopWatch
from .peers import Peering, peering_configured
from .services import Services
from .tracking import Tracking
from .verifiers import Verifiers
from .workers import (
    BindError,
    WorkerIdentity,
    bind_unix_listener,
    unix_socket_path,
)

if TYPE_CHECKING:
    from ..aws.discovery import AddressMap

log = logging.getLogger("pgpool_proxy.server")


class MetricsListener(Protocol):
    @property
    def port(self) -> int: ...

    async def close(self) -> None: ...


class AdminHooks(Protocol):
    """The operator's side of the process (admin.HOOKS): the runtime calls it, never imports it,
    so the admin package stays above the runtime it reports on."""

    def start_console(
        self, server: ProxyServer, client: ClientConnection, params: Mapping[str, str]
    ) -> None: ...

    async def start_metrics_endpoint(self, server: ProxyServer) -> MetricsListener | None: ...


class ServerState(enum.Enum):
    SERVING = "serving"
    PAUSED = "paused"  # PAUSE without a database: every pool holds new transactions
    DRAINING = "draining"  # SIGTERM or SHUTDOWN: listener closed, clients leave as they finish
    CLOSED = "closed"


# Which state may follow which (ProxyServer._to); tests/unit/test_transitions.py checks it.
SERVER_TRANSITIONS: dict[ServerState, frozenset[ServerState]] = {
    ServerState.SERVING: frozenset({ServerState.PAUSED, ServerState.DRAINING, ServerState.CLOSED}),
    ServerState.PAUSED: frozenset({ServerState.SERVING, ServerState.DRAINING, ServerState.CLOSED}),
    ServerState.DRAINING: frozenset({ServerState.CLOSED}),
    ServerState.CLOSED: frozenset(),
}


class NoConsole(ProxyError):
    """A login to the admin database in a process built without the admin package."""

    reason = DisconnectReason.UNKNOWN_DATABASE


JANITOR_INTERVAL_S = 0.25


class ProxyServer:
    """One proxy instance. `start()` binds the listener; `close()` stops everything it started."""

    # Rewrites server endpoints found by Aurora discovery (tests point them at local servers).
    address_map: AddressMap | None = None

    def __init__(
        self,
        config: Config,
        identity: WorkerIdentity | None = None,
        *,
        admin: AdminHooks | None = None,
    ) -> None:
        self.config = config
        # The admin console and metrics endpoint (pgpool_proxy.admin.HOOKS); None: neither.
        self.admin = admin
        self.identity = identity or WorkerIdentity()
        self.pools: dict[tuple[str, str], Pool] = {}
        self.clients: dict[int, ClientConnection] = {}  # by proxy-issued cancel pid
        self.client_count = 0
        self.tracked_params = TRACKED_PARAMS
        self.tracked_lower = {p.lower(): p for p in TRACKED_PARAMS}
        # Interned client settings signatures, so equal settings compare by identity.
        self.settings_sigs: dict[tuple[object, ...], tuple[object, ...]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.base_events.Server | None = None
        self._peer_server: asyncio.base_events.Server | None = None
        self.aws_caller: CallerServer | None = None
        self.topology_follower: TopologyFollower | None = None
        # proxy.unix_socket_dir: the Unix-socket listener, and its file when this process made
        # it (with workers the supervisor does, and removes it).
        self._unix_server: asyncio.base_events.Server | None = None
        self._unix_path: str | None = None
        self.unix_socket: str | None = None
        self._janitor: asyncio.Task[None] | None = None
        # SCRAM verifiers and the ClientKeys of SCRAM pass-through (runtime.verifiers).
        self.verifiers = Verifiers(self)
        self._all_clients: set[ClientConnection] = set()
        # Plain ints read by the metrics collector at scrape time (see counters).
        self.counters = ProxyCounters()
        self.loopwatch = LoopWatch(lambda: self.config.proxy.loop_lag_warn_ms)
        self.metrics_endpoint: MetricsListener | None = None  # when [metrics] listen
        # Lifecycle (see runtime.lifecycle): read by the admin console and /readyz.
        self.state = ServerState.SERVING
        self.paused_dbs: set[str] = set()  # PAUSE db / KILL db, until RESUME
        self.admin_sessions: set[ClientConnection] = set()  # clients of the admin console
        # Wakes run_until_stopped: set by SIGTERM and the admin SHUTDOWN (request_stop).
        self.stop_requested = asyncio.Event()
        self.stop_all_workers = False  # the admin SHUTDOWN: with workers, every one stops
        self.started_at = time.time()
        # TLS contexts, IAM and Secrets Manager (raises services.StartupError if unusable).
        self.services = Services(config, self.spawn)
        # Writer tracking for multi-host databases (runtime.tracking); tests may map addresses.
        self.tracking = Tracking(config, self.services, self.spawn, self.address_map)
        self.topologies = self.tracking.topologies
        # auth_query: stored passwords of users not in [[users]], looked up in PostgreSQL.
        self.auth_lookups = AuthLookups(self, self.spawn)
        self.budget: ServerBudget | None = None
        self.set_server_budget(config)
        self.host = config.proxy.listen_host
        self.port = config.proxy.listen_port
        # The peer_id in every cancel key this process hands out, fixed for its life (keys
        # already out must keep naming it): configured, or picked at startup (cli, for all
        # workers), or here for a server built without the cli.
        self.peer_id = config.proxy.peer_id or self.identity.peer_id
        if not self.peer_id and peering_configured(config):
            self.peer_id = 1 + secrets.randbelow((1 << 14) - 1)
        self.peering = Peering(self.peer_id, lambda: self.config, self.spawn)

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self, port: int | None = None) -> None:
        """Listen; `port` overrides the configured one (workers share a resolved port)."""
        loop = asyncio.get_running_loop()
        ident = self.identity
        # workers = N: worker 0 makes the AWS calls for all (before its own first fetch, so
        # its siblings wait on it); the others ask it (runtime.awscaller).
        self.aws_caller, follower = await start_caller(self.services, self.tracking, ident)
        await self.services.start()
        if follower is not None:
            self.topology_follower = follower
            self.spawn(follower.run(), "topology-follower")
        await self.tracking.start(probe=follower is None)
        host = self.config.proxy.listen_host
        listen_port = self.config.proxy.listen_port if port is None else port
        try:
            self._server = await loop.create_server(
                lambda: ClientProtocol(self),
                host,
                listen_port,
                reuse_address=True,
                reuse_port=ident.count > 1 or self.config.proxy.reuse_port,
                backlog=4096,
            )
        except OSError as exc:
            # One line naming the address (an unknown host's error names nothing by itself).
            code = exc.errno or 0
            why = os.strerror(code).lower() if code > 0 else exc.args[-1]
            raise OSError(exc.errno, f"cannot listen on {host}:{listen_port}: {why}") from None
        if ident.count > 1:
            # Sibling workers relay cancel requests for this worker's clients here.
            self._peer_server = await loop.create_unix_server(
                lambda: ClientProtocol(self, peer_channel=True),
                ident.peer_socket(ident.index),
            )
        sock = self._server.sockets[0]
        self.host, self.port = sock.getsockname()[:2]
        for s in self._server.sockets:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.tune_listeners()
        await self._listen_unix(loop)
        self.peering.start()
        self._janitor = loop.create_task(self._janitor_loop(), name="janitor")
        # Before the first login, so a real user's first SCRAM exchange does not take a PBKDF2
        # longer than an unknown user's (which never hashes): probing tells them apart by nothing.
        self.spawn(self.verifiers.warm(), "warm-verifiers")
        self.loopwatch.start()
        if self.admin is not None:
            self.metrics_endpoint = await self.admin.start_metrics_endpoint(self)
        if ident.count > 1:
            log.info("worker %d listening on %s:%s", ident.index, self.host, self.port)
        else:
            log.info("listening on %s:%s", self.host, self.port)
        if self.unix_socket is not None:
            log.info("listening on Unix socket %s", self.unix_socket)

    async def _listen_unix(self, loop: asyncio.AbstractEventLoop) -> None:
        """The Unix-socket listener: the supervisor's socket, inherited by every worker (they
        all accept from one queue, as SO_REUSEPORT cannot share a socket file), or one bound
        here on the TCP port's number."""
        proxy = self.config.proxy
        if not proxy.unix_socket_dir:
            return
        path = unix_socket_path(proxy.unix_socket_dir, self.port)
        fd = self.identity.unix_fd
        if fd is not None:
            listener = socket.socket(fileno=os.dup(fd))
        else:
            try:
                listener = bind_unix_listener(
                    proxy.unix_socket_dir, self.port, proxy.unix_socket_mode
                )
            except BindError as exc:
                raise OSError(0, str(exc)) from None
            self._unix_path = path
        self._unix_server = await loop.create_unix_server(
            lambda: ClientProtocol(self), sock=listener, backlog=4096
        )
        self.unix_socket = path

    # --- state: PAUSE/RESUME of everything, drain, close ----------------------------------------

    def _to(self, new: ServerState) -> None:
        if new not in SERVER_TRANSITIONS[self.state]:
            raise RuntimeError(f"illegal server transition {self.state.name} -> {new.name}")
        self.state = new

    @property
    def draining(self) -> bool:
        """New logins are refused and new pools start paused."""
        return self.state is ServerState.DRAINING or self.state is ServerState.CLOSED

    @property
    def paused(self) -> bool:
        return self.state is ServerState.PAUSED

    def pause_all(self) -> None:
        if self.state is ServerState.SERVING:
            self._to(ServerState.PAUSED)

    def resume_all(self) -> None:
        """Undo pause_all; a drain stays a drain."""
        if self.state is ServerState.PAUSED:
            self._to(ServerState.SERVING)

    def begin_drain(self) -> None:
        """Stop accepting; the caller (runtime.lifecycle.drain) lets the clients finish."""
        if not self.draining:
            self._to(ServerState.DRAINING)
        if self._server is not None:
            self._server.close()
        if self._unix_server is not None:
            self._unix_server.close()

    def request_stop(self, *, all_workers: bool = False) -> None:
        """Ask run_until_stopped for a graceful stop (SIGTERM; the admin SHUTDOWN, which with
        workers stops all of them)."""
        self.stop_all_workers = self.stop_all_workers or all_workers
        self.stop_requested.set()

    # --- read API for runtime.lifecycle and the admin package ---------------------------------

    def all_clients(self) -> list[ClientConnection]:
        """Every client connection, logged in or still logging in (a snapshot)."""
        return list(self._all_clients)

    def client_key_for(self, server_user: str, secret: str) -> bytes | None:
        """A ClientKey recovered from a client's SCRAM login for this server login (see
        remember_client_key)."""
        return self.verifiers.client_key_for(server_user, secret)

    async def close(self) -> None:
        if self.state is not ServerState.CLOSED:
            self._to(ServerState.CLOSED)
        if self._server is not None:
            self._server.close()
        if self._peer_server is not None:
            self._peer_server.close()
        if self.aws_caller is not None:
            await self.aws_caller.close()
        if self._unix_server is not None:
            self._unix_server.close()
        if self._unix_path is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._unix_path)
            self._unix_path = None
        if self._janitor is not None:
            self._janitor.cancel()
        self.loopwatch.stop()
        self.tracking.stop()
        self.peering.stop()
        if self.metrics_endpoint is not None:
            await self.metrics_endpoint.close()
        # A login waiting on a future is not a task that the loop would cancel: what it waits
        # on (a TLS handshake, the settings check, IAM run as tasks of their own) is cancelled
        # here, or it is left pending on a closed loop.
        logins: list[asyncio.Future[Any]] = []
        for client in list(self._all_clients):
            login = client.login
            waited = login.cancel() if login is not None else None
            if waited is not None:
                logins.append(waited)
            client.close(DisconnectReason.SHUTDOWN)
        for pool in self.pools.values():
            pool.close()
            for waiter in list(pool.waiters):
                waiter.close(DisconnectReason.SHUTDOWN)
        # Verifier derivations outlive the logins that started them (shared, see scram_verifier):
        # they end here too, or the loop is closed under them.
        tasks: list[asyncio.Future[Any]] = [
            *logins,
            *self._tasks,
            *self.verifiers.deriving.values(),
            *self.auth_lookups.pending(),
        ]
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
        await asyncio.sleep(0)

    def tune_listeners(self) -> None:
        """Accepted sockets inherit keepalive and TCP_USER_TIMEOUT from the listener (Linux): a
        client host that vanished mid-transaction frees its server connection."""
        if self._server is not None:
            for s in self._server.sockets:
                tune_socket(s, tcp_tuning(self.config.pool))

    def set_server_budget(self, config: Config) -> None:
        """Apply the caps across pools (pool.max_server_connections, max_db_connections,
        max_user_connections and their per-database and per-user values) to every pool, now
        and later ones; None when there are none. A lower cap closes nothing at once: pools
        shrink as connections are released or idle."""
        limit = config.pool.max_server_connections
        if not config.has_connection_caps():
            self.budget = None
        elif self.budget is None:
            self.budget = ServerBudget(limit, self.pools.values())
        else:
            self.budget.limit = limit
        for pool in self.pools.values():
            pool.budget = self.budget

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        """Run a task owned by this server: kept referenced, logged if it fails, cancelled on
        close."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("task %s failed", task.get_name(), exc_info=task.exception())

    async def _janitor_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(JANITOR_INTERVAL_S)
            now = loop.time()
            for pool in list(self.pools.values()):
                try:
                    pool.tick(now)
                except Exception:
                    log.exception("janitor failed on pool %s", pool.name)
            idle_limit = self.config.pool.client_idle_timeout_s
            if idle_limit:
                try:
                    sweep_idle_clients(self._all_clients, now, idle_limit, self.admin_sessions)
                except Exception:
                    log.exception("janitor failed sweeping idle clients")

    # --- clients -----------------------------------------------------------------------------

    def client_connected(self, client: ClientConnection) -> None:
        self.client_count += 1
        self.counters.accepted += 1
        self._all_clients.add(client)
        start_login(client)

    def client_closed(self, client: ClientConnection, prev: ClientState) -> None:
        self.client_count -= 1
        self._all_clients.discard(client)
        if client.key_pid:
            self.clients.pop(client.key_pid, None)
        if prev != ClientState.LOGIN and client.pool is not None:
            client.pool.clients -= 1
        reason = client.close_reason or DisconnectReason.CLIENT_EOF
        self.counters.client_disconnects[reason] += 1
        # A cancel request is a connection of its own; logging each would drown the log.
        log.log(
            logging.DEBUG if reason == DisconnectReason.CANCEL_REQUEST else logging.INFO,
            "client closed: %s user=%s db=%s reason=%s",
            client.addr,
            client.user or "-",
            client.database or "-",
            reason.value,
            extra={
                "event": "client_disconnect",
                "addr": client.addr,
                "user": client.user or None,
                "db": client.database or None,
                "reason": reason.value,
            },
        )

    def open_console(self, client: ClientConnection, params: Mapping[str, str]) -> None:
        if self.admin is None:
            raise NoConsole(
                SqlState.INVALID_CATALOG_NAME,
                f'database "{self.config.admin.database}" does not exist: '
                "this process has no admin console",
            )
        self.admin.start_console(self, client, params)

    def register_cancel_key(self, client: ClientConnection) -> tuple[int, int]:
        """A pid and secret for the client's BackendKeyData, unique in this worker."""
        return cancels.register_cancel_key(self, client)

    def cancel_request(
        self,
        pid: int,
        secret: int,
        *,
        relayed: bool = False,
        done: Callable[[], None] = cancels.nothing,
    ) -> None:
        """A CancelRequest that arrived here (runtime.cancels); ``done`` once acted on."""
        cancels.cancel_request(self, pid, secret, relayed=relayed, done=done)

    # --- pools and credentials ---------------------------------------------------------------

    def get_pool(
        self,
        db: DatabaseConfig,
        user_cfg: UserConfig | None,
        user: str,
        looked_up: str | None = None,
        *,
        as_user: bool = False,
    ) -> Pool:
        """The pool of (db, server user); `looked_up` is the stored password auth_query found
        for a user not in [[users]] (the server login uses it, as a listed user's). With
        `as_user` the pool logs in as `user` with its own [[users]] password whatever the
        database forces (auth_query's auth_user)."""
        server_user = user if as_user else self.services.server_user(db, user)
        key = (db.name, server_user)
        pool = self.pools.get(key)
        if pool is not None and looked_up is not None:
            self._adopt_looked_up(pool, db, server_user, looked_up)
        if pool is None:
            if as_user:
                secret = user_cfg.password if user_cfg else None
            elif db.user:
                forced = self.config.user(db.user)
                secret = db.password or (forced.password if forced else None)
            else:
                secret = db.password or (user_cfg.password if user_cfg else looked_up)
            cfg = self.config
            spec = PoolSpec(
                name=f"{db.name}/{server_user}",
                host=db.host,
                port=db.port,
                dbname=db.dbname or db.name,
                user=server_user,
                secret=secret,
                size=cfg.pool_size_for(db),
                min_size=min(cfg.pool.min_pool_size, cfg.pool_size_for(db)),
                mode=cfg.pool_mode_for(db, user_cfg),
                query_wait_timeout_s=cfg.pool.query_wait_timeout_s,
                idle_timeout_s=cfg.pool.server_idle_timeout_s,
                lifetime_s=cfg.pool.server_lifetime_s,
                connect_timeout_s=cfg.pool.server_connect_timeout_s,
                login_retry_s=cfg.pool.server_login_retry_s,
                reset_query=cfg.pool.server_reset_query,
                max_prepared_statements=cfg.pool.max_prepared_statements,
                max_scram_iterations=cfg.pool.server_max_scram_iterations,
                tls=self.services.server_tls,
                credentials=None if as_user else self.services.credentials_for(db),
                reader=db.role is DatabaseRole.READER,
                reader_fallback=db.reader_fallback,
                max_replica_lag_bytes=db.max_replica_lag_bytes,
                failover_timeout_s=cfg.topology.failover_timeout_s,
                query_timeout_s=cfg.pool.query_timeout_s,
                idle_transaction_timeout_s=cfg.pool.idle_transaction_timeout_s,
                database=db.name,
                max_db_connections=cfg.max_db_connections_for(db),
                max_user_connections=cfg.max_user_connections_for(server_user),
                check_delay_s=cfg.pool.server_check_delay_s,
                check_timeout_s=cfg.pool.server_check_timeout_s,
                check_query=cfg.pool.server_check_query,
                reserve_size=cfg.pool.reserve_pool_size,
                reserve_timeout_s=cfg.pool.reserve_pool_timeout_s,
                tcp=tcp_tuning(cfg.pool),
            )
            pool = Pool(spec, self.spawn)
            pool.budget = self.budget
            topology = self.tracking.for_database(db)
            if topology is not None:
                pool.attach_topology(topology)
            if secret is not None:
                verifier = ScramVerifier.parse(secret)
                if verifier is not None:
                    pool.server_key = verifier.server_key
                    pool.client_key = self.verifiers.client_key_for(server_user, secret)
            if self.paused or db.name in self.paused_dbs or self.draining:
                pool.pause()
            self.pools[key] = pool
        return pool

    def _adopt_looked_up(
        self, pool: Pool, db: DatabaseConfig, server_user: str, secret: str
    ) -> None:
        """The password changed in PostgreSQL (auth_query saw it): the pool logs in with the new
        one, and its connections made with the old one retire as they are released."""
        if (
            db.user
            or db.password
            or pool.spec.credentials is not None
            or self.config.user(server_user) is not None
            or pool.spec.secret == secret
        ):
            return
        pool.reconfigure(dataclasses.replace(pool.spec, secret=secret))
        verifier = ScramVerifier.parse(secret)
        pool.server_key = verifier.server_key if verifier is not None else None
        pool.client_key = (
            self.verifiers.client_key_for(server_user, secret) if verifier is not None else None
        )

    async def scram_verifier(self, user: str, secret: str | None) -> ScramVerifier:
        """The verifier to check a client against (runtime.verifiers)."""
        return await self.verifiers.scram_verifier(user, secret)

    def mock_scram_iterations(self) -> int:
        """The iteration count of an unknown user's mock verifier (runtime.verifiers)."""
        return self.verifiers.mock_scram_iterations()

    def remember_client_key(
        self,
        user: str,
        verifier: ScramVerifier,
        client_key: bytes,
        looked_up: str | None = None,
    ) -> None:
        """Keep a ClientKey for SCRAM pass-through (runtime.verifiers)."""
        self.verifiers.remember_client_key(user, verifier, client_key, looked_up)
