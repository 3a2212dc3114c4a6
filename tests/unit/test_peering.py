"""Peering without sockets: the cancel key layout, [[peers]] and the [proxy] peer keys, the
peer-id exchange's messages, SHOW PEERS rows, and which cancels are forwarded where."""

from __future__ import annotations

from typing import Any

import pytest

from pgpool_proxy.admin import show_setup
from pgpool_proxy.config import ConfigError, build_config
from pgpool_proxy.counters import CANCEL_FORWARDED, CANCEL_UNKNOWN
from pgpool_proxy.protocol import messages as m
from pgpool_proxy.runtime import peers
from pgpool_proxy.runtime.server import ProxyServer
from pgpool_proxy.runtime.workers import MIN_CLIENT_PID, WORKER_SHIFT, WorkerIdentity
from pgpool_proxy.session.client import ClientConnection


def _config(proxy: dict[str, Any] | None = None, peer_list: list[Any] | None = None) -> Any:
    data: dict[str, Any] = {
        "proxy": {"listen": "127.0.0.1:0", **(proxy or {})},
        "databases": [{"name": "app", "host": "127.0.0.1"}],
        "users": [{"name": "alice", "password": "a"}],
    }
    if peer_list is not None:
        data["peers"] = peer_list
    return build_config(data, env={})


def test_peer_keys_and_their_checks() -> None:
    cfg = _config(
        {"peer_id": 7, "peer_dns_name": "proxy.svc", "cancel_wait_timeout_s": 2.5},
        [{"peer_id": 7, "host": "10.0.0.7"}, {"peer_id": 8, "host": "10.0.0.8", "port": 7000}],
    )
    assert cfg.proxy.peer_id == 7 and cfg.proxy.cancel_wait_timeout_s == 2.5
    assert [(p.peer_id, p.host, p.port) for p in cfg.peers] == [
        (7, "10.0.0.7", 6432),
        (8, "10.0.0.8", 7000),
    ]
    with pytest.raises(ConfigError) as bad:
        _config(
            {"peer_id": 16384},
            [{"peer_id": 1, "host": "a"}, {"peer_id": 1, "host": "b"}, {"host": "c"}, {"x": 1}],
        )
    text = "\n".join(bad.value.problems)
    assert "proxy.peer_id" in text
    assert "peers[1].peer_id: 1 is already used by peers[0]" in text
    assert "peers[2].peer_id: required" in text
    assert "peers[3].x" in text


def test_env_overrides_the_peer_id() -> None:
    data = {
        "proxy": {"listen": "127.0.0.1:0"},
        "databases": [{"name": "app", "host": "127.0.0.1"}],
        "users": [{"name": "alice", "password": "a"}],
    }
    assert build_config(data, env={"PGPOOL_PROXY_PEER_ID": "12"}).proxy.peer_id == 12


@pytest.mark.parametrize("peer_id", [1, 2, 300, 16383])
@pytest.mark.parametrize("worker", [0, 1, 63])
def test_keys_name_their_peer_and_worker(peer_id: int, worker: int) -> None:
    cfg = _config({"peer_id": peer_id})
    server = ProxyServer(cfg, WorkerIdentity(worker, 64))
    seen: set[int] = set()
    for _ in range(2000):
        pid, secret = server.register_cancel_key(ClientConnection(server))
        assert MIN_CLIENT_PID <= pid < peers.FORWARDED  # never negative, never a server pid
        assert pid >> WORKER_SHIFT == worker
        assert peers.key_peer(secret) == peer_id
        assert 0 <= secret <= 0xFFFFFFFF
        seen.add(secret & peers.SECRET_RANDOM_MASK)
    assert len(seen) > 1900  # 18 random bits: few repeats in 2000


def test_without_peering_the_secret_is_all_random() -> None:
    server = ProxyServer(_config())
    assert server.peer_id == 0
    tops = {server.register_cancel_key(ClientConnection(server))[1] >> 18 for _ in range(500)}
    assert len(tops) > 400


def test_peering_without_an_id_picks_one() -> None:
    server = ProxyServer(_config(peer_list=[{"peer_id": 2, "host": "h"}]))
    assert 1 <= server.peer_id <= 16383
    # Picked before the workers fork, so all of them share it.
    assert ProxyServer(_config(peer_list=[]), WorkerIdentity(peer_id=99)).peer_id == 99
    cfg = _config(peer_list=[{"peer_id": i, "host": "h"} for i in range(1, 16383)])
    assert peers.pick_peer_id(cfg) == 16383


async def test_cancels_for_other_peers_are_forwarded_once() -> None:
    cfg = _config({"peer_id": 1}, [{"peer_id": 2, "host": "127.0.0.1", "port": 1}])
    server = ProxyServer(cfg)
    sent: list[tuple[int, int, int]] = []
    server.peering.forward = lambda peer, pid, secret, done: bool(
        sent.append((peer, pid, secret)) or 1
    )  # type: ignore[method-assign]
    results = server.counters.cancel_requests
    theirs = peers.key_secret(2, 12345)
    server.cancel_request(MIN_CLIENT_PID + 5, theirs)
    assert sent == [(2, MIN_CLIENT_PID + 5, theirs)] and results[CANCEL_FORWARDED] == 1
    # Forwarded already (the pid's top bit), or relayed by a sibling worker: never again.
    server.cancel_request(peers.FORWARDED | (MIN_CLIENT_PID + 5), theirs)
    server.cancel_request(MIN_CLIENT_PID + 5, theirs, relayed=True)
    assert len(sent) == 1 and results[CANCEL_UNKNOWN] == 2
    # Ours, unknown: dropped here, not sent anywhere.
    server.cancel_request(MIN_CLIENT_PID + 5, peers.key_secret(1, 1))
    assert len(sent) == 1 and results[CANCEL_UNKNOWN] == 3


def test_forward_finds_configured_and_dns_peers() -> None:
    cfg = _config({"peer_id": 1}, [{"peer_id": 1, "host": "me"}, {"peer_id": 3, "host": "h3"}])
    server = ProxyServer(cfg)
    server.peering.dns_peers = {3: ("10.0.0.3", 6432), 4: ("10.0.0.4", 6432)}
    assert server.peering.target(1) is not None  # listed, but forward() never targets itself
    assert server.peering.forward(1, MIN_CLIENT_PID, 1) is False
    assert server.peering.forward(9, MIN_CLIENT_PID, 1) is False
    t3, t4 = server.peering.target(3), server.peering.target(4)
    assert t3 is not None and (t3.host, t3.source) == ("h3", "config")  # config wins
    assert t4 is not None and (t4.host, t4.source) == ("10.0.0.4", "dns")
    rows = show_setup.show_peers(server).rows
    assert [(r[0], r[1], r[2], r[3], r[4]) for r in rows] == [
        ("3", "h3", "6432", str(peers.PEER_POOL_SIZE), "config"),
        ("4", "10.0.0.4", "6432", str(peers.PEER_POOL_SIZE), "dns"),
    ]


def test_peer_id_request_and_reply() -> None:
    req = m.peer_id_request()
    assert isinstance(m.parse_startup_packet(req[4:]), m.PeerIdRequest)
    assert m.parse_peer_id_reply(m.peer_id_reply(42)) == 42
    for junk in (
        b"",
        b"N",
        m.parameter_status("server_version", "16"),
        m.parameter_status("pgpool_proxy.peer_id", "x"),
        m.peer_id_reply(42)[:-1],
        m.error_response("FATAL", "08P01", "unsupported frontend protocol 1234.5699"),
    ):
        assert m.parse_peer_id_reply(junk) is None


def test_reload_applies_peers_but_keeps_the_peer_id() -> None:
    from pgpool_proxy.runtime.lifecycle import apply_config

    server = ProxyServer(_config({"peer_id": 1}, [{"peer_id": 2, "host": "h2"}]))
    notes = apply_config(
        server, _config({"peer_id": 5}, [{"peer_id": 3, "host": "h3", "port": 7000}])
    )
    assert notes == ["proxy.peer_id changed; it takes effect after a restart"]
    assert server.peer_id == 1 and server.config.proxy.peer_id == 1
    assert [(p.peer_id, p.host, p.port) for p in server.peering.peers()] == [(3, "h3", 7000)]
