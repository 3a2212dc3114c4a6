"""A TCP round-robin relay, as a load balancer in front of several proxies: each new connection
goes to the next target in turn, and bytes are copied both ways until either side closes."""

from __future__ import annotations

import asyncio
import contextlib
import itertools


class RoundRobinRelay:
    """Listens on 127.0.0.1 (port 0) in the running loop; ``targets`` are (host, port)."""

    def __init__(self, targets: list[tuple[str, int]]) -> None:
        self.targets = targets
        self._next = itertools.cycle(range(len(targets)))
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0
        # Which target each connection went to, in order of arrival.
        self.routed: list[int] = []

    async def start(self) -> RoundRobinRelay:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        index = next(self._next)
        self.routed.append(index)
        task = asyncio.get_running_loop().create_task(self._pipe(reader, writer, index))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _pipe(
        self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter, index: int
    ) -> None:
        host, port = self.targets[index]
        try:
            s_reader, s_writer = await asyncio.open_connection(host, port)
        except OSError:
            c_writer.close()
            return
        await splice(c_reader, c_writer, s_reader, s_writer)


async def splice(
    c_reader: asyncio.StreamReader,
    c_writer: asyncio.StreamWriter,
    s_reader: asyncio.StreamReader,
    s_writer: asyncio.StreamWriter,
) -> None:
    """Pass bytes both ways until both sides have finished, then close both."""
    try:
        await asyncio.gather(_copy(c_reader, s_writer), _copy(s_reader, c_writer))
    finally:
        for w in (c_writer, s_writer):
            w.close()


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (OSError, asyncio.IncompleteReadError):
        pass
    finally:
        # Half-close, as a TCP load balancer passes a FIN on: a cancel request's sender waits
        # for the proxy to close, which must reach it through the relay.
        with contextlib.suppress(OSError, RuntimeError):
            if writer.can_write_eof():
                writer.write_eof()
