"""A hostile server behind the proxy (tests/support/hostile_server.py), next to a real PostgreSQL.

The proxy serves two databases: "app" on the real server and "evil" on the fake one. Each case
checks the exact error a client of "evil" gets (SQLSTATE and a message naming the cause), that it
comes quickly, and that a client of "app" is served before, during and after: a misbehaving
server must cost its own pool a connection and nothing else.

Test names with "cve_class" are the regression tests for PgBouncer's CVE classes that concern
the server side (SCRAM overflow and long nonces, ErrorResponse without SQLSTATE).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import struct
import time
from collections.abc import AsyncIterator, Callable

import pytest

from pgpool_proxy.auth.scram import MAX_MESSAGE_SIZE
from pgpool_proxy.auth.server_login import MAX_LOGIN_MESSAGES, MAX_SERVER_PARAMS
from pgpool_proxy.protocol import messages as m
from tests.support.hostile_server import (
    READY,
    HostileConn,
    HostileServer,
    auth,
    error,
    msg,
    notice,
    one_row,
    param_status,
    record_capacity_requests,
)
from tests.support.pg import LocalPostgres
from tests.support.proxy import PASSWORDS, ProxyThread, StartProxy
from tests.support.rawpg import RawClient, RawError

SALT = base64.b64encode(b"0123456789abcdef").decode()


@contextlib.asynccontextmanager
async def hostile(
    start_proxy: StartProxy,
    pg: LocalPostgres,
    script: Callable[[HostileConn], object],
    **pool: object,
) -> AsyncIterator[tuple[ProxyThread, HostileServer]]:
    server = await HostileServer(script).start()  # type: ignore[arg-type]
    proxy = start_proxy(
        databases=[
            {"name": "app", "host": pg.host, "port": pg.port},
            {"name": "evil", "host": "127.0.0.1", "port": server.port},
        ],
        pool={"default_pool_size": 2, "server_connect_timeout_s": 10, **pool},
    )
    try:
        yield proxy, server
        assert not server.errors, server.errors
    finally:
        await server.stop()


class Canary:
    """A client of the real server that keeps querying; records the worst round trip."""

    def __init__(self, proxy: ProxyThread) -> None:
        self.proxy = proxy
        self.worst = 0.0
        self.count = 0
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.client: RawClient | None = None

    async def __aenter__(self) -> Canary:
        self.client = await RawClient.connect(self.proxy.host, self.proxy.port)
        await self.client.login("bob", PASSWORDS["bob"], "app")
        assert await self.client.simple_query("select 'before'") == [["before"]]
        self._task = asyncio.create_task(self._run())
        return self

    async def _run(self) -> None:
        assert self.client is not None
        while not self._stop.is_set():
            t0 = time.monotonic()
            assert await self.client.simple_query("select 1") == [["1"]]
            self.worst = max(self.worst, time.monotonic() - t0)
            self.count += 1
            await asyncio.sleep(0)  # a yield to the test's other tasks, not a wait

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._task is not None and self.client is not None
        await self._task
        assert await self.client.simple_query("select 'after'") == [["after"]]
        await self.client.close()


async def evil_login(proxy: ProxyThread, timeout: float = 5) -> dict[str, str]:
    """Log into "evil" (the proxy's own authentication succeeds); return the error the proxy
    reports for its failed server login, and check that the connection is then closed."""
    client = await RawClient.connect(proxy.host, proxy.port)
    try:
        with pytest.raises(RawError) as err:
            await asyncio.wait_for(client.login("alice", PASSWORDS["alice"], "evil"), timeout)
        assert await client.closed(5)
        return err.value.fields
    finally:
        await client.close()


def scram_script(server_first: Callable[[str], bytes]) -> Callable[[HostileConn], object]:
    async def script(conn: HostileConn) -> None:
        final = await conn.scram_challenge(server_first)
        if final:
            await conn.send(auth(12, b"e=invalid-proof"))

    return script


# --- SCRAM: iteration counts ------------------------------------------------------------------


@pytest.mark.parametrize(
    "iterations",
    [10_000_000, 100_001, 2**31, 2**32 + 4096],
    ids=["10M", "cap+1", "2^31", "2^32+4096"],
)
async def test_cve_class_scram_iteration_overflow(
    start_proxy: StartProxy, pg: LocalPostgres, iterations: int
) -> None:
    """Huge (or 32-bit-overflowing) iteration counts are refused before any hashing."""
    script = scram_script(lambda nonce: f"r={nonce}SRV,s={SALT},i={iterations}".encode())
    async with hostile(start_proxy, pg, script) as (proxy, server), Canary(proxy) as canary:
        # Refused within evil_login's 5 s: hashing such counts would take minutes.
        fields = await evil_login(proxy)
        assert fields["C"] == "08P01", fields
        if iterations <= 10**10 - 1 and iterations < 2**32:
            assert "exceeds the proxy's limit of 100000" in fields["M"], fields
        assert server.accepted == 1
    assert canary.worst < 0.5, canary.worst


async def test_scram_iterations_cap_is_configurable(
    start_proxy: StartProxy, pg: LocalPostgres
) -> None:
    script = scram_script(lambda nonce: f"r={nonce}SRV,s={SALT},i=5000".encode())
    async with hostile(start_proxy, pg, script, server_max_scram_iterations=4096) as (proxy, _):
        fields = await evil_login(proxy)
        assert fields["C"] == "08P01"
        assert "5000" in fields["M"] and "server_max_scram_iterations" in fields["M"], fields


async def test_scram_pbkdf2_runs_off_the_event_loop(
    start_proxy: StartProxy, pg: LocalPostgres
) -> None:
    """Allowed but expensive iteration counts cost a worker thread, not the event loop: a client
    of another pool keeps its round trips short while three logins hash at once."""
    iterations = 1_000_000
    t0 = time.monotonic()
    hashlib.pbkdf2_hmac("sha256", b"x", b"salt", iterations)
    one_hash = time.monotonic() - t0
    answered = 0

    async def script(conn: HostileConn) -> None:
        nonlocal answered
        final = await conn.scram_challenge(lambda n: f"r={n}SRV,s={SALT},i={iterations}".encode())
        assert final.startswith(b"c=biws,r="), final  # the proxy did hash, and answered
        answered += 1
        await conn.send(auth(12, b"e=invalid-proof"))

    async with (
        hostile(start_proxy, pg, script, server_max_scram_iterations=iterations) as (proxy, _),
        Canary(proxy) as canary,
    ):
        before = canary.count
        results = await asyncio.gather(*(evil_login(proxy, timeout=30) for _ in range(3)))
        during = canary.count - before
    assert answered >= 1
    for fields in results:
        assert fields["C"] == "28P01", fields
        assert "invalid-proof" in fields["M"]
    # On the loop, each hash would have stalled the canary for about one_hash.
    assert canary.worst < max(0.25, one_hash / 2), (canary.worst, one_hash)
    assert during >= 10, during


# --- SCRAM: nonces and malformed messages -----------------------------------------------------


async def test_cve_class_scram_long_nonce(start_proxy: StartProxy, pg: LocalPostgres) -> None:
    script = scram_script(lambda nonce: f"r={nonce}{'N' * 300},s={SALT},i=4096".encode())
    async with hostile(start_proxy, pg, script) as (proxy, _), Canary(proxy) as canary:
        fields = await evil_login(proxy)
        assert fields["C"] == "08P01"
        assert "nonce is too long" in fields["M"], fields
    assert canary.worst < 0.5


async def test_cve_class_scram_oversized_message(
    start_proxy: StartProxy, pg: LocalPostgres
) -> None:
    huge = "N" * (MAX_MESSAGE_SIZE + 1)
    script = scram_script(lambda nonce: f"r={nonce}{huge},s={SALT},i=4096".encode())
    async with hostile(start_proxy, pg, script) as (proxy, _):
        fields = await evil_login(proxy)
        assert fields["C"] == "08P01"
        assert "too long" in fields["M"], fields


@pytest.mark.parametrize(
    "first",
    [
        lambda n: f"r=FOREIGN{n},s={SALT},i=4096",  # does not extend our nonce
        lambda n: f"r={n},s={SALT},i=4096",  # adds nothing
        lambda n: f"r={n}S\x7fV,s={SALT},i=4096",  # not printable
        lambda n: f"r={n}SRV,s=!!!,i=4096",  # bad base64
        lambda n: f"r={n}SRV,s=,i=4096",  # empty salt
        lambda n: f"r={n}SRV,s={base64.b64encode(bytes(300)).decode()},i=4096",  # long salt
        lambda n: f"r={n}SRV,s={SALT},i=0",
        lambda n: f"r={n}SRV,s={SALT},i=-1",
        lambda n: f"r={n}SRV,s={SALT}",  # no iteration count
        lambda n: f"s={SALT},r={n}SRV,i=4096",  # attributes out of order
        lambda n: f"r={n}SRV,s={SALT},i=4096\x00",
    ],
    ids=[
        "foreign",
        "no-server-part",
        "unprintable",
        "bad-salt",
        "empty-salt",
        "long-salt",
        "i0",
        "i-1",
        "no-i",
        "order",
        "nul",
    ],
)
async def test_scram_foreign_or_malformed_server_first(
    start_proxy: StartProxy, pg: LocalPostgres, first: Callable[[str], str]
) -> None:
    script = scram_script(lambda nonce: first(nonce).encode())
    async with hostile(start_proxy, pg, script) as (proxy, _):
        fields = await evil_login(proxy)
        assert fields["C"] == "08P01", fields
        assert "SCRAM" in fields["M"], fields


async def test_scram_bad_server_signature(start_proxy: StartProxy, pg: LocalPostgres) -> None:
    """A server that does not know the password cannot pass itself off as the real one."""

    async def script(conn: HostileConn) -> None:
        await conn.scram_challenge(lambda n: f"r={n}SRV,s={SALT},i=4096".encode())
        await conn.send(auth(12, b"v=" + base64.b64encode(bytes(32))) + auth(0) + READY)

    async with hostile(start_proxy, pg, script) as (proxy, _):
        fields = await evil_login(proxy)
        assert fields["C"] == "28P01", fields
        assert "signature mismatch" in fields["M"]


# --- ErrorResponse without SQLSTATE ----------------------------------------------------------


@pytest.mark.parametrize(
    "fields",
    [{"S": "FATAL", "M": "go away"}, {"S": "FATAL", "C": "", "M": "go away"}, {"C": "X\n\x01Y7"}],
    ids=["no-C", "empty-C", "garbage-C"],
)
async def test_cve_class_error_without_sqlstate_at_login(
    start_proxy: StartProxy, pg: LocalPostgres, fields: dict[str, str]
) -> None:
    async def script(conn: HostileConn) -> None:
        await conn.send(error(**fields))

    async with hostile(start_proxy, pg, script) as (proxy, _), Canary(proxy):
        got = await evil_login(proxy)
        assert got["C"] == "08006", got  # substituted: a connection-class failure
        assert got["M"] == fields.get("M", "server refused the login"), got


async def test_cve_class_error_without_sqlstate_during_query(
    start_proxy: StartProxy, pg: LocalPostgres
) -> None:
    """Mid-query, a SQLSTATE-less ErrorResponse is passed on as the server sent it (the proxy
    never reads it), the client stays usable, and so does the server connection."""

    async def script(conn: HostileConn) -> None:
        await conn.normal_login()
        await conn.serve_queries(
            lambda sql: error(S="ERROR", M="no code") + READY if "bad" in sql else one_row("ok")
        )

    async with hostile(start_proxy, pg, script) as (proxy, _), Canary(proxy):
        client = await RawClient.connect(proxy.host, proxy.port)
        await client.login("alice", PASSWORDS["alice"], "evil")
        with pytest.raises(RawError) as err:
            await client.simple_query("select bad")
        assert err.value.fields == {"S": "ERROR", "M": "no code"}
        assert await client.simple_query("select good") == [["ok"]]
        await client.close()


@pytest.mark.parametrize("code", [None, "", "4"], ids=["no-C", "empty-C", "short-C"])
async def test_cve_class_error_without_sqlstate_replaying_settings(
    start_proxy: StartProxy, pg: LocalPostgres, code: str | None
) -> None:
    """The proxy reads the server's ErrorResponse itself when it replays a client's startup
    settings: a missing SQLSTATE is substituted there too."""

    async def script(conn: HostileConn) -> None:
        await conn.normal_login()
        fields = (
            {"S": "ERROR", "M": "nope"} if code is None else {"S": "ERROR", "C": code, "M": "nope"}
        )
        await conn.serve_queries(lambda sql: error(**fields) + READY)

    async with hostile(start_proxy, pg, script) as (proxy, _), Canary(proxy):
        client = await RawClient.connect(proxy.host, proxy.port)
        with pytest.raises(RawError) as err:
            await client.login("alice", PASSWORDS["alice"], "evil", DateStyle="German")
            await client.simple_query("select 1")
        assert err.value.fields["C"] == "08P01", err.value.fields
        assert err.value.fields["M"] == "nope"
        await client.close()


# --- bad lengths and unknown authentication methods ------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        msg(b"R"),  # no auth code
        msg(b"R", b"\0\0"),  # half an auth code
        auth(5, b"\0\0"),  # md5 with a 2-byte salt
        b"R" + struct.pack("!I", 3),  # length below 4
        b"R" + struct.pack("!I", 0x7FFFFFFF) + b"\0" * 16,  # 2 GiB announced
        auth(0) + msg(b"K", b"\0\0\0\1"),  # short BackendKeyData
        auth(0) + msg(b"Z"),  # ReadyForQuery without a status
        auth(0) + msg(b"S", b"name-without-terminator"),
        auth(0) + msg(b"E", b"Mno terminator"),
        auth(0) + msg(b"D", b"\0\0"),  # a DataRow before login is done
    ],
    ids=[
        "auth-empty",
        "auth-short",
        "md5-short-salt",
        "len3",
        "len2G",
        "keydata-short",
        "ready-empty",
        "param-unterminated",
        "error-unterminated",
        "datarow-at-login",
    ],
)
async def test_bad_lengths_and_frames_at_login(
    start_proxy: StartProxy, pg: LocalPostgres, data: bytes
) -> None:
    async def script(conn: HostileConn) -> None:
        await conn.send(data)
        await conn.reader.read()  # until the proxy hangs up

    async with hostile(start_proxy, pg, script) as (proxy, _), Canary(proxy) as canary:
        # Refused within evil_login's 5 s, not left waiting for bytes that never come.
        fields = await evil_login(proxy)
        assert fields["C"] == "08P01", fields
    assert canary.worst < 0.5


@pytest.mark.parametrize(
    ("data", "sqlstate", "words"),
    [
        (auth(7), "0A000", "GSSAPI"),
        (auth(9), "0A000", "SSPI"),
        (auth(2), "0A000", "Kerberos"),
        (auth(99), "08P01", "invalid authentication request (code 99)"),
        (auth(0xFFFFFFFF), "08P01", "invalid authentication request"),
        (auth(11, b"r=x,s=eA==,i=1"), "08P01", "before the SASL exchange"),
        (auth(12, b"v=eA=="), "08P01", "before the SASL exchange"),
        (auth(10, b"SCRAM-SHA-256-PLUS\0\0"), "0A000", "no SASL mechanism"),
    ],
    ids=["gss", "sspi", "krb5", "99", "2^32-1", "sasl-continue-first", "sasl-final-first", "plus"],
)
async def test_unknown_or_unsupported_auth_methods(
    start_proxy: StartProxy, pg: LocalPostgres, data: bytes, sqlstate: str, words: str
) -> None:
    async def script(conn: HostileConn) -> None:
        await conn.send(data)
        await conn.reader.read()

    async with hostile(start_proxy, pg, script) as (proxy, _):
        fields = await evil_login(proxy)
        assert fields["C"] == sqlstate, fields
        assert words in fields["M"], fields


# --- floods -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flood", "words"),
    [
        (b"".join(param_status(f"p{i}", "v") for i in range(MAX_SERVER_PARAMS + 1)), "distinct"),
        (param_status("big1", "x" * 600_000) + param_status("big2", "y" * 600_000), "bytes of"),
        (param_status("same", "v") * (MAX_LOGIN_MESSAGES + 1), "messages during login"),
        (notice("hello") * (MAX_LOGIN_MESSAGES + 1), "messages during login"),
    ],
    ids=["params-distinct", "params-1.2MB", "params-same", "notices"],
)
async def test_floods_during_login(
    start_proxy: StartProxy, pg: LocalPostgres, flood: bytes, words: str
) -> None:
    async def script(conn: HostileConn) -> None:
        await conn.send(auth(0) + flood + READY)
        await conn.reader.read()

    async with hostile(start_proxy, pg, script) as (proxy, _), Canary(proxy) as canary:
        fields = await evil_login(proxy)
        assert fields["C"] == "08P01", fields
        assert words in fields["M"], fields
    assert canary.worst < 0.5


def _stats(proxy: ProxyThread, db: str) -> dict[str, int]:
    return proxy.pool_stats(db, "alice")


@pytest.mark.parametrize(
    "flood",
    [
        b"".join(param_status(f"p{i}", "v") for i in range(MAX_SERVER_PARAMS)),
        param_status("big", "x" * (2 * 1024 * 1024)),
    ],
    ids=["distinct", "huge-value"],
)
async def test_parameter_flood_during_query(
    start_proxy: StartProxy, pg: LocalPostgres, flood: bytes
) -> None:
    """Past the bound, the server connection is closed and its client told why (08P01); the
    proxy keeps no more than the bound, and the pool serves the next client."""
    conns = 0

    async def script(conn: HostileConn) -> None:
        nonlocal conns
        conns += 1
        await conn.normal_login()
        flood_now = conns == 1
        await conn.serve_queries(lambda sql: flood + one_row("x") if flood_now else one_row("ok"))

    async with hostile(start_proxy, pg, script) as (proxy, server), Canary(proxy):
        client = await RawClient.connect(proxy.host, proxy.port)
        await client.login("alice", PASSWORDS["alice"], "evil")
        client.send(m.query("select flood"))
        err = await client.read_error(5)
        assert err["C"] == "08006", err
        assert "too many parameters" in err["M"], err
        assert await client.closed(5)
        await client.close()
        again = await RawClient.connect(proxy.host, proxy.port)
        await again.login("alice", PASSWORDS["alice"], "evil")
        assert await again.simple_query("select 1") == [["ok"]]
        await again.close()
        assert server.accepted == 2


async def test_notice_flood_during_query(start_proxy: StartProxy, pg: LocalPostgres) -> None:
    """Notices are not stored: 50,000 of them stream through to the client, which gets its
    result after them, while another pool's client is served as usual."""
    count = 50_000
    flood = notice("n") * count + one_row("done")
    queries = 0

    async def script(conn: HostileConn) -> None:
        def answer(sql: str) -> bytes:
            nonlocal queries
            queries += 1
            return flood if queries == 1 else one_row("calm")

        await conn.normal_login()
        await conn.serve_queries(answer)

    async with hostile(start_proxy, pg, script) as (proxy, _), Canary(proxy) as canary:
        client = await RawClient.connect(proxy.host, proxy.port)
        await client.login("alice", PASSWORDS["alice"], "evil")
        client.send(m.query("select flood"))
        got = await _read_through_ready(client)
        assert got.count(b"N") == count
        assert got[-3:] == [b"D", b"C", b"Z"]
        assert await client.simple_query("select 1") == [["calm"]]
        await client.close()
    assert canary.worst < 0.5, canary.worst


async def _read_through_ready(client: RawClient) -> list[bytes]:
    """The types of the messages up to ReadyForQuery, read in bulk (a flood is too many for one
    read per message)."""
    types: list[bytes] = []
    buf = b""
    async with asyncio.timeout(20):
        while True:
            buf += await client.reader.read(1 << 20)
            pos = 0
            while len(buf) - pos >= 5:
                (length,) = struct.unpack_from("!I", buf, pos + 1)
                if len(buf) - pos < length + 1:
                    break
                types.append(buf[pos : pos + 1])
                pos += length + 1
            buf = buf[pos:]
            if types and types[-1] == b"Z":
                assert buf == b""
                return types


@pytest.mark.parametrize(
    "frame",
    # A 4-byte ReadyForQuery mid-query is framing.py's (issue 17 finding 11, fuzzing).
    [b"D" + struct.pack("!I", 2), b"D" + struct.pack("!I", 0x7FFFFFFF)],
    ids=["len2", "len2G"],
)
async def test_bad_lengths_during_query(
    start_proxy: StartProxy, pg: LocalPostgres, frame: bytes
) -> None:
    """A frame no PostgreSQL sends, mid-query: the client is told (08006) and the pool opens a
    fresh server connection for the next client."""
    conns = 0

    async def script(conn: HostileConn) -> None:
        nonlocal conns
        conns += 1
        first = conns == 1
        await conn.normal_login()
        await conn.serve_queries(lambda sql: frame if first else one_row("ok"))

    async with hostile(start_proxy, pg, script) as (proxy, server), Canary(proxy):
        client = await RawClient.connect(proxy.host, proxy.port)
        await client.login("alice", PASSWORDS["alice"], "evil")
        client.send(m.query("select 1"))
        err = await client.read_error(5)
        assert err["C"] == "08006", err
        assert "invalid message" in err["M"], err
        assert await client.closed(5)
        again = await RawClient.connect(proxy.host, proxy.port)
        await again.login("alice", PASSWORDS["alice"], "evil")
        assert await again.simple_query("select 1") == [["ok"]]
        await again.close()
        assert server.accepted == 2


async def test_trickled_frame_grows_the_buffer_with_what_arrives(
    start_proxy: StartProxy, pg: LocalPostgres, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A frame the proxy reads whole (here an ErrorResponse) whose header claims 1 GB, sent a
    byte per read: the buffer grows with the bytes that came, not by doubling at each read
    (before: 64 KB, 128 KB, ... 1 GB after some 15 reads)."""
    asked = record_capacity_requests(monkeypatch)

    async def script(conn: HostileConn) -> None:
        await conn.normal_login()
        await conn.read_message()
        await conn.send(b"E" + struct.pack("!I", 0x3FFFFFFF) + b"S")
        for _ in range(8):
            # The trickle is the test: one read each on the proxy's side.
            await asyncio.sleep(0.02)
            await conn.send(b"F")

    async with hostile(start_proxy, pg, script) as (proxy, _):
        client = await RawClient.connect(proxy.host, proxy.port)
        await client.login("alice", PASSWORDS["alice"], "evil")
        with pytest.raises(RawError) as err:
            await client.simple_query("select 1")
        assert err.value.fields["C"] == "08006", err.value.fields
        await client.close()
    assert asked and max(asked) <= 256 * 1024, max(asked)


@pytest.mark.parametrize("how", ["close", "garbage"])
async def test_server_gone_mid_message_closes_the_client_without_more_bytes(
    start_proxy: StartProxy, pg: LocalPostgres, how: str
) -> None:
    """The server goes away, or breaks the protocol, after part of a DataRow went to the client:
    an ErrorResponse written after it would be read as the rest of the row, so the client gets
    exactly the bytes the server sent and then EOF, as from a server that dies mid-message. The
    next client gets a fresh server connection."""
    rowdesc = msg(b"T", struct.pack("!H", 1) + b"v\0" + struct.pack("!IhIhih", 0, 0, 25, -1, -1, 0))
    value = b"x" * 1000
    row = msg(b"D", struct.pack("!Hi", 1, len(value)) + value)
    sent = rowdesc + row[:500]
    conns = 0

    async def script(conn: HostileConn) -> None:
        nonlocal conns
        conns += 1
        await conn.normal_login()
        if conns > 1:
            await conn.serve_queries(lambda sql: one_row("ok"))
            return
        t, _ = await conn.read_message()
        assert t == b"Q"
        await conn.send(sent)
        if how == "garbage":
            # The rest of the row, then a frame no server sends (a 2-byte length).
            await conn.send(row[500:] + b"D" + struct.pack("!I", 2))
            await conn.read_message()  # until the proxy closes

    async with hostile(start_proxy, pg, script) as (proxy, server), Canary(proxy):
        client = await RawClient.connect(proxy.host, proxy.port)
        await client.login("alice", PASSWORDS["alice"], "evil")
        client.send(m.query("select 1"))
        got = b""
        async with asyncio.timeout(10):
            while chunk := await client.reader.read(65536):
                got += chunk
        if how == "close":
            assert got == sent
        else:
            # Depending on how the server's bytes arrived: part of the row went on and the
            # client is closed after the server's bytes alone, or the proxy had not forwarded
            # any of it when it met the bad frame and says 08006 at a message boundary.
            pos = 0
            while (
                len(got) - pos >= 5
                and len(got) - pos >= struct.unpack_from("!I", got, pos + 1)[0] + 1
            ):
                last = pos
                pos += struct.unpack_from("!I", got, pos + 1)[0] + 1
            if pos == len(got):
                assert got[last : last + 1] == b"E" and b"C08006\0" in got[last:], got
            else:
                assert (rowdesc + row).startswith(got), got
        await client.close()
        again = await RawClient.connect(proxy.host, proxy.port)
        await again.login("alice", PASSWORDS["alice"], "evil")
        assert await again.simple_query("select 1") == [["ok"]]
        await again.close()
        assert server.accepted == 2
