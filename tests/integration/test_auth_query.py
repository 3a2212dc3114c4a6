"""auth_query: users not in [[users]] looked up in PostgreSQL (PgBouncer's auth_user/auth_query).

A server of its own (roles created here with SCRAM and md5 passwords, an hba that accepts
both), so the session server's roles and hba stay as the other tests expect them. Every outcome
is one the server produced: current_user over the proxy, pg_stat_activity, the proxy's count of
look-ups sent.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from typing import Any

import asyncpg
import psycopg
import pytest

from pgpool_proxy.auth.scram import ScramVerifier
from pgpool_proxy.config import build_config
from pgpool_proxy.errors import DisconnectReason
from pgpool_proxy.runtime.lifecycle import apply_config
from tests.integration.test_auth_probing import challenge
from tests.support.pg import LocalPostgres, quote_ident, quote_literal
from tests.support.proxy import ProxyThread
from tests.support.waits import wait_for

AUTH_USER, AUTH_PW = "pgb_auth", "auth-pw"
LOOKUP_FN = "SELECT * FROM public.user_lookup($1)"


@pytest.fixture(scope="module")
def apg_server() -> Iterator[LocalPostgres]:
    server = LocalPostgres()
    server.start()
    try:
        # The default query reads pg_shadow, which only a superuser may.
        server.create_role(AUTH_USER, AUTH_PW, superuser=True)
        server.create_role("lookup_only", "lookup-pw")
        server.create_role("dave", "dave-pw")
        server.create_role("erin", "erin-pw", password_encryption="md5")
        server.create_database("app")
        # PgBouncer's recommended set-up for a non-superuser auth_user.
        server.psql(
            "CREATE FUNCTION public.user_lookup(i_user text, OUT uname text, OUT phash text) "
            "RETURNS record AS $$ SELECT usename::text, passwd::text FROM pg_catalog.pg_shadow "
            "WHERE usename = i_user $$ LANGUAGE sql SECURITY DEFINER; "
            "REVOKE ALL ON FUNCTION public.user_lookup(text) FROM public; "
            "GRANT EXECUTE ON FUNCTION public.user_lookup(text) TO lookup_only;",
            dbname="app",
        )
        # md5 also lets SCRAM-stored roles in with SCRAM, as PostgreSQL documents.
        server.set_hba(["host all all 127.0.0.1/32 md5"])
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def start(apg_server: LocalPostgres) -> Iterator[Callable[..., ProxyThread]]:
    started: list[ProxyThread] = []

    def run(
        auth: dict[str, Any] | None = None,
        users: list[dict[str, Any]] | None = None,
        pool: dict[str, Any] | None = None,
        databases: list[dict[str, Any]] | None = None,
        admin: dict[str, Any] | None = None,
    ) -> ProxyThread:
        data: dict[str, Any] = {
            "proxy": {"listen": "127.0.0.1:0", "client_login_timeout_s": 10},
            "pool": {"default_pool_size": 3, "query_wait_timeout_s": 30, **(pool or {})},
            "auth": {"type": "scram-sha-256", "auth_user": AUTH_USER, **(auth or {})},
            "databases": [
                {"name": "app", "host": apg_server.host, "port": apg_server.port},
                *(databases or []),
            ],
            "users": users if users is not None else [{"name": AUTH_USER, "password": AUTH_PW}],
            **({"admin": admin} if admin else {}),
        }
        proxy = ProxyThread(build_config(data, source="<test>")).start()
        started.append(proxy)
        return proxy

    yield run
    for proxy in started:
        proxy.stop()


def dsn(proxy: ProxyThread, user: str, password: str) -> str:
    return f"postgresql://{user}:{password}@{proxy.host}:{proxy.port}/app"


async def current_user(proxy: ProxyThread, user: str, password: str) -> str:
    conn = await asyncpg.connect(dsn(proxy, user, password), ssl=False, timeout=10)
    try:
        return str(await conn.fetchval("select current_user"))
    finally:
        await conn.close()


async def refusal(proxy: ProxyThread, user: str, password: str) -> asyncpg.PostgresError:
    with pytest.raises(asyncpg.PostgresError) as err:
        await current_user(proxy, user, password)
    return err.value


def lookups(proxy: ProxyThread) -> int:
    return sum(lookup_results(proxy).values())


def lookup_results(proxy: ProxyThread) -> dict[str, int]:
    """Look-ups sent to PostgreSQL by result (the pgpool_proxy_auth_query_lookups counter)."""

    def read() -> dict[str, int]:
        assert proxy.server is not None
        return dict(proxy.server.counters.auth_lookups)

    return proxy.call(read)


async def test_scram_user_not_listed_logs_in_and_server_login_passes_through(
    start: Callable[..., ProxyThread],
) -> None:
    proxy = start()
    assert await current_user(proxy, "dave", "dave-pw") == "dave"
    # The second login is served from the cache, and the pool's server login reused the
    # ClientKey from the first client's SCRAM exchange (the proxy never knew the password).
    conn = await asyncpg.connect(dsn(proxy, "dave", "dave-pw"), ssl=False)
    try:
        assert await conn.fetchval("select count(*) from pg_class where relname = 'pg_class'") == 1
        assert await conn.fetchval("select current_user") == "dave"
    finally:
        await conn.close()
    assert lookups(proxy) == 1

    # A reload keeps the looked-up verifier as the pool's server password, and new server
    # connections (the old ones retired) still log in with the recovered ClientKey.
    def reload_and_retire() -> str | None:
        server = proxy.server
        assert server is not None
        apply_config(server, server.config)
        pool = server.pools[("app", "dave")]
        pool.retire(DisconnectReason.POOL_CLOSED)
        return pool.spec.secret

    secret = proxy.call(reload_and_retire)
    assert secret is not None and secret.startswith("SCRAM-SHA-256$")
    assert await current_user(proxy, "dave", "dave-pw") == "dave"


def test_md5_user_not_listed_logs_in(apg_server: LocalPostgres, start: Any) -> None:
    proxy = start(auth={"type": "md5"})
    with psycopg.connect(
        dsn(proxy, "erin", "erin-pw"), sslmode="disable", require_auth="md5"
    ) as conn:
        assert conn.execute("select current_user, 1 + 1").fetchone() == ("erin", 2)
    # A SCRAM-stored role under md5 runs SCRAM, as PostgreSQL does.
    with psycopg.connect(
        dsn(proxy, "dave", "dave-pw"), sslmode="disable", require_auth="scram-sha-256"
    ) as conn:
        assert conn.execute("select current_user").fetchone() == ("dave",)
    with pytest.raises(
        psycopg.OperationalError, match='password authentication failed for user "erin"'
    ):
        psycopg.connect(dsn(proxy, "erin", "nope"), sslmode="disable", require_auth="md5")
    # An unknown name runs SCRAM (against a mock verifier), as PostgreSQL does for it with its
    # default password_encryption: it looks like a SCRAM-stored role, and is refused alike.
    for user in ("ghost", "dave"):
        with pytest.raises(psycopg.OperationalError) as err:
            psycopg.connect(
                dsn(proxy, user, "nope"), sslmode="disable", require_auth="scram-sha-256"
            )
        assert f'password authentication failed for user "{user}"' in str(err.value)


async def test_wrong_password_and_unknown_user_are_refused_alike(
    start: Callable[..., ProxyThread],
) -> None:
    proxy = start(
        users=[{"name": AUTH_USER, "password": AUTH_PW}, {"name": "listed", "password": "x"}]
    )
    seen = []
    for user, password in (
        ("dave", "wrong"),
        ("nobody", "whatever"),
        ("listed", "wrong"),
        ("erin", "erin-pw"),  # md5-stored: cannot answer SCRAM, refused like the others
        ("o'brien\"; select 1 --", "x"),  # bound as $1, never part of the SQL
    ):
        err = await refusal(proxy, user, password)
        assert err.sqlstate == "28P01", (user, err)
        seen.append(str(err).replace(user, "<user>"))
    assert len(set(seen)) == 1, seen
    assert seen[0] == 'password authentication failed for user "<user>"'


async def test_unknown_database_is_3d000_after_authentication_as_postgresql_says(
    start: Callable[..., ProxyThread],
) -> None:
    """A looked-up user with the right password and a database the proxy does not have hears
    3D000, as PostgreSQL answers (after authentication), where auth_dbname gives the look-up
    a database to run in; a wrong password or an unknown name there is still 28P01."""
    proxy = start(auth={"auth_dbname": "app"})

    async def connect(user: str, password: str) -> asyncpg.PostgresError:
        url = f"postgresql://{user}:{password}@{proxy.host}:{proxy.port}/nodb"
        with pytest.raises(asyncpg.PostgresError) as err:
            await asyncpg.connect(url, ssl=False, timeout=10)
        return err.value

    err = await connect("dave", "dave-pw")
    assert err.sqlstate == "3D000" and str(err) == 'database "nodb" does not exist', err
    for user, password in (("dave", "wrong"), ("nobody", "whatever")):
        err = await connect(user, password)
        assert err.sqlstate == "28P01", (user, err)
    # Without auth_dbname the look-up runs in the client's database: none here, so nothing
    # can be checked and the login is refused as a wrong password (docs/configuration.md).
    plain = start()
    url = f"postgresql://dave:dave-pw@{plain.host}:{plain.port}/nodb"
    with pytest.raises(asyncpg.PostgresError) as refused:
        await asyncpg.connect(url, ssl=False, timeout=10)
    assert refused.value.sqlstate == "28P01", refused.value


async def test_password_changed_in_postgresql_is_picked_up(
    apg_server: LocalPostgres, start: Callable[..., ProxyThread]
) -> None:
    apg_server.create_role("frank", "frank-old")
    proxy = start(auth={"auth_cache_s": 3600, "auth_refresh_s": 0.1})
    assert await current_user(proxy, "frank", "frank-old") == "frank"
    apg_server.psql(f"ALTER ROLE {quote_ident('frank')} PASSWORD {quote_literal('frank-new')}")

    # The cached verifier is the old one: a refused login refreshes it in the background.
    async def logs_in() -> bool:
        try:
            return await current_user(proxy, "frank", "frank-new") == "frank"
        except asyncpg.InvalidPasswordError:
            return False

    await wait_for(logs_in, timeout=10, what="the new password to be accepted")
    err = await refusal(proxy, "frank", "frank-old")
    assert err.sqlstate == "28P01"


async def test_non_superuser_auth_user_with_a_lookup_function(
    start: Callable[..., ProxyThread],
) -> None:
    proxy = start(
        auth={"auth_user": "lookup_only", "auth_query": LOOKUP_FN},
        users=[{"name": "lookup_only", "password": "lookup-pw"}],
    )
    assert await current_user(proxy, "dave", "dave-pw") == "dave"
    assert (await refusal(proxy, "nobody", "x")).sqlstate == "28P01"


async def test_lookup_runs_as_auth_user_even_where_the_database_forces_a_user(
    apg_server: LocalPostgres, start: Callable[..., ProxyThread]
) -> None:
    forced = {
        "name": "forced",
        "dbname": "app",
        "host": apg_server.host,
        "port": apg_server.port,
        "user": "lookup_only",
    }
    proxy = start(
        users=[
            {"name": AUTH_USER, "password": AUTH_PW},
            {"name": "lookup_only", "password": "lookup-pw"},
        ],
        databases=[forced],
    )
    conn = await asyncpg.connect(
        f"postgresql://dave:dave-pw@{proxy.host}:{proxy.port}/forced", ssl=False
    )
    try:
        assert await conn.fetchval("select current_user") == "lookup_only"
    finally:
        await conn.close()

    def pools() -> set[tuple[str, str]]:
        assert proxy.server is not None
        return set(proxy.server.pools)

    assert pools() == {("forced", AUTH_USER), ("forced", "lookup_only")}


async def test_wrong_auth_user_password_is_an_operator_error(
    start: Callable[..., ProxyThread], caplog: pytest.LogCaptureFixture
) -> None:
    proxy = start(users=[{"name": AUTH_USER, "password": "not-its-password"}])
    with caplog.at_level(logging.ERROR, logger="pgpool_proxy.auth_query"):
        err = await refusal(proxy, "dave", "dave-pw")
        assert err.sqlstate == "28P01"
        assert str(err) == 'password authentication failed for user "dave"'
        await wait_for(
            lambda: any("auth_query" in r.getMessage() for r in caplog.records),
            what="the operator error in the log",
        )
    line = next(r.getMessage() for r in caplog.records if "auth_query" in r.getMessage())
    assert AUTH_USER in line and "28P01" in line, line
    assert lookup_results(proxy) == {"found": 0, "not_found": 0, "failed": 1}


async def test_unknown_user_flood_is_bounded(
    apg_server: LocalPostgres, start: Callable[..., ProxyThread]
) -> None:
    proxy = start(auth={"auth_negative_cache_s": 60})

    async def attempt(user: str) -> str | None:
        try:
            await current_user(proxy, user, "x")
        except asyncpg.PostgresError as exc:
            return exc.sqlstate
        return None

    # One name, 100 logins at once: one look-up, shared, then cached.
    results = await asyncio.gather(*(attempt("ghost") for _ in range(100)))
    assert set(results) == {"28P01"}
    assert lookups(proxy) == 1
    assert lookup_results(proxy)["not_found"] == 1
    # 40 distinct names: one look-up each, never more server connections than the pool's size.
    peak = 0

    async def watch() -> None:
        nonlocal peak
        conn = await asyncpg.connect(apg_server.dsn(dbname="postgres"))
        try:
            while True:
                n = await conn.fetchval(
                    "select count(*) from pg_stat_activity where usename = $1", AUTH_USER
                )
                peak = max(peak, n)
                await asyncio.sleep(0.01)
        finally:
            await conn.close()

    watcher = asyncio.ensure_future(watch())
    try:
        results = await asyncio.gather(*(attempt(f"ghost{i}") for i in range(40)))
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
    assert set(results) == {"28P01"}
    assert lookups(proxy) == 41
    # The bound is the point; the sampler may see none at all when the look-ups are quick.
    assert peak <= 3


async def test_a_refused_or_slow_lookup_is_refused_cleanly_and_bounded(
    start: Callable[..., ProxyThread], caplog: pytest.LogCaptureFixture
) -> None:
    # lookup_only may not read pg_shadow: the server refuses the query (42501).
    denied = start(
        auth={"auth_user": "lookup_only"},
        users=[{"name": "lookup_only", "password": "lookup-pw"}],
    )
    with caplog.at_level(logging.ERROR, logger="pgpool_proxy.auth_query"):
        err = await refusal(denied, "dave", "dave-pw")
        assert (err.sqlstate, str(err)) == (
            "28P01",
            'password authentication failed for user "dave"',
        )
        await wait_for(
            lambda: any("42501" in r.getMessage() for r in caplog.records),
            what="the server's refusal of the query in the log",
        )
    # A look-up slower than auth_query_timeout_s: refused within the bound, its server
    # connection closed (its state is unknown), nothing left behind in the pool.
    slow = start(
        auth={
            "auth_query": "SELECT usename, passwd FROM pg_shadow, pg_sleep(5) WHERE usename=$1",
            "auth_query_timeout_s": 0.5,
        }
    )
    loop = asyncio.get_running_loop()
    began = loop.time()
    err = await refusal(slow, "dave", "dave-pw")
    assert err.sqlstate == "28P01"
    assert loop.time() - began < 3
    assert lookup_results(slow)["failed"] == 1

    # Nothing held out of the pool: the connection that ran the slow query is closed (or, when
    # the timeout came while it was still logging in, idle and reusable).
    def settled() -> bool:
        stats = slow.pool_stats("app", AUTH_USER)
        return stats["active"] == 0 and stats["connecting"] == 0 and stats["waiting"] == 0

    await wait_for(
        settled,
        what=lambda: f"the look-up's connection to settle: {slow.pool_stats('app', AUTH_USER)}",
    )


async def test_console_shows_pgbouncer_names_and_sets_only_what_is_safe(
    start: Callable[..., ProxyThread],
) -> None:
    proxy = start(admin={"admin_users": [AUTH_USER]})
    url = f"postgresql://{AUTH_USER}:{AUTH_PW}@{proxy.host}:{proxy.port}/pgbouncer"
    async with await psycopg.AsyncConnection.connect(
        url, sslmode="disable", autocommit=True
    ) as conn:
        rows = await (await conn.execute("SHOW CONFIG")).fetchall()
        shown = {r[0]: r[1] for r in rows}
        assert shown["auth_user"] == AUTH_USER
        assert shown["auth_query"] == "SELECT usename, passwd FROM pg_shadow WHERE usename=$1"
        await conn.execute("SET auth.auth_negative_cache_s = 0")
        with pytest.raises(psycopg.errors.CantChangeRuntimeParam, match="RELOAD"):
            await conn.execute("SET auth_user = 'mallory'")
    # Negative answers are no longer cached: each login under an unknown name asks again.
    before = lookups(proxy)
    for _ in range(2):
        assert (await refusal(proxy, "ghost", "x")).sqlstate == "28P01"
    assert lookups(proxy) == before + 2


async def test_unknown_names_get_the_iteration_count_postgresql_uses(
    apg_server: LocalPostgres, start: Callable[..., ProxyThread]
) -> None:
    # A role whose verifier has 8192 iterations (PostgreSQL stores a given verifier as is).
    verifier = ScramVerifier.from_password("gina-pw", iterations=8192).to_text()
    apg_server.create_role("gina", None)
    apg_server.psql(f"ALTER ROLE gina PASSWORD {quote_literal(verifier)}")
    proxy = start()
    real = await challenge(proxy, "gina")
    ghost = await challenge(proxy, "ghost-gina")
    assert real[1] == ghost[1] == 8192
    assert len(real[0]) == len(ghost[0]) == 16
    assert real[3]["C"] == ghost[3]["C"] == "28P01"
    assert await current_user(proxy, "gina", "gina-pw") == "gina"
