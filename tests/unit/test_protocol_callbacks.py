"""Malformed server frames and bugs inside protocol callbacks (issue 17, finding 11).

A scripted server (a few lines of asyncio below; the point is bytes PostgreSQL never sends)
sits behind a real proxy. Whatever goes wrong inside `buffer_updated` must end as: a malformed
server frame closes that server connection (logged as a protocol error) and its client gets
08006; a bug in the proxy gives that client XX000; the event loop's "Fatal error on transport"
path is never taken, and other clients go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from collections.abc import AsyncIterator, Iterator

import pytest

from pgpool_proxy.config import build_config
from pgpool_proxy.pool.backend import BackendConnection, BackendProtocol
from pgpool_proxy.protocol import messages as m
from pgpool_proxy.session.client import ClientConnection, ClientProtocol
from tests.support.hostile_server import (
    AUTH_OK,
    KEY_DATA,
    LOGIN_PARAMS,
    READY,
    record_capacity_requests,
)
from tests.support.proxy import ProxyThread
from tests.support.rawpg import RawClient

_OK = (
    m.row_description([("a", m.OID_INT4)])
    + m.data_row(["1"])
    + m.command_complete("SELECT 1")
    + m.ready_for_query()
)
# Replies by query text: each is a frame PostgreSQL never sends, after a valid prefix.
HOSTILE = {
    # ReadyForQuery with no status byte, last in the read (reading the status ran off the end).
    "rfq_short_at_end": m.command_complete("SELECT 0") + b"Z\0\0\0\x04",
    # ... and followed by more bytes (the status read was the next frame's type byte).
    "rfq_short_mid": m.command_complete("SELECT 0") + b"Z\0\0\0\x04" + m.ready_for_query(),
    "rfq_long": m.command_complete("SELECT 0") + b"Z\0\0\0\x06II",
    "param_not_utf8": m.frame(b"S", b"TimeZone\0\xff\xfe\0") + m.ready_for_query(),
    "param_unterminated": m.frame(b"S", b"TimeZone") + m.ready_for_query(),
    "length_below_4": m.command_complete("SELECT 0") + b"C\0\0\0\x02",
}
# A ParameterStatus header claiming 1 GB, then silence (found by fuzz_backend_scanner).
HUGE_HEADER = {"huge_param": b"S\x3f\xff\xff\xffTimeZone\0"}
_WELCOME = AUTH_OK + LOGIN_PARAMS + KEY_DATA + READY  # a normal login's reply


async def _serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
        (length,) = struct.unpack("!I", await reader.readexactly(4))
        await reader.readexactly(length - 4)
        writer.write(_WELCOME)
        while True:
            t = await reader.readexactly(1)
            (length,) = struct.unpack("!I", await reader.readexactly(4))
            body = await reader.readexactly(length - 4)
            if t == b"X":
                break
            if t == b"Q":
                text = body.rstrip(b"\0").decode()
                writer.write(HOSTILE.get(text) or HUGE_HEADER.get(text) or _OK)
    writer.close()


@pytest.fixture
async def proxy() -> AsyncIterator[ProxyThread]:
    server = await asyncio.start_server(_serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    config = build_config(
        {
            "proxy": {"listen": "127.0.0.1:0", "client_login_timeout_s": 5},
            "pool": {"default_pool_size": 4, "query_wait_timeout_s": 10},
            "auth": {"type": "trust"},
            "databases": [{"name": "app", "host": "127.0.0.1", "port": port}],
            "users": [{"name": "u", "password": "pw"}],
        },
        env={},
    )
    p = ProxyThread(config).start()
    try:
        yield p
    finally:
        p.stop()
        server.close()
        await server.wait_closed()


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    caplog.set_level(logging.INFO)
    yield caplog
    fatal = [r.getMessage() for r in caplog.records if "Fatal error" in r.getMessage()]
    assert not fatal, fatal


async def _client(proxy: ProxyThread) -> RawClient:
    c = await RawClient.connect(proxy.host, proxy.port)
    await c.login("u", None, "app")
    return c


async def _error_then_close(c: RawClient, query: str) -> dict[str, str]:
    c.send(m.query(query))
    fields = await c.read_error()
    assert await c.closed()
    return fields


@pytest.mark.parametrize("reply", sorted(HOSTILE))
async def test_malformed_server_frame_fails_only_its_client(
    proxy: ProxyThread, logs: pytest.LogCaptureFixture, reply: str
) -> None:
    bystander = await _client(proxy)
    victim = await _client(proxy)
    fields = await _error_then_close(victim, reply)
    assert fields["C"] == "08006" and "invalid message" in fields["M"], fields
    assert any("reason=protocol_error" in r.getMessage() for r in logs.records)
    assert any("malformed frame" in r.getMessage() for r in logs.records)
    assert await bystander.simple_query("select 1") == [["1"]]
    assert await (await _client(proxy)).simple_query("select 1") == [["1"]]


async def test_bug_in_server_callback_gives_that_client_xx000(
    proxy: ProxyThread, logs: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    bystander = await _client(proxy)
    victim = await _client(proxy)
    pump = BackendConnection._pump
    broken = []

    def buggy(self: BackendConnection) -> None:
        if not broken:
            broken.append(self)
            raise KeyError("a bug")
        pump(self)

    # On the class the loop is given: in the compiled twin the base is an extension type.
    monkeypatch.setattr(BackendProtocol, "_pump", buggy)
    fields = await _error_then_close(victim, "select 1")
    assert fields["C"] == "XX000", fields
    assert any(
        r.exc_info and "internal error handling server data" in r.getMessage() for r in logs.records
    )
    assert await bystander.simple_query("select 1") == [["1"]]


async def test_bug_in_client_callback_gives_that_client_xx000(
    proxy: ProxyThread, logs: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    bystander = await _client(proxy)
    victim = await _client(proxy)
    pump = ClientConnection._pump
    broken = []

    def buggy(self: ClientConnection) -> None:
        if not broken:
            broken.append(self)
            raise struct.error("a bug")
        pump(self)

    monkeypatch.setattr(ClientProtocol, "_pump", buggy)
    fields = await _error_then_close(victim, "select 1")
    assert fields["C"] == "XX000", fields
    assert any(
        r.exc_info and "internal error handling client data" in r.getMessage() for r in logs.records
    )
    assert await bystander.simple_query("select 1") == [["1"]]
    assert proxy.pool_stats("app", "u")["total"] <= 4


async def test_a_frame_header_alone_does_not_allocate_what_it_claims(
    proxy: ProxyThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: the buffer grew at once to the 1 GB the header claimed. Now the header alone is
    enough to refuse the server connection, and no buffer is sized from it."""
    asked = record_capacity_requests(monkeypatch)
    bystander = await _client(proxy)
    victim = await _client(proxy)
    fields = await _error_then_close(victim, "huge_param")
    assert "parameter of 1073741824 bytes" in fields["M"], fields
    assert all(n <= 256 * 1024 for n in asked), max(asked)
    assert await bystander.simple_query("select 1") == [["1"]]


async def test_bug_during_login_gives_that_client_xx000(
    proxy: ProxyThread, logs: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pgpool_proxy.session import login as login_module

    bystander = await _client(proxy)
    real = login_module._login
    broken: list[object] = []

    async def buggy(client: ClientConnection) -> None:
        if not broken:
            broken.append(client)
            raise ZeroDivisionError("a bug")
        await real(client)

    monkeypatch.setattr(login_module, "_login", buggy)
    victim = await RawClient.connect(proxy.host, proxy.port)
    fields = await victim.read_error()
    assert fields["C"] == "XX000" and "during login" in fields["M"], fields
    assert await victim.closed()
    records = [r for r in logs.records if "internal error during login" in r.getMessage()]
    assert records and records[0].exc_info, [r.getMessage() for r in logs.records]
    assert any("reason=internal_error" in r.getMessage() for r in logs.records)
    assert await bystander.simple_query("select 1") == [["1"]]
    assert await (await _client(proxy)).simple_query("select 1") == [["1"]]
