"""Owns the admin console session: a client of the virtual admin database, served over the
simple-query protocol with SHOW/PAUSE/RESUME/RELOAD/RECONNECT/KILL/SHUTDOWN/SET.

After the normal login (session.login authenticates the user as for any database) the client
stays in ClientState.LOGIN and this module's task reads its messages; it never gets a pool.
Only ``admin.admin_users`` may run commands; ``admin.stats_users`` may only SHOW; anyone else is
refused at login.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from .. import __version__
from ..config import ConfigError
from ..errors import DisconnectReason, ProxyError, SqlState, internal_error
from ..net.endpoint import EndpointClosed
from ..protocol import messages as m
from ..protocol.constants import F_FLUSH, F_QUERY, F_SYNC, F_TERMINATE
from ..runtime import lifecycle
from . import show_pools, show_result, show_setup
from .commands import HELP_TEXT, Command, CommandError, parse_command, split_statements
from .settings import set_setting, show_config

if TYPE_CHECKING:
    from ..runtime.server import ProxyServer
    from ..session.client import ClientConnection

log = logging.getLogger("pgpool_proxy.admin")

# One admin query is a short command line or a few of them: a stats user must not be able to
# make the proxy parse megabytes or run thousands of SHOWs for one message.
MAX_ADMIN_MESSAGE = 64 * 1024
MAX_STATEMENTS = 20
# Replies wait (and the console stops reading) while this much is unsent to the client.
WRITE_BUFFER_HIGH = 256 * 1024
_READY = m.ready_for_query()


class AdminRefusal(ProxyError):
    """A user who is neither an admin nor a stats user tried to log into the console."""

    reason = DisconnectReason.AUTH_FAILED
    auth_reason = "admin_denied"


def start_console(server: ProxyServer, client: ClientConnection, params: Mapping[str, str]) -> None:
    """Called by login once the user is authenticated for the admin database: welcome the
    client and hand it to a console task owned by the server."""
    admin = server.config.admin
    if not admin.allowed(client.user):
        raise AdminRefusal(
            SqlState.INSUFFICIENT_PRIVILEGE,
            f'user "{client.user}" is not allowed to use the admin console '
            f'(database "{admin.database}")',
            hint="List the user in admin.admin_users or admin.stats_users.",
        )
    transport = client.transport
    if transport is None:
        raise EndpointClosed
    server.admin_sessions.add(client)
    # The transport reports (pause_writing) once replies the client has not taken pass the mark.
    transport.set_write_buffer_limits(high=WRITE_BUFFER_HIGH)
    status = {
        "server_version": f"{__version__}/pgpool-proxy",
        "server_encoding": "UTF8",
        "client_encoding": "UTF8",
        "DateStyle": "ISO",
        "TimeZone": "UTC",
        "integer_datetimes": "on",
        "standard_conforming_strings": "on",
        "application_name": params.get("application_name", ""),
    }
    # SHOW CLIENTS reads it from here, as for any client (PgBouncer shows a console's too).
    client.params["application_name"] = status["application_name"]
    transport.write(
        b"".join(
            (
                m.auth_ok(),
                *(m.parameter_status(k, v) for k, v in status.items()),
                # Not registered: a cancel request has nothing to cancel here.
                m.backend_key_data(os.getpid() & 0x7FFFFFFF, 0),
                _READY,
            )
        )
    )
    server.counters.admin_logins += 1
    log.info("admin login: %s user=%s", client.addr, client.user)
    server.spawn(_serve(server, client), "admin")


async def _serve(server: ProxyServer, client: ClientConnection) -> None:
    skipping = False  # after an extended-protocol message, until Sync
    try:
        while True:
            t, body = await client.read_frame(
                MAX_ADMIN_MESSAGE, f"admin console (a query is at most {MAX_ADMIN_MESSAGE} bytes)"
            )
            if t == F_QUERY:
                await _query(server, client, body)
            elif t == F_TERMINATE:
                client.close(DisconnectReason.CLIENT_TERMINATE)
                return
            elif t == F_SYNC:
                skipping = False
                _write(client, _READY)
            elif t == F_FLUSH:
                continue
            elif not skipping:
                skipping = True
                _write(
                    client,
                    _error(
                        SqlState.FEATURE_NOT_SUPPORTED,
                        "the admin console supports the simple query protocol only",
                        hint="Use psql, or a driver's simple-query mode "
                        "(psycopg: autocommit and no parameters; asyncpg: execute()).",
                    ),
                )
    except EndpointClosed:
        client.close(DisconnectReason.CLIENT_EOF)
    except ProxyError as exc:
        client.fail(exc, DisconnectReason.PROTOCOL_ERROR)
    except Exception:
        # A bug must not leave the client hanging (nor a SIGTERM drain waiting for it).
        client.fail(
            internal_error(
                log,
                "in the admin console for %s user=%s",
                client.addr,
                client.user,
                said="internal error in the proxy's admin console",
            ),
            DisconnectReason.INTERNAL_ERROR,
        )
    finally:
        server.admin_sessions.discard(client)


def _write(client: ClientConnection, data: bytes) -> None:
    if client.transport is not None:
        client.transport.write(data)


def _error(
    sqlstate: str, message: str, *, detail: str | None = None, hint: str | None = None
) -> bytes:
    return m.error_response("ERROR", sqlstate, message, detail=detail, hint=hint)


async def _drain(client: ClientConnection) -> None:
    """Wait while the client has not taken what it was sent (the console reads nothing more
    meanwhile, and stops reading once its buffer is full), so a client that does not read
    cannot make the proxy buffer without bound."""
    await client.wait_writable()


def printable(text: str) -> str:
    """`text` for a log line or a message: control characters (newlines too) escaped."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


async def _query(server: ProxyServer, client: ClientConnection, body: bytes) -> None:
    raw = body[:-1] if body.endswith(b"\0") else body
    if b"\0" in raw:
        _write(
            client,
            _error(SqlState.SYNTAX_ERROR, "the query contains a NUL byte") + _READY,
        )
        return
    statements = split_statements(raw.decode("utf-8", "replace"))
    if not statements:
        _write(client, m.empty_query_response() + _READY)
        return
    if len(statements) > MAX_STATEMENTS:
        _write(
            client,
            _error(
                SqlState.PROGRAM_LIMIT_EXCEEDED,
                f"too many commands in one query ({len(statements)}; the admin console runs "
                f"at most {MAX_STATEMENTS})",
                hint="Send the commands in separate queries.",
            )
            + _READY,
        )
        return
    for i, statement in enumerate(statements):
        if i:
            await asyncio.sleep(0)  # other clients' turn between commands
        try:
            command = parse_command(statement)
            _check_allowed(server, client, command)
            server.counters.admin_commands += 1
            out = await _run(server, client, command)
        except CommandError as exc:
            _write(client, _error(exc.sqlstate, exc.message, detail=exc.detail, hint=exc.hint))
            break
        _write(client, out)
        if command.verb == "SHUTDOWN":
            _write(client, _READY)
            lifecycle.request_shutdown(server)
            return
        await _drain(client)
    _write(client, _READY)


def _check_allowed(server: ProxyServer, client: ClientConnection, command: Command) -> None:
    admin = server.config.admin
    if command.mutating and client.user not in admin.admin_users:
        raise CommandError(
            SqlState.INSUFFICIENT_PRIVILEGE,
            f'permission denied: user "{client.user}" may only run SHOW commands '
            f"({command.verb} needs admin.admin_users)",
        )


def _result(result: show_result.Result, tag: str = "SHOW") -> bytes:
    return b"".join(
        (
            m.row_description(result.columns),
            *(m.data_row(row) for row in result.rows),
            m.command_complete(tag),
        )
    )


_SHOW = {
    "POOLS": show_pools.show_pools,
    "CLIENTS": show_pools.show_clients,
    "SERVERS": show_pools.show_servers,
    "DATABASES": show_setup.show_databases,
    "LISTS": show_setup.show_lists,
    "STATE": show_setup.show_state,
    "VERSION": show_setup.show_version,
    "TOTALS": show_pools.show_totals,
    "CONFIG": show_config,
    "USERS": show_setup.show_users,
    "PEERS": show_setup.show_peers,
}


def _check_database(server: ProxyServer, verb: str, db: str | None) -> None:
    if db is not None and db == server.config.admin.database:
        # Its SHOW POOLS row stands for the consoles; there are no server connections to act on.
        raise CommandError(
            SqlState.FEATURE_NOT_SUPPORTED,
            f"{verb} does not apply to the admin database (it has no server connections)",
        )
    if db is not None and not lifecycle.known_database(server, db):
        raise CommandError(SqlState.INVALID_CATALOG_NAME, f'database "{db}" does not exist')


def _apply(apply: Callable[[], list[str]], what: str) -> list[str]:
    """Run a reload/SET; a failure other than a refused file is reported, not swallowed."""
    try:
        return apply()
    except ConfigError:
        raise
    except Exception as exc:
        log.exception("%s failed while applying the configuration", what)
        raise CommandError(
            SqlState.INTERNAL_ERROR,
            f"{what} failed while applying the new configuration: {type(exc).__name__}: {exc}",
            hint="The proxy log has the details; the configuration may be partly applied.",
        ) from None


async def _run(server: ProxyServer, client: ClientConnection, command: Command) -> bytes:
    """The reply to one command (without ReadyForQuery)."""
    verb, arg = command.verb, command.arg
    if verb == "SHOW":
        assert arg is not None
        if arg == "HELP":
            return m.notice_response("Console usage", detail=HELP_TEXT) + m.command_complete("SHOW")
        if arg == "FDS":
            raise CommandError(
                SqlState.FEATURE_NOT_SUPPORTED,
                "SHOW FDS is not supported: it is PgBouncer's online restart (pgbouncer -R), "
                "which hands its sockets to a new process; pgpool-proxy has none",
                hint="For a restart without dropping clients, start a new proxy on the same "
                "port with proxy.reuse_port = true and SIGTERM the old one (it drains). "
                "SHOW CLIENTS and SHOW SERVERS list the connections.",
            )
        if arg.startswith("STATS"):
            return _result(show_pools.show_stats(server, arg))
        return _result(_SHOW[arg](server))
    who = f"{client.user}@{client.addr}"
    if verb == "SET":
        assert arg is not None and command.value is not None
        full, new = set_setting(server, arg, command.value)
        try:
            _apply(lambda: lifecycle.apply_config(server, new), "SET")
        except ConfigError as exc:
            raise CommandError(SqlState.INVALID_PARAMETER_VALUE, "; ".join(exc.problems)) from None
        log.info("admin %s: SET %s = %s", who, full, printable(command.value))
        return m.command_complete("SET")
    if verb == "RELOAD":
        try:
            notes = _apply(lambda: lifecycle.reload_config(server), "RELOAD")
        except ConfigError as exc:
            log.error("admin %s: RELOAD failed; the old configuration stays:\n%s", who, exc)
            raise CommandError(
                SqlState.CONFIG_FILE_ERROR,
                "RELOAD failed; the old configuration stays in effect",
                detail="\n".join(exc.problems),
            ) from None
        log.info("admin %s: RELOAD", who)
        return b"".join(m.notice_response(n) for n in notes) + m.command_complete("RELOAD")
    _check_database(server, verb, arg)
    log.info("admin %s: %s", who, printable(command.text))
    if verb == "PAUSE":
        await lifecycle.pause(server, arg, client.is_open)
    elif verb == "RESUME":
        if server.draining:
            raise CommandError(
                SqlState.CANNOT_CONNECT_NOW,
                "the proxy is shutting down; RESUME is refused (its pools stay paused)",
            )
        lifecycle.resume(server, arg)
    elif verb == "RECONNECT":
        lifecycle.reconnect(server, arg)
    elif verb == "KILL":
        assert arg is not None
        lifecycle.kill(server, arg)
    return m.command_complete(verb)
