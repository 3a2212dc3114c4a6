"""PgBouncer's idle timeouts against a real PostgreSQL: pool.idle_transaction_timeout_s and
pool.client_idle_timeout_s.

Each test waits through the idle period under test (that is the behaviour); everything else
waits on conditions. Bounds are the limit from below and 5x it from above (a loaded 2-core
machine). What a server connection holds is asked of PostgreSQL itself (pg_locks,
pg_stat_activity over a direct superuser connection).
"""

from __future__ import annotations

import time

import asyncpg
import psycopg
import pytest

from pgpool_proxy.protocol import messages as m
from tests.support.proxy import StartProxy
from tests.support.rawpg import RawClient, raw_login
from tests.support.waits import wait_for

LIMIT_S = 1.0
LOCK_KEY = 4242


async def _status_after(client: RawClient, sql: str) -> tuple[list[bytes], int]:
    """Run one simple query; the DataRow bodies and the ReadyForQuery status."""
    client.send(m.query(sql))
    rows = []
    while True:
        t, body = await client.read_message()
        if t == b"D":
            rows.append(body)
        elif t == b"E":
            raise AssertionError(m.parse_error_fields(body))
        elif t == b"Z":
            return rows, body[0]


async def _locks_of(admin: asyncpg.Connection, pid: int) -> list[str]:
    rows = await admin.fetch(
        "SELECT locktype FROM pg_locks WHERE pid = $1 AND locktype IN "
        "('advisory', 'transactionid', 'tuple') ORDER BY 1",
        pid,
    )
    return [r[0] for r in rows]


@pytest.mark.parametrize(
    ("mode", "case"),
    [
        ("transaction", "in block"),
        ("session", "failed"),
        # A session-level lock outlives ROLLBACK: the reset after it (DISCARD ALL) must go.
        ("transaction", "session lock"),
    ],
)
async def test_idle_in_transaction_is_closed_and_its_server_rolled_back_and_reused(
    start_proxy: StartProxy, admin: asyncpg.Connection, mode: str, case: str
) -> None:
    failed = case == "failed"
    await admin.execute(
        "DROP TABLE IF EXISTS idle_tx_t; CREATE TABLE idle_tx_t (id int PRIMARY KEY, v int); "
        "INSERT INTO idle_tx_t VALUES (1, 0); GRANT ALL ON idle_tx_t TO alice"
    )
    # One server connection: the next client can only get the one the idle client held.
    proxy = start_proxy(
        proxy={"pool_mode": mode},
        pool={"default_pool_size": 1, "idle_transaction_timeout_s": LIMIT_S},
    )
    a = await raw_login(proxy)
    b: RawClient | None = None
    try:
        rows = await a.simple_query(
            "BEGIN; UPDATE idle_tx_t SET v = v + 1 WHERE id = 1; "
            f"SELECT pg_advisory_xact_lock({LOCK_KEY}); SELECT pg_backend_pid()"
        )
        pid = int(rows[0][0] or 0)
        want = b"T"
        held = ["advisory", "transactionid"]
        if case == "session lock":
            assert await a.simple_query(f"SELECT pg_advisory_lock({LOCK_KEY + 1})") == [[""]]
            held = ["advisory", "advisory", "transactionid"]
        assert await _locks_of(admin, pid) == held
        if failed:
            # A failed transaction ('E') has let its locks go; it still holds the connection
            # until the client rolls back.
            a.send(m.query("SELECT 1/0"))
            assert (await a.read_error())["C"] == "22012"
            assert await a.read_until_ready() == ord("E")
            want = b"E"
        t0 = time.monotonic()
        state = await admin.fetchval("SELECT state FROM pg_stat_activity WHERE pid = $1", pid)
        assert state == ("idle in transaction (aborted)" if want == b"E" else "idle in transaction")

        # The idle period under test.
        err = await a.read_error(LIMIT_S * 10)
        waited = time.monotonic() - t0
        assert (err["S"], err["C"], err["M"]) == ("FATAL", "08P01", "idle transaction timeout")
        assert "pool.idle_transaction_timeout_s" in err["D"]
        assert LIMIT_S * 0.9 <= waited < LIMIT_S * 5, waited
        assert await a.closed(5)

        # The server connection was rolled back, not closed: the next client gets the same
        # server process, outside any transaction, and nothing of a's transaction is left.
        await wait_for(
            lambda: proxy.pool_stats()["idle"] == 1, what="the rolled-back connection back idle"
        )
        b = await raw_login(proxy)
        rows_b, status = await _status_after(b, "SELECT pg_backend_pid()")
        assert status == ord("I")
        assert int(rows_b[0][6:]) == pid  # DataRow: column count, length, then the value
        assert await _locks_of(admin, pid) == []
        assert await admin.fetchval("SELECT v FROM idle_tx_t WHERE id = 1") == 0
        # Others can take what a held.
        async with admin.transaction():
            assert await admin.fetchval("SELECT pg_try_advisory_xact_lock($1)", LOCK_KEY)
            assert await admin.fetchval("SELECT pg_try_advisory_xact_lock($1)", LOCK_KEY + 1)
            await admin.execute("SELECT * FROM idle_tx_t WHERE id = 1 FOR UPDATE NOWAIT")
        assert proxy.pool_stats()["total"] == 1
    finally:
        await a.close()
        if b is not None:
            await b.close()
        await admin.execute("DROP TABLE IF EXISTS idle_tx_t")


async def test_busy_or_talking_transactions_are_not_idle(start_proxy: StartProxy) -> None:
    proxy = start_proxy(pool={"idle_transaction_timeout_s": LIMIT_S})
    a = await raw_login(proxy)
    try:
        assert await a.simple_query("BEGIN") == []
        # A query running past the limit is not idleness: nothing is owed by the client.
        assert await a.simple_query(f"SELECT pg_sleep({LIMIT_S * 1.6})") == [[""]]
        # Statements closer together than the limit keep the transaction alive, however long.
        t0 = time.monotonic()
        while time.monotonic() - t0 < LIMIT_S * 2:
            assert await a.simple_query("SELECT pg_sleep(0.2)") == [[""]]
        _, status = await _status_after(a, "SELECT 1")
        assert status == ord("T")
        assert await a.simple_query("COMMIT") == []
    finally:
        await a.close()


async def test_client_idle_timeout_closes_idle_clients_only(start_proxy: StartProxy) -> None:
    proxy = start_proxy(pool={"client_idle_timeout_s": LIMIT_S})
    idle = await raw_login(proxy)
    in_tx = await raw_login(proxy)
    talking = await raw_login(proxy)
    try:
        # A client holding a server connection (inside a transaction) is not idle in this sense.
        assert await in_tx.simple_query("BEGIN") == []
        assert await idle.simple_query("SELECT 1") == [["1"]]
        t0 = time.monotonic()
        # The idle period under test, while another client keeps talking.
        while True:
            assert await talking.simple_query("SELECT 1") == [["1"]]
            try:
                err = await idle.read_error(0.2)
                break
            except TimeoutError:
                assert time.monotonic() - t0 < LIMIT_S * 5, "the idle client was never closed"
        waited = time.monotonic() - t0
        assert (err["S"], err["C"], err["M"]) == ("FATAL", "08P01", "client_idle_timeout")
        assert LIMIT_S * 0.9 <= waited < LIMIT_S * 5, waited
        assert await idle.closed(5)
        # The others are still served, the transaction still open.
        _, status = await _status_after(in_tx, "SELECT 1")
        assert status == ord("T")
        assert await in_tx.simple_query("COMMIT") == []
        assert await talking.simple_query("SELECT 2") == [["2"]]
    finally:
        for c in (idle, in_tx, talking):
            await c.close()


async def test_set_live_on_the_console_which_is_never_idle_timed_out(
    start_proxy: StartProxy,
) -> None:
    proxy = start_proxy(admin={"admin_users": ["alice"]})
    console = await psycopg.AsyncConnection.connect(
        proxy.dsn("alice", "pgbouncer"), autocommit=True
    )
    in_tx = await raw_login(proxy)
    idle = await raw_login(proxy)
    try:
        # Opened before either timeout exists: the new values apply to clients already there.
        assert await in_tx.simple_query("BEGIN") == []
        assert await idle.simple_query("SELECT 1") == [["1"]]
        await console.execute(f"SET pool.idle_transaction_timeout_s = {LIMIT_S}")
        await console.execute(f"SET pool.client_idle_timeout_s = {LIMIT_S}")
        t0 = time.monotonic()
        # The idle period under test.
        assert (await in_tx.read_error(LIMIT_S * 10))["M"] == "idle transaction timeout"
        assert (await idle.read_error(LIMIT_S * 10))["M"] == "client_idle_timeout"
        assert time.monotonic() - t0 < LIMIT_S * 5
        # The console session sat idle as long: PgBouncer's janitor spares its admin clients too.
        cur = await console.execute("SHOW VERSION")
        assert await cur.fetchall()
        await console.execute("SET pool.client_idle_timeout_s = 0")
        await console.execute("SET pool.idle_transaction_timeout_s = 0")
    finally:
        await console.close()
        for c in (in_tx, idle):
            await c.close()
