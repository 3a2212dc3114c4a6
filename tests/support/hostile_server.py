"""A small fake PostgreSQL server that misbehaves on purpose, for tests of the proxy's server side.

It speaks just enough of the protocol: it reads the startup packet, then hands the connection to
a scripted coroutine that sends whatever bytes the test wants (authentication requests, SCRAM
challenges with hostile parameters, floods, malformed frames). Helpers build the usual messages
and a normal login and query loop, so a script only spells out the part that is hostile.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import Awaitable, Callable

import pytest

from pgpool_proxy.protocol import messages as m
from pgpool_proxy.protocol.buffer import RecvBuffer

Script = Callable[["HostileConn"], Awaitable[None]]


def msg(t: bytes, body: bytes = b"") -> bytes:
    return t + struct.pack("!I", len(body) + 4) + body


def auth(code: int, payload: bytes = b"") -> bytes:
    return msg(b"R", struct.pack("!I", code) + payload)


def param_status(name: str, value: str) -> bytes:
    return msg(b"S", name.encode() + b"\0" + value.encode() + b"\0")


def error(**fields: str) -> bytes:
    """ErrorResponse with exactly the given one-letter fields (none implied: no C unless set)."""
    body = b"".join(k.encode() + v.encode() + b"\0" for k, v in fields.items()) + b"\0"
    return msg(b"E", body)


def notice(text: str) -> bytes:
    return msg(b"N", b"SNOTICE\0C00000\0M" + text.encode() + b"\0\0")


READY = msg(b"Z", b"I")
AUTH_OK = auth(0)
KEY_DATA = msg(b"K", struct.pack("!II", 4242, 1234))
LOGIN_PARAMS = b"".join(
    param_status(k, v)
    for k, v in {
        "server_version": "15.0",
        "server_encoding": "UTF8",
        "client_encoding": "UTF8",
        "DateStyle": "ISO, MDY",
        "integer_datetimes": "on",
        "standard_conforming_strings": "on",
        "TimeZone": "UTC",
        "IntervalStyle": "postgres",
        "is_superuser": "off",
        "application_name": "",
    }.items()
)


def one_row(value: str) -> bytes:
    """The reply to a simple query returning one text column and row, with ReadyForQuery."""
    desc = msg(b"T", struct.pack("!H", 1) + b"v\0" + struct.pack("!IhIhih", 0, 0, 25, -1, -1, 0))
    data = value.encode()
    row = msg(b"D", struct.pack("!H", 1) + struct.pack("!i", len(data)) + data)
    return desc + row + msg(b"C", b"SELECT 1\0") + READY


class HostileConn:
    """One accepted connection: raw reads and writes plus protocol helpers for scripts."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.startup: dict[str, str] = {}

    async def read_startup(self) -> None:
        (length,) = struct.unpack("!I", await self.reader.readexactly(4))
        body = await self.reader.readexactly(length - 4)
        parts = body[4:].split(b"\0")
        self.startup = {
            parts[i].decode(): parts[i + 1].decode()
            for i in range(0, len(parts) - 1, 2)
            if parts[i]
        }

    async def read_message(self) -> tuple[bytes, bytes]:
        head = await self.reader.readexactly(5)
        (length,) = struct.unpack("!I", head[1:])
        return head[:1], await self.reader.readexactly(length - 4)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def scram_challenge(self, server_first: Callable[[str], bytes]) -> bytes:
        """Offer SCRAM-SHA-256, read the client-first-message, answer with
        server_first(client_nonce), and return what the client answers (its final message, or
        b"" if it hung up)."""
        await self.send(auth(10, b"SCRAM-SHA-256\0\0"))
        t, body = await self.read_message()
        assert t == b"p", t
        _mech, first = m.parse_sasl_initial_response(body)
        bare = first.decode().split(",", 2)[2]
        client_nonce = dict(a.split("=", 1) for a in bare.split(","))["r"]
        await self.send(auth(11, server_first(client_nonce)))
        try:
            t, body = await self.read_message()
        except (asyncio.IncompleteReadError, ConnectionError):
            return b""
        return body

    async def normal_login(self) -> None:
        await self.send(AUTH_OK + LOGIN_PARAMS + KEY_DATA + READY)

    async def serve_queries(self, answer: Callable[[str], bytes] | None = None) -> None:
        """Answer each simple query with answer(sql) (one row "ok" by default) until Terminate."""
        while True:
            try:
                t, body = await self.read_message()
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            if t == b"X":
                return
            if t == b"Q":
                sql = body[:-1].decode()
                await self.send(answer(sql) if answer else one_row("ok"))


class HostileServer:
    """Listens on an ephemeral port and runs `script` for every connection it accepts."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.port = 0
        self.accepted = 0
        self.finished = 0
        self.errors: list[BaseException] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> HostileServer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        conn = HostileConn(reader, writer)
        try:
            await conn.read_startup()
            await self.script(conn)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the proxy hung up on us: usually the point of the test
        except BaseException as exc:  # a broken script must fail the test, not vanish
            self.errors.append(exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
        finally:
            self.finished += 1
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            if task is not None:
                self._tasks.discard(task)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        if self._server is not None:
            await self._server.wait_closed()


def record_capacity_requests(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every size a receive buffer is asked to make room for from now on (to show that a
    header's claim alone sizes no buffer).

    The connections made from now on get a recording subclass: the compiled RecvBuffer is an
    extension type, whose methods cannot be patched on the class."""
    from pgpool_proxy.pool import backend
    from pgpool_proxy.session import client

    asked: list[int] = []

    class Recording(RecvBuffer):
        def ensure_capacity(self, nbytes: int) -> None:
            asked.append(nbytes)
            super().ensure_capacity(nbytes)

    for module in (backend, client):
        monkeypatch.setattr(module, "RecvBuffer", Recording)
    return asked
