"""LISTEN/NOTIFY through the proxy in transaction mode (issue 13, item 5), compared with
PostgreSQL itself: asyncpg's listener API, the sequences drivers use, notifications that arrive
while the listening client is idle, and a small pool shared with other clients.

Each scenario runs the same client code against a direct connection and through the proxy and
compares what the listener received (channel and payload, in order; the sender's pid is compared
as "mine" or "another's", the one thing that must differ in number).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import pytest

from tests.support.pg import LocalPostgres
from tests.support.proxy import PASSWORDS, StartProxy
from tests.support.waits import wait_for

pytestmark = pytest.mark.timeout(60)

Got = list[tuple[str, str, str]]
Scenario = Callable[[str, str], Awaitable[Got]]


def direct_dsn(pg: LocalPostgres) -> str:
    return pg.dsn(user="alice", password=PASSWORDS["alice"], dbname="app")


async def notified(got: list[Any], n: int) -> None:
    await wait_for(lambda: len(got) >= n, what=f"{n} notifications")


def collector(got: Got, me: asyncpg.Connection) -> Callable[..., None]:
    mine = me.get_server_pid()

    def on_notify(conn: object, pid: int, channel: str, payload: str) -> None:
        got.append((channel, payload, "mine" if pid == mine else "another's"))

    return on_notify


async def both(pg: LocalPostgres, start_proxy: StartProxy, scenario: Scenario) -> None:
    proxy = start_proxy(pool={"default_pool_size": 2, "query_wait_timeout_s": 20})
    want = await scenario(direct_dsn(pg), direct_dsn(pg))
    got = await scenario(proxy.dsn(), direct_dsn(pg))
    assert got == want


async def test_listener_gets_notifications_while_idle(
    pg: LocalPostgres, start_proxy: StartProxy
) -> None:
    """Notified by another client (through the proxy too) and by a direct connection, while
    the listener sends nothing: each arrives without the listener asking."""

    async def scenario(dsn: str, direct: str) -> Got:
        got: Got = []
        listener = await asyncpg.connect(dsn, statement_cache_size=0)
        other = await asyncpg.connect(dsn, statement_cache_size=0)
        outside = await asyncpg.connect(direct)
        try:
            await listener.add_listener("ch1", collector(got, listener))
            await other.execute("NOTIFY ch1, 'from-other'")
            await notified(got, 1)
            await outside.execute("SELECT pg_notify('ch1', 'from-outside')")
            await notified(got, 2)
            for i in range(5):
                await other.execute(f"NOTIFY ch1, 'burst-{i}'")
            await notified(got, 7)
            return got
        finally:
            for c in (listener, other, outside):
                await c.close()

    await both(pg, start_proxy, scenario)


async def test_listener_notifies_itself_and_keeps_working(
    pg: LocalPostgres, start_proxy: StartProxy
) -> None:
    """NOTIFY from the listening connection itself, queries in between, a transaction that
    notifies at commit and one that rolls back (no notification)."""

    async def scenario(dsn: str, direct: str) -> Got:
        got: Got = []
        c = await asyncpg.connect(dsn, statement_cache_size=0)
        try:
            await c.add_listener("self_ch", collector(got, c))
            await c.execute("NOTIFY self_ch, 'one'")
            await notified(got, 1)
            assert await c.fetchval("SELECT 41 + 1") == 42
            async with c.transaction():
                await c.execute("NOTIFY self_ch, 'at-commit'")
                await c.execute("NOTIFY self_ch, 'at-commit-2'")
            await notified(got, 3)
            with pytest.raises(asyncpg.DivisionByZeroError):
                async with c.transaction():
                    await c.execute("NOTIFY self_ch, 'rolled-back'")
                    await c.execute("SELECT 1/0")
            await c.execute("NOTIFY self_ch, 'after'")
            await notified(got, 4)
            return got
        finally:
            await c.close()

    await both(pg, start_proxy, scenario)


async def test_remove_and_add_listener_again(pg: LocalPostgres, start_proxy: StartProxy) -> None:
    """remove_listener (UNLISTEN): nothing arrives for the channel; the connection may move to
    another server connection meanwhile; add_listener again: notifications come back."""

    async def scenario(dsn: str, direct: str) -> Got:
        got: Got = []
        c = await asyncpg.connect(dsn, statement_cache_size=0)
        other = await asyncpg.connect(dsn, statement_cache_size=0)
        try:
            cb = collector(got, c)
            await c.add_listener("ch2", cb)
            await other.execute("NOTIFY ch2, 'a'")
            await notified(got, 1)
            await c.remove_listener("ch2", cb)
            await other.execute("NOTIFY ch2, 'not-heard'")
            # Let the connections take turns (the listener's session may be handed on now).
            for _ in range(3):
                await asyncio.gather(c.fetchval("SELECT 1"), other.fetchval("SELECT 2"))
            await c.add_listener("ch2", cb)
            await other.execute("NOTIFY ch2, 'b'")
            await notified(got, 2)
            await c.add_listener("ch3", cb)
            await other.execute("NOTIFY ch3, 'c'; NOTIFY ch2, 'd'")
            await notified(got, 4)
            return got
        finally:
            await c.close()
            await other.close()

    await both(pg, start_proxy, scenario)


async def test_listening_client_does_not_starve_the_pool(
    pg: LocalPostgres, start_proxy: StartProxy
) -> None:
    """A listener pins one of the two server connections; the other serves the rest, and the
    listener still hears everything they send."""

    async def scenario(dsn: str, direct: str) -> Got:
        got: Got = []
        listener = await asyncpg.connect(dsn, statement_cache_size=0)
        try:
            await listener.add_listener("work", collector(got, listener))

            async def worker(i: int) -> None:
                conn = await asyncpg.connect(dsn, statement_cache_size=0)
                try:
                    for j in range(3):
                        async with conn.transaction():
                            await conn.execute(f"NOTIFY work, 'w{i}-{j}'")
                finally:
                    await conn.close()

            await asyncio.gather(*(worker(i) for i in range(4)))
            await notified(got, 12)
            return sorted(got)
        finally:
            await listener.close()

    await both(pg, start_proxy, scenario)


async def test_notification_from_another_client_carries_its_pid(
    pg: LocalPostgres, start_proxy: StartProxy
) -> None:
    """psycopg2's pattern: the notifier reports its pid (libpq's PQbackendPID, asyncpg's
    get_server_pid, i.e. BackendKeyData) and the listener compares it with the notification's.
    Through the proxy the notifier's server connection is mapped to the client it served.

    Each notification is awaited before the next notifier takes the server connection: when
    the listener hears of one only after that (a loaded machine), the sender is ambiguous to
    the proxy and the next client may be named (docs/behaviour.md, known limits)."""

    async def scenario(dsn: str, direct: str) -> Got:
        got: list[tuple[str, int]] = []
        listener = await asyncpg.connect(dsn, statement_cache_size=0)
        try:
            await listener.add_listener(
                "from_other", lambda c, pid, ch, payload: got.append((payload, pid))
            )
            pids = []
            for i in range(3):
                other = await asyncpg.connect(dsn, statement_cache_size=0)
                try:
                    pids.append(other.get_server_pid())
                    await other.execute(f"NOTIFY from_other, 'n{i}'")
                    await notified(got, i + 1)
                finally:
                    await other.close()
            return [
                (p, "notifier's" if pid == pids[i] else "a stranger's", "")
                for i, (p, pid) in enumerate(got)
            ]
        finally:
            await listener.close()

    await both(pg, start_proxy, scenario)


async def test_listener_on_a_pool_connection(pg: LocalPostgres, start_proxy: StartProxy) -> None:
    """asyncpg's test_listen_02: LISTEN through a connection of an asyncpg Pool (which resets
    its connections when they are released), NOTIFY from another connection of the pool."""

    async def scenario(dsn: str, direct: str) -> Got:
        got: Got = []
        pool = await asyncpg.create_pool(dsn, min_size=2, max_size=2)
        try:
            async with pool.acquire() as con1, pool.acquire() as con2:
                cb = collector(got, con1)
                await con1.add_listener("ipc", cb)
                await con2.execute("NOTIFY ipc, 'hello'")
                await notified(got, 1)
                await con1.remove_listener("ipc", cb)
        finally:
            await pool.close()
        return got

    await both(pg, start_proxy, scenario)


async def test_notifier_named_after_its_connection_serves_the_next_client(
    pg: LocalPostgres, start_proxy: StartProxy
) -> None:
    """The notifier commits and its server connection goes at once to a client queued for it;
    the listener hears of the commit after that: it must still name the notifier (asyncpg
    test_listen_02 and psycopg2's notify tests under load), not the client now served."""
    proxy = start_proxy(pool={"default_pool_size": 2, "query_wait_timeout_s": 20})

    async def scenario(dsn: str, queued: Callable[[], Awaitable[None]]) -> list[str]:
        got: list[int] = []
        listener = await asyncpg.connect(dsn, statement_cache_size=0)
        notifier = await asyncpg.connect(dsn, statement_cache_size=0)
        waiter = await asyncpg.connect(dsn, statement_cache_size=0)
        try:
            # Through the proxy the LISTEN pins one server connection; the other two clients
            # share the second.
            await listener.add_listener("race", lambda c, pid, ch, payload: got.append(pid))
            out = []
            for i in range(5):
                tx = notifier.transaction()
                await tx.start()
                await notifier.execute(f"NOTIFY race, 'n{i}'")
                waiting = asyncio.create_task(waiter.execute("SELECT pg_sleep(0.2)"))
                await queued()
                await tx.commit()
                await notified(got, i + 1)
                await waiting
                pid = got[i]
                out.append(
                    "notifier's"
                    if pid == notifier.get_server_pid()
                    else "waiter's"
                    if pid == waiter.get_server_pid()
                    else "a stranger's"
                )
            return out
        finally:
            for c in (listener, notifier, waiter):
                await c.close()

    async def no_wait() -> None:
        # Directly nothing queues: the waiter's task just starts, and runs alongside.
        await asyncio.sleep(0)

    async def until_queued() -> None:
        await wait_for(lambda: proxy.pool_stats()["waiting"] >= 1, what="the waiter to queue")

    want = await scenario(direct_dsn(pg), no_wait)
    assert want == ["notifier's"] * 5
    assert await scenario(proxy.dsn(), until_queued) == want
