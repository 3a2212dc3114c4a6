"""Opening a pool's server connections: the connect task that owns a slot until its backend
has logged in, the retry with fresh credentials, what a failed connect tells the queue, the
server's settings a client login needs, and the proxy's own queries on a pool's connection.

Functions of a Pool: Pool.launch spawns connect; Pool.own_query (runtime.authquery) and
Pool.ensure_server_params (session.login) delegate here.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

from ..auth.server_login import BackendLoginError, server_sqlstate
from ..errors import DisconnectReason, ProxyError, SqlState, internal_error
from ..net.connect import open_server_transport
from ..protocol.constants import TX_IDLE
from . import server_connect
from .backend import BackendConnection, BackendProtocol, InternalDone
from .backend_state import BackendState
from .ends import PoolClient
from .spec import PoolState

if TYPE_CHECKING:
    from .pool import Pool

log = logging.getLogger("pgpool_proxy.pool")

# What the proxy's own statements on a connection out of the pool come to: (errors, rows), or
# None when the connection ended without answering.
OwnAnswer = tuple[list[dict[str, str]], list[list[str | None]]] | None


def answered_then_returned(pool: Pool, answer: asyncio.Future[OwnAnswer]) -> InternalDone:
    """The callback for run_own on a connection taken out of `pool`: it puts the answer in
    `answer` and gives the connection back when it is clean (a refused statement is an answer,
    not a fault of the connection), or closes it."""

    def done(
        b: BackendConnection, errors: list[dict[str, str]], rows: list[list[str | None]]
    ) -> None:
        if b.is_closed():
            if not answer.done():
                answer.set_result(None)
            return
        if b.state == BackendState.RESETTING and b.tx_status == TX_IDLE:
            b.to_idle()
            pool.release(b)
        else:
            b.close(DisconnectReason.RESET_FAILED)
        if not answer.done():
            answer.set_result((errors, rows))

    return done


async def own_query(
    pool: Pool, sql: str, params: Sequence[str | None], timeout_s: float
) -> list[list[str | None]]:
    """Run `sql` with `params` on one of this pool's server connections (queued like a
    client's transaction, opening one if the pool may) and return its rows. Raises
    ProxyError when the server refuses the statement, no server connection can be had
    (the server's own login error when it refused this pool's login) or `timeout_s`
    passes."""
    if (
        not pool.idle
        and pool.connecting == 0
        and pool.last_connect_error is not None
        and pool.loop.time() - pool.last_connect_failure_at < pool.spec.login_retry_s
    ):
        # The server refused this pool just now: say so rather than wait out the pause.
        raise copy_error(pool.last_connect_error)
    borrower = Borrower(pool.loop.create_future())
    backend: BackendConnection | None = None
    answer: asyncio.Future[OwnAnswer] = pool.loop.create_future()
    done = answered_then_returned(pool, answer)

    try:
        async with asyncio.timeout(timeout_s):
            backend = pool.acquire(cast(PoolClient, borrower))
            if backend is None:
                backend = await borrower.assigned
            if backend.transport is None:
                raise ProxyError(SqlState.CONNECTION_FAILURE, "server connection lost")
            backend.run_own_query(sql, params, done)
            result = await answer
    except BaseException:
        borrower.gone = True
        pool.forget_waiter(cast(PoolClient, borrower))
        if backend is None and borrower.assigned.done() and not borrower.assigned.cancelled():
            if borrower.assigned.exception() is None:
                pool.release(borrower.assigned.result())  # handed over as we gave up
        elif backend is not None and not answer.done():
            # Its answer may still come: the connection's state is unknown.
            backend.close(DisconnectReason.RESET_FAILED)
        raise
    if result is None:
        raise ProxyError(SqlState.CONNECTION_FAILURE, "server connection lost")
    errors, rows = result
    if errors:
        fields = errors[0]
        raise ProxyError(
            server_sqlstate(fields, SqlState.INTERNAL_ERROR),
            fields.get("M") or "the server refused the statement",
            detail=fields.get("D"),
            hint=fields.get("H"),
        )
    return rows


async def connect(pool: Pool) -> None:
    """Open one server connection in the slot launch took.

    The slot is this task's until a backend has logged in (the backend owns it from then
    on, see backend_closed) or the task gives up: a login the server refuses and the retry
    with fresh credentials run in that one slot, so a rotation never opens more server
    connections than the pool's size, nor frees a slot for a login with the stale password.
    """
    task = asyncio.current_task()
    if task is not None:
        # retire() cancels connects of an older generation (a hung old writer must not
        # hold slots that the new one needs).
        pool.connect_tasks[task] = pool.generation
    try:
        backend = await log_in(pool)
    except Exception as exc:
        pool.connecting -= 1
        if not isinstance(exc, ProxyError):
            # A bug must not leave queued clients waiting for query_wait_timeout.
            exc = internal_error(log, "connecting a server for pool %s", pool.name)
        connect_failed(pool, exc)
        free_slot(pool)
        return
    except BaseException:
        pool.connecting -= 1
        free_slot(pool)
        raise
    finally:
        if task is not None:
            pool.connect_tasks.pop(task, None)
    pool.connecting -= 1
    if backend.state == BackendState.CLOSED:
        return
    pool.last_connect_error = None
    pool.by_pid[backend.pid] = backend
    log.info("server connected: pool=%s pid=%s", pool.name, backend.pid)
    if pool.server_params is None:
        pool.server_params = dict(backend.params)
    wake_params_waiters(pool, None)
    pool.release(backend)


async def log_in(pool: Pool) -> BackendConnection:
    """A logged-in backend, retrying with refreshed credentials when the server refuses
    the password it was given."""
    spec = pool.spec
    creds = spec.credentials
    if creds is None:
        return await attempt(pool, spec.user, spec.secret)
    user, secret = await creds.current()
    try:
        return await attempt(pool, user, secret)
    except BackendLoginError as exc:
        if exc.sqlstate != SqlState.INVALID_PASSWORD:
            raise
        refused = exc
    # Rotation: the password changed on the server before (AWSPENDING) or after
    # (AWSCURRENT) our cached copy; refresh and try those.
    for user, fresh in await creds.after_auth_failure(secret):
        log.info("server login: pool=%s: retrying with fresh credentials", pool.name)
        try:
            backend = await attempt(pool, user, fresh)
        except BackendLoginError as exc:
            if exc.sqlstate != SqlState.INVALID_PASSWORD:
                raise
            refused = exc
            continue
        creds.note_success(user, fresh)
        return backend
    raise refused


def free_slot(pool: Pool) -> None:
    pool.total -= 1
    if pool.budget is not None:
        pool.budget.released(pool)
    pool.maybe_grow()


async def attempt(pool: Pool, user: str, secret: str | None) -> BackendConnection:
    """Connect and log in one backend; on failure it is closed (the slot stays connect's)."""
    spec = pool.spec
    backend = BackendProtocol(pool, pool.generation)
    if pool.topology is not None:
        address = pool.pick_address()
        if address is None:
            raise ProxyError(
                SqlState.SQLCLIENT_UNABLE_TO_ESTABLISH,
                f"no usable server for pool {pool.name}: {pool.topology.describe()}",
            )
        backend.address = address
        pool.by_address[address] = pool.by_address.get(address, 0) + 1
    pool.backends.add(backend)
    host, port = backend.address
    try:
        try:
            async with asyncio.timeout(spec.connect_timeout_s):
                await open_server_transport(lambda: backend, host, port, spec.tls, spec.tcp)
                await server_connect.login(
                    backend,
                    user,
                    spec.dbname,
                    secret,
                    client_key=pool.client_key,
                    server_key=pool.server_key,
                )
        except TimeoutError:
            raise ProxyError(
                SqlState.SQLCLIENT_UNABLE_TO_ESTABLISH,
                f"timed out connecting to the server at {host}:{port} "
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
                f"TLS to the server at {host}:{port} failed "
                f"(server_tls.mode = {spec.tls.mode.value}): {why}",
            ) from None
        except OSError as exc:
            raise ProxyError(
                SqlState.SQLCLIENT_UNABLE_TO_ESTABLISH,
                f"could not connect to the server at {host}:{port}: {exc.strerror or exc}",
            ) from None
    except BaseException:
        # connection_lost may already have closed it.
        if backend.state != BackendState.CLOSED:
            backend.close(DisconnectReason.BACKEND_CONNECT_FAILED)
        raise
    return backend


def connect_failed(pool: Pool, exc: ProxyError) -> None:
    log.warning(
        "server login failed: pool=%s: %s %s",
        pool.name,
        exc.sqlstate,
        exc.message,
        extra={"event": "pool_error", "pool": pool.name, "sqlstate": exc.sqlstate},
    )
    pool.last_connect_error = exc
    pool.last_connect_failure_at = pool.loop.time()
    if pool.topology is not None and not isinstance(exc, BackendLoginError):
        # The server may be failing over: queued clients (and logins waiting for the
        # server's settings) wait for the monitor to confirm a writer, bounded by
        # failover_timeout_s, rather than failing now.
        wake_params_waiters(pool, None)
        pool.topology.suspect()
        return
    wake_params_waiters(pool, exc)
    # With no other server connection alive, nobody in the queue can be served soon: tell
    # them why now instead of letting them wait for query_wait_timeout.
    if pool.total - 1 <= 0 or isinstance(exc, BackendLoginError):
        waiters = pool.waiters
        pool.waiters = deque()
        for client in waiters:
            if client.is_waiting():
                client.pool_failed(exc)


async def ensure_server_params(pool: Pool) -> dict[str, str]:
    """The server's reported settings, connecting a first backend if none is known yet."""
    waited_s = 0.0
    while pool.server_params is None:
        if pool.state is PoolState.PAUSED:
            # PAUSE/KILL/drain: no server connection opens; the login waits like a queued
            # transaction would.
            timeout = pool.spec.query_wait_timeout_s
            if timeout and waited_s >= timeout:
                raise ProxyError(
                    SqlState.QUERY_CANCELED,
                    f"query_wait_timeout: pool {pool.name} stayed paused for {timeout:g}s",
                )
            await asyncio.sleep(0.05)
            waited_s += 0.05
            continue
        topo = pool.topology
        if (
            topo is not None
            and pool.connecting == 0
            and (
                pool.pick_address() is None
                or pool.loop.time() - pool.last_connect_failure_at < pool.spec.login_retry_s
            )
        ):
            # No server to ask yet (the first probes, or a failover): wait like a queued
            # transaction would, then say which servers were tried.
            if waited_s >= pool.spec.failover_timeout_s:
                raise ProxyError(
                    SqlState.SQLCLIENT_UNABLE_TO_ESTABLISH,
                    f"no usable server for pool {pool.name} within "
                    f"{pool.spec.failover_timeout_s:g}s (topology.failover_timeout_s); "
                    f"servers: {topo.describe()}",
                )
            await asyncio.sleep(0.02)
            waited_s += 0.02
            continue
        budget = pool.budget
        if pool.connecting == 0 and budget is not None and not budget.allows(pool):
            # No room for a first connection. Another pool of the same server already
            # knows what it reports (per-role settings aside): use that so the login
            # completes; the client's first query then queues like any other.
            sibling = budget.params_for(pool)
            if sibling is not None:
                pool.server_params = dict(sibling)
                break
            if waited_s >= pool.spec.query_wait_timeout_s:
                raise ProxyError(
                    SqlState.TOO_MANY_CONNECTIONS,
                    f"{budget.full(pool) or 'the server connection caps'}: all in use",
                )
            await asyncio.sleep(0.05)
            waited_s += 0.05
            continue
        fut: asyncio.Future[None] = pool.loop.create_future()
        pool.params_waiters.append(fut)
        if pool.connecting == 0:
            if pool.total >= pool.spec.size:
                raise ProxyError(SqlState.CONNECTION_FAILURE, "pool has no usable server")
            pool.launch()
        await fut
    return pool.server_params


def wake_params_waiters(pool: Pool, exc: ProxyError | None) -> None:
    waiters, pool.params_waiters = pool.params_waiters, []
    for fut in waiters:
        if not fut.done():
            if exc is None:
                fut.set_result(None)
            else:
                fut.set_exception(
                    ProxyError(exc.sqlstate, exc.message, detail=exc.detail, hint=exc.hint)
                )


def copy_error(exc: ProxyError) -> ProxyError:
    return ProxyError(exc.sqlstate, exc.message, detail=exc.detail, hint=exc.hint)


class Borrower:
    """The proxy itself in a pool's queue (own_query): what the pool and its janitor call
    on a queued client, answered with a future."""

    def __init__(self, assigned: asyncio.Future[BackendConnection]) -> None:
        self.assigned = assigned
        self.gone = False
        self.wait_since = 0.0

    def is_waiting(self) -> bool:
        return not self.gone and not self.assigned.done()

    def backend_assigned(self, backend: BackendConnection) -> None:
        self.assigned.set_result(backend)

    def pool_failed(self, err: ProxyError, reason: DisconnectReason | None = None) -> None:
        if not self.assigned.done():
            self.assigned.set_exception(copy_error(err))

    def close(self, reason: DisconnectReason) -> None:
        if not self.assigned.done():
            self.assigned.set_exception(
                ProxyError(SqlState.CONNECTION_FAILURE, f"pool closed ({reason.value})")
            )
