"""A minimal PostgreSQL wire client for tests that must send exact (or hostile) bytes."""

from __future__ import annotations

import asyncio
import contextlib
import struct

from pgpool_proxy.auth.md5 import md5_response
from pgpool_proxy.auth.scram_client import ScramClient
from pgpool_proxy.protocol import messages as m

from .pg import LocalPostgres
from .proxy import PASSWORDS, ProxyThread


class RawError(Exception):
    def __init__(self, fields: dict[str, str]) -> None:
        super().__init__(f"{fields.get('C')}: {fields.get('M')}")
        self.fields = fields
        self.sqlstate = fields.get("C", "")


class RawClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.pid = 0
        self.secret = 0
        self.params: dict[str, str] = {}

    @classmethod
    async def connect(cls, host: str, port: int) -> RawClient:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer)

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def read_message(self, timeout: float = 10) -> tuple[bytes, bytes]:
        header = await asyncio.wait_for(self.reader.readexactly(5), timeout)
        t, length = header[:1], struct.unpack("!I", header[1:])[0]
        body = await asyncio.wait_for(self.reader.readexactly(length - 4), timeout)
        return t, body

    async def read_error(self, timeout: float = 10) -> dict[str, str]:
        """Read until an ErrorResponse and return its fields."""
        while True:
            t, body = await self.read_message(timeout)
            if t == b"E":
                return m.parse_error_fields(body)

    async def read_until_ready(self, timeout: float = 10) -> int:
        """Discard messages up to and including the next ReadyForQuery; return its status."""
        while True:
            t, body = await self.read_message(timeout)
            if t == b"Z":
                return body[0]

    async def closed(self, timeout: float = 10) -> bool:
        """True once the peer has closed (reads EOF), discarding anything before it."""
        try:
            while await asyncio.wait_for(self.reader.read(65536), timeout):
                pass
        except ConnectionResetError:
            pass
        return True

    async def login(self, user: str, password: str | None, database: str, **params: str) -> None:
        self.send(m.startup_message({"user": user, "database": database, **params}))
        scram: ScramClient | None = None
        while True:
            t, body = await self.read_message()
            if t == b"R":
                code = struct.unpack("!I", body[:4])[0]
                if code == 5:
                    assert password is not None
                    self.send(m.password_message(md5_response(password, user, body[4:8])))
                elif code == 10:
                    scram = ScramClient(password)
                    self.send(m.sasl_initial_response("SCRAM-SHA-256", scram.client_first()))
                elif code == 11:
                    assert scram is not None
                    self.send(m.sasl_response(scram.handle_server_first(body[4:])))
                elif code == 12:
                    assert scram is not None
                    scram.handle_server_final(body[4:])
            elif t == b"K":
                self.pid, self.secret = struct.unpack("!II", body)
            elif t == b"S":
                k, v = m.parse_parameter_status(body)
                self.params[k] = v
            elif t == b"E":
                raise RawError(m.parse_error_fields(body))
            elif t == b"Z":
                return

    async def simple_query(self, sql: str) -> list[list[str | None]]:
        """Run a simple query; return the rows of its last result; raise RawError on error."""
        self.send(m.query(sql))
        rows: list[list[str | None]] = []
        error: dict[str, str] | None = None
        while True:
            t, body = await self.read_message()
            if t == b"T":
                rows = []
            elif t == b"D":
                n = struct.unpack("!H", body[:2])[0]
                pos, row = 2, []
                for _ in range(n):
                    ln = struct.unpack("!i", body[pos : pos + 4])[0]
                    pos += 4
                    if ln < 0:
                        row.append(None)
                    else:
                        row.append(body[pos : pos + ln].decode())
                        pos += ln
                rows.append(row)
            elif t == b"E":
                error = m.parse_error_fields(body)
                if error.get("S") == "FATAL":
                    raise RawError(error)  # the server closes after FATAL: no Z follows
            elif t == b"Z":
                if error is not None:
                    raise RawError(error)
                return rows

    async def cancel(self, host: str, port: int, pid: int | None = None) -> None:
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(m.cancel_request(self.pid if pid is None else pid, self.secret))
        await writer.drain()
        await asyncio.wait_for(reader.read(), 10)
        writer.close()

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            self.send(m.TERMINATE)
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


async def raw_login(
    to: ProxyThread | LocalPostgres, user: str = "alice", **params: str
) -> RawClient:
    """A RawClient logged into database "app" as `user` (startup `params`), through the proxy
    or directly to the server (the test roles have the same passwords there)."""
    client = await RawClient.connect(to.host, to.port)
    await client.login(user, PASSWORDS[user], "app", **params)
    return client
