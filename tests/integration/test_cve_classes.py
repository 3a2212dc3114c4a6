"""PgBouncer's security bugs, as classes, replayed against the proxy with a real PostgreSQL.

Each test names the PgBouncer advisory whose class it covers. Covered elsewhere, not repeated:

- CVE-2021-3935 (plaintext after SSLRequest): test_tls.py::
  test_plaintext_after_sslrequest_is_refused and ::test_plaintext_instead_of_handshake (TLS
  enabled), test_hostile.py::test_bytes_pipelined_after_ssl_request_are_refused (TLS disabled;
  SSL and GSS requests).
- Console authorisation, the basic case: test_admin.py::test_permissions.
- CVE-2025-12819 (SQL run under a client-chosen search_path), CVE-2026-6664 (SCRAM length
  overflow, long nonces) and CVE-2026-6666 (ErrorResponse without SQLSTATE): their own tests.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator

import asyncpg
import pytest

from pgpool_proxy.auth.scram_client import ScramClient
from pgpool_proxy.protocol import messages as m
from tests.integration.test_hostile import (
    PROTOCOL_3_0,
    SSL_REQUEST,
    canary,
    connect,
    finish_login,
    only_error,
    startup,
)
from tests.support.proxy import PASSWORDS, ProxyThread, StartProxy
from tests.support.rawpg import RawClient, RawError, raw_login

ADMIN = {"admin_users": ["alice"], "stats_users": ["bob"]}
SYNC = m.frame(b"S")


@pytest.fixture
def cproxy(start_proxy: StartProxy) -> ProxyThread:
    return start_proxy(
        pool={"default_pool_size": 1, "query_wait_timeout_s": 5},
        proxy={"client_login_timeout_s": 3},
        admin=ADMIN,
    )


@pytest.fixture
async def marks(admin: asyncpg.Connection) -> AsyncIterator[asyncpg.Connection]:
    """A table every smuggled statement would write to; it must stay empty."""
    await admin.execute(
        "DROP TABLE IF EXISTS cve_marks; CREATE TABLE cve_marks (what text);"
        "GRANT ALL ON cve_marks TO PUBLIC"
    )
    yield admin
    assert await admin.fetch("select what from cve_marks") == []
    await admin.execute("DROP TABLE IF EXISTS cve_marks")


def mark(what: str) -> bytes:
    return m.query(f"insert into cve_marks values ('{what}')")


# --- long names ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"user": "u" * 64, "database": "app"}, "user"),
        ({"user": "u" * 4000, "database": "app"}, "user"),
        ({"user": "alice", "database": "d" * 64}, "database"),
        ({"user": "alice", "database": "d" * 4000}, "database"),
        ({"user": "é" * 32, "database": "app"}, "user"),  # 64 bytes in 32 characters
        ({"user": "u" * 40, "database": "app" * 30}, "database"),
    ],
    ids=["user64", "user4000", "db64", "db4000", "user-multibyte", "db-of-90-with-short-user"],
)
async def test_overlong_names_are_refused_at_once(
    cproxy: ProxyThread, params: dict[str, str], field: str
) -> None:
    """PgBouncer's fixed-size name buffers (user and database names copied from the startup
    packet) were its overflow class. PostgreSQL's names are at most 63 bytes: a longer one names
    nothing, so it is refused before authentication, with 42622 and without echoing it back."""
    async with canary(cproxy):
        c = await connect(cproxy)
        c.send(startup(params))
        err = await only_error(c)
        assert err["C"] == "42622", err
        assert f"{field} name in the startup packet is too long" in err["M"], err
        assert len(err["M"]) < 200, err


@pytest.mark.parametrize(
    ("params", "password", "sqlstate"),
    [
        ({"user": "u" * 63, "database": "app"}, "x", "28P01"),  # unknown user: the usual refusal
        ({"user": "alice", "database": "d" * 63}, PASSWORDS["alice"], "3D000"),  # unknown db
    ],
    ids=["user63", "db63"],
)
async def test_names_of_63_bytes_take_the_ordinary_path(
    cproxy: ProxyThread, params: dict[str, str], password: str, sqlstate: str
) -> None:
    async with canary(cproxy):
        c = await connect(cproxy)
        c.send(startup(params))
        with pytest.raises(RawError) as err:
            await finish_login(c, params["user"], password)
        assert err.value.sqlstate == sqlstate, err.value.fields
        await c.close()


async def test_startup_packet_over_postgres_bound(cproxy: ProxyThread) -> None:
    """The whole startup packet is bounded as in PostgreSQL (10,000 bytes): a bigger one (many
    or long options) is refused on its length word, before it is read."""
    async with canary(cproxy):
        c = await connect(cproxy)
        c.send(startup({"user": "alice", "database": "app", "application_name": "a" * 10_000}))
        err = await only_error(c)
        assert err["C"] == "08P01" and "length of startup packet" in err["M"], err


# --- packet order ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "first",
    [
        m.frame(b"p", b"alice-pw\0"),  # a password message before any startup packet
        m.sasl_response(b"c=biws,r=x,p=AAAA"),
        m.query("select 1"),
        m.TERMINATE,
        m.frame(b"P", b"\0select 1\0\0\0") + m.frame(b"S", b""),
    ],
    ids=["password", "sasl-response", "query", "terminate", "parse-sync"],
)
async def test_typed_message_before_startup(cproxy: ProxyThread, first: bytes) -> None:
    """CVE-2015-4054 (PgBouncer < 1.5.5 crashed on a password packet sent before the startup
    packet): any typed message first is read as a startup length word and refused."""
    async with canary(cproxy):
        c = await connect(cproxy)
        c.send(first)
        err = await only_error(c)
        assert err["C"] == "08P01", err


def _second_startup() -> bytes:
    return startup({"user": "carol", "database": "app"})


@pytest.mark.parametrize(
    "instead",
    [
        _second_startup(),  # a second StartupMessage where the SASL response belongs
        SSL_REQUEST,  # an SSLRequest in the middle of authentication
        m.sasl_response(b"c=biws,r=x,p=AAAA"),  # a final message before the initial one
        m.TERMINATE + m.query("select 1"),
        SYNC,
    ],
    ids=["startup-again", "sslrequest", "final-first", "terminate", "sync"],
)
async def test_out_of_order_message_during_authentication(
    cproxy: ProxyThread, instead: bytes
) -> None:
    """CVE-2015-4054 class, one step later: after AuthenticationSASL only a SASLInitialResponse
    is acceptable; anything else ends the login with one clear error (as PostgreSQL answers,
    Terminate included), never a crash or a half-authenticated session."""
    async with canary(cproxy):
        c = await connect(cproxy)
        c.send(startup({"user": "alice", "database": "app"}))
        t, body = await c.read_message(5)
        assert t == b"R" and struct.unpack("!I", body[:4])[0] == 10, (t, body)
        c.send(instead)
        err = await only_error(c)
        assert err["C"] in ("08P01", "28P01"), err


@pytest.mark.parametrize(
    "untyped",
    [
        startup({"user": "carol", "database": "app"}),
        SSL_REQUEST,
        struct.pack("!IIII", 16, 80877102, 1, 2),  # a CancelRequest inside a session
    ],
    ids=["startup", "sslrequest", "cancel"],
)
async def test_startup_shaped_packet_inside_a_session(cproxy: ProxyThread, untyped: bytes) -> None:
    """CVE-2015-4054 class after login: an untyped packet inside a session begins with a zero
    byte, which is not a message type; the session ends with 08P01 and the one pooled server
    connection is not left half-fed (the canary shares it)."""
    async with canary(cproxy):
        c = await raw_login(cproxy)
        assert await c.simple_query("select 'in'") == [["in"]]
        c.send(untyped)
        err = await c.read_error(5)
        assert err["C"] == "08P01", err
        assert await c.closed(5)


# --- SQL before login ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "tail",
    [
        lambda: mark("pipelined"),
        lambda: m.sasl_initial_response("SCRAM-SHA-256", b"garbage") + mark("after-garbage"),
        lambda: (
            m.sasl_initial_response("SCRAM-SHA-256", ScramClient("wrong").client_first())
            + mark("after-first")
        ),
    ],
    ids=["startup+query", "bad-sasl+query", "sasl-first+query"],
)
async def test_sql_before_login_never_runs(
    cproxy: ProxyThread, marks: asyncpg.Connection, tail: object
) -> None:
    """The CVE-2021-3935 impact (faked SQL commands accepted before authentication): a Query
    pipelined behind the startup packet or an unfinished SASL exchange is never executed."""
    assert callable(tail)
    async with canary(cproxy):
        c = await connect(cproxy)
        c.send(startup({"user": "alice", "database": "app"}) + tail())
        data = await asyncio.wait_for(c.reader.read(), 5)
        assert b"Z" not in _types(data), data  # never ReadyForQuery: never logged in
        assert _types(data)[-1:] == [b"E"], data
    assert await marks.fetchval("select count(*) from cve_marks") == 0


async def test_sql_before_md5_login_never_runs(
    start_proxy: StartProxy, marks: asyncpg.Connection
) -> None:
    """The same with md5: a Query instead of the password message."""
    proxy = start_proxy(auth={"type": "md5"}, pool={"default_pool_size": 1})
    async with canary(proxy):
        c = await connect(proxy)
        c.send(startup({"user": "bob", "database": "app"}) + mark("md5"))
        err = await _error_after_auth_request(c)
        assert err["C"] in ("08P01", "28P01"), err
    assert await marks.fetchval("select count(*) from cve_marks") == 0


def _types(data: bytes) -> list[bytes]:
    out, pos = [], 0
    while pos + 5 <= len(data):
        out.append(data[pos : pos + 1])
        pos += 1 + struct.unpack_from("!I", data, pos + 1)[0]
    return out


async def _error_after_auth_request(c: RawClient) -> dict[str, str]:
    t, _ = await c.read_message(5)
    assert t == b"R"
    return await only_error(c)


# --- console authorisation -------------------------------------------------------------------


def _state(proxy: ProxyThread) -> tuple[object, ...]:
    def read() -> tuple[object, ...]:
        s = proxy.server
        assert s is not None
        gens = tuple(sorted((k, p.generation, p.paused) for k, p in s.pools.items()))
        return (
            id(s.config),
            s.paused,
            frozenset(s.paused_dbs),
            s.draining,
            s.stop_requested.is_set(),
            gens,
        )

    return proxy.call(read)


MUTATIONS = [
    "PAUSE",
    "pause app",
    "  Pause   app  ;",
    'PAUSE "app"',
    "RESUME",
    "RECONNECT",
    "RECONNECT app",
    "KILL app",
    "RELOAD",
    "SHUTDOWN",
    "SET log_level = 'debug'",
    "set max_client_conn = 1",
    "SET admin_users = 'bob'",
    "SET stats_users = ''",
    "SHOW POOLS; PAUSE",
    "SHOW VERSION;RELOAD",
    "SHOW STATE; SHUTDOWN; SHOW STATE",
]


async def test_stats_user_cannot_mutate(cproxy: ProxyThread) -> None:
    """PgBouncer's console authorisation class (stats_users may only SHOW): every mutating
    command, in any case, spacing, quoting or position in a multi-statement query, and through
    the extended protocol, is refused with 42501 (0A000 for extended) and changes nothing."""
    app_client = await raw_login(cproxy)  # a pool exists, so RECONNECT/KILL would show
    assert await app_client.simple_query("select 1") == [["1"]]
    before = _state(cproxy)
    stats = await RawClient.connect(cproxy.host, cproxy.port)
    await stats.login("bob", PASSWORDS["bob"], "pgbouncer")
    try:
        for sql in MUTATIONS:
            with pytest.raises(RawError) as err:
                await stats.simple_query(sql)
            assert err.value.sqlstate == "42501", (sql, err.value.fields)
            assert "may only run SHOW" in err.value.fields["M"], sql
        for sql in ("PAUSE", "SHUTDOWN"):
            stats.send(
                m.frame(b"P", f"\0{sql}\0\0\0".encode()) + m.frame(b"B", b"\0\0" + b"\0" * 6)
            )
            stats.send(m.frame(b"E", b"\0\0\0\0\0") + SYNC)
            err = await stats.read_error(5)
            assert err["C"] == "0A000", err
            assert await stats.read_until_ready(5) == ord("I")
        assert _state(cproxy) == before
        assert await stats.simple_query("SHOW VERSION")
        assert await app_client.simple_query("select 2") == [["2"]]
    finally:
        await stats.close()
        await app_client.close()


@pytest.mark.parametrize(
    ("user", "password", "sqlstate"),
    [
        ("carol", PASSWORDS["carol"], "42501"),  # a valid proxy user, not a console user
        ("bob", "wrong", "28P01"),  # a console user with the wrong password
        ("nobody", "x", "28P01"),  # an unknown user
    ],
    ids=["not-listed", "wrong-password", "unknown"],
)
async def test_console_login_refusals(
    cproxy: ProxyThread, user: str, password: str, sqlstate: str
) -> None:
    """Only admin_users and stats_users reach the console, and only with their password."""
    before = _state(cproxy)
    c = await RawClient.connect(cproxy.host, cproxy.port)
    with pytest.raises(RawError) as err:
        await c.login(user, password, "pgbouncer")
    assert err.value.sqlstate == sqlstate, err.value.fields
    assert await c.closed(5)
    assert _state(cproxy) == before


async def test_protocol_version_in_console_cannot_bypass(cproxy: ProxyThread) -> None:
    """A console login that asks for protocol 3.1 and unknown _pq_ options is negotiated down,
    not waved through: authorisation is the same."""
    c = await connect(cproxy)
    c.send(
        startup(
            {"user": "carol", "database": "pgbouncer", "_pq_.x": "1"}, protocol=PROTOCOL_3_0 | 1
        )
    )
    with pytest.raises(RawError) as err:
        await finish_login(c, "carol", PASSWORDS["carol"])
    assert err.value.sqlstate == "42501", err.value.fields
    await c.close()
