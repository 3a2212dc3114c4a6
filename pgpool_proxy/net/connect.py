"""Owns opening a socket to PostgreSQL: TCP, then the SSLRequest and TLS handshake by sslmode."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..config import ServerTlsMode
from ..errors import ProxyError, SqlState
from ..protocol.constants import SSL_REQUEST_CODE

if TYPE_CHECKING:
    from ..config import PoolSettings


class ServerTls:
    """The backend TLS mode and its prepared context (None for disable)."""

    __slots__ = ("context", "mode")

    def __init__(self, mode: ServerTlsMode, context: ssl.SSLContext | None) -> None:
        self.mode = mode
        self.context = context


NO_TLS = ServerTls(ServerTlsMode.DISABLE, None)


SSL_REQUEST = (8).to_bytes(4, "big") + SSL_REQUEST_CODE.to_bytes(4, "big")


@dataclass(frozen=True, slots=True)
class TcpTuning:
    """Dead-peer detection by the kernel (pool.tcp_*): keepalive probes on an idle connection,
    and TCP_USER_TIMEOUT for data the peer never acknowledges."""

    keepalive: bool = True
    keepidle_s: int = 15
    keepintvl_s: int = 5
    keepcnt: int = 3
    user_timeout_s: float = 30.0


DEFAULT_TCP = TcpTuning()


def tcp_tuning(pool: PoolSettings) -> TcpTuning:
    """The [pool] section's tcp_* keys."""
    return TcpTuning(
        keepalive=pool.tcp_keepalive,
        keepidle_s=pool.tcp_keepidle_s,
        keepintvl_s=pool.tcp_keepintvl_s,
        keepcnt=pool.tcp_keepcnt,
        user_timeout_s=pool.tcp_user_timeout_s,
    )


def tune_socket(sock: Any, tcp: TcpTuning) -> None:
    """Apply `tcp` to a TCP socket (a socket, or a transport's socket-like view of one); a
    no-op for other families and for options this platform lacks (TCP_KEEPIDLE and
    TCP_USER_TIMEOUT are Linux names)."""
    if getattr(sock, "family", None) not in (socket.AF_INET, socket.AF_INET6):
        return
    setsockopt = sock.setsockopt
    setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1 if tcp.keepalive else 0)
    if tcp.keepalive:
        for name, value in (
            ("TCP_KEEPIDLE", tcp.keepidle_s),
            ("TCP_KEEPINTVL", tcp.keepintvl_s),
            ("TCP_KEEPCNT", tcp.keepcnt),
        ):
            if hasattr(socket, name):
                setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)
    if hasattr(socket, "TCP_USER_TIMEOUT"):
        setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(tcp.user_timeout_s * 1000))


async def open_server_transport(
    factory: Callable[[], asyncio.BaseProtocol],
    host: str,
    port: int,
    tls: ServerTls,
    tcp: TcpTuning = DEFAULT_TCP,
) -> asyncio.BaseTransport:
    """Connect `factory()`'s protocol to host:port, encrypted as `tls.mode` demands, with the
    keepalive and user-timeout options of `tcp`.

    Raises OSError (unreachable), ssl.SSLError (handshake/verification) or ProxyError (the
    server refuses TLS that the mode requires).
    """
    loop = asyncio.get_running_loop()
    if tls.context is None:
        transport, _ = await loop.create_connection(factory, host, port)
        tune_socket(transport.get_extra_info("socket"), tcp)
        return transport
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    if not infos:
        raise OSError(f"cannot resolve {host}")
    family, type_, proto, _, addr = infos[0]
    sock = socket.socket(family, type_, proto)
    try:
        sock.setblocking(False)
        tune_socket(sock, tcp)
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
