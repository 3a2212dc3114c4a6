"""Hostile clients against three changes: cancel connections held open until the server has been
signalled (bounded by cancel_wait_timeout_s), idle clients that drop their receive buffer, and
the compiled twin of the hot path against the pure-Python reference.

A relay in front of PostgreSQL stalls the proxy's own cancel connections, so a "very slow
server" is reproduced without stopping the shared test server's postmaster.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import struct
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pgpool_proxy.protocol import messages as m
from tests.support.pg import LocalPostgres
from tests.support.proxy import ProxyThread, StartProxy
from tests.support.rawpg import RawClient, RawError, raw_login
from tests.support.waits import wait_for

CANCEL_CODE = 80877102


class CancelStallRelay:
    """A TCP relay to PostgreSQL that passes every connection through, except that a
    CancelRequest is held (neither forwarded nor answered) until `release()`."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.held = 0  # cancel requests received
        self.forwarded = 0  # cancel requests passed on to PostgreSQL
        self._gate = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    async def start(self) -> CancelStallRelay:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def release(self) -> None:
        self._gate.set()

    async def close(self) -> None:
        self.release()
        if self._server is not None:
            self._server.close()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.get_running_loop().create_task(self._pipe(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _pipe(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        try:
            head = await c_reader.readexactly(8)
            if struct.unpack("!I", head[4:])[0] == CANCEL_CODE:
                self.held += 1
                head += await c_reader.readexactly(8)
                await self._gate.wait()
                self.forwarded += 1
            s_reader, s_writer = await asyncio.open_connection(*self.target)
        except (OSError, asyncio.IncompleteReadError):
            c_writer.close()
            return
        s_writer.write(head)
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
        with contextlib.suppress(OSError, RuntimeError):
            if writer.can_write_eof():
                writer.write_eof()


@contextlib.asynccontextmanager
async def stall_relay(pg: LocalPostgres) -> AsyncIterator[CancelStallRelay]:
    relay = await CancelStallRelay(pg.host, pg.port).start()
    try:
        yield relay
    finally:
        await relay.close()


async def cancel_conn(
    proxy: ProxyThread, pid: int, secret: int, extra: bytes = b""
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(proxy.host, proxy.port)
    writer.write(m.cancel_request(pid, secret) + extra)
    await writer.drain()
    return reader, writer


async def answer_and_close_time(reader: asyncio.StreamReader, timeout: float) -> tuple[bytes, float]:
    """Everything the proxy sent on a cancel connection before closing it, and when it closed."""
    got = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := await asyncio.wait_for(reader.read(65536), timeout):
            got += chunk
    return got, time.monotonic()


def loop_lag_max(proxy: ProxyThread) -> float:
    def read() -> float:
        assert proxy.server is not None
        return float(proxy.server.loopwatch.max_s)

    return proxy.call(read)


def task_count(proxy: ProxyThread) -> int:
    def read() -> int:
        assert proxy.server is not None
        return len(proxy.server._tasks)

    return proxy.call(read)


def slow_proxy(start_proxy: StartProxy, relay: CancelStallRelay, **proxy_keys: object) -> ProxyThread:
    return start_proxy(
        databases=[{"name": "app", "host": "127.0.0.1", "port": relay.port}],
        proxy={"cancel_wait_timeout_s": 1.0, **proxy_keys},
        pool={"default_pool_size": 2, "server_connect_timeout_s": 30},
    )


# --- cancel requests ---------------------------------------------------------------------------


async def test_cancel_held_past_login_timeout_gets_no_error(
    pg: LocalPostgres, start_proxy: StartProxy
) -> None:
    """A cancel connection is no login: PostgreSQL never writes a byte on one, whatever
    client_login_timeout_s says. With the defaults (both 10 s) the login timeout used to win the
    race and answer a slow cancel with a 08P01 "did not complete login" error."""
    async with stall_relay(pg) as relay:
        proxy = slow_proxy(start_proxy, relay, client_login_timeout_s=1.0, cancel_wait_timeout_s=2.0)
        victim = await raw_login(proxy)
        victim.send(m.query("select pg_sleep(60)"))
        await wait_for(lambda: proxy.pool_stats()["active"] == 1, what="the victim's query runs")
        t0 = time.monotonic()
        reader, writer = await cancel_conn(proxy, victim.pid, victim.secret)
        got, closed_at = await answer_and_close_time(reader, 10)
        writer.close()
        assert got == b"", m.parse_error_fields(got[5:]) if got[:1] == b"E" else got
        # Held for cancel_wait_timeout_s (the server was never signalled), then closed.
        assert 1.8 <= closed_at - t0 < 5
        relay.release()
        assert (await victim.read_error(20))["C"] == "57014"
        await victim.read_until_ready(5)
        assert await victim.simple_query("select 'after'") == [["after"]]
        await victim.close()
