"""Floods against a proxy process with a real PostgreSQL behind it: connects, slowloris logins,
half-open logins, random cancel requests, and clients sending 1 MB while they wait for a server
connection. For each: the proxy's RSS stays bounded, and a bystander's query latency (another
user's pool, measured from a process of its own) stays within 2x of idle plus a 5 ms floor (2
shared cores: the flood itself, the proxy and PostgreSQL all run on them).

The suite runs smaller counts (about a minute in all); the issue's counts run with
PGPOOL_FLOODS_FULL=1 (about three minutes on 2 cores):

    PGPOOL_FLOODS_FULL=1 python -m pytest -s tests/integration/test_floods.py
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pgpool_proxy.protocol import messages as m
from tests.support.floods import (
    FloodProxy,
    LatencyProbe,
    Phase,
    fast_login,
    off_loop,
    raise_nofile,
    run_bounded,
    send_cancel,
)
from tests.support.pg import LocalPostgres
from tests.support.proxy import PASSWORDS
from tests.support.rawpg import RawClient, RawError
from tests.support.waits import wait_for

FULL = os.environ.get("PGPOOL_FLOODS_FULL", "") not in ("", "0")
PROBE_S = 1.5
MiB = 1024

# Both ends of every flood connection live on this machine: the test's and the proxy's.
NOFILE = raise_nofile(20_000)


SERVER_CLOSED_MID_TX = (
    'pgpool_proxy_server_disconnects_total{database="app",'
    'reason="client_left_mid_transaction",user="alice"}'
)
CANCELS = "pgpool_proxy_cancel_requests_total"
LOGIN_TIMEOUTS = 'pgpool_proxy_client_disconnects_total{reason="login_timeout"}'


def count(full: int, suite: int) -> int:
    """The issue's count with PGPOOL_FLOODS_FULL=1, else the suite's."""
    return full if FULL else suite


StartFlood = Callable[..., FloodProxy]


@pytest.fixture
def flood_proxy(pg: LocalPostgres, tmp_path: Path) -> Iterator[StartFlood]:
    started: list[FloodProxy] = []

    def start(**kwargs: Any) -> FloodProxy:
        proxy = FloodProxy(pg, tmp_path, **kwargs)
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.stop()


async def idle_latency(proxy: FloodProxy) -> dict[str, float]:
    return await LatencyProbe.measure(proxy.port, "carol", PASSWORDS["carol"], PROBE_S)


async def bystander(proxy: FloodProxy) -> LatencyProbe:
    """A probe logged in (another user, so another pool) and ready to measure."""
    return await LatencyProbe.ready(proxy.port, "carol", PASSWORDS["carol"], PROBE_S)


def check_latency(name: str, idle: dict[str, float], during: dict[str, float]) -> None:
    print(
        f"\n{name}: bystander p50 idle {idle['p50_ms']:.2f} ms, during {during['p50_ms']:.2f} ms "
        f"(p90 {during['p90_ms']:.2f}, max {during['max_ms']:.1f}, n={during['n']:.0f})"
    )
    assert during["n"] >= 20, during
    assert during["p50_ms"] <= 2 * idle["p50_ms"] + 5, (idle, during)


class RssWatch:
    """Samples the proxy's RSS every 100 ms while the flood runs; `peak` is the largest."""

    def __init__(self, proxy: FloodProxy) -> None:
        self.proxy = proxy
        self.start = proxy.rss_kib()
        self.peak = self.start
        self.cpu0 = (proxy.cpu_s(), time.process_time(), time.monotonic())
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            self.peak = max(self.peak, self.proxy.rss_kib())
            await asyncio.sleep(0.1)  # the sampling period, not a wait

    async def __aenter__(self) -> RssWatch:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self.peak = max(self.peak, self.proxy.rss_kib())
        proxy0, test0, wall0 = self.cpu0
        self.cpu = (
            self.proxy.cpu_s() - proxy0,
            time.process_time() - test0,
            time.monotonic() - wall0,
        )

    def check(self, name: str, bound_kib: int) -> None:
        grew = self.peak - self.start
        print(
            f"{name}: proxy RSS {self.start / MiB:.0f} MiB -> peak {self.peak / MiB:.0f} MiB; "
            f"CPU s proxy {self.cpu[0]:.1f}, test {self.cpu[1]:.1f} in {self.cpu[2]:.1f} s; "
            f"proxy event loop lag max {loop_lag_max_ms(self.proxy):.0f} ms"
        )
        assert grew <= bound_kib, f"RSS grew {grew} KiB (bound {bound_kib} KiB)"


def loop_lag_max_ms(proxy: FloodProxy) -> float:
    return proxy.metrics().get("pgpool_proxy_event_loop_lag_max_seconds", 0.0) * 1000


# --- 10,000 connects -------------------------------------------------------------------------


async def test_connect_flood(flood_proxy: StartFlood) -> None:
    """10,000 logins (suite: 3,000), 150 at a time against max_client_conn = 100: each one
    logs in or gets 53300 too_many_connections; nothing else, nothing left behind."""
    proxy = flood_proxy(proxy="max_client_conn = 100\nclient_login_timeout_s = 30")
    idle = await idle_latency(proxy)
    total = count(10_000, 3_000)
    outcomes: dict[str, int] = {}

    async def one(_i: int) -> None:
        try:
            c = await fast_login("127.0.0.1", proxy.port, "alice", PASSWORDS["alice"])
        except RawError as exc:
            key = exc.sqlstate
        else:
            key = "ok"
            await c.close()
        outcomes[key] = outcomes.get(key, 0) + 1

    measured = Phase()

    async def connects() -> int:
        # At least `total`, and on for as long as the probe measures.
        n = total
        await run_bounded(total, 150, one)
        while not measured.is_set():
            await run_bounded(150, 150, one)
            n += 150
        return n

    probe = await bystander(proxy)
    async with RssWatch(proxy) as rss:
        flood = asyncio.create_task(off_loop(connects))
        during = await probe.measure_now()
        measured.set()
        attempts = await flood
    print(f"\nconnects: {attempts} in {rss.cpu[2]:.1f} s: {outcomes}")
    assert sum(outcomes.values()) == attempts
    assert set(outcomes) <= {"ok", "53300"}, outcomes
    assert outcomes.get("ok", 0) >= total // 20 and outcomes.get("53300", 0) > 0, outcomes
    check_latency("connects", idle, during)
    rss.check("connects", 64 * MiB)
    await wait_for(
        lambda: proxy.clients("login") + proxy.clients("idle") == 0,
        timeout=10,
        what="clients gone",
        interval=0.1,
    )


# --- slowloris -------------------------------------------------------------------------------


async def test_slowloris_logins(flood_proxy: StartFlood) -> None:
    """1,000 clients send their startup packet one byte every 100 ms: each is cut off by
    client_login_timeout_s (2 s) with 08P01, and everyone else is served meanwhile."""
    proxy = flood_proxy(proxy="client_login_timeout_s = 2")
    idle = await idle_latency(proxy)
    total = count(1_000, 1_000)
    packet = m.startup_message({"user": "alice", "database": "app", "application_name": "slow"})
    outcomes: dict[str, int] = {}
    took: list[float] = []
    timeouts0 = proxy.metrics().get(LOGIN_TIMEOUTS, 0)

    async def one(_i: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        t0 = time.monotonic()
        try:
            for i in range(len(packet)):
                writer.write(packet[i : i + 1])
                try:
                    got = await asyncio.wait_for(reader.read(65536), 0.1)
                except TimeoutError:
                    continue
                rest = got + await asyncio.wait_for(reader.read(), 5)
                assert rest[:1] == b"E", rest
                fields = m.parse_error_fields(rest[5 : 1 + struct.unpack("!I", rest[1:5])[0]])
                assert "login" in fields["M"], fields
                outcome = fields["C"]
                break
            else:
                raise AssertionError("the whole packet went through before the login timeout")
        except ConnectionResetError:
            # The next byte crossed the proxy's close and drew a reset, and the stream reports
            # the reset before the error it already holds. The proxy's counters tell the cause.
            outcome = "reset"
        finally:
            writer.close()
        took.append(time.monotonic() - t0)
        outcomes[outcome] = outcomes.get(outcome, 0) + 1

    probe = await bystander(proxy)
    async with RssWatch(proxy) as rss:
        flood = asyncio.create_task(off_loop(lambda: run_bounded(total, total, one)))
        during = await probe.measure_now()
        await flood
    print(f"\nslowloris: {total} clients: {outcomes}, cut after {min(took):.1f}-{max(took):.1f} s")
    assert set(outcomes) <= {"08P01", "reset"} and outcomes.get("08P01", 0) > 0, outcomes
    assert proxy.metrics().get(LOGIN_TIMEOUTS, 0) - timeouts0 == total
    # Measured from this side's connect: the proxy's 2 s start at its accept, earlier by as
    # long as this loop took to get round to the connection (half a second seen under load).
    # client_login_timeout_s is the behaviour: not much before it, and within 5x it.
    assert min(took) >= 1.0 and max(took) <= 10.0, (min(took), max(took))
    check_latency("slowloris", idle, during)
    rss.check("slowloris", 32 * MiB)


# --- half-open logins ------------------------------------------------------------------------


async def test_half_open_logins(flood_proxy: StartFlood) -> None:
    """5,000 clients send a startup packet, get the SCRAM challenge and never answer: held at
    a bounded cost each, and all closed with 08P01 at client_login_timeout_s."""
    proxy = flood_proxy(proxy="client_login_timeout_s = 8")
    idle = await idle_latency(proxy)
    total = count(5_000, 5_000)
    opened = Phase()
    codes: dict[str, int] = {}

    async def flood() -> float:
        held: list[RawClient] = []

        async def one(_i: int) -> None:
            c = await RawClient.connect("127.0.0.1", proxy.port)
            c.send(m.startup_message({"user": "alice", "database": "app"}))
            t, _body = await c.read_message(30)
            assert t == b"R"
            held.append(c)

        async def expire(c: RawClient) -> None:
            try:
                err = await c.read_error(15)
                codes[err["C"]] = codes.get(err["C"], 0) + 1
            finally:
                c.writer.transport.abort()

        t0 = time.monotonic()
        await run_bounded(total, 500, one)
        opened_s = time.monotonic() - t0
        opened.set()
        await asyncio.gather(*(expire(c) for c in held))
        return opened_s

    probe = await bystander(proxy)
    async with RssWatch(proxy) as rss:
        task = asyncio.create_task(off_loop(flood))
        await opened.wait(60, "the half-open logins")
        in_login = proxy.clients("login")
        during = await probe.measure_now()
    opened_s = await task
    print(f"\nhalf-open: {total} opened in {opened_s:.1f} s; {in_login} in login at once")
    assert in_login >= 0.9 * total, in_login
    assert codes == {"08P01": total}, codes
    check_latency("half-open", idle, during)
    # Each held login costs its socket, a read buffer and a login task: bounded per client.
    rss.check("half-open", total * 20 + 16 * MiB)
    await wait_for(
        lambda: proxy.clients("login") == 0,
        timeout=10,
        what="the half-open logins to be gone",
        interval=0.1,
    )


# --- cancel requests -------------------------------------------------------------------------


async def test_random_cancel_flood(flood_proxy: StartFlood) -> None:
    """100,000 cancel requests (suite: 20,000), half with random keys and half aimed at a
    running client's process id with random secrets: its pg_sleep is never cancelled."""
    proxy = flood_proxy()
    idle = await idle_latency(proxy)
    total = count(100_000, 20_000)
    victim = await fast_login("127.0.0.1", proxy.port, "alice", PASSWORDS["alice"])
    rng = random.Random(20261202)
    keys = [
        (victim.pid if i % 2 else rng.getrandbits(32), rng.getrandbits(32)) for i in range(total)
    ]
    keys = [(pid, secret) for pid, secret in keys if (pid, secret) != (victim.pid, victim.secret)]
    stop = asyncio.Event()
    victim_runs: list[str] = []

    async def victim_loop() -> None:
        while not stop.is_set():
            try:
                rows = await victim.simple_query("select pg_sleep(0.3), 'slept'")
                victim_runs.append(str(rows[0][1]))
            except RawError as exc:
                victim_runs.append(exc.sqlstate)

    async def one(i: int) -> None:
        assert await send_cancel(proxy.port, *keys[i]) == b""

    probe = await bystander(proxy)
    async with RssWatch(proxy) as rss:
        sleeper = asyncio.create_task(victim_loop())
        flood = asyncio.create_task(off_loop(lambda: run_bounded(len(keys), 200, one)))
        during = await probe.measure_now()
        await flood
        stop.set()
        await sleeper
    print(f"\ncancels: {len(keys)} in {rss.cpu[2]:.1f} s; victim ran {len(victim_runs)} sleeps")
    assert victim_runs and set(victim_runs) == {"slept"}, victim_runs
    assert await victim.simple_query("select 'still fine'") == [["still fine"]]
    results = proxy.metrics()
    assert results[f'{CANCELS}{{result="unknown_key"}}'] == len(keys), results
    assert results[f'{CANCELS}{{result="sent"}}'] == 0, results
    # Requests anyone may send without logging in are counted, not logged one by one.
    assert proxy.process.log().count("cancel") < 100
    await victim.close()
    check_latency("cancels", idle, during)
    rss.check("cancels", 32 * MiB)


# --- 1 MB each while waiting -----------------------------------------------------------------


async def test_megabyte_each_while_waiting(flood_proxy: StartFlood) -> None:
    """2,000 clients (suite: 1,000) each send a 1 MB query while the pool (2) is busy: the
    proxy stops reading from a waiting client (at ~128 KiB) instead of buffering 2 GB; 20 of
    them then get correct answers."""
    # The flood clients are dropped unread at the end: the queue forgets them only at their
    # turn or at query_wait_timeout_s (see test_dead_waiters_cost_no_server_connection).
    proxy = flood_proxy(proxy="client_login_timeout_s = 30", pool="query_wait_timeout_s = 10")
    idle = await idle_latency(proxy)
    total = count(2_000, 1_000)
    size = 1024 * 1024
    query = m.query("select length('" + "x" * (size - 40) + "')")
    sending, released = Phase(), Phase()
    answers: list[str | None] = []

    async def flood() -> None:
        clients: list[RawClient] = []

        async def connect_one(_i: int) -> None:
            clients.append(await fast_login("127.0.0.1", proxy.port, "alice", PASSWORDS["alice"]))

        async def send_all(c: RawClient) -> None:
            for pos in range(0, len(query), 64 * 1024):
                c.writer.write(query[pos : pos + 64 * 1024])
                await c.writer.drain()  # the proxy decides how much it takes

        await run_bounded(total, 200, connect_one)
        senders = [asyncio.create_task(send_all(c)) for c in clients]
        sending.set()
        await released.wait(120, "the test to release the pool")
        for c, task in zip(clients[20:], senders[20:], strict=True):
            task.cancel()
            c.writer.transport.abort()
        await asyncio.gather(*senders[:20])
        for c in clients[:20]:
            answers.append(await query_answer(c))
            await c.close()

    holders = [
        await fast_login("127.0.0.1", proxy.port, "alice", PASSWORDS["alice"]) for _ in range(2)
    ]
    for h in holders:
        assert await h.simple_query("BEGIN") == []  # the pool (2) has nothing to lend
    probe = await bystander(proxy)
    task = asyncio.create_task(off_loop(flood))
    try:
        await sending.wait(120, "the flood clients to log in")
        async with RssWatch(proxy) as rss:
            await wait_for(
                lambda: proxy.clients("waiting") >= 0.9 * total,
                timeout=60,
                what="clients waiting",
                interval=0.1,
            )
            during = await probe.measure_now()
    finally:
        released.set()
        for h in holders:
            await h.simple_query("COMMIT")
    await task
    print(f"\n1 MB each: {total} clients waiting with 1 MB each")
    assert answers == [str(size - 40)] * 20
    check_latency("1 MB each", idle, during)
    rss.check("1 MB each", 400 * MiB)
    t0 = time.monotonic()
    for h in holders:
        h.send(m.query("select 'after'"))
        assert await query_answer(h, 30) == "after"
        await h.close()
    print(f"1 MB each: the pool served others again {time.monotonic() - t0:.1f} s later")


async def query_answer(c: RawClient, timeout: float = 60) -> str | None:
    """The single value of the result of a query already sent."""
    value: str | None = None
    while True:
        t, body = await c.read_message(timeout)
        if t == b"D":
            value = m.parse_data_row(body)[0]
        elif t == b"E":
            raise RawError(m.parse_error_fields(body))
        elif t == b"Z":
            return value


@pytest.mark.xfail(
    strict=True,
    reason="a waiting client whose reading is paused is not seen leaving: at its turn its "
    "buffered partial message goes to the server connection, which must then be discarded",
)
async def test_dead_waiters_cost_no_server_connection(flood_proxy: StartFlood) -> None:
    """20 clients queue a 1 MB query each behind a busy pool (1) and vanish. Freeing the pool
    must not cost one new server connection per vanished client (PostgreSQL spends ~6 ms of CPU
    on each), nor keep a live client waiting behind them."""
    proxy = flood_proxy(pool_size=1)
    holder = await fast_login("127.0.0.1", proxy.port, "alice", PASSWORDS["alice"])
    assert await holder.simple_query("BEGIN") == []
    query = m.query("select length('" + "x" * (1024 * 1024) + "')")
    dead = [
        await fast_login("127.0.0.1", proxy.port, "alice", PASSWORDS["alice"]) for _ in range(20)
    ]
    for c in dead:
        c.writer.write(query)
    await wait_for(
        lambda: proxy.clients("waiting") == 20,
        timeout=30,
        what="the clients to queue",
        interval=0.1,
    )
    for c in dead:
        c.writer.transport.abort()
    gone0 = proxy.metrics().get(SERVER_CLOSED_MID_TX, 0)
    assert await holder.simple_query("COMMIT") == []
    t0 = time.monotonic()
    holder.send(m.query("select 'next'"))
    assert await query_answer(holder, 60) == "next"
    took = time.monotonic() - t0
    discarded = proxy.metrics().get(SERVER_CLOSED_MID_TX, 0) - gone0
    print(f"\ndead waiters: next query after {took:.1f} s; {discarded:.0f} server connections lost")
    await holder.close()
    assert discarded <= 1 and took < 1.0, (discarded, took)
