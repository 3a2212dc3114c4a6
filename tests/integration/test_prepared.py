"""Named prepared statements through the proxy with real clients (issue 4).

Pools of 1-2 server connections, so a client's transactions run on different server connections;
many concurrent clients, so statements of different clients interleave on each of them. Tests
that take `mode` run in both pool modes: session mode checks the test itself (a client owns its
server connection there), transaction mode checks the proxy's statement mapping.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import threading
from collections.abc import Iterator
from typing import Any

import asyncpg
import pg8000.native
import psycopg
import psycopg2
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from tests.support import extproto as x
from tests.support.clients import MODES, direct_rows, parse_pgbench, run_pgbench, start, table
from tests.support.pg import LocalPostgres
from tests.support.proxy import PASSWORDS, ProxyThread, StartProxy
from tests.support.rawpg import RawError

pytestmark = pytest.mark.timeout(120)


def proxy_for(
    start_proxy: StartProxy, mode: str, size: int = 2, clients: int = 2, **pool: Any
) -> ProxyThread:
    """Transaction mode: `size` server connections. Session mode: one per client, since each
    client keeps its own for as long as it is connected."""
    if mode == "session":
        size = max(size, clients)
    return start(start_proxy, mode, size=size, pool={"query_wait_timeout_s": 20, **pool})


# --------------------------------------------------------------------------------------------
# asyncpg


@pytest.mark.parametrize("mode", MODES)
async def test_asyncpg_pool_statement_cache_many_tasks(start_proxy: StartProxy, mode: str) -> None:
    """asyncpg defaults (statement cache on) through asyncpg's own pool: 24 tasks, 24 distinct
    statements each, results derived from the task id."""
    proxy = proxy_for(start_proxy, mode, size=2, clients=10)
    pool = await asyncpg.create_pool(proxy.dsn(), min_size=4, max_size=10)
    assert pool is not None
    pids_per_conn: dict[int, set[int]] = {}

    async def task(tid: int) -> int:
        checked = 0
        for rnd in range(4):
            async with pool.acquire() as conn:
                key = id(conn)
                for k in range(8):
                    got = await conn.fetchval(f"select $1::int * {k} + $2::int", tid, rnd)
                    assert got == tid * k + rnd
                    got = await conn.fetchval(
                        f"select $1::text || ':{k}:' || $2::text", f"t{tid}", "x"
                    )
                    assert got == f"t{tid}:{k}:x"
                    async with conn.transaction():
                        rows = await conn.fetch(
                            f"select g from generate_series($1::int, $1::int + {k}) g", tid
                        )
                        assert [r["g"] for r in rows] == list(range(tid, tid + k + 1))
                        pid = await conn.fetchval("select pg_backend_pid() + 0 * $1::int", tid)
                        pids_per_conn.setdefault(key, set()).add(pid)
                    checked += 3
        return checked

    try:
        results = await asyncio.wait_for(asyncio.gather(*(task(t) for t in range(24))), 90)
        assert results == [4 * 8 * 3] * 24
        if mode == "transaction":
            # The proxy really moved asyncpg connections between its two server connections.
            assert any(len(p) > 1 for p in pids_per_conn.values()), pids_per_conn
            assert len(set().union(*pids_per_conn.values())) <= 2
            assert x.pinned(proxy) == 0
    finally:
        await pool.close()


@pytest.mark.parametrize("mode", MODES)
async def test_asyncpg_explicit_prepare_across_transactions(
    start_proxy: StartProxy, mode: str
) -> None:
    """conn.prepare() statements reused in later transactions on other server connections; two
    clients use the same statement name for different queries."""
    proxy = proxy_for(start_proxy, mode, size=2)
    a = await asyncpg.connect(proxy.dsn())
    b = await asyncpg.connect(proxy.dsn())
    try:
        calc = await a.prepare("select $1::int * 10 + $2::int as v, pg_backend_pid() as pid")
        mine_a = await a.prepare("select 'A:' || $1::text", name="same_name")
        mine_b = await b.prepare("select 'B:' || ($1::int + 1)::text", name="same_name")
        rows = await a.prepare("select g from generate_series(1, $1::int) g")
        pids = set()
        for i in range(8):
            tx_b = b.transaction()
            if i % 2 == 0:
                # b holds a server connection, so a's next transaction runs on the other one.
                await tx_b.start()
                assert await mine_b.fetchval(i) == f"B:{i + 1}"
            async with a.transaction():
                row = await calc.fetchrow(i, 7)
                assert row is not None and row["v"] == i * 10 + 7
                pids.add(row["pid"])
                assert await mine_a.fetchval(str(i)) == f"A:{i}"
            assert [r["g"] for r in await rows.fetch(i + 1)] == list(range(1, i + 2))
            if i % 2 == 0:
                await tx_b.commit()
            assert await mine_b.fetchval(100 + i) == f"B:{101 + i}"
        assert calc.get_parameters()[0].name == "int4"
        assert [a.name for a in calc.get_attributes()] == ["v", "pid"]
        if mode == "transaction":
            assert len(pids) == 2, pids
        else:
            assert len(pids) == 1, pids
    finally:
        await a.close()
        await b.close()


@pytest.mark.parametrize("mode", MODES)
async def test_asyncpg_pool_reset_does_not_pin(
    pg: LocalPostgres, start_proxy: StartProxy, admin: asyncpg.Connection, mode: str
) -> None:
    """Releasing a connection to asyncpg's pool runs `SELECT pg_advisory_unlock_all(); CLOSE
    ALL; UNLISTEN *; RESET ALL;`: that must release whatever pinned the client, and must not pin
    it itself."""
    # Transaction mode: one server connection, so a pinned client would lock everyone else out.
    proxy = proxy_for(start_proxy, mode, size=1 if mode == "transaction" else 2)
    default_work_mem = await admin.fetchval("show work_mem")
    pool = await asyncpg.create_pool(proxy.dsn(), min_size=1, max_size=1)
    assert pool is not None
    other = await asyncpg.connect(proxy.dsn())
    try:
        for _ in range(2):
            async with pool.acquire() as conn:
                await conn.execute("SET work_mem = '3MB'")
                await conn.execute("SELECT pg_advisory_lock(424242)")
                await conn.execute("LISTEN tc_reset_chan")
                await conn.execute(
                    "BEGIN; DECLARE tc_reset_cur CURSOR WITH HOLD FOR SELECT 1; COMMIT"
                )
                locks = await admin.fetchval(
                    "select count(*) from pg_locks where locktype = 'advisory' and objid = 424242"
                )
                assert locks == 1
                if mode == "transaction":
                    assert await x.wait_pinned(proxy, 1) == 1
                assert await conn.fetchval("show work_mem") == "3MB"
            # Released: asyncpg ran its reset query through the proxy.
            if mode == "transaction":
                assert await x.wait_pinned(proxy, 0) == 0
                # The only server connection is free for another client at once.
                assert await asyncio.wait_for(other.fetchval("select 1 + $1::int", 1), 5) == 2
            locks = await admin.fetchval(
                "select count(*) from pg_locks where locktype = 'advisory' and objid = 424242"
            )
            assert locks == 0
            async with pool.acquire() as conn:
                assert await conn.fetchval("show work_mem") == default_work_mem
                assert (
                    await conn.fetchval(
                        "select count(*) from pg_cursors where name = 'tc_reset_cur'"
                    )
                    == 0
                )
                # The statement cache survives the reset: the same statements run again.
                assert await conn.fetchval("select $1::int * 2", 21) == 42
        # Pool reset with nothing to undo, many times: never pinned.
        for i in range(5):
            async with pool.acquire() as conn:
                assert await conn.fetchval("select $1::int * 2", i) == 2 * i
            if mode == "transaction":
                assert x.pinned(proxy) == 0
    finally:
        await pool.close()
        await other.close()


@pytest.mark.parametrize("mode", MODES)
async def test_asyncpg_ddl_changes_result_type(
    pg: LocalPostgres, start_proxy: StartProxy, admin: asyncpg.Connection, mode: str
) -> None:
    """After ALTER TABLE, a cached `select *` fails with "cached plan must not change result type"
    (0A000) on the server; asyncpg re-prepares and retries, and the next fetch succeeds, on every
    server connection that had the old statement."""
    t = table("ddl")
    await admin.execute(f"create table {t} (id int primary key, a text); grant all on {t} to alice")
    await admin.execute(f"insert into {t} values (1, 'one'), (2, 'two')")
    proxy = proxy_for(start_proxy, mode, size=2)
    direct_conn = await asyncpg.connect(pg.dsn(dbname="app"))
    a = await asyncpg.connect(proxy.dsn())
    b = await asyncpg.connect(proxy.dsn())
    query = f"select * from {t} where id = $1"
    try:

        async def fetch_all(expected: dict[int, dict[str, Any]]) -> None:
            # The same statement text from both clients, on both server connections.
            for i in range(4):
                tx = b.transaction()
                if i % 2:
                    await tx.start()
                    await b.fetchval("select 1")
                for key, want in expected.items():
                    row = await a.fetchrow(query, key)
                    assert row is not None and dict(row) == want
                    row = await direct_conn.fetchrow(query, key)
                    assert row is not None and dict(row) == want
                if i % 2:
                    await tx.commit()
                row = await b.fetchrow(query, 1)
                assert row is not None and dict(row) == expected[1]

        await fetch_all({1: {"id": 1, "a": "one"}, 2: {"id": 2, "a": "two"}})
        await admin.execute(f"alter table {t} add column b int default 7")
        await fetch_all({1: {"id": 1, "a": "one", "b": 7}, 2: {"id": 2, "a": "two", "b": 7}})
        await admin.execute(f"alter table {t} drop column a")
        await fetch_all({1: {"id": 1, "b": 7}, 2: {"id": 2, "b": 7}})
        # Inside a transaction asyncpg cannot retry: the error reaches the caller, and the
        # statement works again after the rollback.
        await admin.execute(f"alter table {t} add column c text default 'c'")
        with pytest.raises(asyncpg.InvalidCachedStatementError):
            async with a.transaction():
                await a.fetchrow(query, 1)
        row = await a.fetchrow(query, 1)
        assert row is not None and dict(row) == {"id": 1, "b": 7, "c": "c"}
    finally:
        await a.close()
        await b.close()
        await direct_conn.close()
        await admin.execute(f"drop table if exists {t}")


# --------------------------------------------------------------------------------------------
# psycopg 3 with every statement prepared


@pytest.mark.parametrize("mode", MODES)
def test_psycopg_prepare_threshold_zero_threads(
    pg: LocalPostgres, start_proxy: StartProxy, mode: str
) -> None:
    proxy = proxy_for(start_proxy, mode, size=2, clients=8)
    t = table("pg3prep")
    pg.psql(f"create table {t} (tid int, n int); grant all on {t} to alice", dbname="app")
    errors: list[BaseException] = []

    def worker(tid: int) -> None:
        try:
            with psycopg.connect(
                proxy.dsn(), prepare_threshold=0, autocommit=True, connect_timeout=10
            ) as conn:
                for rnd in range(5):
                    with conn.transaction():
                        for k in range(5):
                            got = conn.execute(
                                f"select %s::int * %s::int + {k}", (tid, rnd)
                            ).fetchone()
                            assert got == (tid * rnd + k,)
                        conn.execute(f"insert into {t} values (%s, %s)", (tid, rnd))
                    got = conn.execute(
                        f"select count(*) from {t} where tid = %s", (tid,)
                    ).fetchone()
                    assert got == (rnd + 1,)
                cur = conn.cursor()
                cur.executemany(
                    f"insert into {t} values (%s, %s)", [(tid, 100 + i) for i in range(10)]
                )
                got = conn.execute(f"select sum(n) from {t} where tid = %s", (tid,)).fetchone()
                assert got == (sum(range(5)) + sum(range(100, 110)),)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(tid,)) for tid in range(8)]
    try:
        for th in threads:
            th.start()
        for th in threads:
            th.join(90)
        assert not errors, errors[0]
        assert direct_rows(pg, f"select count(*), count(distinct tid) from {t}") == ["120|8"]
    finally:
        pg.psql(f"drop table if exists {t}", dbname="app")


@pytest.mark.parametrize("mode", MODES)
async def test_psycopg_prepare_threshold_zero_async(start_proxy: StartProxy, mode: str) -> None:
    proxy = proxy_for(start_proxy, mode, size=2, clients=12)

    async def task(tid: int) -> int:
        async with await psycopg.AsyncConnection.connect(
            proxy.dsn(), prepare_threshold=0, autocommit=True, connect_timeout=10
        ) as conn:
            n = 0
            for rnd in range(5):
                async with conn.transaction():
                    for k in range(4):
                        cur = await conn.execute(f"select %s::int + %s::int * {k}", (tid, rnd))
                        assert await cur.fetchone() == (tid + rnd * k,)
                        n += 1
                cur = await conn.execute("select %s::text || '-' || %s::text", (f"c{tid}", rnd))
                assert await cur.fetchone() == (f"c{tid}-{rnd}",)
                n += 1
            return n

    results = await asyncio.wait_for(asyncio.gather(*(task(t) for t in range(12))), 90)
    assert results == [25] * 12


@pytest.mark.parametrize("mode", MODES)
def test_psycopg_pipeline(start_proxy: StartProxy, mode: str) -> None:
    """Pipelines of prepared statements (several statements before one Sync), an error inside a
    pipeline, and the connection continuing afterwards."""
    proxy = proxy_for(start_proxy, mode, size=2)
    with (
        psycopg.connect(proxy.dsn(), prepare_threshold=0, autocommit=True) as conn,
        psycopg.connect(proxy.dsn(), autocommit=True, prepare_threshold=None) as other,
    ):
        for rnd in range(4):
            if rnd % 2:
                other.execute("begin")
                other.execute("select 1")
            with conn.pipeline():
                c1 = conn.execute("select %s::int + 1", (rnd,))
                c2 = conn.execute("select %s::text || 'x'", (str(rnd),))
                c3 = conn.execute("select g from generate_series(1, %s::int) g", (rnd + 2,))
                with conn.transaction():
                    c4 = conn.execute("select %s::int * 2", (rnd,))
                assert c1.fetchone() == (rnd + 1,)
                assert c2.fetchone() == (f"{rnd}x",)
                assert c3.fetchall() == [(g,) for g in range(1, rnd + 3)]
                assert c4.fetchone() == (2 * rnd,)
            if rnd % 2:
                other.execute("commit")

        # An error inside a pipeline: what came before it succeeded, what follows it up to the
        # next Sync is skipped, and the pipeline goes on after that Sync.
        with conn.pipeline() as p:
            ok = conn.execute("select %s::int + 100", (1,))
            with pytest.raises(psycopg.errors.DivisionByZero):
                conn.execute("select 1 / %s::int", (0,))
                conn.execute("select %s::int + 200", (1,))
                p.sync()
            # psycopg may raise at the failing execute, when its result has already arrived,
            # before the test's own Sync went out (as against PostgreSQL directly): this Sync
            # ends the aborted part of the pipeline either way.
            with contextlib.suppress(psycopg.errors.PipelineAborted):
                p.sync()
            assert ok.fetchone() == (101,)
            after = conn.execute("select %s::int + 300", (1,))
            p.sync()
            assert after.fetchone() == (301,)
        # Outside the pipeline, on whichever server connection: the statements still work.
        for i in range(3):
            if i == 1:
                other.execute("begin")
                other.execute("select 1")
            assert conn.execute("select %s::int + 1", (i,)).fetchone() == (i + 1,)
            assert conn.execute("select 1 / %s::int", (1,)).fetchone() == (1,)
            if i == 1:
                other.execute("commit")


# --------------------------------------------------------------------------------------------
# psycopg2, pg8000, SQLAlchemy


@pytest.mark.parametrize("mode", MODES)
def test_psycopg2_threads(pg: LocalPostgres, start_proxy: StartProxy, mode: str) -> None:
    """psycopg2 (client-side parameters, simple protocol): transactions, a SET that must survive,
    an error and a rollback, from 8 threads over 2 server connections."""
    proxy = proxy_for(start_proxy, mode, size=2, clients=8)
    t = table("pg2")
    pg.psql(f"create table {t} (tid int, n int); grant all on {t} to alice", dbname="app")
    errors: list[BaseException] = []

    def worker(tid: int) -> None:
        try:
            conn = psycopg2.connect(
                host=proxy.host, port=proxy.port, user="alice", password=PASSWORDS["alice"],
                dbname="app", sslmode="disable", connect_timeout=10,
            )  # fmt: skip
            try:
                cur = conn.cursor()
                cur.execute(f"SET work_mem = '{1 + tid}MB'")
                conn.commit()
                for rnd in range(5):
                    cur.execute("select %s * 10 + %s, current_setting('work_mem')", (tid, rnd))
                    assert cur.fetchone() == (tid * 10 + rnd, f"{1 + tid}MB")
                    cur.execute(f"insert into {t} values (%s, %s)", (tid, rnd))
                    conn.commit()
                cur.execute("select 1 / %s", (0,))
            except psycopg2.errors.DivisionByZero:
                conn.rollback()
                cur = conn.cursor()
                cur.execute(
                    f"select count(*), current_setting('work_mem') from {t} where tid = %s", (tid,)
                )
                assert cur.fetchone() == (5, f"{1 + tid}MB")
                conn.rollback()
            else:
                raise AssertionError("no DivisionByZero")
            finally:
                conn.close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(tid,)) for tid in range(8)]
    try:
        for th in threads:
            th.start()
        for th in threads:
            th.join(60)
        assert not errors, errors[0]
        assert direct_rows(pg, f"select count(*), count(distinct tid) from {t}") == ["40|8"]
    finally:
        pg.psql(f"drop table if exists {t}", dbname="app")


@pytest.mark.parametrize("mode", MODES)
def test_pg8000_explicit_prepare(start_proxy: StartProxy, mode: str) -> None:
    proxy = proxy_for(start_proxy, mode, size=2)

    def connect() -> pg8000.native.Connection:
        return pg8000.native.Connection(
            "alice", host=proxy.host, port=proxy.port, database="app",
            password=PASSWORDS["alice"], timeout=10,
        )  # fmt: skip

    a, b = connect(), connect()
    try:
        calc = a.prepare("select cast(:x as int) * 3 + cast(:y as int), pg_backend_pid()")
        label = a.prepare("select 'a-' || cast(:s as text)")
        other = b.prepare("select 'b-' || cast(:s as text)")
        pids = set()
        for i in range(6):
            if i % 2:
                b.run("BEGIN")
                assert other.run(s=str(i)) == [[f"b-{i}"]]
            a.run("BEGIN")
            rows = calc.run(x=i, y=5)
            assert rows[0][0] == 3 * i + 5
            pids.add(rows[0][1])
            assert label.run(s=str(i)) == [[f"a-{i}"]]
            a.run("COMMIT")
            assert calc.run(x=i, y=0)[0][0] == 3 * i
            if i % 2:
                b.run("COMMIT")
        # An error, then the prepared statements go on working.
        with pytest.raises(pg8000.native.DatabaseError) as info:
            a.run("select 1 / cast(:z as int)", z=0)
        assert info.value.args[0]["C"] == "22012"
        assert label.run(s="after") == [["a-after"]]
        # Close (the Close message) and prepare the same query again.
        label.close()
        again = a.prepare("select 'a-' || cast(:s as text)")
        assert again.run(s="again") == [["a-again"]]
        assert other.run(s="end") == [["b-end"]]
        assert len(pids) == (2 if mode == "transaction" else 1), pids
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("mode", MODES)
async def test_sqlalchemy_async_asyncpg(
    pg: LocalPostgres, start_proxy: StartProxy, mode: str
) -> None:
    proxy = proxy_for(start_proxy, mode, size=2, clients=6)
    t = table("sa")
    pg.psql(f"create table {t} (tid int, n int); grant all on {t} to alice", dbname="app")
    url = f"postgresql+asyncpg://alice:{PASSWORDS['alice']}@{proxy.host}:{proxy.port}/app"
    engine = create_async_engine(url, pool_size=6, max_overflow=0)

    async def task(tid: int) -> None:
        for rnd in range(4):
            async with engine.begin() as conn:
                got = await conn.scalar(
                    text("select cast(:a as int) * 100 + cast(:b as int)"), {"a": tid, "b": rnd}
                )
                assert got == tid * 100 + rnd
                await conn.execute(
                    text(f"insert into {t} values (:tid, :n)"), {"tid": tid, "n": rnd}
                )
            async with engine.connect() as conn:
                rows = (
                    await conn.execute(
                        text(f"select n from {t} where tid = :tid order by n"), {"tid": tid}
                    )
                ).all()
                assert [r[0] for r in rows] == list(range(rnd + 1))

    try:
        await asyncio.wait_for(asyncio.gather(*(task(tid) for tid in range(20))), 90)
        assert direct_rows(pg, f"select count(*), count(distinct tid) from {t}") == ["80|20"]
    finally:
        await engine.dispose()
        pg.psql(f"drop table if exists {t}", dbname="app")


# --------------------------------------------------------------------------------------------
# pgbench -M prepared at 50 clients

BENCH_DB = "prepared_bench"


@pytest.fixture(scope="module")
def prepared_bench_db(pg: LocalPostgres) -> Iterator[str]:
    pg.psql(f"DROP DATABASE IF EXISTS {BENCH_DB} WITH (FORCE)")
    pg.create_database(BENCH_DB, owner="alice")
    yield BENCH_DB
    pg.psql(f"DROP DATABASE IF EXISTS {BENCH_DB} WITH (FORCE)")


def test_pgbench_prepared_50_clients(
    pg: LocalPostgres, start_proxy: StartProxy, prepared_bench_db: str
) -> None:
    db = prepared_bench_db
    proxy = start(
        start_proxy,
        "transaction",
        size=3,
        databases=[{"name": db, "host": pg.host, "port": pg.port}],
        pool={"query_wait_timeout_s": 30},
    )
    init = run_pgbench(pg, proxy, "-i", "-s", "1", "-q", dbname=db)
    assert init.returncode == 0, init.stdout + init.stderr
    clients, per_client = 50, 20
    # pgbench prepares with a blocking PQprepare: one thread per client.
    proc = run_pgbench(
        pg, proxy, "-M", "prepared", "-c", str(clients), "-j", str(clients),
        "-t", str(per_client), dbname=db, timeout=90,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = parse_pgbench(proc)
    assert result.expected == clients * per_client, result.output
    assert result.processed == result.expected, result.output
    assert result.failed == 0, result.output
    assert pg.psql("select count(*) from pgbench_history", dbname=db) == str(clients * per_client)
    sums = pg.psql(
        "select (select sum(abalance) from pgbench_accounts) = "
        "(select sum(tbalance) from pgbench_tellers) and "
        "(select sum(tbalance) from pgbench_tellers) = "
        "(select sum(bbalance) from pgbench_branches)",
        dbname=db,
    )
    assert sums == "t"
    assert proxy.pool_stats(db, "alice")["total"] <= 3
    assert x.pinned(proxy, db) == 0


# --------------------------------------------------------------------------------------------
# The protocol itself: long names, Close, DEALLOCATE / DISCARD


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("length", [5000, 70000])
async def test_statement_name_longer_than_buffers(
    start_proxy: StartProxy, mode: str, length: int
) -> None:
    """Statement names longer than the proxy's client (4 KiB) and server (64 KiB) receive
    buffers. PostgreSQL itself keys statements by their first 63 bytes, so the names differ
    there; it also refuses Describe and Close messages over 10,000 bytes ("invalid message
    length", connection closed), so the 70,000-byte name is only used in Parse and Bind."""
    small = length < 9000
    proxy = proxy_for(start_proxy, mode, size=2)
    c = await x.raw_login(proxy)
    shuffler = x.Shuffler(await x.raw_login(proxy))
    name = ("n" + secrets.token_hex(8)).ljust(length, "z")
    name2 = ("m" + secrets.token_hex(8)).ljust(length + 1, "y")
    try:
        r = await x.roundtrip(
            c, x.parse(name, "select $1::int + 1"), x.parse(name2, "select 2"), x.SYNC
        )
        assert r.kinds == ["1", "1", "Z:I"]
        for i in range(4):
            if i % 2:
                await shuffler.hold()
            first = [x.describe("S", name)] if small else []
            r = await x.roundtrip(
                c,
                *first,
                x.bind(name, [str(i)]),
                x.execute(),
                x.bind(name2),
                x.execute(),
                x.SYNC,
            )
            assert r.kinds == ["t", "T"] * small + ["2", "D", "C", "2", "D", "C", "Z:I"]
            assert r.rows == [[str(i + 1)], ["2"]]
            if i % 2:
                await shuffler.release()
        if small:
            r = await x.roundtrip(c, x.close("S", name), x.SYNC)
            assert r.kinds == ["3", "Z:I"]
            r = await x.roundtrip(c, x.bind(name, ["1"]), x.execute(), x.SYNC)
            assert r.kinds == ["E:26000", "Z:I"]
        else:
            await c.simple_query("DEALLOCATE ALL")
            r = await x.roundtrip(c, x.bind(name, ["1"]), x.execute(), x.SYNC)
            assert r.kinds == ["E:26000", "Z:I"]
            r = await x.roundtrip(c, x.parse(name2, "select 2"), x.SYNC)
            assert r.kinds == ["1", "Z:I"]
        r = await x.roundtrip(c, x.bind(name2), x.execute(), x.SYNC)
        assert r.rows == [["2"]]
    finally:
        await c.close()
        await shuffler.other.close()


@pytest.mark.parametrize("mode", MODES)
async def test_close_message(start_proxy: StartProxy, mode: str) -> None:
    proxy = proxy_for(start_proxy, mode, size=2)
    c = await x.raw_login(proxy)
    shuffler = x.Shuffler(await x.raw_login(proxy))
    try:
        r = await x.roundtrip(
            c, x.parse("s1", "select $1::int * 2"), x.parse("s2", "select 'two'"), x.SYNC
        )
        assert r.kinds == ["1", "1", "Z:I"]
        await shuffler.hold()
        # Close after Execute in the same pipeline: CloseComplete comes in order, after the
        # results of what preceded it.
        r = await x.roundtrip(
            c, x.bind("s1", ["21"]), x.execute(), x.close("S", "s1"), x.bind("s2"), x.execute(),
            x.SYNC,
        )  # fmt: skip
        assert r.kinds == ["2", "D", "C", "3", "2", "D", "C", "Z:I"]
        assert r.rows == [["42"], ["two"]]
        await shuffler.release()
        # The closed statement is gone for this client, whichever server connection it uses.
        for i in range(2):
            if i:
                await shuffler.hold()
            r = await x.roundtrip(c, x.bind("s1", ["1"]), x.execute(), x.SYNC)
            assert r.kinds == ["E:26000", "Z:I"]
            r = await x.roundtrip(c, x.describe("S", "s1"), x.SYNC)
            assert r.kinds == ["E:26000", "Z:I"]
            if i:
                await shuffler.release()
        # Closing a name that does not exist is not an error (as on PostgreSQL); closing a portal
        # answers CloseComplete too.
        r = await x.roundtrip(c, x.close("S", "never_prepared"), x.close("P", "no_portal"), x.SYNC)
        assert r.kinds == ["3", "3", "Z:I"]
        # Flush (not Sync) after Close: the CloseComplete arrives without waiting for a Sync.
        c.send(x.close("S", "s2") + x.FLUSH)
        t, _ = await c.read_message(5)
        assert t == b"3"
        r = await x.roundtrip(c, x.SYNC)
        assert r.kinds == ["Z:I"]
        # The name can be prepared again, for another query.
        r = await x.roundtrip(
            c, x.parse("s1", "select 'new s1'"), x.bind("s1"), x.execute(), x.SYNC
        )
        assert r.kinds == ["1", "2", "D", "C", "Z:I"]
        assert r.rows == [["new s1"]]
        # Preparing a name that exists is an error, and the old statement stays.
        r = await x.roundtrip(c, x.parse("s1", "select 'other'"), x.SYNC)
        assert r.kinds == ["E:42P05", "Z:I"]
        await shuffler.hold()
        r = await x.roundtrip(c, x.bind("s1"), x.execute(), x.SYNC)
        assert r.rows == [["new s1"]]
        await shuffler.release()
        # A portal closed mid-way.
        r = await x.roundtrip(c, x.parse("s3", "select g from generate_series(1, 5) g"), x.SYNC)
        assert r.kinds == ["1", "Z:I"]
        r = await x.roundtrip(
            c, x.bind("s3", portal="p1"), x.execute("p1", 2), x.close("P", "p1"),
            x.execute("p1", 2), x.SYNC,
        )  # fmt: skip
        assert r.kinds == ["2", "D", "D", "s", "3", "E:34000", "Z:I"]
    finally:
        await c.close()
        await shuffler.other.close()


@pytest.mark.parametrize("mode", MODES)
async def test_deallocate_and_discard(start_proxy: StartProxy, mode: str) -> None:
    """SQL DEALLOCATE name / DEALLOCATE ALL / DISCARD ALL keep the client's view of its
    statements consistent, whichever server connection runs the next transaction."""
    proxy = proxy_for(start_proxy, mode, size=2)
    c = await x.raw_login(proxy)
    shuffler = x.Shuffler(await x.raw_login(proxy))

    async def run(name: str) -> list[str]:
        r = await x.roundtrip(c, x.bind(name), x.execute(), x.SYNC)
        return r.kinds if r.errors else [str(v) for row in r.rows for v in row]

    try:
        r = await x.roundtrip(
            c, x.parse("d1", "select 'd1'"), x.parse("d2", "select 'd2'"),
            x.parse("d3", "select 'd3'"), x.SYNC,
        )  # fmt: skip
        assert r.kinds == ["1", "1", "1", "Z:I"]
        assert await run("d1") == ["d1"]

        await c.simple_query("DEALLOCATE d1")
        await shuffler.hold()
        assert await run("d1") == ["E:26000", "Z:I"]
        assert await run("d2") == ["d2"]
        await shuffler.release()
        with pytest.raises(RawError) as info:
            await c.simple_query("DEALLOCATE d1")
        assert info.value.sqlstate == "26000"
        await c.simple_query("DEALLOCATE PREPARE d2")
        assert await run("d2") == ["E:26000", "Z:I"]
        assert await run("d3") == ["d3"]

        # Re-prepare d1, then DEALLOCATE ALL drops everything.
        r = await x.roundtrip(c, x.parse("d1", "select 'd1 again'"), x.SYNC)
        assert r.kinds == ["1", "Z:I"]
        await c.simple_query("DEALLOCATE ALL")
        for i in range(2):
            if i:
                await shuffler.hold()
            assert await run("d1") == ["E:26000", "Z:I"]
            assert await run("d3") == ["E:26000", "Z:I"]
            if i:
                await shuffler.release()
        # Same names, new queries: no "already exists".
        r = await x.roundtrip(
            c, x.parse("d1", "select 'd1 v3'"), x.parse("d3", "select $1::int + 3"), x.SYNC
        )
        assert r.kinds == ["1", "1", "Z:I"]
        await shuffler.hold()
        assert await run("d1") == ["d1 v3"]
        r = await x.roundtrip(c, x.bind("d3", ["4"]), x.execute(), x.SYNC)
        assert r.rows == [["7"]]
        await shuffler.release()

        # DISCARD ALL drops statements too (and settings).
        await c.simple_query("SET work_mem = '3MB'")
        await c.simple_query("DISCARD ALL")
        await shuffler.hold()
        assert await run("d1") == ["E:26000", "Z:I"]
        assert await run("d3") == ["E:26000", "Z:I"]
        rows = await c.simple_query("SHOW work_mem")
        assert rows != [["3MB"]]
        await shuffler.release()
        r = await x.roundtrip(c, x.parse("d1", "select 'd1 v4'"), x.bind("d1"), x.execute(), x.SYNC)
        assert r.kinds == ["1", "2", "D", "C", "Z:I"]
        assert r.rows == [["d1 v4"]]
    finally:
        await c.close()
        await shuffler.other.close()
