"""Owns the admin console session: a client of the virtual admin database, served over the
simple-query protocol with SHOW/PAUSE/RESUME/RELOAD/RECONNECT/KILL/SHUTDOWN/SET.

After the normal login (session.login authenticates the user as for any database) the client
stays in ClientState.LOGIN and this module's task reads its messages; it never gets a pool.
Only ``admin.admin_users`` may run commands; ``admin.stats_users`` may only SHOW; anyone else is
refused at login.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

from .. import __version__, lifecycle
from ..config import ConfigError
from ..endpoint import EndpointClosed
from ..errors import DisconnectReason, ProxyError, SqlState
from ..protocol import messages as m
from ..protocol.constants import F_FLUSH, F_QUERY, F_SYNC, F_TERMINATE
from . import show
from .commands import HELP_TEXT, Command, CommandError, parse_command, split_statements
from .settings import set_setting, show_config

if TYPE_CHECKING:
    from ..server import ProxyServer
    from ..session.client import ClientConnection

log = logging.getLogger("pgpool_proxy.admin")

MAX_ADMIN_MESSAGE = 1024 * 1024
_READY = m.ready_for_query()


class AdminRefusal(ProxyError):
    """A user who is neither an admin nor a stats user tried to log into the console."""

    reason = DisconnectReason.AUTH_FAILED
    auth_reason = "admin_denied"


def start_console(client: ClientConnection, params: Mapping[str, str]) -> None:
    """Called by login once the user is authenticated for the admin database: welcome the
    client and hand it to a console task owned by the server."""
    server = client.server
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
    log.info("admin login: %s user=%s", client.addr, client.user)
    server.spawn(_serve(client), "admin")


async def _serve(client: ClientConnection) -> None:
    server = client.server
    skipping = False  # after an extended-protocol message, until Sync
    try:
        while True:
            t, body = await client.read_frame(MAX_ADMIN_MESSAGE, "admin console")
            if t == F_QUERY:
                await _query(client, body.rstrip(b"\0").decode("utf-8", "replace"))
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
    finally:
        server.admin_sessions.discard(client)


def _write(client: ClientConnection, data: bytes) -> None:
    if client.transport is not None:
        client.transport.write(data)


def _error(
    sqlstate: str, message: str, *, detail: str | None = None, hint: str | None = None
) -> bytes:
    return m.error_response("ERROR", sqlstate, message, detail=detail, hint=hint)


async def _query(client: ClientConnection, text: str) -> None:
    statements = split_statements(text)
    if not statements:
        _write(client, m.empty_query_response() + _READY)
        return
    for statement in statements:
        try:
            command = parse_command(statement)
            _check_allowed(client, command)
            out = await _run(client, command)
        except CommandError as exc:
            _write(client, _error(exc.sqlstate, exc.message, detail=exc.detail, hint=exc.hint))
            break
        _write(client, out)
        if command.verb == "SHUTDOWN":
            _write(client, _READY)
            client.server.stop_requested.set()
            return
    _write(client, _READY)


def _check_allowed(client: ClientConnection, command: Command) -> None:
    admin = client.server.config.admin
    if command.mutating and client.user not in admin.admin_users:
        raise CommandError(
            SqlState.INSUFFICIENT_PRIVILEGE,
            f'permission denied: user "{client.user}" may only run SHOW commands '
            f"({command.verb} needs admin.admin_users)",
        )


def _result(result: show.Result, tag: str = "SHOW") -> bytes:
    return b"".join(
        (
            m.row_description(result.columns),
            *(m.data_row(row) for row in result.rows),
            m.command_complete(tag),
        )
    )


_SHOW = {
    "POOLS": show.show_pools,
    "CLIENTS": show.show_clients,
    "SERVERS": show.show_servers,
    "DATABASES": show.show_databases,
    "LISTS": show.show_lists,
    "STATE": show.show_state,
    "VERSION": show.show_version,
    "TOTALS": show.show_totals,
    "CONFIG": show_config,
}


def _check_database(server: ProxyServer, db: str | None) -> None:
    if db is not None and not lifecycle.known_database(server, db):
        raise CommandError(SqlState.INVALID_CATALOG_NAME, f'database "{db}" does not exist')
    if db is not None and db == server.config.admin.database:
        raise CommandError(SqlState.FEATURE_NOT_SUPPORTED, "the admin database has no pools")


async def _run(client: ClientConnection, command: Command) -> bytes:
    """The reply to one command (without ReadyForQuery)."""
    server = client.server
    verb, arg = command.verb, command.arg
    if verb == "SHOW":
        assert arg is not None
        if arg == "HELP":
            return m.notice_response("Console usage", detail=HELP_TEXT) + m.command_complete("SHOW")
        if arg.startswith("STATS"):
            return _result(show.show_stats(server, arg))
        return _result(_SHOW[arg](server))
    who = f"{client.user}@{client.addr}"
    if verb == "SET":
        assert arg is not None and command.value is not None
        full, new = set_setting(server, arg, command.value)
        lifecycle.apply_config(server, new)
        log.info("admin %s: SET %s = %s", who, full, command.value)
        return m.command_complete("SET")
    if verb == "RELOAD":
        try:
            notes = lifecycle.reload_config(server)
        except ConfigError as exc:
            log.error("admin %s: RELOAD failed; the old configuration stays:\n%s", who, exc)
            raise CommandError(
                SqlState.CONFIG_FILE_ERROR,
                "RELOAD failed; the old configuration stays in effect",
                detail="\n".join(exc.problems),
            ) from None
        log.info("admin %s: RELOAD", who)
        return b"".join(m.notice_response(n) for n in notes) + m.command_complete("RELOAD")
    _check_database(server, arg)
    log.info("admin %s: %s", who, command.text)
    if verb == "PAUSE":
        await lifecycle.pause(server, arg, client.is_open)
    elif verb == "RESUME":
        lifecycle.resume(server, arg)
    elif verb == "RECONNECT":
        lifecycle.reconnect(server, arg)
    elif verb == "KILL":
        assert arg is not None
        lifecycle.kill(server, arg)
    return m.command_complete(verb)
