"""psycopg 3 through the proxy to a real PostgreSQL.

Every test checks an outcome the server produced: rows read back over a direct connection,
server-reported settings, backend pids, SQLSTATEs. Tests that take a `mode` run in both pool
modes.
"""

from __future__ import annotations

import psycopg
import pytest
from psycopg.pq import TransactionStatus

from tests.support.clients import MODES, Boom, direct_rows, pconnect, start, table
from tests.support.pg import LocalPostgres
from tests.support.proxy import StartProxy

# --------------------------------------------------------------------------------------------
# 4. psycopg 3


@pytest.mark.parametrize("mode", MODES)
def test_psycopg_queries_and_transactions(
    pg: LocalPostgres, start_proxy: StartProxy, mode: str
) -> None:
    proxy = start(start_proxy, mode)
    t = table("pg3_tx")
    try:
        with pconnect(proxy, mode) as conn:
            assert conn.execute("select %s::int + %s::int, %s::text", (40, 2, "x")).fetchone() == (
                42,
                "x",
            )
            # Past psycopg's prepare threshold (session mode prepares server-side).
            for i in range(8):
                assert conn.execute("select %s::int * 3", (i,)).fetchone() == (3 * i,)
            conn.execute(f"create table {t} (id int primary key)")
            conn.commit()
            conn.execute(f"insert into {t} values (1)")
            assert conn.info.transaction_status == TransactionStatus.INTRANS
            conn.rollback()
            conn.execute(f"insert into {t} values (2)")
            conn.commit()
            with pytest.raises(psycopg.errors.DivisionByZero):
                conn.execute("select 1/0")
            assert conn.info.transaction_status == TransactionStatus.INERROR
            with pytest.raises(psycopg.errors.InFailedSqlTransaction):
                conn.execute("select 1")
            conn.rollback()
            assert conn.execute("select 1").fetchone() == (1,)
            conn.rollback()
        with pconnect(proxy, mode, autocommit=True) as conn:
            with conn.transaction():
                conn.execute(f"insert into {t} values (3)")
            with pytest.raises(Boom), conn.transaction():
                conn.execute(f"insert into {t} values (4)")
                raise Boom
            conn.execute(f"insert into {t} values (5)")
            assert conn.info.transaction_status == TransactionStatus.IDLE
            cur = conn.cursor()
            cur.executemany(f"insert into {t} values (%s)", [(i,) for i in range(100, 150)])
        assert direct_rows(pg, f"select count(*), min(id), max(id) from {t} where id < 100") == [
            "3|2|5"
        ]
        assert direct_rows(
            pg, f"select string_agg(id::text, ',' order by id) from {t} where id < 100"
        ) == ["2,3,5"]
        assert direct_rows(pg, f"select count(*) from {t} where id >= 100") == ["50"]
    finally:
        pg.psql(f"DROP TABLE IF EXISTS {t}", dbname="app")


@pytest.mark.parametrize("mode", MODES)
def test_psycopg_copy(pg: LocalPostgres, start_proxy: StartProxy, mode: str) -> None:
    proxy = start(start_proxy, mode)
    t = table("pg3_copy")
    n = 20000
    try:
        with pconnect(proxy, mode, autocommit=True) as conn, conn.cursor() as cur:
            cur.execute(f"create table {t} (id int primary key, name text)")
            with cur.copy(f"COPY {t} (id, name) FROM STDIN") as copy:
                for i in range(n):
                    copy.write_row((i, f"name-{i}"))
            assert cur.rowcount == n
            with cur.copy(f"COPY (SELECT id, name FROM {t} ORDER BY id) TO STDOUT") as copy:
                copy.set_types(["int4", "text"])
                rows = list(copy.rows())
            assert len(rows) == n
            assert rows[0] == (0, "name-0")
            assert rows[-1] == (n - 1, f"name-{n - 1}")
            # Binary COPY both ways.
            with cur.copy(f"COPY {t} (id, name) FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(["int4", "text"])
                for i in range(n, n + 500):
                    copy.write_row((i, f"bin-{i}"))
            with cur.copy(
                f"COPY (SELECT id, name FROM {t} WHERE id >= {n} ORDER BY id) TO STDOUT "
                "(FORMAT BINARY)"
            ) as copy:
                copy.set_types(["int4", "text"])
                binrows = list(copy.rows())
            assert binrows[0] == (n, f"bin-{n}") and len(binrows) == 500
            # A failing COPY FROM: an error, nothing loaded, the connection keeps working.
            with (
                pytest.raises(psycopg.errors.InvalidTextRepresentation),
                cur.copy(f"COPY {t} (id, name) FROM STDIN") as copy,
            ):
                copy.write(b"999999\tok\nnot-a-number\tx\n")
            assert cur.execute(f"select count(*) from {t}").fetchone() == (n + 500,)
        with pconnect(proxy, mode) as conn, conn.cursor() as cur:
            # COPY inside an explicit (non-autocommit) transaction, rolled back.
            with cur.copy(f"COPY {t} (id, name) FROM STDIN") as copy:
                copy.write_row((-1, "rolled-back"))
            conn.rollback()
        assert direct_rows(pg, f"select count(*), min(id) from {t}") == [f"{n + 500}|0"]
    finally:
        pg.psql(f"DROP TABLE IF EXISTS {t}", dbname="app")


@pytest.mark.parametrize("mode", MODES)
def test_psycopg_pipeline(pg: LocalPostgres, start_proxy: StartProxy, mode: str) -> None:
    proxy = start(start_proxy, mode)
    t = table("pg3_pipe")
    try:
        with pconnect(proxy, mode, autocommit=True) as conn:
            conn.execute(f"create table {t} (id int primary key, v text)")
            with conn.pipeline() as p:
                c1 = conn.execute(f"insert into {t} values (%s, %s) returning id", (1, "a"))
                p.sync()
                c2 = conn.execute(f"insert into {t} values (%s, %s) returning id", (2, "b"))
                p.sync()
                c3 = conn.execute(f"select count(*) from {t}")
                c4 = conn.execute("select %s::int + 1", (41,))
                p.sync()
                c5 = conn.execute("select pg_backend_pid() = pg_backend_pid()")
            assert c1.fetchone() == (1,)
            assert c2.fetchone() == (2,)
            assert c3.fetchone() == (2,)
            assert c4.fetchone() == (42,)
            assert c5.fetchone() == (True,)
            # An error in a pipeline surfaces; statements after the next Sync still run.
            with pytest.raises(psycopg.errors.DivisionByZero), conn.pipeline() as p:
                conn.execute(f"insert into {t} values (%s, %s)", (3, "c"))
                p.sync()
                conn.execute("select 1/0")
                conn.execute(f"insert into {t} values (%s, %s)", (99, "aborted"))
                p.sync()
            assert conn.execute("select 7").fetchone() == (7,)
            # executemany runs as a pipeline.
            conn.cursor().executemany(
                f"insert into {t} values (%s, %s)", [(i, f"m{i}") for i in range(10, 60)]
            )
        with pconnect(proxy, mode) as conn:
            with conn.pipeline() as p:
                for i in range(100, 110):
                    conn.execute(f"insert into {t} values (%s, %s)", (i, "tx"))
                p.sync()
                cur = conn.execute(f"select count(*) from {t} where id >= 100")
            assert cur.fetchone() == (10,)
            assert conn.info.transaction_status == TransactionStatus.INTRANS
            conn.rollback()
            with conn.pipeline():
                for i in range(200, 205):
                    conn.execute(f"insert into {t} values (%s, %s)", (i, "tx"))
            conn.commit()
        ids = direct_rows(pg, f"select id from {t} order by id")
        expected = [1, 2, 3, *range(10, 60), *range(200, 205)]
        assert ids == [str(i) for i in expected]
    finally:
        pg.psql(f"DROP TABLE IF EXISTS {t}", dbname="app")


def test_psycopg_pipeline_releases_server_connection_at_transaction_end(
    start_proxy: StartProxy,
) -> None:
    """psycopg's pipeline mode (and executemany, which uses it) ends with Sync then Flush: the
    Flush left the client marked as mid-batch, so it kept its server connection while idle, and
    a pool of one was lost to everyone else until its next Sync (SQLAlchemy's suite through the
    proxy: docs/outside-suites.md)."""
    proxy = start(start_proxy, "transaction", size=1, pool={"query_wait_timeout_s": 5})
    with pconnect(proxy, "transaction") as conn, pconnect(proxy, "transaction") as other:
        with conn.pipeline():
            conn.execute("select %s::int", (1,))
            conn.execute("select %s::int", (2,))
        conn.commit()
        conn.cursor().executemany("select %s::int", [(3,), (4,)])
        conn.rollback()
        assert conn.info.transaction_status == TransactionStatus.IDLE
        # Waits at most query_wait_timeout_s (then 57014) if conn still holds the only server.
        assert other.execute("select 42").fetchone() == (42,)
        other.rollback()
        assert conn.execute("select 43").fetchone() == (43,)
