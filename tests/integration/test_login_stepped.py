"""Logins run without a Task (session.stepped): what a client sees is unchanged, and the proxy
holds no task per client mid-login, however many there are."""

from __future__ import annotations

import asyncio
import contextlib
import socket

import asyncpg
import pytest

from pgpool_proxy.protocol import messages as m
from tests.support.pg import LocalPostgres
from tests.support.proxy import PASSWORDS, StartProxy
from tests.support.rawpg import RawClient, RawError
from tests.support.robustness import proxy_client_count


def _task_count(proxy_loop: asyncio.AbstractEventLoop) -> int:
    return len(asyncio.all_tasks(proxy_loop))


async def test_clients_mid_login_hold_no_task(start_proxy: StartProxy) -> None:
    proxy = start_proxy(auth={"type": "md5"})
    assert proxy.loop is not None
    loop = proxy.loop
    # A first login makes the pool's first server connection (and what it starts) beforehand.
    first = await asyncpg.connect(proxy.dsn())
    await first.close()
    before = proxy.call(lambda: _task_count(loop))
    waiting: list[RawClient] = []
    challenged: list[RawClient] = []
    try:
        for _ in range(40):  # connected, nothing sent
            waiting.append(await RawClient.connect(proxy.host, proxy.port))
        for _ in range(40):  # startup sent, md5 challenge received, no answer yet
            c = await RawClient.connect(proxy.host, proxy.port)
            c.send(m.startup_message({"user": "alice", "database": "app"}))
            t, _body = await c.read_message()
            assert t == b"R"
            challenged.append(c)
        assert await proxy_client_count(proxy, 80) == 80
        assert proxy.call(lambda: _task_count(loop)) <= before + 2
        # Each of them can still finish, or be refused, as before.
        finished = await asyncpg.connect(proxy.dsn())
        assert await finished.fetchval("select 41 + 1") == 42
        await finished.close()
        c = challenged.pop()
        c.send(m.password_message("md5" + "0" * 32))
        err = await c.read_error()
        assert err["C"] == "28P01"
    finally:
        for c in waiting + challenged:
            await c.close()
    assert await proxy_client_count(proxy, 0) == 0


async def test_login_timeout_while_waiting_on_the_first_server_connection(
    pg: LocalPostgres, start_proxy: StartProxy
) -> None:
    """The login waits on a future (the pool's first server connection, to a server that
    accepts and never answers): the login timeout still ends it with 08P01, and the client
    on the other database is served meanwhile."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    port = silent.getsockname()[1]
    proxy = start_proxy(
        proxy={"client_login_timeout_s": 1},
        pool={"server_connect_timeout_s": 30},
        databases=[
            {"name": "app", "host": pg.host, "port": pg.port},
            {"name": "silent", "host": "127.0.0.1", "port": port},
        ],
    )
    try:
        client = await RawClient.connect(proxy.host, proxy.port)
        login = asyncio.ensure_future(client.login("alice", PASSWORDS["alice"], "silent"))
        other = await asyncpg.connect(proxy.dsn())
        assert await other.fetchval("select 'served'") == "served"
        await other.close()
        try:
            await asyncio.wait_for(login, 10)
        except RawError as exc:
            assert exc.sqlstate == "08P01", exc.fields
            assert "client_login_timeout_s" in exc.fields["M"]
            # The client did its part: the wait that ran out was the server's.
            assert "waiting for a server connection of pool silent" in exc.fields["M"], exc.fields
            assert not exc.fields["M"].startswith("client did not"), exc.fields
        else:
            raise AssertionError("the login to a silent server completed")
        assert await client.closed(5)
        await client.close()
    finally:
        with contextlib.suppress(OSError):
            silent.close()
    assert await proxy_client_count(proxy, 0) == 0


SSL_REQUEST = (8).to_bytes(4, "big") + (80877103).to_bytes(4, "big")
GSS_REQUEST = (8).to_bytes(4, "big") + (80877104).to_bytes(4, "big")


async def _negotiate(host: str, port: int, requests: list[bytes]) -> list[object]:
    """Send each request in turn: the one-byte answers, then the ErrorResponse's SQLSTATE and
    message if one ends it (and whether the connection then closed)."""
    client = await RawClient.connect(host, port)
    seen: list[object] = []
    try:
        for request in requests:
            client.send(request)
            answer = await asyncio.wait_for(client.reader.readexactly(1), 5)
            if answer != b"E":
                seen.append(answer)
                continue
            rest = await asyncio.wait_for(client.reader.readexactly(4), 5)
            body = await client.reader.readexactly(int.from_bytes(rest, "big") - 4)
            fields = m.parse_error_fields(body)
            seen += [fields["S"], fields["C"], fields["M"], await client.closed(5)]
            break
    finally:
        await client.close()
    return seen


@pytest.mark.parametrize(
    "requests",
    [
        pytest.param([SSL_REQUEST, SSL_REQUEST], id="ssl_twice"),
    ],
)
async def test_an_ssl_request_is_answered_once_as_postgresql_does(
    pg: LocalPostgres, start_proxy: StartProxy, requests: list[bytes]
) -> None:
    """Differential: the test server has TLS off, as the proxy's client TLS is by default, so
    both answer N to the first SSLRequest; a second one is refused as the unknown protocol
    version its code is, with the same FATAL. (Sequences with a GSSENCRequest are left out:
    PostgreSQL 15 answers some of them with nothing, until its timeout.)"""
    proxy = start_proxy()
    direct = await _negotiate(pg.host, pg.port, requests)
    through = await _negotiate(proxy.host, proxy.port, requests)
    assert through == direct
    assert direct[-4:] == ["FATAL", "0A000", direct[-2], True]


def _refused(code: int) -> list[object]:
    version = f"{code >> 16}.{code & 0xFFFF}"
    message = f"unsupported frontend protocol {version}: server supports 3.0 to 3.0"
    return ["FATAL", "0A000", message, True]


@pytest.mark.parametrize(
    ("requests", "expected"),
    [
        pytest.param([GSS_REQUEST, GSS_REQUEST], [b"N", *_refused(80877104)], id="gss_twice"),
        pytest.param(
            [GSS_REQUEST, SSL_REQUEST, SSL_REQUEST],
            [b"N", b"N", *_refused(80877103)],
            id="gss_ssl_ssl",
        ),
        pytest.param(
            [SSL_REQUEST, GSS_REQUEST, GSS_REQUEST],
            [b"N", b"N", *_refused(80877104)],
            id="ssl_gss_gss",
        ),
        pytest.param(
            [SSL_REQUEST, GSS_REQUEST, SSL_REQUEST],
            [b"N", b"N", *_refused(80877103)],
            id="ssl_gss_ssl",
        ),
    ],
)
async def test_each_encryption_request_is_answered_once(
    start_proxy: StartProxy, requests: list[bytes], expected: list[object]
) -> None:
    """PostgreSQL's rule (ProcessStartupPacket): an SSLRequest and a GSSENCRequest are each
    answered at most once, in either order, and any further one is refused as the unknown
    protocol version its code is. Not compared with the test server here: it is built with
    GSSAPI and answers a GSSENCRequest with G, where the proxy, which offers no GSS encryption,
    answers N."""
    proxy = start_proxy()
    assert await _negotiate(proxy.host, proxy.port, requests) == expected
