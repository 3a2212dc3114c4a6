"""Owns opening a socket to PostgreSQL: TCP, then the SSLRequest and TLS handshake by sslmode."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Callable

from ..config_security import ServerTlsMode
from ..errors import ProxyError, SqlState
from ..protocol.constants import SSL_REQUEST_CODE


class ServerTls:
    """The backend TLS mode and its prepared context (None for disable)."""

    __slots__ = ("context", "mode")

    def __init__(self, mode: ServerTlsMode, context: ssl.SSLContext | None) -> None:
        self.mode = mode
        self.context = context


NO_TLS = ServerTls(ServerTlsMode.DISABLE, None)


SSL_REQUEST = (8).to_bytes(4, "big") + SSL_REQUEST_CODE.to_bytes(4, "big")


async def open_server_transport(
    factory: Callable[[], asyncio.BaseProtocol], host: str, port: int, tls: ServerTls
) -> asyncio.BaseTransport:
    """Connect `factory()`'s protocol to host:port, encrypted as `tls.mode` demands.

    Raises OSError (unreachable), ssl.SSLError (handshake/verification) or ProxyError (the
    server refuses TLS that the mode requires).
    """
    loop = asyncio.get_running_loop()
    if tls.context is None:
        transport, _ = await loop.create_connection(factory, host, port)
        return transport
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    if not infos:
        raise OSError(f"cannot resolve {host}")
    family, type_, proto, _, addr = infos[0]
    sock = socket.socket(family, type_, proto)
    try:
        sock.setblocking(False)
        await loop.sock_connect(sock, addr)
        await loop.sock_sendall(sock, SSL_REQUEST)
        # One byte only: anything the server (or a man in the middle) sends after it must not
        # be taken as part of the encrypted stream (CVE-2021-23214 class).
        answer = await loop.sock_recv(sock, 1)
        if answer == b"S":
            transport, _ = await loop.create_connection(
                factory,
                sock=sock,
                ssl=tls.context,
                server_hostname=host,
            )
            return transport
        if answer == b"N":
            if tls.mode is not ServerTlsMode.PREFER:
                raise ProxyError(
                    SqlState.SQLCLIENT_UNABLE_TO_ESTABLISH,
                    f"the server at {host}:{port} does not support SSL, but server_tls.mode is "
                    f'"{tls.mode.value}"',
                )
            transport, _ = await loop.create_connection(factory, sock=sock)
            return transport
        if not answer:
            raise OSError(f"the server at {host}:{port} closed the connection on SSLRequest")
        raise ProxyError(
            SqlState.PROTOCOL_VIOLATION,
            f"the server at {host}:{port} sent an invalid answer to SSLRequest: {answer!r}",
        )
    except BaseException:
        sock.close()
        raise
