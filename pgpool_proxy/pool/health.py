"""The janitor's rounds over one pool: idle and lifetime limits, the idle check
(server_check_delay_s), silent servers (query_timeout_s), clients idle in a transaction
(idle_transaction_timeout_s), and the minimum size.

Functions of a Pool: runtime.server's janitor calls Pool.tick every JANITOR_INTERVAL_S.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import TYPE_CHECKING

from ..errors import DisconnectReason, ProxyError, SqlState
from ..protocol.constants import TX_IDLE
from .backend import BackendConnection
from .backend_state import BackendState

if TYPE_CHECKING:
    from .ends import PoolClient
    from .pool import Pool

from .spec import PoolState

log = logging.getLogger("pgpool_proxy.pool")


def tick(pool: Pool, now: float) -> None:
    """Periodic upkeep: waiter timeouts, idle timeout, lifetime and the minimum size."""
    spec = pool.spec
    timeout = spec.query_wait_timeout_s
    waiters = pool.waiters
    while waiters:
        head = waiters[0]
        if not head.is_waiting():
            waiters.popleft()
            continue
        if timeout and now - head.wait_since >= timeout:
            waiters.popleft()
            # A cap across pools may be what kept this pool from growing: say which.
            cap = pool.budget.full(pool) if pool.budget is not None else None
            at = f"; at {cap}" if cap and pool.total < spec.size else ""
            head.pool_failed(
                ProxyError(
                    SqlState.QUERY_CANCELED,
                    f"query_wait_timeout: no server connection became free within "
                    f"{timeout:g}s (pool {pool.name}, size {spec.size}{at})",
                    hint="Raise pool.default_pool_size or pool.query_wait_timeout_s, or "
                    "shorten transactions.",
                ),
                reason=DisconnectReason.POOL_TIMEOUT,
            )
            continue
        if (
            pool.topology is not None
            and now - head.wait_since >= spec.failover_timeout_s
            and (
                pool.pick_address() is None
                or (
                    pool.last_connect_error is not None
                    and pool.last_connect_failure_at >= head.wait_since
                )
            )
        ):
            waiters.popleft()
            what = "replica or writer" if spec.reader else "writer"
            head.pool_failed(
                ProxyError(
                    SqlState.SQLCLIENT_UNABLE_TO_ESTABLISH,
                    f"no {what} for pool {pool.name} could be reached within "
                    f"{spec.failover_timeout_s:g}s (topology.failover_timeout_s); servers: "
                    f"{pool.topology.describe()}",
                    hint="Retry later; the proxy keeps probing every host.",
                ),
                reason=DisconnectReason.BACKEND_CONNECT_FAILED,
            )
            continue
        break
    for backend in list(pool.idle):
        if spec.lifetime_s and now - backend.created_at > spec.lifetime_s:
            backend.close(DisconnectReason.LIFETIME)
        elif (
            spec.idle_timeout_s
            and now - backend.idle_since > spec.idle_timeout_s
            and pool.total > spec.min_size
        ):
            backend.close(DisconnectReason.IDLE_TIMEOUT)
    _watch(pool, now)
    # Retry for queued clients and refill to the minimum, pacing attempts after a failure.
    if pool.state is PoolState.OPEN and now - pool.last_connect_failure_at >= spec.login_retry_s:
        if pool.connecting == 0:
            pool.maybe_grow()
        while (
            pool.total < spec.min_size
            and (pool.topology is None or pool.pick_address() is not None)
            and (pool.budget is None or pool.budget.full(pool) is None)
        ):
            pool.launch()


def _watch(pool: Pool, now: float) -> None:
    """Give up on server connections that owe a reply and send nothing, and check the ones
    idle in the pool for a while.

    Keepalive and TCP_USER_TIMEOUT find a dead host or a cut path; they cannot find a
    server (or a middlebox) that keeps the TCP connection alive and answers nothing. Only
    silence while a reply is owed tells: the janitor samples each connection's byte count,
    so the hot path pays one integer add per read and no timer.
    """
    spec = pool.spec
    idle_tx_limit = spec.idle_transaction_timeout_s
    for backend in list(pool.backends):
        state = backend.state
        if state == BackendState.IDLE or state == BackendState.CLOSED:
            continue
        if backend.internal_pending:
            # The proxy's own statements (check, reset, settings replay) are trivial.
            limit = spec.check_timeout_s
            backend.idle_tx_since = None
        else:
            client = backend.client
            cs = client.scanner if client is not None else None
            if (
                idle_tx_limit
                and client is not None
                and cs is not None
                and backend.tx_status != TX_IDLE
                and state == BackendState.ACTIVE
                # Nothing owed either way: every request answered, no batch short of its Sync,
                # no message half sent, no COPY, no check of the proxy's own.
                and cs.pending <= 0
                and not cs.unsynced
                and not cs.skip
                and not cs.units
                and not cs.copy_in
                and not client.is_checking()
            ):
                # Idle in a transaction: sampled like silence below (no timer per client), a
                # new byte from the server meaning the client did something since.
                backend.silent_since = None
                since = backend.idle_tx_since
                if since is None or backend.rx_bytes != backend.rx_mark:
                    backend.rx_mark = backend.rx_bytes
                    backend.idle_tx_since = now
                elif now - since >= idle_tx_limit:
                    _idle_in_transaction(pool, backend, client, now - since)
                continue
            backend.idle_tx_since = None
            if (
                client is None
                or cs is None
                or not spec.query_timeout_s
                # The proxy's own check is owed, with the client's Sync held behind it.
                or (cs.pending <= 0 and not client.is_checking())
                # The client is the one talking (COPY FROM STDIN), or not reading what
                # the server already sent: the server owes nothing.
                or cs.copy_in
                or backend.reading_paused
            ):
                backend.silent_since = None
                continue
            limit = spec.query_timeout_s
        if backend.silent_since is None or backend.rx_bytes != backend.rx_mark:
            backend.rx_mark = backend.rx_bytes
            backend.silent_since = now
        elif now - backend.silent_since >= limit:
            _silent(pool, backend, now - backend.silent_since)
    delay = spec.check_delay_s
    if delay and pool.state is PoolState.OPEN:
        for backend in list(pool.idle):
            if now - max(backend.idle_since, backend.checked_at) >= delay:
                pool.idle.remove(backend)
                backend.checked_at = now
                # By default an empty query: EmptyQueryResponse + ReadyForQuery, no parse,
                # no snapshot.
                backend.run_own([spec.check_query], partial(_checked, pool))


def _idle_in_transaction(
    pool: Pool, backend: BackendConnection, client: PoolClient, idle_s: float
) -> None:
    """PgBouncer's idle_transaction_timeout: the client gets PgBouncer's error and is closed.
    Unlike PgBouncer, which closes the server connection too, the client's close rolls it back
    (and resets it as when any client leaves) and reuses it; one that fails is closed."""
    limit = pool.spec.idle_transaction_timeout_s
    log.warning(
        "idle transaction timeout: pool=%s pid=%s client idle in a transaction for %.1fs; "
        "closing it and rolling back",
        pool.name,
        backend.pid,
        idle_s,
        extra={"event": "idle_transaction_timeout", "pool": pool.name},
    )
    backend.idle_tx_since = None
    client.fail(
        ProxyError(
            SqlState.PROTOCOL_VIOLATION,
            "idle transaction timeout",
            detail=f"The client was idle inside a transaction for more than {limit:g}s "
            "(pool.idle_transaction_timeout_s); the transaction was rolled back.",
            hint="End transactions promptly, or raise pool.idle_transaction_timeout_s.",
        ),
        DisconnectReason.IDLE_TRANSACTION_TIMEOUT,
    )


def _silent(pool: Pool, backend: BackendConnection, silent_s: float) -> None:
    internal = bool(backend.internal_pending)
    client = backend.client
    what = "the proxy's own statement" if internal else "a query"
    log.warning(
        "server silent: pool=%s pid=%s sent nothing for %.1fs while it owed a reply to %s; "
        "closing it",
        pool.name,
        backend.pid,
        silent_s,
        what,
        extra={"event": "server_silent", "pool": pool.name},
    )
    # A live server stops the query (and frees its process); a dead one costs one bounded
    # attempt (connect_timeout_s).
    backend.send_cancel()
    backend.close(DisconnectReason.SERVER_SILENT if internal else DisconnectReason.QUERY_TIMEOUT)
    if client is None:
        return
    if internal:
        err = ProxyError(
            SqlState.CONNECTION_FAILURE,
            f"server connection lost: the server did not answer within "
            f"{pool.spec.check_timeout_s:g}s (pool.server_check_timeout_s)",
        )
    else:
        err = ProxyError(
            SqlState.QUERY_CANCELED,
            f"query_timeout: the server sent nothing for {pool.spec.query_timeout_s:g}s "
            "while this query waited (pool.query_timeout_s); the query was cancelled and "
            "the server connection closed",
            hint="Retry the transaction; raise pool.query_timeout_s for longer queries.",
        )
    client.backend_failed(err)


def _checked(
    pool: Pool, backend: BackendConnection, errors: list[dict[str, str]], rows: object
) -> None:
    """The idle check answered: back to the pool, keeping its idle time for idle_timeout."""
    if errors or backend.tx_status != TX_IDLE or backend.state != BackendState.RESETTING:
        backend.close(DisconnectReason.SERVER_SILENT)
        return
    since = backend.idle_since
    backend.to_idle()
    pool.release(backend)
    if backend.client is None and not backend.is_closed():
        backend.idle_since = since  # back in the idle list, not handed to a waiter
