"""psql and pgbench through the proxy to a real PostgreSQL.

Every test checks an outcome the server produced: rows read back over a direct connection,
server-reported settings, backend pids, SQLSTATEs. Tests that take a `mode` run in both pool
modes.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.clients import (
    MODES,
    direct_rows,
    parse_pgbench,
    run_pgbench,
    run_psql,
    start,
    table,
)
from tests.support.pg import LocalPostgres
from tests.support.proxy import StartProxy

# --------------------------------------------------------------------------------------------
# 1. psql


@pytest.mark.parametrize("mode", MODES)
def test_psql_multiple_commands(pg: LocalPostgres, start_proxy: StartProxy, mode: str) -> None:
    proxy = start(start_proxy, mode)
    out = run_psql(
        pg,
        proxy,
        "-c",
        "select 40 + 2",
        "-c",
        "select current_user, current_database()",
        "-c",
        "select string_agg(g::text, ',') from generate_series(1, 5) g",
        "-c",
        "select 1; select 2",
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["42", "alice|app", "1,2,3,4,5", "1", "2"]


@pytest.mark.parametrize("mode", MODES)
def test_psql_error_inside_transaction(
    pg: LocalPostgres, start_proxy: StartProxy, mode: str
) -> None:
    proxy = start(start_proxy, mode)
    t = table("psql_err")
    script = f"""
BEGIN;
CREATE TABLE {t} (id int);
INSERT INTO {t} VALUES (1);
SELECT 'in-tx';
SELECT 1/0;
\\echo status-after-error :LAST_ERROR_SQLSTATE
SELECT 'never';
\\echo status-in-failed-tx :LAST_ERROR_SQLSTATE
ROLLBACK;
SELECT 'after', to_regclass('{t}') IS NULL;
SELECT 'again', 6 * 7;
"""
    out = run_psql(pg, proxy, "-f", "-", stdin=script)
    lines = out.stdout.splitlines()
    assert "in-tx" in lines
    assert "never" not in lines
    assert "status-after-error 22012" in lines
    # The next statement reached the same (aborted) transaction: the link was kept in state E.
    assert "status-in-failed-tx 25P02" in lines
    assert "division by zero" in out.stderr
    assert "current transaction is aborted" in out.stderr
    # ROLLBACK reached the backend holding the transaction (else: "no transaction in progress").
    assert "no transaction in progress" not in out.stderr
    assert "after|t" in lines, out.stdout + out.stderr
    assert "again|42" in lines
    assert "connection" not in out.stderr.lower(), out.stderr
    assert direct_rows(pg, f"select to_regclass('{t}') is null") == ["t"]

    # ON_ERROR_ROLLBACK: psql wraps each statement in a savepoint; the failed one is rolled
    # back and the transaction commits the rest.
    script = f"""
\\set ON_ERROR_ROLLBACK on
CREATE TABLE {t} (id int);
BEGIN;
INSERT INTO {t} VALUES (1);
SELECT 1/0;
INSERT INTO {t} VALUES (2);
COMMIT;
SELECT 'rows', string_agg(id::text, ',' ORDER BY id) FROM {t};
"""
    try:
        out = run_psql(pg, proxy, "-f", "-", stdin=script)
        assert "division by zero" in out.stderr
        assert "rows|1,2" in out.stdout.splitlines(), out.stdout + out.stderr
        assert direct_rows(pg, f"select count(*) from {t}") == ["2"]
    finally:
        pg.psql(f"DROP TABLE IF EXISTS {t}", dbname="app")


@pytest.mark.parametrize("mode", MODES)
def test_psql_copy(pg: LocalPostgres, start_proxy: StartProxy, mode: str) -> None:
    proxy = start(start_proxy, mode)
    t = table("psql_copy")
    n = 5000
    data = "".join(f"{i}\tname-{i}\n" for i in range(1, n + 1))
    try:
        # COPY data inline in a script (psql reads it from the script stream).
        script = (
            f"CREATE TABLE {t} (id int PRIMARY KEY, name text);\n"
            f"COPY {t} FROM STDIN;\n{data}\\.\n"
            f"SELECT 'loaded', count(*), sum(id) FROM {t};\n"
        )
        out = run_psql(pg, proxy, "-f", "-", stdin=script)
        assert out.returncode == 0, out.stderr
        assert f"loaded|{n}|{n * (n + 1) // 2}" in out.stdout.splitlines(), out.stdout

        # COPY FROM STDIN via -c: the data comes from psql's stdin.
        more = "".join(f"{i}\tname-{i}\n" for i in range(n + 1, 2 * n + 1))
        out = run_psql(pg, proxy, "-c", f"COPY {t} FROM STDIN", stdin=more)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == f"COPY {n}"

        # \copy ... from pstdin (client-side copy through the same protocol).
        extra = "".join(f"{i}\tname-{i}\n" for i in range(2 * n + 1, 2 * n + 101))
        out = run_psql(pg, proxy, "-c", f"\\copy {t} from pstdin", stdin=extra)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "COPY 100"

        # COPY TO STDOUT and \copy to stdout: every row comes back.
        out = run_psql(pg, proxy, "-c", f"COPY (SELECT id, name FROM {t} ORDER BY id) TO STDOUT")
        assert out.returncode == 0, out.stderr
        rows = out.stdout.splitlines()
        assert len(rows) == 2 * n + 100
        assert rows[0] == "1\tname-1"
        assert rows[-1] == f"{2 * n + 100}\tname-{2 * n + 100}"
        out = run_psql(pg, proxy, "-c", f"\\copy (SELECT id FROM {t} WHERE id <= 10) to stdout")
        assert out.returncode == 0, out.stderr
        assert out.stdout.split() == [str(i) for i in range(1, 11)]

        # A COPY that fails on bad data reports the error; the session keeps working.
        bad = (
            f"COPY {t} FROM STDIN;\n999999\tok\nnot-a-number\tx\n\\.\n"
            f"SELECT 'still', count(*) FROM {t};\n"
        )
        out = run_psql(pg, proxy, "-f", "-", stdin=bad)
        assert "invalid input syntax for type integer" in out.stderr
        assert f"still|{2 * n + 100}" in out.stdout.splitlines(), out.stdout + out.stderr
        assert direct_rows(pg, f"select count(*) from {t}") == [str(2 * n + 100)]
    finally:
        pg.psql(f"DROP TABLE IF EXISTS {t}", dbname="app")


# --------------------------------------------------------------------------------------------
# 2. pgbench

BENCH_DB = "clients_bench"


@pytest.fixture(scope="module")
def bench_db(pg: LocalPostgres) -> Iterator[str]:
    pg.psql(f"DROP DATABASE IF EXISTS {BENCH_DB} WITH (FORCE)")
    pg.create_database(BENCH_DB, owner="alice")
    yield BENCH_DB
    pg.psql(f"DROP DATABASE IF EXISTS {BENCH_DB} WITH (FORCE)")


@pytest.mark.parametrize("mode", MODES)
def test_pgbench(pg: LocalPostgres, start_proxy: StartProxy, bench_db: str, mode: str) -> None:
    proxy = start(
        start_proxy,
        mode,
        size=3,
        databases=[
            {"name": "app", "host": pg.host, "port": pg.port},
            {"name": bench_db, "host": pg.host, "port": pg.port},
        ],
    )
    init = run_pgbench(pg, proxy, "-i", "-s", "1", "-q", dbname=bench_db)
    assert init.returncode == 0, init.stdout + init.stderr
    assert pg.psql("select count(*) from pgbench_accounts", dbname=bench_db) == "100000"

    clients, per_client = 8, 60
    # Named prepared statements only in session mode, where a client owns its backend (and
    # DISCARD ALL must drop them before the next client prepares the same names). pgbench
    # prepares with a blocking PQprepare, which would stall every client of a thread while one
    # of them queues for a backend: give each client its own thread there.
    protocols = ("simple", "extended", "prepared") if mode == "session" else ("simple", "extended")
    for protocol in protocols:
        proc = run_pgbench(
            pg,
            proxy,
            "-M",
            protocol,
            "-c",
            str(clients),
            "-j",
            str(clients) if protocol == "prepared" else "2",
            "-t",
            str(per_client),
            dbname=bench_db,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        result = parse_pgbench(proc)
        assert result.expected == clients * per_client, result.output
        assert result.processed == result.expected, result.output
        assert result.failed == 0, result.output
        assert result.tps > 0, result.output
        # pgbench truncates pgbench_history before each run: one row per transaction.
        history = pg.psql("select count(*) from pgbench_history", dbname=bench_db)
        assert history == str(clients * per_client)
        # Every transaction added the same delta to an account, a teller and a branch.
        sums = pg.psql(
            "select (select sum(abalance) from pgbench_accounts) = "
            "(select sum(tbalance) from pgbench_tellers) and "
            "(select sum(tbalance) from pgbench_tellers) = "
            "(select sum(bbalance) from pgbench_branches)",
            dbname=bench_db,
        )
        assert sums == "t"
    # Eight clients shared at most three server connections.
    assert proxy.pool_stats(bench_db, "alice")["total"] <= 3
    on_server = pg.psql(
        f"select count(*) from pg_stat_activity where datname = '{bench_db}' and usename = 'alice'"
    )
    assert 1 <= int(on_server) <= 3
