"""A TCP relay between the proxy and PostgreSQL whose behaviour a test switches while it runs.

Modes apply to every relayed connection at the next chunk, in both directions:
- PASS: forward bytes as they come;
- BLACKHOLE: keep every socket open and acknowledged by the kernel, forward nothing (a hung
  server, or a middlebox that swallows traffic); new connections are accepted and never answered;
- FRAGMENT: forward one byte per write (every frame boundary and header split);
- LATENCY: hold each chunk `latency_s` before forwarding it (order is kept).
`reset()` sends RST to both sides of every current connection; `reject` resets new connections
at once (a server that cannot take logins); `cut()` stops listening and resets everything (a
crash), and `start()` listens again on the same port.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import socket
import struct


class Mode(enum.Enum):
    PASS = "pass"
    BLACKHOLE = "blackhole"
    FRAGMENT = "fragment"
    LATENCY = "latency"


_LINGER_RST = struct.pack("ii", 1, 0)


def _rst(writer: asyncio.StreamWriter) -> None:
    """Close with RST rather than FIN: linger 0 makes the kernel drop the connection."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
    writer.transport.abort()


class ChaosRelay:
    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = 0
        self.mode = Mode.PASS
        self.latency_s = 0.0
        self.reject = False
        self.accepted = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    # Compatibility with the first relay of test_failures.py.
    @property
    def blackhole(self) -> bool:
        return self.mode is Mode.BLACKHOLE

    @blackhole.setter
    def blackhole(self, on: bool) -> None:
        self.mode = Mode.BLACKHOLE if on else Mode.PASS

    @property
    def open_connections(self) -> int:
        """Relayed connections (each counted once per side) still open."""
        return len(self._writers)

    async def start(self) -> ChaosRelay:
        self._server = await asyncio.start_server(
            self._handle, "127.0.0.1", self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError, ConnectionError):
            while data := await reader.read(65536):
                mode = self.mode
                if mode is Mode.BLACKHOLE:
                    continue
                if mode is Mode.LATENCY and self.latency_s:
                    await asyncio.sleep(self.latency_s)  # the latency is the fault injected
                if mode is Mode.FRAGMENT:
                    for i in range(len(data)):
                        writer.write(data[i : i + 1])
                        await writer.drain()
                    continue
                writer.write(data)
                await writer.drain()
        # EOF (or an error) from one side ends the other: a proxy that gives up on a server
        # makes its PostgreSQL backend go away, as it would without the relay.
        writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # A handler still running when the test's loop closes is cancelled; that is no error.
        with contextlib.suppress(asyncio.CancelledError):
            await self._relay(reader, writer)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self.reject:
            _rst(writer)
            return
        self._writers.add(writer)
        try:
            if self.mode is Mode.BLACKHOLE:
                with contextlib.suppress(OSError, ConnectionError):
                    while await reader.read(65536):
                        pass
                writer.close()
                return
            try:
                up_reader, up_writer = await asyncio.open_connection(*self.target)
            except OSError:
                _rst(writer)
                return
            up_writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._writers.add(up_writer)
            try:
                await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
            finally:
                self._writers.discard(up_writer)
        finally:
            self._writers.discard(writer)

    def reset(self) -> int:
        """RST both sides of every relayed connection; returns how many sockets were reset."""
        writers = list(self._writers)
        self._writers.clear()
        for w in writers:
            _rst(w)
        return len(writers)

    async def cut(self) -> None:
        """Stop listening and reset every relayed connection."""
        assert self._server is not None
        self._server.close()
        self.reset()
        await self._server.wait_closed()
