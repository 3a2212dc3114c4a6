"""Hostile and malformed client input, against a real PostgreSQL behind the proxy.

Each case checks the exact answer (one ErrorResponse with the right SQLSTATE, or the single byte
of an SSL/GSS refusal), that the connection is closed when it should be, and that a normal client
connected alongside keeps working before and after. The pool has one server connection, so a
backend left in a bad state by a hostile client would show up as a failing or hanging canary.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import struct
import time
from collections.abc import AsyncIterator, Callable

import asyncpg
import pytest

from pgpool_proxy.auth.scram_client import ScramClient
from pgpool_proxy.protocol import messages as m
from tests.support.proxy import PASSWORDS, ProxyThread
from tests.support.rawpg import RawClient, RawError, raw_login
from tests.support.robustness import client_count, proxy_client_count
from tests.support.waits import wait_for

StartProxy = Callable[..., ProxyThread]

SSL_REQUEST = struct.pack("!II", 8, 80877103)
GSSENC_REQUEST = struct.pack("!II", 8, 80877104)
PROTOCOL_3_0 = 3 << 16


def startup(params: dict[str, str], protocol: int = PROTOCOL_3_0) -> bytes:
    body = struct.pack("!I", protocol)
    body += b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in params.items()) + b"\0"
    return struct.pack("!I", len(body) + 4) + body


async def connect(proxy: ProxyThread) -> RawClient:
    return await RawClient.connect(proxy.host, proxy.port)


async def finish_login(client: RawClient, user: str, password: str) -> list[bytes]:
    """The authentication exchange after a StartupMessage was sent; returns the message types
    seen up to ReadyForQuery (raises RawError on an ErrorResponse)."""
    seen: list[bytes] = []
    scram: ScramClient | None = None
    while True:
        t, body = await client.read_message(5)
        seen.append(t)
        if t == b"R":
            code = struct.unpack("!I", body[:4])[0]
            if code == 10:
                scram = ScramClient(password)
                client.send(m.sasl_initial_response("SCRAM-SHA-256", scram.client_first()))
            elif code == 11:
                assert scram is not None
                client.send(m.sasl_response(scram.handle_server_first(body[4:])))
            elif code == 12:
                assert scram is not None
                scram.handle_server_final(body[4:])
            else:
                assert code == 0, code
        elif t == b"K":
            client.pid, client.secret = struct.unpack("!II", body)
        elif t == b"E":
            raise RawError(m.parse_error_fields(body))
        elif t == b"Z":
            return seen


async def only_error(client: RawClient, timeout: float = 5) -> dict[str, str]:
    """The proxy's whole answer must be exactly one ErrorResponse followed by a close."""
    t, body = await client.read_message(timeout)
    assert t == b"E", (t, body)
    fields = m.parse_error_fields(body)
    rest = await asyncio.wait_for(client.reader.read(), timeout)
    assert rest == b"", rest
    return fields


@pytest.fixture
def hproxy(start_proxy: StartProxy) -> ProxyThread:
    return start_proxy(pool={"default_pool_size": 1, "query_wait_timeout_s": 5})


@contextlib.asynccontextmanager
async def canary(proxy: ProxyThread) -> AsyncIterator[RawClient]:
    """A well-behaved client that must work before and after (and a new one after)."""
    good = await raw_login(proxy)
    try:
        assert await good.simple_query("select 'before'") == [["before"]]
        baseline = client_count(proxy)
        yield good
        assert await good.simple_query("select 'after'") == [["after"]]
        fresh = await raw_login(proxy)
        assert await fresh.simple_query("select 'fresh'") == [["fresh"]]
        await fresh.close()
        # Every hostile connection is gone from the proxy's books.
        assert await proxy_client_count(proxy, baseline) == baseline
    finally:
        await good.close()


# --- startup phase ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "garbage",
    [
        b"GET / HTTP/1.1\r\nHost: example\r\n\r\n",
        b"\x00\x00\x00\x00",
        b"\x00\x00\x00\x07abc",
        b"\xff\xff\xff\xff" + b"x" * 20,
    ],
    ids=["http", "len0", "len7", "len-1"],
)
async def test_garbage_startup(hproxy: ProxyThread, garbage: bytes) -> None:
    async with canary(hproxy):
        c = await connect(hproxy)
        c.send(garbage)
        err = await only_error(c)
        assert err["C"] == "08P01", err


async def test_huge_startup_length_is_refused_without_waiting(hproxy: ProxyThread) -> None:
    async with canary(hproxy):
        c = await connect(hproxy)
        # Only the header: a proxy that tried to read (or allocate) 2 GB would wait for more,
        # and end with client_login_timeout_s's error instead of this one.
        c.send(struct.pack("!II", 0x7FFFFFFF, PROTOCOL_3_0))
        err = await only_error(c)
        assert err["C"] == "08P01", err
        assert "client_login_timeout_s" not in err["M"], err


async def test_silent_client_hits_login_timeout(start_proxy: StartProxy) -> None:
    proxy = start_proxy(proxy={"client_login_timeout_s": 1}, pool={"default_pool_size": 1})
    async with canary(proxy):
        silent = await connect(proxy)
        half = await connect(proxy)
        half.send(struct.pack("!I", 40) + b"\x00\x03")  # a startup packet that never completes
        t0 = time.monotonic()
        for c in (silent, half):
            err = await only_error(c, 6)
            assert err["C"] == "08P01", err
            assert "login" in err["M"], err
        # client_login_timeout_s (1 s) is the behaviour: not before it, and within 5x it.
        assert 0.8 <= time.monotonic() - t0 < 5


@pytest.mark.parametrize("first", [[SSL_REQUEST], [GSSENC_REQUEST], [GSSENC_REQUEST, SSL_REQUEST]])
async def test_ssl_and_gss_requests_are_declined(hproxy: ProxyThread, first: list[bytes]) -> None:
    async with canary(hproxy):
        c = await connect(hproxy)
        for request in first:
            c.send(request)
            assert await asyncio.wait_for(c.reader.readexactly(1), 5) == b"N"
        # The same socket continues in the clear with an ordinary login.
        await c.login("alice", PASSWORDS["alice"], "app")
        assert await c.simple_query("select 'clear'") == [["clear"]]
        await c.close()


@pytest.mark.parametrize("request_bytes", [SSL_REQUEST, GSSENC_REQUEST], ids=["ssl", "gss"])
async def test_bytes_pipelined_after_ssl_request_are_refused(
    hproxy: ProxyThread, request_bytes: bytes
) -> None:
    async with canary(hproxy):
        c = await connect(hproxy)
        # One write: the startup arrives before the client could have read the answer (the
        # CVE-2021-23222 injection pattern). No 'N' may precede the error.
        c.send(request_bytes + startup({"user": "alice", "database": "app"}))
        err = await only_error(c)
        assert err["C"] == "08P01", err


async def test_protocol_2_is_refused(hproxy: ProxyThread) -> None:
    async with canary(hproxy):
        c = await connect(hproxy)
        c.send(startup({"user": "alice", "database": "app"}, protocol=2 << 16))
        err = await only_error(c)
        assert err["C"] == "0A000", err


async def test_protocol_3_1_is_negotiated_down(hproxy: ProxyThread) -> None:
    async with canary(hproxy):
        c = await connect(hproxy)
        c.send(
            startup(
                {"user": "alice", "database": "app", "_pq_.robust_option": "on"},
                protocol=(3 << 16) | 1,
            )
        )
        t, body = await c.read_message(5)
        assert t == b"v", (t, body)
        newest_minor, n_unsupported = struct.unpack("!II", body[:8])
        assert newest_minor == 0
        assert n_unsupported == 1 and body[8:] == b"_pq_.robust_option\0"
        seen = await finish_login(c, "alice", PASSWORDS["alice"])
        assert seen[-1] == b"Z" and b"v" not in seen
        assert await c.simple_query("select 'v3.0'") == [["v3.0"]]
        await c.close()


async def test_startup_without_user(hproxy: ProxyThread) -> None:
    async with canary(hproxy):
        c = await connect(hproxy)
        c.send(startup({"database": "app"}))
        err = await only_error(c)
        assert err["C"] == "28000", err


async def test_cancel_request_with_bad_length(hproxy: ProxyThread) -> None:
    async with canary(hproxy):
        c = await connect(hproxy)
        c.send(struct.pack("!III", 12, 80877102, 1234))  # CancelRequest without its secret
        err = await only_error(c)
        assert err["C"] == "08P01", err


# --- authentication --------------------------------------------------------------------------


async def _start_scram(proxy: ProxyThread) -> RawClient:
    c = await connect(proxy)
    c.send(startup({"user": "alice", "database": "app"}))
    t, body = await c.read_message(5)
    assert t == b"R" and struct.unpack("!I", body[:4])[0] == 10, (t, body)
    return c


@pytest.mark.parametrize(
    "garbage",
    [
        m.frame(b"p", bytes(range(1, 200))),  # no terminator anywhere
        m.frame(b"p", b"SCRAM-SHA-256\0\x00\x00\x00\x40short"),  # length mismatch
        m.frame(b"p", b"SCRAM-SHA-256\0\x00\x00\x00\x05n,,xx"),  # not a client-first-message
        m.frame(b"p", b"PLAIN\0\x00\x00\x00\x03abc"),  # a mechanism never offered
        m.frame(b"p", b""),  # empty
        b"p" + struct.pack("!I", 1 << 30),  # a 1 GB password message (header only)
        m.query("select 1"),  # not a password message at all
    ],
    ids=["noterm", "lenmismatch", "badfirst", "mechanism", "empty", "huge", "query"],
)
async def test_garbage_sasl_initial_response(hproxy: ProxyThread, garbage: bytes) -> None:
    async with canary(hproxy):
        c = await _start_scram(hproxy)
        c.send(garbage)
        err = await only_error(c, 3)
        assert err["C"] in ("28P01", "08P01"), err
        # Refused at once, not left to client_login_timeout_s.
        assert "client_login_timeout_s" not in err["M"], err


@pytest.mark.parametrize(
    "final",
    [b"\xff\xfe garbage", b"c=biws,r=wrongnonce,p=AAAA", b""],
    ids=["binary", "wrongnonce", "empty"],
)
async def test_garbage_sasl_final_response(hproxy: ProxyThread, final: bytes) -> None:
    async with canary(hproxy):
        c = await _start_scram(hproxy)
        scram = ScramClient(PASSWORDS["alice"])
        c.send(m.sasl_initial_response("SCRAM-SHA-256", scram.client_first()))
        t, body = await c.read_message(5)
        assert t == b"R" and struct.unpack("!I", body[:4])[0] == 11
        c.send(m.sasl_response(final))
        err = await only_error(c, 3)
        assert err["C"] in ("28P01", "08P01"), err


async def test_garbage_md5_password(start_proxy: StartProxy) -> None:
    proxy = start_proxy(auth={"type": "md5"}, pool={"default_pool_size": 1})
    async with canary(proxy):
        c = await connect(proxy)
        c.send(startup({"user": "bob", "database": "app"}))
        t, body = await c.read_message(5)
        assert t == b"R" and struct.unpack("!I", body[:4])[0] == 5
        c.send(m.frame(b"p", b"md5" + b"\xff" * 40))  # no terminator, not UTF-8
        err = await only_error(c, 3)
        assert err["C"] in ("28P01", "08P01"), err


# --- after login -----------------------------------------------------------------------------


@pytest.mark.parametrize("in_transaction", [False, True], ids=["idle", "in_tx"])
async def test_256mb_message_header_after_login(hproxy: ProxyThread, in_transaction: bool) -> None:
    async with canary(hproxy):
        c = await raw_login(hproxy)
        if in_transaction:
            # Holds the single backend: it must be discarded (or cleaned), not leaked.
            assert await c.simple_query("BEGIN") == []
        # Refused from the header alone: a proxy waiting for the 256 MB would give no answer
        # within only_error's 5 s (no timeout applies after login).
        c.send(b"Q" + (256 * 1024 * 1024 + 4).to_bytes(4, "big"))
        err = await only_error(c)
        assert err["C"] == "54000", err


@pytest.mark.parametrize("length", [0, 3], ids=["len0", "len3"])
async def test_invalid_message_length_after_login(hproxy: ProxyThread, length: int) -> None:
    async with canary(hproxy):
        c = await raw_login(hproxy)
        c.send(b"Q" + length.to_bytes(4, "big"))
        err = await only_error(c)
        assert err["C"] == "08P01", err


@pytest.mark.parametrize(
    "partial",
    [
        b"Q\x00",  # half a header
        b"Q\x00\x00\x00\x64select 1",  # a header claiming 100 bytes, then 8 of them
        b"BEGIN",  # marker: BEGIN first, then a truncated query inside the transaction
    ],
    ids=["header", "body", "in_tx"],
)
async def test_truncated_message_then_disconnect(hproxy: ProxyThread, partial: bytes) -> None:
    async with canary(hproxy):
        c = await raw_login(hproxy)
        if partial == b"BEGIN":
            assert await c.simple_query("BEGIN") == []
            partial = b"Q\x00\x00\x00\x64select 1"
        c.send(partial)
        await c.writer.drain()
        # A chance for the partial message to reach the proxy before the abort; nothing
        # shows when it has (the proxy counts no bytes per client), and either way the
        # canary below must find the backend clean.
        await asyncio.sleep(0.05)
        c.writer.transport.abort()
        # The canary's next query runs on the single pooled backend (or its replacement): a
        # backend still waiting for the rest of the truncated message would corrupt it.


# --- fuzz ------------------------------------------------------------------------------------


def _fuzz_inputs(seed: int, count: int) -> list[bytes]:
    rng = random.Random(seed)
    words = [b"user", b"database", b"alice", b"app", b"options", b"-c", b"_pq_.x", b"\0", b"="]
    codes = [PROTOCOL_3_0, (3 << 16) | 1, 2 << 16, 80877103, 80877104, 80877102, 0, 0xFFFFFFFF]
    valid = startup({"user": "alice", "database": "app"})
    out: list[bytes] = []
    for i in range(count):
        kind = i % 5
        if kind == 0:  # pure noise
            data = rng.randbytes(rng.randint(0, 40))
        elif kind == 1:  # a consistent length around noise
            body = rng.randbytes(rng.randint(0, 40))
            data = struct.pack("!I", len(body) + 4) + body
        elif kind == 2:  # a protocol-3 startup with scrambled key/value words
            body = struct.pack("!I", PROTOCOL_3_0) + b"".join(
                rng.choice(words) if rng.random() < 0.7 else rng.randbytes(3)
                for _ in range(rng.randint(0, 8))
            )
            data = struct.pack("!I", len(body) + 4) + body
        elif kind == 3:  # a special request code with a random tail (and sometimes a bad length)
            body = struct.pack("!I", rng.choice(codes)) + rng.randbytes(rng.choice([0, 4, 8, 13]))
            length = len(body) + 4 if rng.random() < 0.7 else rng.randint(0, 64)
            data = struct.pack("!I", length) + body
        else:  # a valid startup packet with a few bytes flipped, or cut short
            buf = bytearray(valid)
            for _ in range(rng.randint(1, 3)):
                buf[rng.randrange(len(buf))] = rng.randrange(256)
            data = bytes(buf[: rng.randint(1, len(buf))]) if rng.random() < 0.3 else bytes(buf)
        out.append(data)
    return out


def _check_answer(data: bytes) -> list[str]:
    """Split what the proxy sent into SSL/GSS refusals and frames; all must be well formed."""
    kinds: list[str] = []
    pos = 0
    while pos < len(data):
        t = data[pos : pos + 1]
        if len(data) - pos >= 5:
            length = struct.unpack_from("!I", data, pos + 1)[0]
            if t in (b"E", b"R", b"v", b"S", b"K", b"Z") and 4 <= length <= len(data) - pos - 1:
                if t == b"E":
                    fields = m.parse_error_fields(data[pos + 5 : pos + 1 + length])
                    assert len(fields.get("C", "")) == 5 and fields.get("M"), fields
                    kinds.append("E" + fields["C"])
                else:
                    kinds.append(t.decode())
                pos += 1 + length
                continue
        assert t == b"N", f"malformed answer at {pos}: {data!r}"
        kinds.append("N")
        pos += 1
    return kinds


async def test_fuzzed_startup_packets(start_proxy: StartProxy) -> None:
    proxy = start_proxy(proxy={"client_login_timeout_s": 1}, pool={"default_pool_size": 1})
    inputs = _fuzz_inputs(seed=20240607, count=200)
    answers: dict[str, int] = {}

    async def one(i: int, data: bytes) -> None:
        reader, writer = await asyncio.open_connection(proxy.host, proxy.port)
        try:
            writer.write(data)
            if i % 2:
                writer.write_eof()  # half the cases say goodbye, the rest just stop talking
            chunks = []
            try:
                async with asyncio.timeout(4):  # the login timeout is 1 s
                    while chunk := await reader.read(65536):
                        chunks.append(chunk)
            except ConnectionResetError:
                pass
            kinds = _check_answer(b"".join(chunks))
            key = ",".join(kinds) or "closed"
            answers[key] = answers.get(key, 0) + 1
            # Whatever happened, the proxy ended the connection (no half-finished logins).
            assert all(k != "Z" for k in kinds), (data, kinds)
        finally:
            writer.close()

    async with canary(proxy):
        t0 = time.monotonic()
        async with asyncio.TaskGroup() as tg:
            for i, data in enumerate(inputs):
                tg.create_task(one(i, data))
        print(f"\nfuzz: 200 startups in {time.monotonic() - t0:.1f}s: {sorted(answers.items())}")
    assert sum(answers.values()) == len(inputs)


async def test_fuzzed_messages_after_login(start_proxy: StartProxy) -> None:
    proxy = start_proxy(pool={"default_pool_size": 2, "query_wait_timeout_s": 10})
    rng = random.Random(7)
    types = b"QPBEDSCHFdcfpXZ\x00\xff"

    def frames() -> bytes:
        out = b""
        for _ in range(rng.randint(1, 4)):
            body = rng.randbytes(rng.randint(0, 30))
            length = len(body) + 4 if rng.random() < 0.85 else rng.randint(0, 1 << 31)
            out += bytes([rng.choice(types)]) + struct.pack("!I", length) + body
        return out

    async def one() -> None:
        c = await raw_login(proxy)
        try:
            c.send(frames())
            with contextlib.suppress(TimeoutError, ConnectionError, asyncio.IncompleteReadError):
                async with asyncio.timeout(0.3):
                    while await c.reader.read(65536):
                        pass
        finally:
            c.writer.transport.abort()

    async with canary(proxy):
        for _ in range(4):
            async with asyncio.TaskGroup() as tg:
                for _ in range(10):
                    tg.create_task(one())
    stats = proxy.pool_stats()
    assert stats["total"] <= 2 and stats["waiting"] == 0, stats


# --- clients that do not read, and hostile startup settings ----------------------------------


async def _wait_event(admin: asyncpg.Connection, tag: str) -> str | None:
    return await admin.fetchval(
        # Between pipelined queries the state reads 'idle' while the backend waits to write.
        "select wait_event from pg_stat_activity where query like $1 and pid <> pg_backend_pid()",
        f"%{tag}%",
    )


async def _server_blocks_on_client_write(admin: asyncpg.Connection, tag: str) -> None:
    async def blocked() -> bool:
        return await _wait_event(admin, tag) == "ClientWrite"

    await wait_for(
        blocked,
        timeout=5,
        what="the server to block in ClientWrite (else the proxy buffers unboundedly)",
    )


async def test_slow_reader_gets_backpressure(
    start_proxy: StartProxy, admin: asyncpg.Connection
) -> None:
    """A client that does not read a 50 MB result: the proxy stops reading from the server (so
    PostgreSQL waits in ClientWrite) instead of buffering, and other clients are unaffected."""
    proxy = start_proxy(pool={"default_pool_size": 2})
    slow = await raw_login(proxy)
    other = await raw_login(proxy)
    try:
        slow.send(
            m.query("select repeat('x', 10000) /* slow-reader */ from generate_series(1, 5000)")
        )
        await _server_blocks_on_client_write(admin, "slow-reader")
        for i in range(5):
            assert await other.simple_query(f"select {i}") == [[str(i)]]
        # Now read it all: every row arrives intact and the connection is usable afterwards.
        rows = 0
        while True:
            t, body = await slow.read_message(10)
            if t == b"D":
                assert len(body) == 2 + 4 + 10000
                rows += 1
            elif t == b"Z":
                break
            else:
                assert t in (b"T", b"C"), (t, body[:100])
        assert rows == 5000
        assert await slow.simple_query("select 'done'") == [["done"]]
    finally:
        await slow.close()
        await other.close()


async def test_pipelined_flood_without_reading(
    start_proxy: StartProxy, admin: asyncpg.Connection
) -> None:
    """A client pipelines ~30 MB of queries and never reads: everyone blocks on the flooder's
    link only, and when it vanishes its backend is discarded and the pool recovers."""
    proxy = start_proxy(pool={"default_pool_size": 2, "query_wait_timeout_s": 10})
    flood = await raw_login(proxy)
    other = await raw_login(proxy)
    try:
        one = m.query("select repeat('y', 2000) /* flood */")
        flood.send(one * 15000)
        await _server_blocks_on_client_write(admin, "flood")
        for i in range(5):
            assert await other.simple_query(f"select {i}") == [[str(i)]]
        flood.writer.transport.abort()
        # Both pool slots are usable again: two clients hold a transaction each at once.
        holders = [await raw_login(proxy) for _ in range(2)]
        for h in holders:
            assert await h.simple_query("BEGIN") == []
            assert await h.simple_query("select 1") == [["1"]]
        for h in holders:
            assert await h.simple_query("COMMIT") == []
            await h.close()
        assert proxy.pool_stats()["total"] <= 2
    finally:
        await other.close()


@pytest.fixture
async def injection_table(admin: asyncpg.Connection) -> AsyncIterator[str]:
    await admin.execute(
        "DROP TABLE IF EXISTS robust_inj; CREATE TABLE robust_inj (n int);"
        "GRANT ALL ON robust_inj TO PUBLIC"
    )
    yield "robust_inj"
    await admin.execute("DROP TABLE IF EXISTS robust_inj")


async def test_startup_setting_values_cannot_inject_sql(
    hproxy: ProxyThread, admin: asyncpg.Connection, injection_table: str
) -> None:
    """Startup parameters are replayed as SET on pooled backends: hostile values must stay data
    (the exact value comes back, no statement is smuggled in)."""
    value = f"x'; insert into {injection_table} values (1); -- \\' \\\\ \" $$ ;"
    async with canary(hproxy) as good:
        c = await RawClient.connect(hproxy.host, hproxy.port)
        await c.login(
            "alice", PASSWORDS["alice"], "app", **{"robust.tag": value, "application_name": value}
        )
        for _ in range(3):
            # c and the canary take turns on the one backend: the settings are replayed for c
            # and reset for the canary every time.
            got = await c.simple_query(
                "select current_setting('robust.tag'), current_setting('application_name')"
            )
            assert got == [[value, value]], got
            got = await good.simple_query("select current_setting('robust.tag', true)")
            assert got in ([[""]], [[None]]), got
        await c.close()
    assert await admin.fetchval(f"select count(*) from {injection_table}") == 0


@pytest.mark.parametrize("bad", ["name", "value"])
async def test_invalid_startup_setting_is_not_silently_ignored(
    hproxy: ProxyThread, admin: asyncpg.Connection, injection_table: str, bad: str
) -> None:
    """A hostile parameter name (or an invalid value): no statement may be smuggled in, and the
    client must not end up silently without the settings it asked for. Refusing the session
    with the server's error, at login as PostgreSQL does or (as the proxy does, since it learns
    of the problem only when it first applies the settings) at the first query, is fine."""
    if bad == "name":
        extra = {f'robust.tag" TO 1; insert into {injection_table} values (2); SET "robust.x': "1"}
    else:
        extra = {"statement_timeout": "bogus"}
    async with canary(hproxy):
        c = await RawClient.connect(hproxy.host, hproxy.port)
        try:
            await c.login(
                "alice", PASSWORDS["alice"], "app", **{"application_name": "wanted", **extra}
            )
            got = await c.simple_query("select current_setting('application_name')")
        except RawError as exc:
            assert exc.sqlstate in ("42602", "42704", "22023", "08P01"), exc.fields
            assert exc.fields["S"] == "FATAL"
            assert await c.closed(5)
        else:
            assert got == [["wanted"]], "the client's valid settings were silently dropped"
        finally:
            await c.close()
        assert await admin.fetchval(f"select count(*) from {injection_table}") == 0
    assert await admin.fetchval(f"select count(*) from {injection_table}") == 0


async def test_bad_startup_setting_does_not_leak_to_other_clients(hproxy: ProxyThread) -> None:
    """Client X asks for a valid custom setting plus an invalid one; client Y, served next by the
    same (single) backend, asks for the same valid setting alone and must get it."""
    async with canary(hproxy):
        x = await RawClient.connect(hproxy.host, hproxy.port)
        try:
            await x.login(
                "alice",
                PASSWORDS["alice"],
                "app",
                **{"robust.shared": "wanted", "statement_timeout": "bogus"},
            )
            await x.simple_query("select 1")
        except RawError:
            pass  # refusing X's login (as PostgreSQL does) is a fine answer
        finally:
            await x.close()
        y = await RawClient.connect(hproxy.host, hproxy.port)
        await y.login("alice", PASSWORDS["alice"], "app", **{"robust.shared": "wanted"})
        got = await y.simple_query("select current_setting('robust.shared', true)")
        await y.close()
        assert got == [["wanted"]], f"Y's setting was not applied: {got}"
