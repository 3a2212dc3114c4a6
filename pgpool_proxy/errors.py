"""Errors the proxy reports to clients (SQLSTATE + message) and typed disconnect reasons."""

from __future__ import annotations

import enum
import logging


class SqlState:
    """The SQLSTATE codes the proxy itself emits; names follow PostgreSQL's errcodes.txt."""

    PROTOCOL_VIOLATION = "08P01"
    CONNECTION_FAILURE = "08006"
    CONNECTION_EXCEPTION = "08000"
    SQLCLIENT_UNABLE_TO_ESTABLISH = "08001"
    FEATURE_NOT_SUPPORTED = "0A000"
    INVALID_AUTHORIZATION = "28000"
    INVALID_PASSWORD = "28P01"
    INVALID_CATALOG_NAME = "3D000"
    TOO_MANY_CONNECTIONS = "53300"
    PROGRAM_LIMIT_EXCEEDED = "54000"
    NAME_TOO_LONG = "42622"
    ADMIN_SHUTDOWN = "57P01"
    CANNOT_CONNECT_NOW = "57P03"
    QUERY_CANCELED = "57014"
    INTERNAL_ERROR = "XX000"
    # Admin console (pgpool_proxy.admin).
    SYNTAX_ERROR = "42601"
    INSUFFICIENT_PRIVILEGE = "42501"
    UNDEFINED_OBJECT = "42704"
    INVALID_PARAMETER_VALUE = "22023"
    CANT_CHANGE_RUNTIME_PARAM = "55P02"
    CONFIG_FILE_ERROR = "F0000"


class ProxyError(Exception):
    """An error that ends up as exactly one ErrorResponse to the client."""

    def __init__(
        self,
        sqlstate: str,
        message: str,
        *,
        severity: str = "FATAL",
        detail: str | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.message = message
        self.severity = severity
        self.detail = detail
        self.hint = hint


class DisconnectReason(enum.Enum):
    """Why a client or backend connection was closed; reaches logs (and later metrics/admin)."""

    CLIENT_TERMINATE = "client_terminate"
    CLIENT_EOF = "client_eof"
    CLIENT_ERROR = "client_io_error"
    PROTOCOL_ERROR = "protocol_error"
    MESSAGE_TOO_LARGE = "message_too_large"
    LOGIN_TIMEOUT = "login_timeout"
    AUTH_FAILED = "auth_failed"
    UNKNOWN_DATABASE = "unknown_database"
    TOO_MANY_CLIENTS = "too_many_clients"
    UNSUPPORTED = "unsupported_request"
    POOL_TIMEOUT = "query_wait_timeout"
    BACKEND_FAILED = "backend_failed"
    BACKEND_CONNECT_FAILED = "backend_connect_failed"
    CANCEL_REQUEST = "cancel_request"
    SETTINGS_REJECTED = "startup_settings_rejected"
    SHUTDOWN = "shutdown"
    # A client went past a bound on what the proxy keeps for it (statements, settings).
    MEMORY_LIMIT = "client_memory_limit"
    # PgBouncer's names: idle inside a transaction, or idle with no server connection, too long.
    IDLE_TRANSACTION_TIMEOUT = "idle_transaction_timeout"
    CLIENT_IDLE_TIMEOUT = "client_idle_timeout"
    INTERNAL_ERROR = "internal_error"  # a bug in the proxy, caught at a protocol callback
    # Backend-only reasons.
    IDLE_TIMEOUT = "server_idle_timeout"
    LIFETIME = "server_lifetime"
    CLIENT_LEFT_MID_TRANSACTION = "client_left_mid_transaction"
    RESET_FAILED = "reset_failed"
    POOL_CLOSED = "pool_closed"
    FAILOVER = "failover"  # the writer moved, or a replica left the usable set
    BUDGET_EVICTED = "max_server_connections"  # closed to make room for another pool
    ADMIN_KILL = "admin_kill"  # KILL db on the admin console
    QUERY_TIMEOUT = "query_timeout"  # the server sent nothing for pool.query_timeout_s
    SERVER_SILENT = "server_check_failed"  # no answer to the proxy's own statement in time


def internal_error(
    logger: logging.Logger, where: str, *args: object, said: str = "internal error in the proxy"
) -> ProxyError:
    """An exception nobody expected (a bug) reached the edge of a callback: log it once with
    its traceback and return the error the affected client, and only it, gets (XX000).

    Every such edge calls this (a read callback of either side, a deferred callback, a login, the
    admin console, a server connect), so a bug reads the same in the log wherever it surfaced
    and never reaches the event loop's handler, which would report it as an I/O error and leave
    the client hanging. The caller then ends whatever state the bug left unknown."""
    logger.exception("internal error " + where, *args)
    return ProxyError(SqlState.INTERNAL_ERROR, said)
