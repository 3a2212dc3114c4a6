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
import signal
import socket
import ssl
import struct
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import asyncpg
import pytest

from pgpool_proxy.auth.md5 import md5_response
from pgpool_proxy.auth.scram_client import ScramClient
from pgpool_proxy.errors import DisconnectReason
from pgpool_proxy.protocol import messages as m
from pgpool_proxy.runtime.workers import MIN_CLIENT_PID, WORKER_SHIFT
from tests.support.pg import LocalPostgres
from tests.support.proxy import PASSWORDS, ProxyThread, StartProxy
from tests.support.proxyproc import ProxyProcess, start_workers, write_config
from tests.support.rawpg import RawClient
from tests.support.robustness import backends, one_value, proxy_client_count, raw_cancel
from tests.support.tlsfiles import TlsDir
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
def complaints(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Fails the test if the loop or the proxy complained in its log during it (checked at its
    end, after a garbage collection, which is when a dropped task is noticed)."""
    caplog.set_level(logging.INFO)
    yield
    gc.collect()
    records = [r for when in ("setup", "call", "teardown") for r in caplog.get_records(when)]
    assert [
        f"{r.name}: {r.getMessage()}"
        for r in records
        if r.name == "asyncio" or any(c in r.getMessage() for c in LOOP_COMPLAINTS)
    ] == []


def loop_complaints(caplog: pytest.LogCaptureFixture) -> list[str]:
    gc.collect()
    return [
        f"{r.name}: {r.getMessage()}"
        for r in caplog.records
        if r.name == "asyncio" or any(c in r.getMessage() for c in LOOP_COMPLAINTS)
    ]


class HostPort(NamedTuple):
    """Where a proxy process listens (what `connect` needs of a ProxyThread)."""

    host: str
    port: int


async def connect(proxy: ProxyThread | LocalPostgres | HostPort) -> RawClient:
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


# --- bytes pipelined where the login does not wait for them --------------------------------------

BIG = 2 << 20


def pipelined_after_login() -> bytes:
    """Two queries, one far larger than a receive buffer. (No Terminate behind them: the proxy
    closes a client at its Terminate without the answers to what it pipelined before, as
    PgBouncer does; PostgreSQL answers first.)"""
    return m.query("select 41 + 1") + m.query("select length('" + "x" * BIG + "')")


async def answers_after_login(client: RawClient, readies: int = 99) -> list[tuple[bytes, bytes]]:
    """The messages up to the `readies`th ReadyForQuery or the peer's close, ParameterStatus
    and BackendKeyData left out (their number and values differ between the proxy and
    PostgreSQL), an error by its SQLSTATE alone."""
    got: list[tuple[bytes, bytes]] = []
    with contextlib.suppress(asyncio.IncompleteReadError, ConnectionResetError):
        while readies:
            t, body = await client.read_message()
            if t == b"E":
                body = m.parse_error_fields(body)["C"].encode()
            if t not in (b"S", b"K"):
                got.append((t, body))
            if t == b"Z":
                readies -= 1
    return got


async def test_queries_pipelined_after_the_password_while_the_first_server_connection_is_made(
    pg: LocalPostgres, start_proxy: StartProxy, complaints: None
) -> None:
    """The password and what follows it arrive in one go while the login waits on the pool's
    first server connection (frozen): reading stops at a full buffer, resumes after the
    welcome, and the queries are answered as PostgreSQL answers them."""
    direct = await connect(pg)
    direct.send(password("bob", await md5_challenge(direct, "bob")) + pipelined_after_login())
    want = await answers_after_login(direct, 3)
    await direct.close()
    assert [t for t, _ in want] == [b"R", b"Z", b"T", b"D", b"C", b"Z", b"T", b"D", b"C", b"Z"]

    relay = await FreezableRelay((pg.host, pg.port)).start()
    try:
        proxy = start_proxy(
            auth={"type": "md5"},
            databases=[{"name": "app", "host": "127.0.0.1", "port": relay.port}],
        )
        client = await connect(proxy)
        salt = await md5_challenge(client, "bob")
        relay.flowing.clear()
        client.send(password("bob", salt) + pipelined_after_login())

        def paused() -> bool:
            assert proxy.server is not None
            return any(c.reading_paused for c in proxy.server.all_clients())

        await wait_for(lambda: proxy.call(paused), what="the login to stop reading")
        relay.flowing.set()
        assert await answers_after_login(client, 3) == want
        await client.close()
        assert await proxy_client_count(proxy, 0) == 0
        await settled_pool(proxy, "bob")
    finally:
        await relay.close()


@pytest.mark.parametrize("mode", ["transaction", "session"])
async def test_startup_and_queries_in_one_write(
    pg: LocalPostgres, start_proxy: StartProxy, complaints: None, mode: str
) -> None:
    """Under trust, the startup packet and the queries behind it in one write: the login
    completes inside the read that brought them (buffer_updated), then the queries run."""
    payload = m.startup_message({"user": "carol", "database": "app"}) + pipelined_after_login()
    direct = await connect(pg)
    direct.send(payload)
    want = await answers_after_login(direct, 3)
    await direct.close()
    proxy = start_proxy(auth={"type": "trust"}, proxy={"pool_mode": mode})
    for _ in range(2):  # the pool's first server connection, then an idle one
        client = await connect(proxy)
        client.send(payload)
        assert await answers_after_login(client, 3) == want
        await client.close()
    assert await proxy_client_count(proxy, 0) == 0
    await settled_pool(proxy, "carol")


# PostgreSQL closes silently on an invalid length (COMMERROR: logged, not sent); the proxy
# says why first, as it does for the same bytes after any ReadyForQuery: 54000 for a length
# above max_message_size_bytes, 08P01 for one that cannot be.
TOO_LONG = [(b"E", b"54000")]
SAID_WHY = [(b"E", b"08P01")]


@pytest.mark.parametrize(
    ("after", "extra"),
    [
        pytest.param(b"Q" + INT.pack(0x7FFFFFFF), TOO_LONG, id="huge_length"),
        pytest.param(b"Q" + INT.pack(2) + b"xx", SAID_WHY, id="length_below_4"),
        pytest.param(m.TERMINATE, [], id="terminate"),
        pytest.param(m.TERMINATE + m.query("select 1"), [], id="terminate_then_query"),
    ],
)
async def test_hostile_bytes_pipelined_after_the_password(
    pg: LocalPostgres,
    start_proxy: StartProxy,
    complaints: None,
    after: bytes,
    extra: list[tuple[bytes, bytes]],
) -> None:
    """What follows the password is judged after the welcome, as PostgreSQL judges it after
    ReadyForQuery; the login ends cleanly whatever it is."""
    direct = await connect(pg)
    direct.send(password("bob", await md5_challenge(direct, "bob")) + after)
    want = await answers_after_login(direct)
    await direct.close()
    proxy = start_proxy(auth={"type": "md5"})
    for _ in range(2):
        client = await connect(proxy)
        client.send(password("bob", await md5_challenge(client, "bob")) + after)
        assert await answers_after_login(client) == want + extra
        await client.close()
    assert await proxy_client_count(proxy, 0) == 0
    stats = await settled_pool(proxy, "bob")
    assert stats["clients"] == 0


# --- clients leaving at every step ------------------------------------------------------------


async def scram_first(client: RawClient, user: str = "alice") -> bytes:
    """Startup and SASLInitialResponse; SASLContinue read: the client's final message."""
    client.send(m.startup_message({"user": user, "database": "app"}))
    t, body = await client.read_message()
    assert t == b"R" and INT.unpack(body[:4])[0] == 10, (t, body)
    scram = ScramClient(PASSWORDS[user])
    client.send(m.sasl_initial_response("SCRAM-SHA-256", scram.client_first()))
    t, body = await client.read_message()
    assert t == b"R" and INT.unpack(body[:4])[0] == 11, (t, body)
    return scram.handle_server_first(body[4:])


async def leave_silent(proxy: ProxyThread, relay: FreezableRelay) -> None:
    client = await connect(proxy)
    await client.close()


async def leave_mid_startup(proxy: ProxyThread, relay: FreezableRelay) -> None:
    client = await connect(proxy)
    client.send(m.startup_message({"user": "alice", "database": "app"})[:7])
    await client.close()


async def leave_after_ssl_declined(proxy: ProxyThread, relay: FreezableRelay) -> None:
    client = await connect(proxy)
    client.send(SSL_REQUEST)
    assert await asyncio.wait_for(client.reader.readexactly(1), 5) == b"N"
    await client.close()


async def leave_at_sasl_request(proxy: ProxyThread, relay: FreezableRelay) -> None:
    client = await connect(proxy)
    client.send(m.startup_message({"user": "alice", "database": "app"}))
    await client.read_message()
    await client.close()


async def leave_mid_scram(proxy: ProxyThread, relay: FreezableRelay) -> None:
    client = await connect(proxy)
    await scram_first(client)
    await client.close()


async def leave_with_half_a_scram_final(proxy: ProxyThread, relay: FreezableRelay) -> None:
    client = await connect(proxy)
    final = await scram_first(client)
    client.send(m.sasl_response(final)[:9])
    await client.close()


async def leave_while_the_first_server_connection_is_made(
    proxy: ProxyThread, relay: FreezableRelay
) -> None:
    """Authenticated; the pool's first server connection stalls (frozen), the client leaves."""
    relay.flowing.clear()
    client = await connect(proxy)
    final = await scram_first(client)
    client.send(m.sasl_response(final))
    t, _ = await client.read_message()
    assert t == b"R"  # SASLFinal: authenticated, now waiting on the pool
    await wait_for(lambda: proxy.pool_stats()["connecting"] == 1, what="a server connection")
    await client.close()
    assert await proxy_client_count(proxy, 0) == 0
    relay.flowing.set()


LEAVERS = [
    leave_silent,
    leave_mid_startup,
    leave_after_ssl_declined,
    leave_at_sasl_request,
    leave_mid_scram,
    leave_with_half_a_scram_final,
    leave_while_the_first_server_connection_is_made,
]


async def test_clients_leaving_at_every_step_leave_nothing_behind(
    pg: LocalPostgres, start_proxy: StartProxy, complaints: None
) -> None:
    relay = await FreezableRelay((pg.host, pg.port)).start()
    direct = await asyncpg.connect(pg.dsn(dbname="app"))
    try:
        proxy = start_proxy(
            proxy={"client_login_timeout_s": 30},
            databases=[{"name": "app", "host": "127.0.0.1", "port": relay.port}],
        )
        for leave in LEAVERS:
            await leave(proxy, relay)
            assert await proxy_client_count(proxy, 0) == 0, leave.__name__
        for leave in LEAVERS[:-1]:  # many at once
            await asyncio.gather(*(leave(proxy, relay) for _ in range(20)))
        assert await proxy_client_count(proxy, 0) == 0
        # The server connection made for the client that left is pooled, not leaked.
        stats = await settled_pool(proxy)
        assert stats["clients"] == 0 and stats["waiting"] == 0

        async def pooled_is_what_the_server_has() -> bool:
            return proxy.pool_stats("app", "alice")["total"] == await backends(direct, "alice")

        # PostgreSQL lists a server process until it has exited (one the proxy closed, or one
        # of an earlier test's): compared once it has.
        await wait_for(pooled_is_what_the_server_has, what="the pool's total on the server")
        ok = await asyncpg.connect(proxy.dsn())
        assert await ok.fetchval("select 'still serving'") == "still serving"
        await ok.close()
    finally:
        await direct.close()
        await relay.close()


# --- the login timeout at every kind of wait ------------------------------------------------------

TIMEOUT_S = 1


async def scram_to_final(client: RawClient, user: str, **params: str) -> None:
    """A whole SCRAM exchange, up to the server's SASLFinal (authenticated)."""
    client.send(m.startup_message({"user": user, "database": "app", **params}))
    t, body = await client.read_message()
    assert t == b"R" and INT.unpack(body[:4])[0] == 10, (t, body)
    scram = ScramClient(PASSWORDS[user])
    client.send(m.sasl_initial_response("SCRAM-SHA-256", scram.client_first()))
    t, body = await client.read_message()
    client.send(m.sasl_response(scram.handle_server_first(body[4:])))
    t, body = await client.read_message()
    assert t == b"R" and INT.unpack(body[:4])[0] == 12, (t, body)


async def stall_mid_startup(proxy: ProxyThread, held: list[RawClient]) -> RawClient:
    client = await connect(proxy)
    client.send(m.startup_message({"user": "alice", "database": "app"})[:7])
    return client


async def stall_mid_scram(proxy: ProxyThread, held: list[RawClient]) -> RawClient:
    client = await connect(proxy)
    await scram_first(client)
    return client


async def stall_after_ssl_declined(proxy: ProxyThread, held: list[RawClient]) -> RawClient:
    client = await connect(proxy)
    client.send(SSL_REQUEST)
    assert await asyncio.wait_for(client.reader.readexactly(1), 5) == b"N"
    return client


async def stall_on_an_auth_query_look_up(proxy: ProxyThread, held: list[RawClient]) -> RawClient:
    proxy.relay.flowing.clear()  # type: ignore[attr-defined]  # the look-up's query stalls
    client = await connect(proxy)
    client.send(m.startup_message({"user": "nobody_here", "database": "app"}))
    await wait_for(
        lambda: proxy.call(lambda: bool(proxy.server and proxy.server.auth_lookups.pending())),
        what="the look-up to be under way",
    )
    return client


async def stall_on_the_settings_check(proxy: ProxyThread, held: list[RawClient]) -> RawClient:
    # A first login leaves an idle server connection for the check to be asked on; then the
    # server stalls (frozen relay).
    first = await asyncpg.connect(proxy.dsn())
    await first.close()
    await settled_pool(proxy)
    relay = proxy.relay  # type: ignore[attr-defined]
    relay.flowing.clear()
    client = await connect(proxy)
    await scram_to_final(client, "alice", work_mem="3MB")
    await wait_for(lambda: proxy.pool_stats()["active"] == 1, what="the settings check")
    return client


async def stall_on_a_paused_pool(proxy: ProxyThread, held: list[RawClient]) -> RawClient:
    console = await connect(proxy)
    await console.login("alice", PASSWORDS["alice"], "pgbouncer")
    await console.simple_query("PAUSE")
    held.append(console)
    client = await connect(proxy)
    await scram_to_final(client, "bob")
    return client


STALLS = [
    stall_mid_startup,
    stall_mid_scram,
    stall_after_ssl_declined,
    stall_on_an_auth_query_look_up,
    stall_on_the_settings_check,
    stall_on_a_paused_pool,
]


@pytest.mark.parametrize("stall", STALLS, ids=[f.__name__ for f in STALLS])
async def test_the_login_timeout_at_every_kind_of_wait(
    pg: LocalPostgres, start_proxy: StartProxy, complaints: None, stall: object
) -> None:
    relay = await FreezableRelay((pg.host, pg.port)).start()
    held: list[RawClient] = []
    try:
        proxy = start_proxy(
            proxy={"client_login_timeout_s": TIMEOUT_S},
            pool={"server_check_timeout_s": 30, "query_wait_timeout_s": 30},
            auth={
                "type": "scram-sha-256",
                "auth_user": "alice",
                "auth_query": "SELECT usename, passwd FROM pg_catalog.pg_user WHERE usename=$1",
                "auth_query_timeout_s": 10,
            },
            admin={"admin_users": ["alice"]},
            databases=[{"name": "app", "host": "127.0.0.1", "port": relay.port}],
        )
        proxy.relay = relay  # type: ignore[attr-defined]
        loop = asyncio.get_running_loop()
        client = await stall(proxy, held)  # type: ignore[operator]
        began = loop.time()
        err = await client.read_error(TIMEOUT_S + 5)
        assert err["C"] == "08P01" and "client_login_timeout_s" in err["M"], err
        assert await client.closed(5)
        assert loop.time() - began < TIMEOUT_S + 2
        await client.close()
        for c in held:
            await c.simple_query("RESUME")
            await c.close()
        relay.flowing.set()
        assert await proxy_client_count(proxy, 0) == 0
        ok = await asyncpg.connect(proxy.dsn())
        assert await ok.fetchval("select 'still serving'") == "still serving"
        await ok.close()
        await settled_pool(proxy)
    finally:
        await relay.close()


# --- TLS negotiation ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_cert() -> Iterator[tuple[str, str, str]]:
    """(cert file, key file, CA file) for 127.0.0.1."""
    tls_dir = TlsDir()
    try:
        cert = tls_dir.issue("proxy", ["127.0.0.1"])
        yield str(cert.cert_file), str(cert.key_file), str(cert.ca_file)
    finally:
        tls_dir.remove()


def tls_proxy(
    start_proxy: StartProxy, cert: tuple[str, str, str], **sections: object
) -> ProxyThread:
    return start_proxy(
        client_tls={"mode": "allow", "cert_file": cert[0], "key_file": cert[1]}, **sections
    )


async def ssl_accepted(proxy: ProxyThread, first: bytes = b"") -> RawClient:
    """A client whose SSLRequest was accepted ('S'), the TLS handshake not begun."""
    client = await connect(proxy)
    if first:
        client.send(first)
        assert await asyncio.wait_for(client.reader.readexactly(1), 5) == b"N"
    client.send(SSL_REQUEST)
    assert await asyncio.wait_for(client.reader.readexactly(1), 5) == b"S"
    return client


async def test_tls_handshake_stalled_past_the_login_timeout(
    start_proxy: StartProxy, tls_cert: tuple[str, str, str], complaints: None
) -> None:
    """Mid-handshake the client expects a TLS record: the timeout closes the connection without
    a word, as PostgreSQL's does (a plaintext ErrorResponse there reads as a broken record)."""
    proxy = tls_proxy(start_proxy, tls_cert, proxy={"client_login_timeout_s": TIMEOUT_S})
    loop = asyncio.get_running_loop()
    # Nothing sent, and the first bytes of a ClientHello whose length promises more.
    for partial in (b"", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"):
        client = await ssl_accepted(proxy)
        client.send(partial)
        began = loop.time()
        assert await asyncio.wait_for(client.reader.read(), TIMEOUT_S + 5) == b""
        assert loop.time() - began < TIMEOUT_S + 2
        await client.close()
    assert await proxy_client_count(proxy, 0) == 0
    assert (
        proxy.call(lambda: proxy.server.counters.client_disconnects[DisconnectReason.LOGIN_TIMEOUT])
        == 2
    )


async def tls_up(client: RawClient, ca_file: str) -> None:
    ctx = ssl.create_default_context(cafile=ca_file)
    await client.writer.start_tls(ctx, server_hostname="127.0.0.1")


async def test_tls_negotiation_sequences_and_departures(
    start_proxy: StartProxy, tls_cert: tuple[str, str, str], complaints: None
) -> None:
    proxy = tls_proxy(start_proxy, tls_cert, auth={"type": "md5"})
    # GSSENCRequest declined, then SSLRequest accepted (as libpq's gssencmode=prefer does),
    # then the password and a query in one TLS record.
    client = await ssl_accepted(proxy, first=GSSENC_REQUEST)
    await tls_up(client, tls_cert[2])
    salt = await md5_challenge(client, "bob")
    client.send(password("bob", salt) + m.query("select 'over tls'"))
    got = await answers_after_login(client, 2)
    assert (b"D", b"\x00\x01\x00\x00\x00\x08over tls") in got, got
    # An SSLRequest inside TLS is refused, as PostgreSQL refuses it (test_tls.py compares).
    client2 = await ssl_accepted(proxy)
    await tls_up(client2, tls_cert[2])
    client2.send(SSL_REQUEST)
    err = await client2.read_error()
    assert err["C"] == "0A000", err
    # Departures: right after 'S', mid-handshake, right after the handshake.
    gone = await ssl_accepted(proxy)
    await gone.close()
    gone = await ssl_accepted(proxy)
    gone.send(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
    await gone.close()
    gone = await ssl_accepted(proxy)
    await tls_up(gone, tls_cert[2])
    await gone.close()
    for c in (client, client2):
        await c.close()
    assert await proxy_client_count(proxy, 0) == 0
    await settled_pool(proxy, "bob")


async def test_shutdown_with_logins_at_every_step(
    pg: LocalPostgres,
    start_proxy: StartProxy,
    tls_cert: tuple[str, str, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """server.close with a login at each kind of wait (bytes, a TLS handshake, SCRAM, the
    settings check, the pool's first server connection): every client is closed, nothing is
    left pending on the loop, the loop logs no complaint."""
    caplog.set_level(logging.INFO)
    relay = await FreezableRelay((pg.host, pg.port)).start()
    clients: list[RawClient] = []
    try:
        proxy = tls_proxy(
            start_proxy,
            tls_cert,
            proxy={"client_login_timeout_s": 30},
            pool={"server_check_timeout_s": 30},
            databases=[{"name": "app", "host": "127.0.0.1", "port": relay.port}],
        )
        first = await asyncpg.connect(proxy.dsn())
        await first.close()
        await settled_pool(proxy)
        relay.flowing.clear()
        clients.append(await connect(proxy))  # nothing sent
        clients.append(await stall_mid_startup(proxy, []))
        clients.append(await ssl_accepted(proxy))  # handshake not begun
        half = await ssl_accepted(proxy)
        half.send(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
        clients.append(half)
        clients.append(await stall_mid_scram(proxy, []))
        checking = await connect(proxy)
        await scram_to_final(checking, "alice", work_mem="5MB")  # the check on a frozen server
        clients.append(checking)
        connecting = await connect(proxy)
        await scram_to_final(connecting, "bob")  # bob's first server connection, frozen
        clients.append(connecting)
        await wait_for(
            lambda: proxy.pool_stats("app", "bob").get("connecting") == 1,
            what="bob's first server connection",
        )
        assert await proxy_client_count(proxy, len(clients)) == len(clients)
        proxy.stop()
        assert proxy.loop is not None
        assert asyncio.all_tasks(proxy.loop) == set()
        for c in clients:
            assert await c.closed(5)
            await c.close()
    finally:
        await relay.close()
    assert loop_complaints(caplog) == []


# --- cancel connections ---------------------------------------------------------------------------


async def sleeping(admin: asyncpg.Connection, tag: str, n: int = 1) -> None:
    """Until `n` queries tagged `tag` run on the server (a cancel before that is lost, with
    PostgreSQL itself too)."""

    async def running() -> bool:
        found = await admin.fetchval(
            "select count(*) from pg_stat_activity where state = 'active' "
            "and query like $1 and pid <> pg_backend_pid()",
            f"%{tag} */",
        )
        return bool(found == n)

    await wait_for(running, what=f"{n} queries {tag} running on the server")


async def test_cancel_connections_hostile_and_plain(
    start_proxy: StartProxy,
    tls_cert: tuple[str, str, str],
    admin: asyncpg.Connection,
    complaints: None,
) -> None:
    """A valid key cancels and its connection closes once signalled; an unknown key, trailing
    bytes, a sender that leaves first and a cancel over TLS all end with nothing held."""
    proxy = tls_proxy(start_proxy, tls_cert, auth={"type": "md5"})
    loop = asyncio.get_running_loop()
    victim = await connect(proxy)
    await victim.login("bob", PASSWORDS["bob"], "app")
    victim.send(m.query("select pg_sleep(30) /* plain */"))
    await sleeping(admin, "plain")
    began = loop.time()
    await raw_cancel(proxy.host, proxy.port, victim.pid, victim.secret)
    err = await victim.read_error(10)
    assert err["C"] == "57014", err
    assert loop.time() - began < 5
    assert await victim.read_until_ready() == ord("I")

    # Unknown key: closed at once, no reply.
    began = loop.time()
    await raw_cancel(proxy.host, proxy.port, victim.pid ^ 1, victim.secret)
    assert loop.time() - began < 2
    # Trailing bytes after the request, and a sender that leaves before the close.
    for trailing in (b"garbage", m.startup_message({"user": "bob", "database": "app"})):
        reader, writer = await asyncio.open_connection(proxy.host, proxy.port)
        writer.write(m.cancel_request(victim.pid, victim.secret) + trailing)
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
    reader, writer = await asyncio.open_connection(proxy.host, proxy.port)
    writer.write(m.cancel_request(victim.pid, victim.secret))
    writer.close()
    # Over TLS, as libpq sends it when the connection used TLS.
    over_tls = await ssl_accepted(proxy)
    await tls_up(over_tls, tls_cert[2])
    victim.send(m.query("select pg_sleep(30) /* over-tls */"))
    await sleeping(admin, "over-tls")
    over_tls.send(m.cancel_request(victim.pid, victim.secret))
    err = await victim.read_error(10)
    assert err["C"] == "57014", err
    assert await over_tls.closed(5)
    await over_tls.close()
    await victim.read_until_ready()
    assert await one_value(victim, "select 'after the cancels'") == "after the cancels"
    await victim.close()
    assert await proxy_client_count(proxy, 0) == 0
    await settled_pool(proxy, "bob")


# --- the admin console hands over to a task after the stepped login --------------------------


async def test_admin_console_login_then_its_task_reads(
    start_proxy: StartProxy, complaints: None
) -> None:
    proxy = start_proxy(auth={"type": "md5"}, admin={"admin_users": ["bob"]})
    # The password and two commands in one write: the login ends inside that read, the
    # console's task reads on from the same buffer.
    console = await connect(proxy)
    client_salt = await md5_challenge_db(console, "bob", "pgbouncer")
    console.send(password("bob", client_salt) + m.query("SHOW VERSION") + m.query("SHOW CLIENTS"))
    got = await answers_after_login(console, 3)
    assert [t for t, _ in got].count(b"Z") == 3 and b"E" not in [t for t, _ in got], got
    assert await one_value(console, "SHOW VERSION")
    await console.close()
    # A user not allowed there is refused after authenticating, as before.
    refused = await connect(proxy)
    salt = await md5_challenge_db(refused, "alice", "pgbouncer")
    refused.send(password("alice", salt))
    err = await refused.read_error()
    assert err["C"] == "42501", err
    await refused.close()
    # asyncpg through the whole exchange (SCRAM-free md5 here), then a pooled login still works.
    conn = await asyncpg.connect(proxy.dsn("bob", dbname="pgbouncer"), statement_cache_size=0)
    await conn.close()
    assert await proxy_client_count(proxy, 0) == 0


async def md5_challenge_db(client: RawClient, user: str, database: str) -> bytes:
    client.send(m.startup_message({"user": user, "database": database}))
    t, body = await client.read_message()
    assert t == b"R" and INT.unpack(body[:4])[0] == 5, (t, body)
    return body[4:8]


# --- floods of half-open logins -------------------------------------------------------------------


async def test_flood_of_half_open_logins(start_proxy: StartProxy, complaints: None) -> None:
    """1500 connections that stop mid-startup, past max_client_conn: a real login meanwhile is
    refused with 53300 as PostgreSQL refuses one past max_connections; the login timeout ends
    every one of them with no task per client, and then logins are served again."""
    proxy = start_proxy(proxy={"client_login_timeout_s": 2, "max_client_conn": 100})
    loop = proxy.loop
    assert loop is not None
    half = m.startup_message({"user": "alice", "database": "app"})[:9]
    flood: list[RawClient] = []
    try:
        for _ in range(1500):
            c = await connect(proxy)
            c.send(half)
            flood.append(c)
        await wait_for(
            lambda: proxy.call(lambda: proxy.server.client_count if proxy.server else 0) >= 1500,
            what="the flood to be accepted",
        )
        assert proxy.call(lambda: len(asyncio.all_tasks(loop))) < 10
        with pytest.raises(asyncpg.TooManyConnectionsError):
            await asyncpg.connect(proxy.dsn())
        # Each is closed by the proxy, after its 08P01.
        results = await asyncio.gather(*(c.read_error(15) for c in flood))
        assert {r["C"] for r in results} == {"08P01"}
    finally:
        for c in flood:
            c.writer.close()
    assert await proxy_client_count(proxy, 0, timeout=15) == 0
    ok = await asyncpg.connect(proxy.dsn())
    assert await ok.fetchval("select 1") == 1
    await ok.close()


# --- SIGTERM of a proxy process with logins mid-flight -------------------------------------------


async def test_sigterm_with_logins_mid_flight(
    pg: LocalPostgres, tmp_path: Path, tls_cert: tuple[str, str, str]
) -> None:
    """The drain refuses every login under way at once (57P03, as PostgreSQL refuses one while
    it shuts down: a login has no transaction to finish), says nothing to a client mid TLS
    handshake, and the process exits cleanly, its log free of the loop's complaints."""
    cfg = tmp_path / "proxy.toml"
    write_config(
        cfg,
        pg,
        0,
        proxy="client_login_timeout_s = 30\nshutdown_timeout_s = 2",
        sections=(
            f'[client_tls]\nmode = "allow"\ncert_file = "{tls_cert[0]}"\n'
            f'key_file = "{tls_cert[1]}"\n'
        ),
    )
    proc = ProxyProcess(cfg, 0, tmp_path / "proxy.log")
    try:
        (found,) = proc.wait_for(r"listening on 127\.0\.0\.1:(\d+)")
        proc.port = int(found.group(1))
        target = HostPort("127.0.0.1", proc.port)
        clients = [await connect(target)]  # type: ignore[arg-type]
        clients.append(await stall_mid_startup(target, []))  # type: ignore[arg-type]
        gss = await connect(target)  # type: ignore[arg-type]
        gss.send(GSSENC_REQUEST)
        assert await asyncio.wait_for(gss.reader.readexactly(1), 5) == b"N"
        clients.append(gss)
        handshaking = await ssl_accepted(target)  # type: ignore[arg-type]
        handshaking.send(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
        scram = await connect(target)  # type: ignore[arg-type]
        await scram_first(scram)
        clients.append(scram)
        late = await connect(target)  # type: ignore[arg-type]
        await scram_first(late)
        proc.signal(signal.SIGTERM)
        proc.wait_for("draining")
        # Mid-SCRAM when the drain began: refused at once, as a server that shuts down refuses.
        for mid_scram in (late, scram):
            err = await mid_scram.read_error()
            assert err["C"] == "57P03", err
        assert proc.wait(15) == 0
        # Mid-handshake the client reads TLS records: closed without a plaintext word.
        assert await asyncio.wait_for(handshaking.reader.read(), 5) == b""
        await handshaking.close()
        for c in [*clients, late]:
            assert await c.closed(5)
            await c.close()
    finally:
        proc.stop()
    log = proc.log()
    assert not [c for c in LOOP_COMPLAINTS if c in log], log


# --- bytes sent blind while the login waits on an auth_query look-up ----------------------------

JUNK_FRAME = b"p" + INT.pack(4 + 1000) + b"\x00" * 1000


@pytest.mark.parametrize(
    "blind",
    [
        pytest.param(JUNK_FRAME * 4000, id="4mb_of_frames"),
        pytest.param(b"p" + INT.pack(0x7FFFFFFF) + b"x" * (1 << 20), id="huge_length"),
    ],
)
async def test_bytes_sent_blind_while_the_login_waits_on_a_look_up(
    pg: LocalPostgres, start_proxy: StartProxy, complaints: None, blind: bytes
) -> None:
    """The client does not wait for the challenge: what it sends while the login waits on the
    auth_query look-up (held up by a frozen server) is held (one buffer: reading stops), then
    judged as the answer to the challenge, refused with an ErrorResponse that reaches the
    client."""
    relay = await FreezableRelay((pg.host, pg.port)).start()
    try:
        proxy = start_proxy(
            auth={"type": "scram-sha-256", "auth_user": "alice"},
            databases=[{"name": "app", "host": "127.0.0.1", "port": relay.port}],
        )
        relay.flowing.clear()
        client = await connect(proxy)
        client.send(m.startup_message({"user": "nobody_here", "database": "app"}) + blind)

        def held() -> int:
            """The size of the paused login's buffer (0 while none has paused)."""
            assert proxy.server is not None
            return max(
                (len(c.rbuf.buf) for c in proxy.server.all_clients() if c.reading_paused),
                default=0,
            )

        size = await wait_for(lambda: proxy.call(held), what="the login to stop reading")
        assert size <= 64 * 1024
        assert proxy.call(lambda: bool(proxy.server and proxy.server.auth_lookups.pending()))
        relay.flowing.set()
        t, body = await client.read_message()
        assert t == b"R" and INT.unpack(body[:4])[0] == 10, (t, body)  # the (mock) challenge
        err = await client.read_error()
        assert err["C"] in ("08P01", "28P01"), err
        assert await client.closed(10)
        await client.close()
        assert await proxy_client_count(proxy, 0) == 0
    finally:
        await relay.close()


async def test_cancel_connections_across_two_workers(
    pg: LocalPostgres, tmp_path: Path, admin: asyncpg.Connection
) -> None:
    """With workers = 2 a cancel connection may land on the worker that does not own the key
    and be relayed: forged keys of either worker, senders that leave at once and trailing bytes
    leave both workers serving and their log free of the loop's complaints; a real key still
    cancels from whichever worker takes the connection."""
    proc = start_workers(pg, tmp_path, 2, pool_size=4)
    try:
        port = proc.port
        victims = [await RawClient.connect("127.0.0.1", port) for _ in range(6)]
        for v in victims:
            await v.login("alice", PASSWORDS["alice"], "app")
        assert len({v.pid >> WORKER_SHIFT for v in victims}) == 2
        for worker in (0, 1):
            for n in range(10):
                forged = (worker << WORKER_SHIFT) | MIN_CLIENT_PID | n
                await raw_cancel("127.0.0.1", port, forged, 12345 + n)
        for _ in range(10):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(m.cancel_request(victims[0].pid, victims[0].secret ^ 1) + b"junk")
            writer.close()
        for v in victims[:4]:
            v.send(m.query("select pg_sleep(20) /* two-workers */"))
        await sleeping(admin, "two-workers", 4)
        await asyncio.gather(*(v.cancel("127.0.0.1", port) for v in victims[:4]))
        assert [(await v.read_error(15))["C"] for v in victims[:4]] == ["57014"] * 4
        for v in victims:
            if v in victims[:4]:
                await v.read_until_ready()
            assert await one_value(v, "select 'served'") == "served"
            await v.close()
    finally:
        proc.stop(signal.SIGTERM)
    log = proc.log()
    assert not [c for c in LOOP_COMPLAINTS if c in log], log


async def test_a_herd_on_the_first_server_connection_half_of_which_leaves(
    pg: LocalPostgres, start_proxy: StartProxy, complaints: None
) -> None:
    """Sixty logins wait on one pool's first server connection (frozen); half leave before it
    is made. The other half are welcomed once it is, and the pool holds only what they use."""
    relay = await FreezableRelay((pg.host, pg.port)).start()
    try:
        proxy = start_proxy(
            auth={"type": "md5"},
            proxy={"client_login_timeout_s": 30},
            databases=[{"name": "app", "host": "127.0.0.1", "port": relay.port}],
        )
        relay.flowing.clear()
        herd = [await connect(proxy) for _ in range(60)]
        salts = await asyncio.gather(*(md5_challenge(c, "bob") for c in herd))
        for c, salt in zip(herd, salts, strict=True):
            c.send(password("bob", salt) + m.query("select 'welcomed'"))
        await wait_for(
            lambda: proxy.pool_stats("app", "bob").get("connecting", 0) >= 1,
            what="the first server connection",
        )
        leaving, staying = herd[::2], herd[1::2]
        for c in leaving:
            await c.close()
        assert await proxy_client_count(proxy, len(staying)) == len(staying)
        relay.flowing.set()
        for c in staying:
            got = await answers_after_login(c, 2)
            assert (b"D", b"\x00\x01\x00\x00\x00\x08welcomed") in got, got
            await c.close()
        assert await proxy_client_count(proxy, 0) == 0
        stats = await settled_pool(proxy, "bob")
        assert stats["clients"] == 0 and stats["total"] <= 5
    finally:
        await relay.close()


async def test_shutdown_while_an_iam_login_waits_on_sts(
    start_proxy: StartProxy, tls_cert: tuple[str, str, str], caplog: pytest.LogCaptureFixture
) -> None:
    """IAM verification runs as a Task of its own (session.stepped.external): a shutdown while
    it waits on an STS that never answers ends it with the client."""
    from botocore.credentials import Credentials

    from pgpool_proxy.aws.sigv4 import make_sts_token

    caplog.set_level(logging.INFO)
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    sts_url = f"http://127.0.0.1:{silent.getsockname()[1]}"
    try:
        proxy = tls_proxy(
            start_proxy,
            tls_cert,
            proxy={"client_login_timeout_s": 30},
            users=[
                {"name": "alice", "password": PASSWORDS["alice"], "iam": True},
                {"name": "bob", "password": PASSWORDS["bob"]},
            ],
            iam={
                "endpoint": "db-proxy.example.com:5432",
                "region": "us-east-1",
                "sts_endpoints": [sts_url],
            },
            iam_rules=[{"arn": "arn:aws:sts::123456789012:assumed-role/app-*", "users": ["alice"]}],
        )
        token = make_sts_token(
            host="db-proxy.example.com",
            port=5432,
            user="alice",
            region="us-east-1",
            credentials=Credentials("AKIAAPPLAMBDA0000001", "lambda-secret"),
            sts_url=sts_url,
        )
        client = await ssl_accepted(proxy)
        await tls_up(client, tls_cert[2])
        client.send(m.startup_message({"user": "alice", "database": "app"}))
        t, body = await client.read_message()
        assert t == b"R" and INT.unpack(body[:4])[0] == 3, (t, body)  # cleartext: the token
        client.send(m.password_message(token))
        assert proxy.loop is not None
        loop = proxy.loop

        def sts_called() -> bool:
            try:
                conn, _ = silent.accept()
            except BlockingIOError:
                return False
            held.append(conn)  # open, never answered
            return True

        silent.setblocking(False)
        held: list[socket.socket] = []
        await wait_for(sts_called, what="the STS call under way")
        await wait_for(
            lambda: proxy.call(lambda: len(asyncio.all_tasks(loop))) >= 3,
            what="the verification's task",
        )
        proxy.stop()
        for conn in held:
            conn.close()
        assert asyncio.all_tasks(loop) == set()
        assert await client.closed(5)
        await client.close()
    finally:
        silent.close()
    assert loop_complaints(caplog) == []


async def test_flood_of_stalled_tls_handshakes(
    start_proxy: StartProxy, tls_cert: tuple[str, str, str], complaints: None
) -> None:
    """300 clients whose SSLRequest was accepted and who then say nothing (each handshake a
    task of its own): the login timeout ends every one, silently, and cancels its task."""
    proxy = tls_proxy(start_proxy, tls_cert, proxy={"client_login_timeout_s": TIMEOUT_S})
    loop = proxy.loop
    assert loop is not None
    flood = [await ssl_accepted(proxy) for _ in range(300)]
    try:
        leftovers = await asyncio.gather(
            *(asyncio.wait_for(c.reader.read(), TIMEOUT_S + 10) for c in flood)
        )
        assert set(leftovers) == {b""}
    finally:
        for c in flood:
            c.writer.close()
    assert await proxy_client_count(proxy, 0) == 0
    await wait_for(
        lambda: proxy.call(lambda: len(asyncio.all_tasks(loop))) <= 2,
        what="no handshake task left",
    )
    ok = await connect(proxy)
    await ok.login("alice", PASSWORDS["alice"], "app")
    await ok.close()


async def test_a_burst_of_tls_logins_whose_client_hello_follows_the_s_at_once(
    start_proxy: StartProxy, tls_cert: tuple[str, str, str], complaints: None
) -> None:
    """The handshake is a task of its own, started one loop round after the 'S' is written:
    a ClientHello sent the moment the 'S' arrives must still reach the TLS layer, under a
    burst of such clients."""
    proxy = tls_proxy(start_proxy, tls_cert, auth={"type": "md5"})
    ctx = ssl.create_default_context(cafile=tls_cert[2])

    async def one() -> str | None:
        reader, writer = await asyncio.open_connection(proxy.host, proxy.port)
        writer.write(SSL_REQUEST)
        assert await reader.readexactly(1) == b"S"
        await writer.start_tls(ctx, server_hostname="127.0.0.1")
        client = RawClient(reader, writer)
        await client.login("bob", PASSWORDS["bob"], "app")
        try:
            return await one_value(client, "select 'tls burst'")
        finally:
            await client.close()

    got = await asyncio.wait_for(asyncio.gather(*(one() for _ in range(100))), 60)
    assert set(got) == {"tls burst"}
    assert await proxy_client_count(proxy, 0) == 0


# --- a bug inside the stepped login -------------------------------------------------------------


@pytest.mark.parametrize("warm", [False, True], ids=["from_a_future_callback", "inside_a_read"])
async def test_a_bug_in_the_welcome_fails_that_client_alone(
    start_proxy: StartProxy,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    complaints: None,
    warm: bool,
) -> None:
    """An exception where the login welcomes the client (fault injection): resumed from the
    pool's first server connection (a future's callback) or, with the pool warm, inside the
    read that brought the password. The client gets XX000, the proxy's counts return to
    zero, and other clients are served."""
    import pgpool_proxy.session.login as login_module

    proxy = start_proxy(auth={"type": "md5"})
    if warm:
        first = await asyncpg.connect(proxy.dsn("bob"))
        await first.close()
        await settled_pool(proxy, "bob")

    def broken(*args: object) -> bytes:
        raise RuntimeError("injected fault")

    monkeypatch.setattr(login_module, "_parameter_statuses", broken)
    client = await connect(proxy)
    client.send(password("bob", await md5_challenge(client, "bob")))
    err = await client.read_error()
    assert err["C"] == "XX000", err
    assert await client.closed(5)
    await client.close()
    monkeypatch.undo()
    assert await proxy_client_count(proxy, 0) == 0
    stats = await settled_pool(proxy, "bob")
    assert stats["clients"] == 0, stats
    ok = await asyncpg.connect(proxy.dsn("bob"))
    assert await ok.fetchval("select 1") == 1
    await ok.close()
    # The injected fault was logged as the internal error it is; nothing else was.
    assert [c for c in loop_complaints(caplog) if "internal error" not in c] == []
    caplog.clear()


async def test_a_client_the_proxy_closed_while_its_verifier_was_derived(
    start_proxy: StartProxy,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    complaints: None,
) -> None:
    """The drain closes a client whose login waits on its SCRAM verifier's derivation (slowed
    here), the client having sent bytes it was not asked for, so the close lingers (the
    transport half-closed, still there). When the derivation ends the login must find its
    client gone, not write to the half-closed transport (an internal error)."""
    import pgpool_proxy.runtime.verifiers as verifiers_module
    from pgpool_proxy.runtime.lifecycle import terminate_all

    real = verifiers_module.derive_verifier
    gate = threading.Event()

    async def slow(password: str, **kw: int) -> object:
        while not gate.is_set():
            await asyncio.sleep(0.01)
        return await real(password, **kw)

    monkeypatch.setattr(verifiers_module, "derive_verifier", slow)
    proxy = start_proxy()
    client = await connect(proxy)
    client.send(m.startup_message({"user": "alice", "database": "app"}) + JUNK_FRAME)
    assert proxy.server is not None
    await wait_for(
        lambda: proxy.call(lambda: bool(proxy.server and proxy.server.verifiers.deriving)),
        what="the derivation under way",
    )
    assert proxy.call(lambda: terminate_all(proxy.server, "terminating: drain")) == 1  # type: ignore[arg-type]
    err = await client.read_error()
    assert err["C"] == "57P01", err
    gate.set()
    await wait_for(
        lambda: proxy.call(lambda: not (proxy.server and proxy.server.verifiers.deriving)),
        what="the derivation to end",
    )
    assert await client.closed(5)
    await client.close()
    assert await proxy_client_count(proxy, 0) == 0
    ok = await asyncpg.connect(proxy.dsn())
    await ok.close()
