"""Attacks on the proxy's result check of statements it prepares again (issue 13, see
test_fidelity_ddl.py): a hostile or unlucky client around the held message (CHECKING), broken
statements used in every way the protocol allows, and checks that fail or are skipped. Each
scenario runs directly and through the proxy (one server connection holding one statement, so
a statement used again is always prepared again) and the replies must be equal.
"""

from __future__ import annotations

import asyncio
import itertools

import asyncpg
import pytest

from pgpool_proxy.protocol import messages as m
from tests.integration.test_fidelity_ddl import raw_both, run
from tests.support import extproto as x
from tests.support.pg import LocalPostgres
from tests.support.proxy import PASSWORDS, ProxyThread, StartProxy
from tests.support.rawpg import RawClient

pytestmark = pytest.mark.timeout(60)

Outcome = list[object]
_n = itertools.count()


async def broken(c: RawClient, t: str, *names: str) -> Outcome:
    """Each name prepared and described for `SELECT * FROM t`, then the result changed and the
    statements pushed off the only server connection."""
    out: Outcome = []
    for name in names:
        out.append(await run(c, x.parse(name, f"SELECT * FROM {t}"), x.describe("S", name)))
    out.append(await run(c, x.parse("", f"ALTER TABLE {t} ALTER COLUMN b TYPE text")))
    out.append(await run(c, x.bind(""), x.execute()))
    out.append(await run(c, x.parse("evict", "SELECT 2")))
    return out


async def test_describe_close_and_parse_again_of_a_broken_name(
    pg: LocalPostgres, start_proxy: StartProxy
) -> None:
    async def scenario(c: RawClient, t: str) -> Outcome:
        out = await broken(c, t, "s1")
        out.append(await run(c, x.describe("S", "s1")))
        out.append(await run(c, x.describe("S", "s1"), x.close("S", "s1")))
        out.append(await run(c, x.close("S", "s1")))
        out.append(await run(c, x.parse("s1", f"SELECT * FROM {t}"), x.describe("S", "s1")))
        out.append(await run(c, x.bind("s1"), x.execute()))
        return out

    got = await raw_both(pg, start_proxy, scenario)
    assert got[-1] == ["2", "C", "Z:I"]


async def test_two_names_for_one_statement(pg: LocalPostgres, start_proxy: StartProxy) -> None:
    async def scenario(c: RawClient, t: str) -> Outcome:
        out = await broken(c, t, "s1", "s3")
        out.append(await run(c, x.bind("s1"), x.execute()))
        out.append(await run(c, x.bind("s3"), x.execute()))
        out.append(await run(c, x.close("S", "s1"), x.parse("s1", f"SELECT * FROM {t}")))
        out.append(await run(c, x.bind("s1"), x.execute()))
        out.append(await run(c, x.bind("s3"), x.execute()))
        out.append(await run(c, x.parse("evict2", "SELECT 3")))
        out.append(await run(c, x.describe("S", "s1"), x.bind("s1"), x.execute()))
        out.append(await run(c, x.bind("s3"), x.execute()))
        return out

    await raw_both(pg, start_proxy, scenario)


@pytest.mark.parametrize("drop", ["DISCARD ALL", "DEALLOCATE ALL", "DEALLOCATE s1"])
async def test_dropping_a_broken_statement(
    pg: LocalPostgres, start_proxy: StartProxy, drop: str
) -> None:
    async def scenario(c: RawClient, t: str) -> Outcome:
        out = await broken(c, t, "s1")
        out.append(await run(c, x.bind("s1"), x.execute()))
        out.append([len(r) for r in await c.simple_query(drop)])
        out.append(await run(c, x.bind("s1"), x.execute()))
        out.append(await run(c, x.parse("s1", f"SELECT * FROM {t}"), x.describe("S", "s1")))
        out.append(await run(c, x.bind("s1"), x.execute()))
        return out

    got = await raw_both(pg, start_proxy, scenario)
    assert got[-1] == ["2", "C", "Z:I"]


async def test_check_whose_parse_fails_table_dropped_and_recreated(
    pg: LocalPostgres, start_proxy: StartProxy
) -> None:
    async def scenario(c: RawClient, t: str) -> Outcome:
        out: Outcome = [await run(c, x.parse("s1", f"SELECT * FROM {t}"), x.describe("S", "s1"))]
        out.append(await run(c, x.parse("evict", "SELECT 2")))
        out.append(await run(c, x.parse("", f"DROP TABLE {t}"), x.bind(""), x.execute()))
        out.append(await run(c, x.bind("s1"), x.execute()))
        out.append(await run(c, x.describe("S", "s1")))
        out.append(await run(c, x.bind("s1"), x.execute(), x.bind("s1"), x.execute()))
        q = f"CREATE TABLE {t}(a int, b int)"
        out.append(await run(c, x.parse("", q), x.bind(""), x.execute()))
        out.append(await run(c, x.parse("evict", "SELECT 2")))
        out.append(await run(c, x.describe("S", "s1"), x.bind("s1"), x.execute()))
        return out

    got = await raw_both(pg, start_proxy, scenario)
    assert got[3] == ["E:42P01", "Z:I"]


async def test_check_in_a_failed_transaction(pg: LocalPostgres, start_proxy: StartProxy) -> None:
    async def scenario(c: RawClient, t: str) -> Outcome:
        out = await broken(c, t, "s1")
        out.append(await run(c, x.parse("", "BEGIN"), x.bind(""), x.execute()))
        out.append(await run(c, x.parse("", "SELECT 1/0"), x.bind(""), x.execute()))
        out.append(await run(c, x.bind("s1"), x.execute()))
        out.append(await run(c, x.describe("S", "s1")))
        out.append(await run(c, x.parse("", "ROLLBACK"), x.bind(""), x.execute()))
        out.append(await run(c, x.describe("S", "s1"), x.bind("s1"), x.execute()))
        return out

    got = await raw_both(pg, start_proxy, scenario)
    assert got[-1][-2:] == ["E:0A000", "Z:I"]


async def test_error_before_the_held_message_in_one_batch(
    pg: LocalPostgres, start_proxy: StartProxy
) -> None:
    """An error in a message sent before the held one, whose reply comes after the proxy held
    the Bind (no Sync in between): the check is skipped, the batch ends once."""

    async def scenario(c: RawClient, t: str) -> Outcome:
        out = await broken(c, t, "s1")
        out.append(
            await run(
                c,
                x.parse("", "SELECT 1/0"),
                x.bind(""),
                x.execute(),
                x.bind("s1"),
                x.execute(),
                x.describe("S", "s1"),
            )
        )
        out.append(await run(c, x.bind("s1"), x.execute(), x.describe("S", "s1")))
        return out

    await raw_both(pg, start_proxy, scenario)


async def test_pipelined_uses_behind_a_held_message(
    pg: LocalPostgres, start_proxy: StartProxy
) -> None:
    """Describe, Bind, Execute of a broken statement and of a good one, several Syncs, all in
    one write: each message after the held one is judged after the check."""

    async def scenario(c: RawClient, t: str) -> Outcome:
        out = await broken(c, t, "s1")
        out.append(await run(c, x.parse("ok", "SELECT 1 AS one"), x.describe("S", "ok")))
        c.send(
            x.describe("S", "s1")
            + x.bind("s1")
            + x.execute()
            + x.SYNC
            + x.bind("ok")
            + x.execute()
            + x.SYNC
            + x.bind("s1")
            + x.execute()
            + x.SYNC
        )
        for _ in range(3):
            got: list[str] = []
            while not got or not got[-1].startswith("Z"):
                t_, body = await c.read_message()
                got.extend(x.Reply([(t_, body)]).kinds)
            out.append(got)
        return out

    await raw_both(pg, start_proxy, scenario)


async def test_portal_with_a_row_limit(pg: LocalPostgres, start_proxy: StartProxy) -> None:
    async def scenario(c: RawClient, t: str) -> Outcome:
        out: Outcome = []
        out.append(
            await run(c, x.parse("", f"INSERT INTO {t} VALUES (3, 4)"), x.bind(""), x.execute())
        )
        out.append(
            await run(c, x.parse("s1", f"SELECT * FROM {t} ORDER BY a"), x.describe("S", "s1"))
        )
        out.append(await run(c, x.parse("evict", "SELECT 2")))
        out.append(await run(c, x.parse("", "BEGIN"), x.bind(""), x.execute()))
        out.append(await run(c, x.bind("s1", portal="p"), x.execute("p", 1), x.execute("p", 1)))
        out.append(await run(c, x.execute("p", 1)))
        out.append(await run(c, x.parse("", "COMMIT"), x.bind(""), x.execute()))
        out.append(await run(c, x.parse("", f"ALTER TABLE {t} ALTER COLUMN b TYPE text")))
        out.append(await run(c, x.bind(""), x.execute()))
        out.append(await run(c, x.parse("evict", "SELECT 2")))
        out.append(await run(c, x.close("S", "evict"), x.parse("evict", "SELECT 2")))
        out.append(await run(c, x.parse("", "BEGIN"), x.bind(""), x.execute()))
        out.append(await run(c, x.bind("s1", portal="p"), x.execute("p", 1)))
        out.append(await run(c, x.parse("", "ROLLBACK"), x.bind(""), x.execute()))
        return out

    await raw_both(pg, start_proxy, scenario)


async def test_copy_out_of_a_checked_statement(pg: LocalPostgres, start_proxy: StartProxy) -> None:
    async def scenario(c: RawClient, t: str) -> Outcome:
        out: Outcome = []
        q = f"COPY (SELECT * FROM {t}) TO STDOUT"
        out.append(await run(c, x.parse("s1", q), x.describe("S", "s1")))
        out.append(await run(c, x.parse("evict", "SELECT 2")))
        out.append(await run(c, x.describe("S", "s1"), x.bind("s1"), x.execute()))
        out.append(await run(c, x.parse("", f"ALTER TABLE {t} ALTER COLUMN b TYPE text")))
        out.append(await run(c, x.bind(""), x.execute()))
        out.append(await run(c, x.close("S", "evict"), x.parse("evict", "SELECT 2")))
        out.append(await run(c, x.describe("S", "s1"), x.bind("s1"), x.execute()))
        return out

    await raw_both(pg, start_proxy, scenario)


# --- a held client (CHECKING) whose check cannot finish: its Parse waits for a lock -------------


async def waiting_on_lock(locker: asyncpg.Connection, want: int = 1) -> None:
    q = (
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE wait_event_type = 'Lock' AND datname = current_database()"
    )
    for _ in range(500):
        if await locker.fetchval(q) >= want:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("nothing waits for the lock")


class Held:
    """A client whose statement s1 (described) must be prepared again, and a direct connection
    holding the table locked, so the proxy's Parse (and PostgreSQL's own use) waits."""

    def __init__(self, pg: LocalPostgres, proxy: ProxyThread | None) -> None:
        self.pg = pg
        self.proxy = proxy
        self.table = f"ddl_{next(_n)}"

    async def __aenter__(self) -> Held:
        self.admin = await asyncpg.connect(
            self.pg.dsn(user="alice", password=PASSWORDS["alice"], dbname="app")
        )
        await self.admin.execute(f"CREATE TABLE {self.table}(a int, b int)")
        await self.admin.execute(f"INSERT INTO {self.table} VALUES (1, 2)")
        self.c = await self.connect()
        t = self.table
        await run(self.c, x.parse("s1", f"SELECT * FROM {t}"), x.describe("S", "s1"))
        await run(self.c, x.parse("evict", "SELECT 2"))
        await self.admin.execute("BEGIN")
        await self.admin.execute(f"LOCK TABLE {t} IN ACCESS EXCLUSIVE MODE")
        return self

    async def connect(self) -> RawClient:
        if self.proxy is not None:
            return await x.raw_login(self.proxy)
        c = await RawClient.connect(self.pg.host, self.pg.port)
        await c.login("alice", PASSWORDS["alice"], "app")
        return c

    @property
    def where(self) -> tuple[str, int]:
        if self.proxy is not None:
            return self.proxy.host, self.proxy.port
        return self.pg.host, self.pg.port

    async def release(self) -> None:
        if self.admin.is_in_transaction():
            await self.admin.execute("ROLLBACK")

    async def __aexit__(self, *exc: object) -> None:
        await self.release()
        await self.c.close()
        await self.admin.execute(f"DROP TABLE {self.table}")
        await self.admin.close()


def where_to(pg: LocalPostgres, proxy: ProxyThread) -> list[ProxyThread | None]:
    return [None, proxy]


async def test_cancel_request_while_held(pg: LocalPostgres, start_proxy: StartProxy) -> None:
    proxy = start_proxy(pool={"default_pool_size": 1, "max_prepared_statements": 1})
    outcomes = []
    for via in where_to(pg, proxy):
        async with Held(pg, via) as h:
            h.c.send(x.bind("s1") + x.execute() + x.SYNC)
            await waiting_on_lock(h.admin)
            await h.c.cancel(*h.where)
            got = (await x.roundtrip(h.c)).kinds
            await h.release()
            outcomes.append([got, await run(h.c, x.bind("s1"), x.execute())])
    assert outcomes[1] == outcomes[0]
    assert outcomes[0][0] == ["E:57014", "Z:I"]


@pytest.mark.parametrize("how", ["terminate", "eof"])
async def test_client_leaves_while_held(
    pg: LocalPostgres, start_proxy: StartProxy, how: str
) -> None:
    """The held client goes; once the lock is released, the only server connection serves the
    next client (and the proxy's check leaves nothing behind)."""
    proxy = start_proxy(pool={"default_pool_size": 1, "max_prepared_statements": 1})
    async with Held(pg, proxy) as h:
        h.c.send(x.bind("s1") + x.execute() + x.SYNC)
        await waiting_on_lock(h.admin)
        if how == "terminate":
            h.c.send(m.TERMINATE)
        h.c.writer.close()
        await h.release()
        other = await x.raw_login(proxy)
        try:
            got = await run(
                other, x.parse("s1", f"SELECT * FROM {h.table}"), x.bind("s1"), x.execute()
            )
            assert got == ["1", "2", "D", "C", "Z:I"]
        finally:
            await other.close()


async def test_megabytes_pipelined_behind_a_held_message(
    pg: LocalPostgres, start_proxy: StartProxy
) -> None:
    """What a held client sends is not read past a bound, and the proxy serves others meanwhile;
    once the check is done, every message is answered in order."""
    proxy = start_proxy(pool={"default_pool_size": 1, "max_prepared_statements": 1})
    async with Held(pg, proxy) as h:
        h.c.send(x.bind("s1") + x.execute() + x.SYNC)
        await waiting_on_lock(h.admin)
        one = x.parse("", "SELECT 1") + x.bind("") + x.execute() + x.SYNC
        batches = (8 << 20) // len(one)
        h.c.send(one * batches)
        pid = h.c.pid
        await asyncio.sleep(0.5)  # let the proxy read what it will
        held = proxy.call(lambda: len(proxy.server.clients[pid].rbuf.buf))
        assert held <= 1 << 20, held
        # Another user's pool is served while this client is held.
        bob = await asyncpg.connect(proxy.dsn(user="bob", password=PASSWORDS["bob"]))
        try:
            assert await asyncio.wait_for(bob.fetchval("SELECT 7"), 2) == 7
        finally:
            await bob.close()
        await h.release()
        first = (await x.roundtrip(h.c)).kinds
        assert first == ["2", "D", "C", "Z:I"]
        assert await count_ready(h.c, batches) == b"I" * batches


async def count_ready(c: RawClient, want: int) -> bytes:
    """Read frames in bulk up to the want-th ReadyForQuery; their statuses."""
    buf = bytearray()
    statuses = bytearray()
    pos = 0
    while len(statuses) < want:
        chunk = await asyncio.wait_for(c.reader.read(1 << 20), 20)
        assert chunk, "the proxy closed the connection"
        buf += chunk
        while pos + 5 <= len(buf):
            n = int.from_bytes(buf[pos + 1 : pos + 5], "big")
            if pos + 1 + n > len(buf):
                break
            if buf[pos] == ord("E"):
                raise AssertionError(bytes(buf[pos : pos + 1 + n]))
            if buf[pos] == ord("Z"):
                statuses.append(buf[pos + 5])
            pos += 1 + n
    return bytes(statuses)
