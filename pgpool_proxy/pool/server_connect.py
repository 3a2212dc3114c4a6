"""The proxy logging into a PostgreSQL server as a client: the startup and authentication
exchange on a new BackendConnection (auth.server_login's state machine, driven over the
connection's slow-path reads). pool.connecting and the topology monitor call login.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ..auth.server_login import ServerLogin
from ..errors import ProxyError, SqlState
from ..net.endpoint import EndpointClosed
from ..protocol import messages as m

if TYPE_CHECKING:
    from .backend import BackendConnection

log = logging.getLogger("pgpool_proxy.backend")

# Login replies are small; a server that sends more before ReadyForQuery is not PostgreSQL.
MAX_LOGIN_MESSAGE = 1024 * 1024


async def read_login_message(backend: BackendConnection) -> tuple[int, bytes]:
    try:
        return await backend.read_frame(MAX_LOGIN_MESSAGE, "server login")
    except EndpointClosed:
        raise ProxyError(
            SqlState.CONNECTION_FAILURE, "server closed the connection during login"
        ) from None


async def login(
    backend: BackendConnection,
    user: str,
    dbname: str,
    secret: str | None,
    *,
    client_key: bytes | None = None,
    server_key: bytes | None = None,
) -> None:
    """Run the startup and authentication exchange; leaves the backend ready for queries."""
    try:
        await drive_login(
            backend, user, dbname, secret, client_key=client_key, server_key=server_key
        )
    except m.ProtocolViolation as exc:
        log.warning("server %s:%s sent a malformed login message: %s", *backend.address, exc)
        raise ProxyError(
            SqlState.SQLCLIENT_UNABLE_TO_ESTABLISH,
            f"server sent an invalid message during login: {exc}",
        ) from None


async def drive_login(
    backend: BackendConnection,
    user: str,
    dbname: str,
    secret: str | None,
    *,
    client_key: bytes | None,
    server_key: bytes | None,
) -> None:
    assert backend.transport is not None
    backend.logging_in()
    login = ServerLogin(
        user,
        dbname,
        secret,
        max_iterations=backend.pool.spec.max_scram_iterations,
        client_key=client_key,
        server_key=server_key,
    )
    backend.transport.write(login.startup())
    while True:
        t, body = await read_login_message(backend)
        step = login.feed(t, body)
        out = step.send
        if step.challenge is not None:
            out = await login.prove(step.challenge)
        if out:
            if backend.transport is None:
                raise ProxyError(
                    SqlState.CONNECTION_FAILURE, "server closed the connection during login"
                )
            backend.transport.write(out)
        if step.ready:
            break
    backend.logged_in(login)
