"""Peering: two proxy processes on one PostgreSQL behind a round-robin TCP relay (a load
balancer), cancel requests sent through the relay landing on either. Every cancel must stop its
own client's query and no other; a forged key stops nothing; a peer that is down or silent
costs a failed forward within cancel_wait_timeout_s while the proxy keeps serving.

Proxy A (peer_id 1) listens on 127.0.0.2 and finds B through DNS ("localhost" on the shared
port); B (peer_id 0: it picks one at startup, for all its workers) listens on 127.0.0.1 and
lists A in [[peers]]: both ways are exercised.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from pgpool_proxy.protocol import messages as m
from pgpool_proxy.runtime import peers
from tests.support.pg import LocalPostgres
from tests.support.proxy import PASSWORDS
from tests.support.proxyproc import ProxyProcess, free_port, write_config
from tests.support.rawpg import RawClient
from tests.support.relay import RoundRobinRelay
from tests.support.waits import wait_for

CLIENTS = 20
TIMEOUT_S = 1.0


class SilentPeer:
    """A peer that accepts and never answers nor closes (a blackholed instance)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]

    def close(self) -> None:
        self.sock.close()


@dataclass
class Fleet:
    a: ProxyProcess
    b: ProxyProcess
    relay: RoundRobinRelay
    silent: SilentPeer
    down_port: int
    b_workers: int
    b_id: int


async def _admin_rows(host: str, port: int, sql: str) -> list[list[str | None]]:
    c = await RawClient.connect(host, port)
    try:
        await c.login("alice", PASSWORDS["alice"], "pgbouncer")
        return await c.simple_query(sql)
    finally:
        await c.close()


async def _peer_counts(host: str, port: int) -> dict[int, tuple[str, int, int, int]]:
    """SHOW PEERS: peer_id -> (source, forwarded, failed, dropped)."""
    rows = await _admin_rows(host, port, "SHOW PEERS")
    return {
        int(r[0] or 0): (str(r[4]), int(r[5] or 0), int(r[6] or 0), int(r[7] or 0)) for r in rows
    }


@pytest.fixture
async def fleet(
    pg: LocalPostgres, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[Fleet]:
    # B may run workers: a cancel forwarded to B then reaches the right worker over its relay.
    b_workers: int = getattr(request, "param", 1)
    port = free_port()
    silent = SilentPeer()
    down_port = free_port()  # nothing listens there
    common = (
        f"cancel_wait_timeout_s = {TIMEOUT_S}\n"
        # One refresh while the test runs is enough; it must not hide a missed first one.
        "peer_dns_refresh_s = 1\n"
    )
    write_config(
        tmp_path / "b.toml",
        pg,
        port,
        pool_size=CLIENTS,
        users=("alice",),
        auth="md5",
        proxy=f"workers = {b_workers}\n" + common,
        sections=f'[[peers]]\npeer_id = 1\nhost = "127.0.0.2"\nport = {port}\n',
    )
    write_config(
        tmp_path / "a.toml",
        pg,
        port,
        host="127.0.0.2",
        pool_size=CLIENTS,
        users=("alice",),
        auth="md5",
        proxy='peer_id = 1\npeer_dns_name = "localhost"\n' + common,
        sections=f'[[peers]]\npeer_id = 3\nhost = "127.0.0.1"\nport = {silent.port}\n\n'
        f'[[peers]]\npeer_id = 4\nhost = "127.0.0.1"\nport = {down_port}\n\n'
        # A shared list may name the instance itself: skipped.
        f'[[peers]]\npeer_id = 1\nhost = "127.0.0.2"\nport = {port}\n',
    )
    b = ProxyProcess(tmp_path / "b.toml", port, tmp_path / "b.log")
    a = None
    relay = None
    try:
        b.wait_for("listening on", count=1 + (b_workers if b_workers > 1 else 0))
        (picked,) = b.wait_for(r"peer_id (\d+) picked")
        b_id = int(picked.group(1))
        assert b_id not in (0, 1)  # A's id is taken (B's [[peers]])
        a = ProxyProcess(tmp_path / "a.toml", port, tmp_path / "a.log")
        a.wait_listening()
        # A has asked B for its id over DNS.
        a.wait_for(rf"peers from localhost: {b_id}=127\.0\.0\.1:{port}")
        relay = await RoundRobinRelay([("127.0.0.2", port), ("127.0.0.1", port)]).start()
        yield Fleet(a, b, relay, silent, down_port, b_workers, b_id)
    finally:
        if relay is not None:
            await relay.close()
        if a is not None:
            a.stop()
        b.stop()
        silent.close()


async def _running(admin: asyncpg.Connection, tag: str) -> set[int]:
    rows = await admin.fetch(
        "select query from pg_stat_activity where state = 'active' and query like $1 "
        "and pid <> pg_backend_pid()",
        f"%{tag}-%",
    )
    found = set()
    for r in rows:
        hit = re.search(rf"{tag}-(\d+)", r["query"])
        if hit:
            found.add(int(hit.group(1)))
    return found


def _nothing_pending(c: RawClient) -> bool:
    """No byte from the proxy waits on this client's socket (its query was not touched)."""
    return len(c.reader._buffer) == 0 and not c.reader.at_eof()  # type: ignore[attr-defined]


@pytest.mark.parametrize("fleet", [1, 2], indirect=True, ids=["b-alone", "b-2-workers"])
async def test_each_cancel_reaches_its_own_query_through_the_balancer(
    fleet: Fleet, admin: asyncpg.Connection
) -> None:
    relay = fleet.relay
    ids = [1, fleet.b_id]  # the peer_id of each relay target
    clients = [await RawClient.connect("127.0.0.1", relay.port) for _ in range(CLIENTS)]
    try:
        for c in clients:
            await c.login("alice", PASSWORDS["alice"], "app")
        # Keys name the instance that issued them: both issued some.
        owners = [peers.key_peer(c.secret) for c in clients]
        assert set(owners) == set(ids)
        for i, c in enumerate(clients):
            c.send(m.query(f"select pg_sleep(60) /* peer-q-{i} */"))
        everyone = set(range(CLIENTS))
        await wait_for(
            lambda: _running_is(admin, everyone), what="every client's query running", timeout=20
        )
        # Two thirds of the clients, one cancel at a time: the relay alternates, so some land
        # on the instance that owns the key and some on the other one.
        first = [i for i in range(CLIENTS) if i % 3 != 0]
        rest = everyone - set(first)
        landed: list[tuple[int, int]] = []  # (owner's peer_id, peer_id of where it landed)
        started = time.monotonic()
        for i in first:
            before = len(relay.routed)
            await clients[i].cancel("127.0.0.1", relay.port)
            landed.append((owners[i], ids[relay.routed[before]]))
        codes = {i: (await clients[i].read_error(15))["C"] for i in first}
        elapsed = time.monotonic() - started
        assert codes == dict.fromkeys(first, "57014")
        crossed = [x for x in landed if x[0] != x[1]]
        assert crossed and len(crossed) < len(landed), landed  # both paths taken
        for i in first:
            await clients[i].read_until_ready()
        # The others are untouched: still running on the server, nothing sent to them.
        assert await _running(admin, "peer-q") == rest
        for i in rest:
            assert _nothing_pending(clients[i])
        # Forwarded both ways (A found B in DNS, B lists A), none failed. (With workers, B's
        # console shows the counters of the worker it landed on.)
        a_rows = await _peer_counts("127.0.0.2", fleet.a.port)
        b_rows = await _peer_counts("127.0.0.1", fleet.b.port)
        b_id = fleet.b_id
        assert a_rows[b_id][0] == "dns" and b_rows[1][0] == "config"
        assert 1 not in a_rows  # its own entry in the list is skipped
        if fleet.b_workers == 1:
            assert a_rows[b_id][1] + b_rows[1][1] == len(crossed)
        assert a_rows[b_id][2] == 0 and b_rows[1][2] == 0
        print(f"\n{len(first)} cancels ({len(crossed)} forwarded) answered in {elapsed:.3f} s")

        # Forged keys: a client's pid with wrong random bits (right peer id), an unknown peer
        # id, a pid nobody has, the other peer's id with the forwarded mark sent from outside.
        victim = min(rest)
        v = clients[victim]
        mine = owners[victim]
        wrong = (v.secret + 1) & peers.SECRET_RANDOM_MASK
        forged = [
            (v.pid, peers.key_secret(mine, wrong)),
            (v.pid, peers.key_secret(99, v.secret)),
            (v.pid ^ 0x1234, v.secret),
            (peers.FORWARDED | v.pid, peers.key_secret(ids[ids[0] == mine], v.secret)),
        ]
        forged += [(v.pid, peers.key_secret(mine, secrets.randbits(18))) for _ in range(6)]
        forged = [k for k in forged if k != (v.pid, v.secret)]
        for pid, secret in forged:
            await _raw_cancel("127.0.0.1", relay.port, pid, secret)

        async def none_in_flight() -> bool:
            # A forward is counted in flight before the cancel's connection is closed, and
            # the owner acts before it closes the forwarded one: none left, all handled.
            rows = [
                *await _admin_rows("127.0.0.2", fleet.a.port, "SHOW PEERS"),
                *await _admin_rows("127.0.0.1", fleet.b.port, "SHOW PEERS"),
            ]
            return not any(int(r[8] or 0) for r in rows)

        await wait_for(none_in_flight, what="forged cancels handled")
        assert await _running(admin, "peer-q") == rest
        for i in rest:
            assert _nothing_pending(clients[i])

        # The rest, through the relay too.
        for i in sorted(rest):
            await clients[i].cancel("127.0.0.1", relay.port)
        assert {i: (await clients[i].read_error(15))["C"] for i in rest} == dict.fromkeys(
            rest, "57014"
        )
        for i in rest:
            await clients[i].read_until_ready()
        for c in clients:
            assert await c.simple_query("select 1") == [["1"]]
    finally:
        for c in clients:
            await c.close()


async def _running_is(admin: asyncpg.Connection, expected: set[int]) -> bool:
    return await _running(admin, "peer-q") == expected


async def test_a_peer_down_or_silent_fails_quietly_within_the_timeout(fleet: Fleet) -> None:
    a_port = fleet.a.port
    client = await RawClient.connect("127.0.0.2", a_port)
    try:
        await client.login("alice", PASSWORDS["alice"], "app")
        for peer_id, want in ((4, "refused"), (3, "silent")):
            started = time.monotonic()
            await _raw_cancel("127.0.0.2", a_port, 5 << 22, peers.key_secret(peer_id, 77))
            # The proxy serves while the forward waits.
            assert await client.simple_query("select 1") == [["1"]]

            async def failed(pid: int = peer_id) -> bool:
                return (await _peer_counts("127.0.0.2", a_port))[pid][2] == 1

            await wait_for(failed, what=f"the forward to the {want} peer given up", timeout=10)
            took = time.monotonic() - started
            assert took < TIMEOUT_S + 1.5, took
            print(f"\ncancel to a {want} peer given up after {took:.3f} s")
        assert await client.simple_query("select 2") == [["2"]]
        assert "could not forward a cancel request to peer 3" in fleet.a.log()
    finally:
        await client.close()
    # B stops: cancels for its keys now fail at A, quietly; A serves on.
    fleet.b.stop()
    await _raw_cancel("127.0.0.2", a_port, 5 << 22, peers.key_secret(fleet.b_id, 77))

    async def b_failed() -> bool:
        return (await _peer_counts("127.0.0.2", a_port))[fleet.b_id][2] >= 1

    await wait_for(b_failed, what="the forward to the stopped peer given up", timeout=10)
    rows = await _admin_rows("127.0.0.2", a_port, "SHOW VERSION")
    assert rows


async def _raw_cancel(host: str, port: int, pid: int, secret: int) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(m.cancel_request(pid, secret))
    await writer.drain()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(reader.read(), 10)
    writer.close()


async def test_only_proxies_answer_the_peer_id_question(fleet: Fleet, pg: LocalPostgres) -> None:
    assert await peers.ask_peer_id("127.0.0.2", fleet.a.port) == 1
    assert await peers.ask_peer_id("127.0.0.1", fleet.b.port) == fleet.b_id
    # PostgreSQL refuses the unknown request code; a closed port refuses the connection;
    # a silent listener runs out the bound. None of them is taken for a peer.
    assert await peers.ask_peer_id(pg.host, pg.port) is None
    assert await peers.ask_peer_id("127.0.0.1", fleet.down_port) is None
    started = time.monotonic()
    assert await peers.ask_peer_id("127.0.0.1", fleet.silent.port, timeout_s=0.3) is None
    assert time.monotonic() - started < 2
