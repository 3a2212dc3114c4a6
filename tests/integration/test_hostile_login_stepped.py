"""A hostile client against the stepped login (session.stepped): bytes pipelined where the login
does not wait for them, clients leaving at every step, the login timeout at every kind of wait,
shutdown with logins mid-flight, cancel connections. Each outcome is checked against what the
proxy holds afterwards (its client count, its pools against pg_stat_activity) and against the
event loop's own complaints (an exception in a callback, a task destroyed while pending)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import struct
from collections.abc import Iterator

import asyncpg
import pytest

from pgpool_proxy.auth.md5 import md5_response
from pgpool_proxy.protocol import messages as m
from tests.support.pg import LocalPostgres
from tests.support.proxy import PASSWORDS, ProxyThread, StartProxy
from tests.support.rawpg import RawClient
from tests.support.waits import wait_for

INT = struct.Struct("!I")
SSL_REQUEST = INT.pack(8) + INT.pack(80877103)
GSSENC_REQUEST = INT.pack(8) + INT.pack(80877104)

# What the event loop says when a callback raised or a task was dropped pending, and what the
# proxy logs for a bug of its own.
LOOP_COMPLAINTS = (
    "Exception in callback",
    "Task was destroyed",
    "exception was never retrieved",
    "internal error",
    "Traceback",
)


@pytest.fixture
def complaints(caplog: pytest.LogCaptureFixture) -> Iterator[list[str]]:
    """The loop's and the proxy's complaints logged during the test (checked by the test, and
    once more at its end after a garbage collection, which is when a dropped task is noticed)."""
    caplog.set_level(logging.INFO)
    found: list[str] = []

    def collect() -> list[str]:
        found[:] = [
            f"{r.name}: {r.getMessage()}"
            for r in caplog.records
            if r.name == "asyncio" or any(c in r.getMessage() for c in LOOP_COMPLAINTS)
        ]
        return found

    yield found
    gc.collect()
    assert collect() == []


def loop_complaints(caplog: pytest.LogCaptureFixture) -> list[str]:
    gc.collect()
    return [
        f"{r.name}: {r.getMessage()}"
        for r in caplog.records
        if r.name == "asyncio" or any(c in r.getMessage() for c in LOOP_COMPLAINTS)
    ]


async def connect(proxy: ProxyThread | LocalPostgres) -> RawClient:
    return await RawClient.connect(proxy.host, proxy.port)


async def read_types(client: RawClient, until: bytes, count: int = 1) -> list[bytes]:
    """Message types up to and including the `count`th of type `until`."""
    seen: list[bytes] = []
    while count:
        t, _ = await client.read_message()
        seen.append(t)
        if t == until:
            count -= 1
    return seen


async def md5_challenge(client: RawClient, user: str) -> bytes:
    client.send(m.startup_message({"user": user, "database": "app"}))
    t, body = await client.read_message()
    assert t == b"R" and INT.unpack(body[:4])[0] == 5, (t, body)
    return body[4:8]


def password(user: str, salt: bytes) -> bytes:
    return m.password_message(md5_response(PASSWORDS[user], user, salt))


async def settled_pool(proxy: ProxyThread, user: str = "alice") -> dict[str, int]:
    """The pool once nothing is connecting or active: no server connection is held for a
    client that left."""
    return await wait_for(
        lambda: (
            s
            if (s := proxy.pool_stats("app", user))
            and s.get("active", 0) == 0
            and s.get("connecting", 0) == 0
            else None
        ),
        what=lambda: f"the pool to settle: {proxy.pool_stats('app', user)}",
    )


class FreezableRelay:
    """A TCP relay to PostgreSQL whose server-to-proxy direction can be frozen: the server
    then seems to stall (a first server connection that never finishes, a check never
    answered)."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.flowing = asyncio.Event()
        self.flowing.set()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    async def start(self) -> FreezableRelay:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.get_running_loop().create_task(self._pipe(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _pipe(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        try:
            s_reader, s_writer = await asyncio.open_connection(*self.target)
        except OSError:
            c_writer.close()
            return

        async def copy(r: asyncio.StreamReader, w: asyncio.StreamWriter, gated: bool) -> None:
            with contextlib.suppress(OSError, asyncio.IncompleteReadError):
                while data := await r.read(65536):
                    if gated:
                        await self.flowing.wait()
                    w.write(data)
                    await w.drain()
            w.close()

        try:
            await asyncio.gather(copy(c_reader, s_writer, False), copy(s_reader, c_writer, True))
        finally:
            c_writer.close()
            s_writer.close()

    async def close(self) -> None:
        self.flowing.set()
        if self._server is not None:
            self._server.close()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


# --- shutdown with a login mid-flight -----------------------------------------------------------


async def test_shutdown_while_the_login_waits_on_the_settings_check(
    pg: LocalPostgres, start_proxy: StartProxy, caplog: pytest.LogCaptureFixture
) -> None:
    """The settings check (canon._ask) runs as a Task of its own: a shutdown while it waits on a
    stalled server connection must not leave that task pending when the loop closes."""
    relay = await FreezableRelay((pg.host, pg.port)).start()
    try:
        proxy = start_proxy(
            auth={"type": "md5"},
            proxy={"client_login_timeout_s": 30},
            pool={"server_check_timeout_s": 30},
            databases=[{"name": "app", "host": "127.0.0.1", "port": relay.port}],
        )
        first = await asyncpg.connect(proxy.dsn())
        await first.close()
        await settled_pool(proxy)
        relay.flowing.clear()
        client = await connect(proxy)
        client.send(m.startup_message({"user": "alice", "database": "app", "work_mem": "7MB"}))
        client.send(password("alice", (await client.read_message())[1][4:8]))
        await wait_for(
            lambda: proxy.pool_stats()["active"] == 1, what="the settings check to be asked"
        )
        proxy.stop()
        assert proxy.loop is not None
        # ProxyServer.close ends what it started: nothing is left pending on a closed loop.
        assert asyncio.all_tasks(proxy.loop) == set()
        assert await client.closed(10)
        await client.close()
    finally:
        await relay.close()
    assert loop_complaints(caplog) == []
