"""A topology's view crosses processes as JSON (workers = N: worker 0 probes, the others apply
what it saw) and the follower ends up deciding nothing on its own."""

from __future__ import annotations

import json

from pgpool_proxy.pool.topology import DOWN, REPLICA, UNKNOWN, WRITER, ProbeResult, Topology

HOSTS = [("10.0.0.1", 5432), ("10.0.0.2", 5432)]


def roundtrip(topo: Topology) -> dict[str, object]:
    loaded: dict[str, object] = json.loads(json.dumps(topo.view()))
    return loaded


def test_a_follower_takes_the_writer_roles_and_lag() -> None:
    probed, follower = Topology("app", HOSTS), Topology("app", HOSTS)
    seen: list[tuple[str, int] | None] = []
    follower.subscribe(lambda t: seen.append(t.writer.key if t.writer else None))
    a, b = probed.hosts
    probed.observe(a, ProbeResult(False, timeline=1, lsn=1000), 1.0)
    probed.observe(b, ProbeResult(True, timeline=1, lsn=400), 1.0)
    follower.apply_view(roundtrip(probed), 50.0)
    fa, fb = follower.hosts
    assert follower.writer is fa and (fa.role, fb.role) == (WRITER, REPLICA)
    assert fb.lag_bytes == 600 and follower.replicas() == [fb]
    assert seen == [HOSTS[0]] and not follower.fast
    # Failover as worker 0 saw it: the writer lost, then the replica promoted.
    probed.observe_failure(a, "connection refused", 2.0, definitive=True)
    follower.apply_view(roundtrip(probed), 60.0)
    assert follower.writer is None and follower.writer_lost_at == 60.0
    assert fa.role == DOWN and fa.error == "connection refused" and follower.fast
    probed.observe(b, ProbeResult(False, timeline=2, lsn=2000), 3.0)
    follower.apply_view(roundtrip(probed), 61.0)
    assert follower.writer is fb and follower.writer_lost_at is None
    assert follower.failovers == probed.failovers == 1
    assert seen == [HOSTS[0], None, HOSTS[1]]


def test_hosts_found_by_discovery_reach_the_follower() -> None:
    probed, follower = Topology("aurora", []), Topology("aurora", [])
    probed.set_hosts([("w.example", 5432, "db-1"), ("r.example", 5432, "db-2")], 1.0)
    follower.apply_view(roundtrip(probed), 1.0)
    assert [(h.address, h.instance_id, h.role) for h in follower.hosts] == [
        ("w.example:5432", "db-1", UNKNOWN),
        ("r.example:5432", "db-2", UNKNOWN),
    ]
    probed.set_hosts([("r.example", 5432, "db-2")], 2.0)
    kept = follower.hosts[1]
    follower.apply_view(roundtrip(probed), 2.0)
    assert follower.hosts == [kept]
