"""A Unix socket one worker serves to its siblings (with `workers = N`): the AWS caller's
questions, the metrics snapshots. Owns the socket file and every connection's task, so closing
the worker ends them."""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import Any


class SiblingSocket:
    """Subclasses answer one connection in `serve`; errors there are theirs to log."""

    def __init__(self, path: str, limit: int) -> None:
        self.path = path
        self.limit = limit
        self._unix: asyncio.base_events.Server | None = None
        self._conns: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)  # left by this worker's previous life
        self._unix = await asyncio.start_unix_server(self._handle, self.path, limit=self.limit)

    async def close(self) -> None:
        if self._unix is not None:
            self._unix.close()
        for task in list(self._conns):
            task.cancel()
        if self._conns:
            await asyncio.gather(*self._conns, return_exceptions=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._conns.add(task)
        try:
            await self.serve(reader, writer)
        finally:
            writer.close()
            if task is not None:
                self._conns.discard(task)
