"""The pool bound through secret rotation and RECONNECT (issue 15): with 30 clients on a pool of
3, neither PostgreSQL nor the proxy ever holds more than 3 server connections, whichever order the
rotation takes; with pool.max_server_connections the cap holds across pools the same way. No
client sees an error.

PostgreSQL's side is sampled inside the server: a PL/pgSQL loop re-reads pg_stat_activity
(pg_stat_clear_snapshot) thousands of times a second, so even a connection that lives
for a millisecond is seen. The proxy's side is sampled on its own event loop (slots and open
sockets) and through the admin console (SHOW POOLS, SHOW SERVERS).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import boto3
import psycopg
import pytest

from pgpool_proxy.errors import DisconnectReason
from tests.aws.conftest import REGION
from tests.support.pg import LocalPostgres, quote_literal
from tests.support.proxy import ProxyThread, make_config

pytestmark = pytest.mark.usefixtures("aws_env")

ROLE = "app_user"
SIZE = 3
CLIENTS = 30

SAMPLER_SQL = """
CREATE TABLE sampler_stop (run int PRIMARY KEY);
CREATE FUNCTION sample_connections(who name, run int, limit_s float8,
    OUT most int, OUT samples bigint, OUT worst text) LANGUAGE plpgsql AS $$
DECLARE
    n int;
    deadline timestamptz := clock_timestamp() + make_interval(secs => limit_s);
BEGIN
    most := 0;
    samples := 0;
    worst := '';
    LOOP
        -- A fresh view of every backend each time, not the transaction's first one.
        PERFORM pg_stat_clear_snapshot();
        SELECT count(*) INTO n FROM pg_stat_activity WHERE usename = who;
        samples := samples + 1;
        IF n > most THEN
            most := n;
            SELECT string_agg(format('pid %s since %s %s', pid, backend_start, state), '; ')
                INTO worst FROM pg_stat_activity WHERE usename = who;
        END IF;
        IF samples % 500 = 0 THEN
            EXIT WHEN clock_timestamp() > deadline
                OR EXISTS (SELECT FROM sampler_stop s WHERE s.run = sample_connections.run);
        END IF;
    END LOOP;
END $$;
"""


@pytest.fixture(scope="module")
def rot_pg() -> Iterator[LocalPostgres]:
    """A server of its own: these tests change a role's password."""
    server = LocalPostgres()
    try:
        server.start()
        server.create_role(ROLE, "pw-0")
        server.create_database("app", owner=ROLE)
        server.psql(SAMPLER_SQL)
        yield server
    finally:
        server.cleanup()


def sm_client(url: str) -> Any:
    return boto3.client("secretsmanager", region_name=REGION, endpoint_url=url)


def secret_json(pg: LocalPostgres, password: str) -> str:
    return json.dumps(
        {
            "username": ROLE,
            "password": password,
            "engine": "postgres",
            "host": pg.host,
            "port": str(pg.port),
            "dbname": "app",
        }
    )


@dataclass
class Hammer:
    """CLIENTS asyncpg clients running short transactions through the proxy until stopped."""

    proxy: ProxyThread
    dbs: list[str]
    done: list[int] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def start(self) -> None:
        conns = [
            await asyncpg.connect(
                self.proxy.dsn(dbname=self.dbs[i % len(self.dbs)]),
                ssl=False,
                statement_cache_size=0,
            )
            for i in range(CLIENTS)
        ]
        self.done = [0] * CLIENTS
        self.tasks = [asyncio.create_task(self._run(i, c)) for i, c in enumerate(conns)]

    async def _run(self, i: int, conn: asyncpg.Connection) -> None:
        try:
            while not self.stop.is_set():
                try:
                    async with conn.transaction():
                        assert await conn.fetchval("select current_user") == ROLE
                    self.done[i] += 1
                except Exception as exc:
                    self.errors.append(exc)
                    if conn.is_closed():
                        return
                await asyncio.sleep(0.002)
        finally:
            await conn.close()

    async def finish(self) -> None:
        self.stop.set()
        await asyncio.gather(*self.tasks)

    async def progress(self, each: int = 3, timeout: float = 30) -> None:
        """Wait until every client has committed `each` more transactions."""
        start = list(self.done)
        deadline = time.monotonic() + timeout
        while any(d - s < each for d, s in zip(self.done, start, strict=True)):
            assert not self.errors, self.errors[:3]
            assert time.monotonic() < deadline, f"clients stalled: {start} -> {self.done}"
            await asyncio.sleep(0.02)


@dataclass
class ProxySide:
    """The most slots (Pool.total) and open server sockets (Pool.backends) the proxy held at
    once, sampled on the proxy's own loop between its callbacks (a timer of 1 ms), plus what
    the admin console showed."""

    proxy: ProxyThread
    most_slots: int = 0
    most_sockets: int = 0
    most_pool_slots: int = 0
    most_show_pools: int = 0
    most_show_servers: int = 0
    samples: int = 0
    running: bool = False

    def start(self) -> None:
        self.running = True
        self.proxy.call(self._sample)

    def _sample(self) -> None:
        if not self.running:
            return
        assert self.proxy.server is not None and self.proxy.loop is not None
        pools = list(self.proxy.server.pools.values())
        self.most_slots = max(self.most_slots, sum(p.total for p in pools))
        self.most_sockets = max(self.most_sockets, sum(len(p.backends) for p in pools))
        self.most_pool_slots = max([self.most_pool_slots, *(p.total for p in pools)])
        self.samples += 1
        self.proxy.loop.call_later(0.001, self._sample)

    def stop(self) -> None:
        self.running = False

    async def console_loop(self, stop: asyncio.Event) -> None:
        # prepare_threshold None: the console speaks the simple query protocol only.
        admin = await psycopg.AsyncConnection.connect(
            self.proxy.dsn("alice", "pgbouncer"), autocommit=True, prepare_threshold=None
        )
        try:
            while not stop.is_set():
                cur = await admin.execute("SHOW POOLS")
                assert cur.description is not None
                cols = [d.name for d in cur.description]
                rows = [dict(zip(cols, r, strict=True)) for r in await cur.fetchall()]
                sv = [
                    sum(
                        int(r[k])
                        for k in ("sv_active", "sv_idle", "sv_used", "sv_tested", "sv_login")
                    )
                    for r in rows
                    if r["database"] != "pgbouncer"
                ]
                self.most_show_pools = max(self.most_show_pools, sum(sv))
                cur = await admin.execute("SHOW SERVERS")
                self.most_show_servers = max(self.most_show_servers, len(await cur.fetchall()))
                await asyncio.sleep(0.001)
        finally:
            await admin.close()


async def fresh_servers(watch: asyncpg.Connection, since: float) -> bool:
    """Whether every server connection of the role logged in after `since` (epoch seconds)."""
    starts = await watch.fetch(
        "select extract(epoch from backend_start)::float8 as t from pg_stat_activity "
        "where usename = $1",
        ROLE,
    )
    return bool(starts) and all(r["t"] > since for r in starts)


async def until(probe: Callable[[], bool | Awaitable[bool]], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        ok = probe()
        if not isinstance(ok, bool):
            ok = await ok
        if ok:
            return
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


@pytest.mark.parametrize(
    ("dbs", "budget"),
    [(["app"], 0), (["app", "app2"], 4)],
    ids=["one-pool", "two-pools-max-server-connections-4"],
)
async def test_pool_bound_holds_through_rotation_and_reconnect(
    rot_pg: LocalPostgres, moto_server: str, dbs: list[str], budget: int
) -> None:
    bound = budget or SIZE
    sm = sm_client(moto_server)
    rot_pg.psql(f"ALTER ROLE {ROLE} PASSWORD {quote_literal('pw-1')}")
    arn = sm.create_secret(
        Name=f"bound-{len(dbs)}-{time.monotonic_ns()}", SecretString=secret_json(rot_pg, "pw-1")
    )["ARN"]
    config = make_config(
        rot_pg,
        databases=[
            {
                "name": name,
                "host": rot_pg.host,
                "port": rot_pg.port,
                "dbname": "app",
                "secret_arn": arn,
                "secret_endpoint_url": moto_server,
            }
            for name in dbs
        ],
        pool={
            "default_pool_size": SIZE,
            "max_server_connections": budget,
            "server_login_retry_s": 0.05,
        },
        secrets={"refresh_interval_s": 600},
        admin={"admin_users": ["alice"]},
    )
    run = time.monotonic_ns() % 2**31
    watch = await asyncpg.connect(rot_pg.dsn())
    sampler_conn = await asyncpg.connect(rot_pg.dsn())
    sampler = asyncio.create_task(
        sampler_conn.fetchrow("select * from sample_connections($1, $2, 120)", ROLE, run)
    )
    try:
        with ProxyThread(config) as proxy:
            side = ProxySide(proxy)
            hammer = Hammer(proxy, dbs)
            fetches = await rotate(proxy, side, hammer, rot_pg, sm, arn, watch)
    finally:
        await watch.execute("insert into sampler_stop values ($1)", run)
        most = await sampler
        await watch.close()
        await sampler_conn.close()
    seen = {
        "pg_stat_activity": most["most"],
        "slots": side.most_slots,
        "sockets": side.most_sockets,
        "SHOW POOLS": side.most_show_pools,
        "SHOW SERVERS": side.most_show_servers,
    }
    print(
        f"bound {bound}: most seen {seen}; samples: pg {most['samples']}, proxy {side.samples}; "
        f"secret fetches {fetches}"
    )
    assert hammer.errors == []
    assert most["samples"] > 1000
    assert most["most"] <= bound, f"pg_stat_activity: {most['worst']}"
    assert side.most_pool_slots <= SIZE
    assert all(v <= bound for v in seen.values()), seen
    # The startup fetch, then at most one forced refresh per login refused with the cached
    # password: those started before the first refresh of each rotation (at most `bound`
    # at once); logins starting later wait for it.
    assert fetches <= 1 + 2 * bound, fetches


async def rotate(
    proxy: ProxyThread,
    side: ProxySide,
    hammer: Hammer,
    pg: LocalPostgres,
    sm: Any,
    arn: str,
    watch: asyncpg.Connection,
) -> int:
    """RECONNECT, then both rotation orders, each with RECONNECT, while `hammer`'s clients
    run; returns how often the proxy fetched the secret."""

    async def reconnect() -> None:
        t = time.time()
        await admin(proxy, "RECONNECT")
        await until(lambda: fresh_servers(watch, t))
        await hammer.progress()

    side.start()
    console_stop = asyncio.Event()
    console = asyncio.create_task(side.console_loop(console_stop))
    try:
        await hammer.start()
        await hammer.progress()

        # RECONNECT alone: every server connection is replaced.
        await reconnect()

        # The order: the password changes, then AWSCURRENT, then RECONNECT. Each new
        # login is refused once (the cached password) and retried with the fresh one.
        pg.psql(f"ALTER ROLE {ROLE} PASSWORD {quote_literal('pw-2')}")
        sm.put_secret_value(SecretId=arn, SecretString=secret_json(pg, "pw-2"))
        await reconnect()

        # The rotation Lambda's order: AWSPENDING, the password, RECONNECT (only AWSPENDING
        # works now), then the label moves and another RECONNECT.
        versions = sm.describe_secret(SecretId=arn)["VersionIdsToStages"]
        (old_id,) = [v for v, stages in versions.items() if "AWSCURRENT" in stages]
        new_id = sm.put_secret_value(
            SecretId=arn, SecretString=secret_json(pg, "pw-3"), VersionStages=["AWSPENDING"]
        )["VersionId"]
        pg.psql(f"ALTER ROLE {ROLE} PASSWORD {quote_literal('pw-3')}")
        await reconnect()
        sm.update_secret_version_stage(
            SecretId=arn,
            VersionStage="AWSCURRENT",
            MoveToVersionId=new_id,
            RemoveFromVersionId=old_id,
        )
        await reconnect()
        assert proxy.server is not None
        store = proxy.server.services.secrets
        assert store is not None
        return proxy.call(lambda: store.secrets[arn].fetches)
    finally:
        console_stop.set()
        await hammer.finish()
        await console
        proxy.call(side.stop)


async def admin(proxy: ProxyThread, command: str) -> None:
    conn = await psycopg.AsyncConnection.connect(proxy.dsn("alice", "pgbouncer"), autocommit=True)
    try:
        await conn.execute(command)
    finally:
        await conn.close()


# --- the pool driven directly: the cascade, made deterministic ---------------------------------


class HeldRefresh:
    """Credentials whose refresh after a refusal waits until the test lets it finish (a slow
    Secrets Manager), so every login started meanwhile would use the refused password."""

    def __init__(self, password: str) -> None:
        self.password = password
        self.fresh = password
        self.gate = asyncio.Event()
        self.refreshes = 0

    async def current(self) -> tuple[str, str]:
        return ROLE, self.password

    async def after_auth_failure(self, failed_password: str) -> list[tuple[str, str]]:
        self.refreshes += 1
        await self.gate.wait()
        self.password = self.fresh
        return [(ROLE, self.fresh)]

    def note_success(self, user: str, password: str) -> None:
        pass


class Watched(set[Any]):
    """Pool.backends: every server socket the pool has open (or is opening); remembers the
    most at once."""

    most = 0

    def add(self, item: Any) -> None:
        super().add(item)
        self.most = max(self.most, len(self))


class Client:
    """A queued client that runs a zero-length transaction on the backend it gets."""

    def __init__(self, pool: Any, served: list[Client], failed: list[Any]) -> None:
        self.pool, self.served, self.failed = pool, served, failed
        self.wait_since = 0.0
        self.done = False

    def is_waiting(self) -> bool:
        return not self.done

    def backend_assigned(self, backend: Any) -> None:
        self.done = True
        self.served.append(self)
        asyncio.get_running_loop().call_soon(self.pool.release, backend)

    def pool_failed(self, err: Any, reason: Any = None) -> None:
        self.done = True
        self.failed.append(err)


@pytest.mark.parametrize("budget", [0, 2])
async def test_refused_logins_keep_their_slot(rot_pg: LocalPostgres, budget: int) -> None:
    from pgpool_proxy.pool.budget import ServerBudget
    from pgpool_proxy.pool.pool import Pool
    from tests.support.poolspec import pool_spec

    class CountingPool(Pool):
        """Records the most slots it ever counted, at every change rather than by sampling."""

        most_total = 0

        def __setattr__(self, name: str, value: Any) -> None:
            super().__setattr__(name, value)
            if name == "total" and value > self.most_total:
                super().__setattr__("most_total", value)

    rot_pg.psql(f"ALTER ROLE {ROLE} PASSWORD {quote_literal('pw-a')}")
    creds = HeldRefresh("pw-a")
    tasks: list[asyncio.Task[None]] = []

    def spawn(coro: Any, name: str) -> None:
        tasks.append(asyncio.get_running_loop().create_task(coro, name=name))

    spec = pool_spec(
        host=rot_pg.host,
        port=rot_pg.port,
        user=ROLE,
        secret=None,
        credentials=creds,
        size=SIZE,
        login_retry_s=0.05,
        connect_timeout_s=10,
    )
    pool = CountingPool(spec, spawn)
    pool.backends = sockets = Watched()
    bound = SIZE
    if budget:
        pool.budget = ServerBudget(budget, [pool])
        bound = budget
    served: list[Client] = []
    failed: list[Any] = []
    try:
        # Logged in with the current password: the pool fills up.
        clients = [Client(pool, served, failed) for _ in range(CLIENTS)]
        for c in clients:
            assert pool.acquire(c) is None  # type: ignore[arg-type]
        await until(lambda: len(served) == CLIENTS and len(pool.idle) == bound)
        assert pool.total == bound

        # The password changes and every server connection is replaced (RECONNECT).
        rot_pg.psql(f"ALTER ROLE {ROLE} PASSWORD {quote_literal('pw-b')}")
        creds.fresh = "pw-b"
        pool.retire(DisconnectReason.POOL_CLOSED)
        assert pool.total == 0
        clients = [Client(pool, served, failed) for _ in range(CLIENTS)]
        for c in clients:
            assert pool.acquire(c) is None  # type: ignore[arg-type]
        # Each slot's login is refused and waits for the refresh, in its slot: no other login
        # starts (with the refused password) while the refresh is under way.
        await until(lambda: creds.refreshes > bound or (creds.refreshes == bound and not sockets))
        assert creds.refreshes == bound, f"{creds.refreshes} logins refused"
        assert pool.total == bound and pool.connecting == bound
        creds.gate.set()
        await until(lambda: len(served) == 2 * CLIENTS)
        assert failed == []
        assert creds.refreshes == bound
        assert pool.most_total == bound, pool.most_total
        assert sockets.most == bound, sockets.most
    finally:
        pool.close()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for b in list(pool.backends):
            b.close(DisconnectReason.POOL_CLOSED)


async def test_logins_during_a_forced_refresh_get_its_result(moto_server: str) -> None:
    from pgpool_proxy.aws.secrets import CachedSecret, SecretsClient
    from pgpool_proxy.config import SecretsSettings

    class HeldClient(SecretsClient):
        """Secrets Manager answering only once the test opens the gate."""

        gate = threading.Event()

        def fetch(self, arn: str, stage: str) -> tuple[str, str] | None:
            self.gate.wait(10)
            return super().fetch(arn, stage)

    sm = sm_client(moto_server)
    text = json.dumps({"username": ROLE, "password": "pw-old"})
    arn = sm.create_secret(Name=f"forced-{time.monotonic_ns()}", SecretString=text)["ARN"]
    spawned: list[Any] = []
    client = HeldClient(REGION, moto_server, 5)
    secret = CachedSecret(
        arn, client, SecretsSettings(refresh_interval_s=600), lambda c, name: spawned.append(c)
    )
    client.gate.set()
    assert await secret.current() == (ROLE, "pw-old")
    client.gate.clear()
    new = json.dumps({"username": ROLE, "password": "pw-new"})
    sm.put_secret_value(SecretId=arn, SecretString=new)
    refused = asyncio.create_task(secret.after_auth_failure("pw-old"))
    await until(lambda: secret._refreshing is not None)
    # A login starting now waits for the refresh the refusal forced instead of trying the
    # refused password.
    login = asyncio.create_task(secret.current())
    await asyncio.sleep(0)
    client.gate.set()
    assert await login == (ROLE, "pw-new")
    assert await refused == [(ROLE, "pw-new")]
    assert secret.fetches == 2
    for coro in spawned:
        coro.close()
