"""No state a client leaves in a server session reaches another client (issue 17, items 2-4).

Transaction pooling hands one server session to many clients in turn. Every way of leaving state
found so far (settings pg_settings does not list, text the old keyword spotter misread, calls by
OID, functions and DO blocks with side effects, temporary tables under pg_temp, a search_path that
turns the proxy's own probe) is run by client A through a proxy with ONE server connection; then
client B, on that same connection, reads the session. The oracle is PostgreSQL itself: B must see
exactly what a fresh direct session sees. State that cannot be moved must pin A instead.
"""

from __future__ import annotations

import asyncio
import random
import struct
from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest

from pgpool_proxy.protocol import messages as m
from tests.support.pg import LocalPostgres
from tests.support.proxy import PASSWORDS, ProxyThread, StartProxy
from tests.support.rawpg import RawClient

pytestmark = pytest.mark.timeout(180)

# What a session holds, as a client sees it. Custom settings read as NULL in a fresh session and
# as '' once set and reset (PostgreSQL keeps the placeholder); both mean "not set".
CHECK = (
    "SELECT current_user::text, session_user::text, current_setting('search_path'),"
    " nullif(current_setting('app.tenant', true), ''),"
    " nullif(current_setting('hidden.name', true), ''),"
    " (SELECT count(*) FROM pg_catalog.pg_class WHERE relnamespace = pg_my_temp_schema()),"
    " (SELECT count(*) FROM pg_catalog.pg_listening_channels()),"
    " (SELECT count(*) FROM pg_catalog.pg_locks WHERE locktype = 'advisory'"
    "  AND pid = pg_backend_pid())"
)

SETUP = """
DROP SCHEMA IF EXISTS iso CASCADE;
CREATE SCHEMA iso;
GRANT USAGE, CREATE ON SCHEMA iso TO alice, bob, carol;
DO $$BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'tenant_r') THEN CREATE ROLE tenant_r; END IF;
END$$;
GRANT tenant_r TO alice, bob, carol;
CREATE FUNCTION iso.set_tenant(t text) RETURNS void LANGUAGE plpgsql AS
  $$BEGIN PERFORM set_config('app.tenant', t, false); END$$;
CREATE FUNCTION iso.set_hidden() RETURNS void LANGUAGE plpgsql AS
  $$BEGIN PERFORM set_config('hidden' || '.name', 'A', false); END$$;
CREATE FUNCTION iso.lock_it() RETURNS void LANGUAGE sql AS 'SELECT pg_advisory_lock(4242)';
CREATE FUNCTION iso.mk_temp() RETURNS void LANGUAGE plpgsql AS
  $$BEGIN EXECUTE 'CREATE TEMP TABLE made_inside(a int)'; END$$;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA iso TO alice, bob, carol;
"""


@pytest.fixture(scope="module")
def iso(pg: LocalPostgres) -> Iterator[LocalPostgres]:
    pg.psql(SETUP, dbname="app")
    yield pg
    pg.psql("DROP SCHEMA iso CASCADE", dbname="app")


def one_connection(start_proxy: StartProxy, **pool: Any) -> ProxyThread:
    return start_proxy(pool={"default_pool_size": 1, "query_wait_timeout_s": 20, **pool})


async def session_view(dsn: str) -> tuple[Any, ...]:
    conn = await asyncpg.connect(dsn, statement_cache_size=0)
    try:
        row = await conn.fetchrow(CHECK)
        assert row is not None
        return tuple(row)
    finally:
        await conn.close()


def direct_dsn(pg: LocalPostgres, user: str = "alice") -> str:
    return pg.dsn(user=user, password=PASSWORDS[user], dbname="app")


async def function_call(proxy: ProxyThread, oid: int, *args: bytes) -> RawClient:
    """A client that logs in and sends one FunctionCall message (by OID, no SQL text)."""
    raw = await RawClient.connect(proxy.host, proxy.port)
    await raw.login("alice", PASSWORDS["alice"], "app")
    body = struct.pack("!IhH", oid, 0, len(args))
    for a in args:
        body += struct.pack("!I", len(a)) + a
    body += struct.pack("!h", 0)
    raw.send(m.frame(b"F", body))
    status = await raw.read_until_ready()
    assert status == ord("I")
    return raw


async def oid_of(pg: LocalPostgres, signature: str) -> int:
    conn = await asyncpg.connect(direct_dsn(pg))
    try:
        return int(await conn.fetchval(f"SELECT '{signature}'::regprocedure::oid"))
    finally:
        await conn.close()


# Ways to change settings: after each, B must see a fresh session's settings.
SETTINGS_LEAKS = {
    "set-role": "SET ROLE tenant_r",
    "set_config-role": "SELECT set_config('role', 'tenant_r', false)",
    "reset-all-keeps-role": "SET ROLE tenant_r; RESET ALL",
    "custom-setting": "SET app.tenant = 'A'",
    "set_config-custom": "SELECT set_config('app.tenant', 'A', false)",
    "cr-ends-comment": "-- c\rSET search_path TO iso",
    "unicode-escaped-name": "SELECT U&\"set\\005Fconfig\"('app.tenant', 'A', false)",
    "function-sets-custom": "SELECT iso.set_tenant('A')",
    "function-sets-unnamed": "SELECT iso.set_hidden()",
    "do-block": "DO $$BEGIN PERFORM set_config('app.tenant', 'A', false); END$$",
    "hostile-search-path": "SET search_path = iso, pg_catalog, public",
}


@pytest.mark.parametrize("sql", SETTINGS_LEAKS.values(), ids=SETTINGS_LEAKS.keys())
async def test_settings_never_reach_the_next_client(
    iso: LocalPostgres, start_proxy: StartProxy, sql: str
) -> None:
    fresh = await session_view(direct_dsn(iso))
    proxy = one_connection(start_proxy)
    a = await asyncpg.connect(proxy.dsn(), statement_cache_size=0)
    try:
        await a.execute(sql)
        # A stays connected and idle: its session is the one B gets next.
        assert await session_view(proxy.dsn()) == fresh
        assert proxy.pool_stats()["total"] == 1
    finally:
        await a.close()


async def test_function_call_message_to_set_config(
    iso: LocalPostgres, start_proxy: StartProxy
) -> None:
    fresh = await session_view(direct_dsn(iso))
    proxy = one_connection(start_proxy)
    oid = await oid_of(iso, "pg_catalog.set_config(text,text,boolean)")
    raw = await function_call(proxy, oid, b"app.tenant", b"A", b"false")
    try:
        assert await session_view(proxy.dsn()) == fresh
    finally:
        await raw.close()


async def test_settings_still_follow_their_own_client(
    iso: LocalPostgres, start_proxy: StartProxy
) -> None:
    """The other half of the bargain: what A set by name, A keeps on every connection."""
    proxy = start_proxy(pool={"default_pool_size": 2})
    a = await asyncpg.connect(proxy.dsn(), statement_cache_size=0)
    b = await asyncpg.connect(proxy.dsn(), statement_cache_size=0)
    try:
        await a.execute("SET ROLE tenant_r; SET app.tenant = 'A'")
        await b.execute("SELECT iso.set_hidden()")  # taints the connection B used
        for _ in range(6):
            # Both clients in transactions at once, so each moves between connections.
            ta, tb = a.transaction(), b.transaction()
            await ta.start()
            await tb.start()
            row = await a.fetchrow("SELECT current_user::text, current_setting('app.tenant')")
            assert tuple(row) == ("tenant_r", "A")
            assert (
                await b.fetchval("SELECT nullif(current_setting('app.tenant', true), '')") is None
            )
            await tb.commit()
            await ta.commit()
    finally:
        await a.close()
        await b.close()


# Ways to create what cannot move: A must be pinned to its connection (and the connection wiped
# before anyone else gets it).
PIN_LEAKS = {
    "advisory-lock": "SELECT pg_advisory_lock(4242)",
    "advisory-in-sql-function": "SELECT iso.lock_it()",
    "unicode-escaped-lock": 'SELECT U&"pg_adv\\0069sory_lock"(4242)',
    "pg_temp-qualified": "CREATE TABLE pg_temp.tt(a int)",
    "select-into-temp": "SELECT 1 AS a INTO TEMP tt",
    "execute-in-function": "SELECT iso.mk_temp()",
    "listen-in-do": "DO $$BEGIN LISTEN chan_x; END$$",
    "temp-via-search-path": "SET search_path = pg_temp, public; CREATE TABLE tt(a int)",
}


@pytest.mark.parametrize("sql", PIN_LEAKS.values(), ids=PIN_LEAKS.keys())
async def test_unmovable_state_pins_its_client(
    iso: LocalPostgres, start_proxy: StartProxy, sql: str
) -> None:
    fresh = await session_view(direct_dsn(iso))
    proxy = one_connection(start_proxy)
    a = await asyncpg.connect(proxy.dsn(), statement_cache_size=0)
    try:
        await a.execute(sql)
        # The proxy checks the session after A's transaction, before A's next one runs.
        assert await a.fetchval("SELECT 1") == 1
        assert proxy.pool_stats()["pinned"] == 1
    finally:
        await a.close()
    # Once A has gone, its connection is wiped before B gets it.
    assert await session_view(proxy.dsn()) == fresh


async def test_function_call_message_to_advisory_lock(
    iso: LocalPostgres, start_proxy: StartProxy
) -> None:
    proxy = one_connection(start_proxy)
    oid = await oid_of(iso, "pg_catalog.pg_advisory_lock(bigint)")
    raw = await function_call(proxy, oid, b"4243")
    try:
        assert await raw.simple_query("SELECT 1") == [["1"]]
        assert proxy.pool_stats()["pinned"] == 1
    finally:
        await raw.close()


# --- the probe under a client's hostile schema (PgBouncer CVE-2025-12819's class) -----------

HOSTILE_SCHEMA = """
CREATE TABLE iso.captured(v text);
GRANT INSERT, SELECT ON iso.captured TO alice, bob, carol;
CREATE FUNCTION iso.never(text, text) RETURNS boolean LANGUAGE sql AS 'SELECT false';
CREATE OPERATOR iso.= (LEFTARG = text, RIGHTARG = text, FUNCTION = iso.never);
CREATE OPERATOR iso.<> (LEFTARG = text, RIGHTARG = text, FUNCTION = iso.never);
CREATE FUNCTION iso.zero(bigint, bigint) RETURNS bigint LANGUAGE sql AS 'SELECT 0::bigint';
CREATE OPERATOR iso.+ (LEFTARG = bigint, RIGHTARG = bigint, FUNCTION = iso.zero);
CREATE FUNCTION iso.never_oid(oid, oid) RETURNS boolean LANGUAGE sql AS 'SELECT false';
CREATE OPERATOR iso.= (LEFTARG = oid, RIGHTARG = oid, FUNCTION = iso.never_oid);
CREATE FUNCTION iso.never_int(integer, integer) RETURNS boolean LANGUAGE sql AS 'SELECT false';
CREATE OPERATOR iso.= (LEFTARG = integer, RIGHTARG = integer, FUNCTION = iso.never_int);
CREATE FUNCTION iso.lower(text) RETURNS text LANGUAGE sql AS
  'INSERT INTO iso.captured VALUES ($1) RETURNING pg_catalog.lower($1)';
CREATE FUNCTION iso.count(bigint) RETURNS bigint LANGUAGE sql AS 'SELECT 0::bigint';
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA iso TO alice, bob, carol;
"""


@pytest.fixture
def hostile(iso: LocalPostgres) -> Iterator[LocalPostgres]:
    iso.psql(HOSTILE_SCHEMA, dbname="app")
    yield iso
    iso.psql(
        "DROP TABLE iso.captured; DROP OPERATOR iso.= (text, text); "
        "DROP OPERATOR iso.<> (text, text); DROP OPERATOR iso.+ (bigint, bigint); "
        "DROP OPERATOR iso.= (oid, oid); DROP OPERATOR iso.= (integer, integer); "
        "DROP FUNCTION iso.never, iso.zero, iso.never_oid, iso.never_int, iso.lower, iso.count",
        dbname="app",
    )


async def test_probe_cannot_be_turned_by_the_clients_schema(
    hostile: LocalPostgres, start_proxy: StartProxy
) -> None:
    """A puts operators and functions that lie before pg_catalog, then leaves a temporary table
    and the path itself. The probe must still see both: A is pinned, and B, later, neither
    inherits the path nor runs A's lower() on its password."""
    fresh = await session_view(direct_dsn(hostile))
    proxy = one_connection(start_proxy)
    a = await asyncpg.connect(proxy.dsn(), statement_cache_size=0)
    try:
        await a.execute("SET search_path = iso, pg_catalog, public")
        await a.execute("CREATE TEMP TABLE left_behind(a int)")
        assert await a.fetchval("SELECT 1") == 1  # after the check of the last transaction
        assert proxy.pool_stats()["pinned"] == 1
        await a.execute("DROP TABLE left_behind")
        assert await a.fetchval("SELECT 1") == 1
        assert proxy.pool_stats()["pinned"] == 0
        b = await asyncpg.connect(proxy.dsn(user="bob"), statement_cache_size=0)
        try:
            assert await b.fetchval("SELECT lower('Secret-PW')") == "secret-pw"
        finally:
            await b.close()
        assert await session_view(proxy.dsn()) == fresh
    finally:
        await a.close()
    direct = await asyncpg.connect(direct_dsn(hostile))
    try:
        assert await direct.fetchval("SELECT count(*) FROM iso.captured") == 0
    finally:
        await direct.close()


# --- row-level security keyed on a custom setting, under churn -------------------------------

RLS = """
DROP TABLE IF EXISTS iso.docs;
CREATE TABLE iso.docs(tenant text, body text);
INSERT INTO iso.docs SELECT 't' || (i % 6), 'doc ' || i FROM generate_series(1, 60) i;
ALTER TABLE iso.docs ENABLE ROW LEVEL SECURITY;
CREATE POLICY by_tenant ON iso.docs USING (tenant = current_setting('app.tenant', true));
GRANT SELECT ON iso.docs TO alice, bob, carol;
"""

# How a client names its tenant: by name in the text (the proxy replays it wherever the client
# goes), or inside a function the proxy cannot see into (lost when the client moves, never
# given to anyone else), or not at all.
WAYS = ("set", "set_config", "function", "none")


@pytest.mark.parametrize("login", ["one-user", "shared-login"])
async def test_tenant_isolation_under_churn(
    iso: LocalPostgres, start_proxy: StartProxy, login: str
) -> None:
    iso.psql(RLS, dbname="app")
    sections: dict[str, Any] = {"pool": {"default_pool_size": 3, "query_wait_timeout_s": 30}}
    users = ["alice"]
    if login == "shared-login":
        # Three client users served by one server login: sessions pass between identities.
        sections["databases"] = [
            {"name": "app", "host": iso.host, "port": iso.port, "user": "alice"}
        ]
        users = ["alice", "bob", "carol"]
    proxy = start_proxy(**sections)
    rng = random.Random(17)
    seen_wrong: list[str] = []

    async def client(i: int) -> None:
        way = WAYS[i % len(WAYS)]
        tenant = f"t{i % 6}"
        user = users[i % len(users)]
        conn = await asyncpg.connect(proxy.dsn(user=user), statement_cache_size=0)
        try:
            for _ in range(12):
                if way == "set":
                    await conn.execute(f"SET app.tenant = '{tenant}'")
                elif way == "set_config":
                    await conn.execute(f"SELECT set_config('app.tenant', '{tenant}', false)")
                elif way == "function":
                    await conn.execute(f"SELECT iso.set_tenant('{tenant}')")
                if rng.random() < 0.3:
                    await asyncio.sleep(0)
                got = await conn.fetch("SELECT DISTINCT tenant FROM iso.docs")
                tenants = {r[0] for r in got}
                allowed = {tenant} if way != "none" else set()
                if not tenants <= allowed or (way in ("set", "set_config") and not tenants):
                    seen_wrong.append(f"client {i} ({way}, {user}) saw {sorted(tenants)}")
        finally:
            await conn.close()

    await asyncio.gather(*(client(i) for i in range(24)))
    assert seen_wrong == []
