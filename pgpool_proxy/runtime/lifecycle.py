"""Owns the proxy's lifecycle: reload (SIGHUP/RELOAD/SET), PAUSE/RESUME/KILL/RECONNECT, drain.

Signals (installed by `run_until_stopped`): SIGHUP reloads the configuration file; SIGTERM (and
the admin SHUTDOWN) drains gracefully within ``proxy.shutdown_timeout_s``; SIGINT, or a second
SIGTERM, stops at once. Clients told to leave get ErrorResponse 57P01, as PostgreSQL's own
shutdown says it.

What a reload changes live: users and passwords, databases (new ones, changed servers: current
connections retire when their transaction ends), pool sizes and timeouts, the reset query,
max_server_connections, max_db_connections, max_user_connections, pool_mode and
max_message_size_bytes (for new clients), max_client_conn, client login timeout, log level,
shutdown timeout, auth type (RELOAD only, not SET) and the [admin] section. What needs a restart
(the reload keeps the running value and says so): listen, the Unix socket, workers, reuse_port,
log_format, TLS, IAM, Secrets Manager settings, the [topology] section and a database's forced
user (pools are keyed by their server user). A reload that changes a database's Secrets Manager
reference, or turns IAM on for a user when no IAM verifier runs, is refused.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from ..auth.scram import ScramVerifier
from ..config import (
    Config,
    ConfigError,
    DatabaseConfig,
    load_config,
    load_pgbouncer_config,
    looks_like_pgbouncer_ini,
)
from ..errors import DisconnectReason, ProxyError, SqlState
from ..link.ends import at_boundary
from ..net.connect import tcp_tuning
from ..session.client_state import ClientState
from .workers import EXIT_SHUTDOWN_ALL

if TYPE_CHECKING:
    from ..pool.pool import Pool
    from ..pool.spec import PoolSpec
    from ..session.client import ClientConnection
    from .server import ProxyServer

log = logging.getLogger("pgpool_proxy.lifecycle")

# How often a drain or a PAUSE looks at what is left.
POLL_S = 0.05

# (field of ProxySettings, key shown to people) that only a restart changes.
_RESTART_PROXY_KEYS = (
    ("listen_host", "proxy.listen"),
    ("listen_port", "proxy.listen"),
    ("workers", "proxy.workers"),
    ("reuse_port", "proxy.reuse_port"),
    ("log_format", "proxy.log_format"),
    ("unix_socket_dir", "proxy.unix_socket_dir"),
    ("unix_socket_mode", "proxy.unix_socket_mode"),
    # Keys already handed out name it.
    ("peer_id", "proxy.peer_id"),
)
# Config sections built into running services at startup.
_RESTART_SECTIONS = (
    "client_tls",
    "server_tls",
    "iam",
    "iam_rules",
    "secrets",
    "topology",
    "metrics",
)
_SECRET_REF = ("secret_arn", "secret_region", "secret_endpoint_url")


# --- reload ------------------------------------------------------------------------------------


def reload_config(server: ProxyServer) -> list[str]:
    """Re-read the file the proxy was started with and apply it; returns notes for the operator
    (settings that need a restart). Raises ConfigError, leaving the running config untouched."""
    path = server.config.source
    if not os.path.isfile(path):
        raise ConfigError(
            [f"{path}: the proxy was not started from a configuration file; nothing to reload"]
        )
    if looks_like_pgbouncer_ini(path):
        # Started with --pgbouncer-ini: the same file is converted again (its notes were logged
        # at startup).
        config, _ = load_pgbouncer_config(path)
        return apply_config(server, config)
    return apply_config(server, load_config(path))


def reload_logged(server: ProxyServer) -> None:
    """SIGHUP: reload, logging the outcome (a bad file is reported and the old config kept)."""
    try:
        notes = reload_config(server)
    except ConfigError as exc:
        # One line per problem reads well in a terminal but a log line keeps its newlines
        # escaped (one record per line): "; " between them.
        log.error(
            "reload failed; the old configuration stays in effect: %s", "; ".join(exc.problems)
        )
        return
    for note in notes:
        log.warning("reload: %s", note)


def apply_config(server: ProxyServer, new: Config) -> list[str]:
    """Swap in `new` atomically and bring existing pools in line with it."""
    old = server.config
    new, notes = _keep_restart_only(server, old, new)
    server.config = new
    if new.proxy.log_level != old.proxy.log_level:
        logging.getLogger().setLevel(new.proxy.log_level.upper())
    # Caps across pools may come from any database or user entry: always re-derived.
    server.set_server_budget(new)
    if tcp_tuning(new.pool) != tcp_tuning(old.pool):
        server.tune_listeners()  # clients accepted from now on; server sockets as they open
    for (db_name, server_user), pool in list(server.pools.items()):
        db = new.database(db_name)
        if db is None:
            # Removed: its connected clients keep their pool; new logins are refused.
            continue
        old_secret = pool.spec.secret
        pool.reconfigure(_spec_for(new, db, server_user, pool.spec))
        secret = pool.spec.secret
        if secret != old_secret:
            verifier = ScramVerifier.parse(secret) if secret is not None else None
            pool.server_key = verifier.server_key if verifier is not None else None
            pool.client_key = (
                server.client_key_for(server_user, secret)
                if verifier is not None and secret is not None
                else None
            )
    log.info("configuration applied from %s", new.source)
    return notes


def _keep_restart_only(server: ProxyServer, old: Config, new: Config) -> tuple[Config, list[str]]:
    problems: list[str] = []
    for db in new.databases:
        before = old.database(db.name)
        was = tuple(getattr(before, k) for k in _SECRET_REF) if before else (None,) * 3
        if tuple(getattr(db, k) for k in _SECRET_REF) != was:
            problems.append(
                f"{new.source}: databases.{db.name}: Secrets Manager settings changed; "
                "that needs a restart"
            )
    if server.services.iam is None:
        for user in new.users:
            if user.iam:
                problems.append(
                    f"{new.source}: users.{user.name}.iam: IAM authentication was not enabled "
                    "at startup; that needs a restart"
                )
    if problems:
        raise ConfigError(problems)
    notes: list[str] = []
    kept: dict[str, Any] = {}
    for name, shown in _RESTART_PROXY_KEYS:
        if getattr(old.proxy, name) != getattr(new.proxy, name):
            kept[name] = getattr(old.proxy, name)
            note = f"{shown} changed; it takes effect after a restart"
            if note not in notes:  # listen is two fields
                notes.append(note)
    sections: dict[str, Any] = {}
    for section in _RESTART_SECTIONS:
        if hasattr(old, section) and getattr(old, section) != getattr(new, section):
            sections[section] = getattr(old, section)
            notes.append(f"[{section}] changed; it takes effect after a restart")
    databases: list[DatabaseConfig] = []
    for db in new.databases:
        before = old.database(db.name)
        if before is not None and before.user != db.user:
            # Pools are keyed by their server user: a pool cannot switch users under its
            # clients, so the forced user (and the password that goes with it) stays.
            db = dataclasses.replace(db, user=before.user, password=before.password)
            notes.append(f"databases.{db.name}.user changed; it takes effect after a restart")
        databases.append(db)
        addresses = getattr(db, "addresses", None)
        if (
            before is not None
            and addresses is not None
            and len(addresses()) > 1
            and addresses() != before.addresses()
        ):
            notes.append(f"databases.{db.name}.hosts changed; it takes effect after a restart")
    if kept:
        sections["proxy"] = dataclasses.replace(new.proxy, **kept)
    if tuple(databases) != new.databases:
        sections["databases"] = tuple(databases)
    if sections:
        new = dataclasses.replace(new, **sections)
    return new, notes


def _spec_for(cfg: Config, db: DatabaseConfig, server_user: str, old: PoolSpec) -> PoolSpec:
    """`old` with every setting the config decides recomputed (as ProxyServer.get_pool does)."""
    if db.user and server_user != db.user and old.credentials is None:
        # auth_query's pool: auth_user logs in as itself whatever the database forces.
        user_cfg = cfg.user(server_user)
        secret = user_cfg.password if user_cfg is not None else old.secret
    elif db.user:
        forced = cfg.user(db.user)
        secret = db.password or (forced.password if forced else None)
        user_cfg = None
    else:
        user_cfg = cfg.user(server_user)
        secret = db.password or (user_cfg.password if user_cfg else None)
        if user_cfg is None and secret is None and cfg.auth_lookup_for(db) is not None:
            secret = old.secret  # what auth_query found (kept current by each login)
    if old.credentials is not None:
        secret = old.secret  # Secrets Manager supplies the credentials
    size = cfg.pool_size_for(db)
    pool = cfg.pool
    fields: dict[str, Any] = {
        "host": db.host,
        "port": db.port,
        "dbname": db.dbname or db.name,
        "secret": secret,
        "size": size,
        "min_size": min(pool.min_pool_size, size),
        "mode": cfg.pool_mode_for(db, user_cfg),
        "query_wait_timeout_s": pool.query_wait_timeout_s,
        "idle_timeout_s": pool.server_idle_timeout_s,
        "lifetime_s": pool.server_lifetime_s,
        "connect_timeout_s": pool.server_connect_timeout_s,
        "login_retry_s": pool.server_login_retry_s,
        "reset_query": pool.server_reset_query,
        "max_prepared_statements": pool.max_prepared_statements,
        "max_scram_iterations": pool.server_max_scram_iterations,
        "query_timeout_s": pool.query_timeout_s,
        "idle_transaction_timeout_s": pool.idle_transaction_timeout_s,
        "max_db_connections": cfg.max_db_connections_for(db),
        "max_user_connections": cfg.max_user_connections_for(server_user),
        "check_delay_s": pool.server_check_delay_s,
        "check_timeout_s": pool.server_check_timeout_s,
        "check_query": pool.server_check_query,
        "reserve_size": pool.reserve_pool_size,
        "reserve_timeout_s": pool.reserve_pool_timeout_s,
        "tcp": tcp_tuning(pool),
    }
    # Multi-host settings, where this build has them.
    for name in ("reader_fallback", "max_replica_lag_bytes"):
        if hasattr(old, name) and hasattr(db, name):
            fields[name] = getattr(db, name)
    topology = getattr(cfg, "topology", None)
    if hasattr(old, "failover_timeout_s") and hasattr(topology, "failover_timeout_s"):
        fields["failover_timeout_s"] = topology.failover_timeout_s  # type: ignore[union-attr]
    return dataclasses.replace(old, **fields)


# --- PAUSE, RESUME, KILL, RECONNECT ------------------------------------------------------------


def pools_of(server: ProxyServer, db: str | None) -> list[Pool]:
    """The pools of database `db` (every pool when None)."""
    return [p for (name, _user), p in server.pools.items() if db is None or name == db]


def known_database(server: ProxyServer, db: str) -> bool:
    return server.config.database(db) is not None or any(name == db for name, _user in server.pools)


def pause_now(server: ProxyServer, db: str | None) -> list[Pool]:
    """Mark `db` (or everything) paused; returns the pools that now drain."""
    if db is None:
        server.pause_all()
    else:
        server.paused_dbs.add(db)
    pools = pools_of(server, db)
    for pool in pools:
        pool.pause()
    return pools


async def pause(server: ProxyServer, db: str | None, wanted: Callable[[], bool]) -> None:
    """PAUSE: hold new transactions and wait until every server connection of the pools has
    been released and closed (a session-mode client keeps its own until it leaves). Stops
    waiting early when `wanted()` turns false (the admin left); the pause stays in force."""
    pause_now(server, db)
    while wanted() and any(p.total > 0 for p in pools_of(server, db)):
        await asyncio.sleep(POLL_S)


def resume(server: ProxyServer, db: str | None) -> None:
    """RESUME: undo PAUSE or KILL (RESUME without a database resumes everything)."""
    if db is None:
        server.resume_all()
        server.paused_dbs.clear()
    else:
        server.paused_dbs.discard(db)
    if server.draining:
        return  # a drain keeps every pool paused
    for (name, _user), pool in server.pools.items():
        if (db is None or name == db) and not (server.paused or name in server.paused_dbs):
            pool.resume()


def reconnect(server: ProxyServer, db: str | None) -> int:
    """RECONNECT: every server connection closes once free; new ones are opened as needed."""
    pools = pools_of(server, db)
    for pool in pools:
        pool.retire(DisconnectReason.POOL_CLOSED)
    return len(pools)


def kill(server: ProxyServer, db: str) -> int:
    """KILL db: drop its clients and server connections now; the database stays paused (new
    clients wait) until RESUME. Returns how many clients were dropped."""
    pools = set(pause_now(server, db))
    err = ProxyError(
        SqlState.ADMIN_SHUTDOWN,
        f'terminating connection due to administrator command (KILL "{db}")',
    )
    killed = 0
    for client in server.all_clients():
        if client.pool in pools and client not in server.admin_sessions:
            client.fail(err, DisconnectReason.ADMIN_KILL)
            killed += 1
    return killed


# --- shutdown ----------------------------------------------------------------------------------


def _idle_between_transactions(server: ProxyServer, client: ClientConnection) -> bool:
    """Whether closing `client` now loses nothing: no transaction of its is running."""
    state = client.state
    if state in (ClientState.IDLE, ClientState.WAITING) or client in server.admin_sessions:
        return True
    if state == ClientState.ACTIVE and (client.pinned or not client.release_on_idle):
        # Session mode, or pinned by session state: the backend stays linked between
        # transactions.
        backend = client.backend
        sc = client.scanner
        return (
            backend is not None
            and at_boundary(sc, backend.tx_status)
            and not backend.internal_pending
        )
    return False


def terminate_all(server: ProxyServer, message: str) -> int:
    """Send every client 57P01 and close it (a transaction still running is rolled back)."""
    err = ProxyError(SqlState.ADMIN_SHUTDOWN, message)
    clients = server.all_clients()
    for client in clients:
        client.fail(err, DisconnectReason.SHUTDOWN)
    return len(clients)


async def drain(server: ProxyServer, timeout_s: float) -> None:
    """Stop accepting, let running transactions finish, close clients as they go idle; after
    `timeout_s`, close whoever is left."""
    loop = asyncio.get_running_loop()
    # Before pausing: get_pool pauses any pool a login creates from now on.
    server.begin_drain()
    for pool in server.pools.values():
        pool.pause()  # no new transactions start; released servers close
    log.info(
        "draining: stopped accepting; %d clients, waiting up to %gs for their transactions",
        server.client_count,
        timeout_s,
    )
    err = ProxyError(SqlState.ADMIN_SHUTDOWN, "terminating connection: the proxy is shutting down")
    # What a login reaching admission hears now (login._admit): said at once to every login
    # still under way, which has no transaction to finish. Left alone, a login waiting on its
    # client (one frozen mid-connect, as a paused Lambda is) or on a pool the drain paused held
    # the drain until client_login_timeout_s, and then heard 08P01 blaming the client.
    refused = ProxyError(SqlState.CANNOT_CONNECT_NOW, "the proxy is shutting down")
    deadline = loop.time() + timeout_s
    while True:
        for client in server.all_clients():
            if _idle_between_transactions(server, client):
                client.fail(err, DisconnectReason.SHUTDOWN)
            elif client.login is not None:
                client.fail(refused, DisconnectReason.SHUTDOWN)
        if not server.client_count or loop.time() >= deadline:
            break
        await asyncio.sleep(POLL_S)
    left = terminate_all(
        server,
        f"terminating connection: the proxy is shutting down "
        f"(proxy.shutdown_timeout_s = {timeout_s:g} ran out)",
    )
    if left:
        log.warning("drain: shutdown_timeout_s ran out; closed %d clients mid-transaction", left)
    else:
        log.info("drain: every client finished")


async def _first(*aws: Coroutine[Any, Any, Any]) -> None:
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def request_shutdown(server: ProxyServer) -> None:
    """The admin SHUTDOWN: drain like SIGTERM, and with workers stop every worker (the exit
    status tells the supervisor; see workers.EXIT_SHUTDOWN_ALL)."""
    server.request_stop(all_workers=True)


async def run_until_stopped(server: ProxyServer) -> int:
    """Serve until told to stop, handling SIGHUP/SIGTERM/SIGINT; returns the exit status."""
    loop = asyncio.get_running_loop()
    graceful = server.stop_requested
    immediate = asyncio.Event()

    def on_term() -> None:
        if graceful.is_set():
            log.info("second SIGTERM: stopping now")
            immediate.set()
        else:
            log.info("SIGTERM: graceful shutdown")
            server.request_stop()

    def on_int() -> None:
        log.info("SIGINT: stopping now")
        immediate.set()

    handlers = {
        signal.SIGTERM: on_term,
        signal.SIGINT: on_int,
        signal.SIGHUP: lambda: reload_logged(server),
    }
    for sig, handler in handlers.items():
        loop.add_signal_handler(sig, handler)
    try:
        await _first(graceful.wait(), immediate.wait())
        if not immediate.is_set():
            timeout = server.config.proxy.shutdown_timeout_s
            await _first(drain(server, timeout), immediate.wait())
    finally:
        for sig in handlers:
            loop.remove_signal_handler(sig)
        log.info("shutting down")
        terminate_all(server, "terminating connection: the proxy is shutting down")
        await server.close()
    if server.stop_all_workers and server.identity.count > 1:
        return EXIT_SHUTDOWN_ALL  # not restarted: the supervisor stops the other workers too
    return 0
