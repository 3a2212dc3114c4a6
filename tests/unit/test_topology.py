"""The writer decision (pool.topology) and probe parsing (pool.monitor), without sockets."""

from __future__ import annotations

import pytest

from pgpool_proxy.config import ConfigError, DatabaseRole, build_config, parse_host_port
from pgpool_proxy.pool.monitor import parse_lsn, parse_probe
from pgpool_proxy.pool.topology import DOWN, REPLICA, STALE, WRITER, ProbeResult, Topology
from tests.support.poolspec import pool_spec

A, B, C = ("10.0.0.1", 5432), ("10.0.0.2", 5432), ("10.0.0.3", 5432)


def _topo(*addresses: tuple[str, int]) -> tuple[Topology, list[Topology]]:
    topo = Topology("app", addresses or (A, B))
    seen: list[Topology] = []
    topo.subscribe(seen.append)
    return topo, seen


def _h(topo: Topology, address: tuple[str, int]):  # type: ignore[no-untyped-def]
    state = topo.host(*address)
    assert state is not None
    return state


def primary(tl: int, lsn: int = 100) -> ProbeResult:
    return ProbeResult(False, timeline=tl, lsn=lsn)


def standby(lsn: int = 100, tl: int | None = 1) -> ProbeResult:
    return ProbeResult(True, timeline=tl, lsn=lsn)


def test_writer_is_the_host_not_in_recovery() -> None:
    topo, seen = _topo()
    topo.observe(_h(topo, B), standby(90), 0.0)
    assert topo.writer is None
    topo.observe(_h(topo, A), primary(1, 100), 0.1)
    assert topo.writer is _h(topo, A)
    assert _h(topo, B).role == REPLICA
    assert _h(topo, B).lag_bytes == 10
    assert not topo.fast  # every host answered and a writer is confirmed
    assert seen  # pools were told
    assert topo.failovers == 0


def test_definitive_failure_drops_the_writer_at_once_and_promotion_counts_a_failover() -> None:
    topo, _ = _topo()
    topo.observe(_h(topo, A), primary(1), 0.0)
    topo.observe(_h(topo, B), standby(), 0.0)
    topo.observe_failure(_h(topo, A), "Connection refused", 1.0, definitive=True)
    assert topo.writer is None
    assert topo.writer_lost_at == 1.0
    assert topo.fast
    assert _h(topo, A).role == DOWN
    topo.observe(_h(topo, B), primary(2), 1.2)
    assert topo.writer is _h(topo, B)
    assert topo.failovers == 1
    assert topo.writer_lost_at is None


def test_one_slow_answer_keeps_the_writer_two_drop_it() -> None:
    topo, _ = _topo()
    topo.observe(_h(topo, A), primary(1), 0.0)
    topo.observe(_h(topo, B), standby(), 0.0)
    topo.observe_failure(_h(topo, A), "no answer", 1.0, definitive=False)
    assert topo.writer is _h(topo, A)
    assert topo.fast
    topo.observe_failure(_h(topo, A), "no answer", 1.2, definitive=False)
    assert topo.writer is None


def test_same_writer_back_after_a_restart_is_not_a_failover() -> None:
    topo, _ = _topo()
    topo.observe(_h(topo, A), primary(1), 0.0)
    topo.observe_failure(_h(topo, A), "lost", 1.0, definitive=True)
    topo.observe(_h(topo, A), primary(1), 2.0)
    assert topo.writer is _h(topo, A)
    assert topo.failovers == 0


def test_split_brain_higher_timeline_wins_and_the_old_primary_is_never_chosen_again() -> None:
    topo, _ = _topo()
    topo.observe(_h(topo, A), primary(1), 0.0)
    topo.observe(_h(topo, B), standby(), 0.0)
    topo.observe_failure(_h(topo, A), "lost", 1.0, definitive=True)
    topo.observe(_h(topo, B), primary(2), 1.1)
    # The old primary restarts without pg_rewind and claims to be primary on timeline 1.
    topo.observe(_h(topo, A), primary(1), 2.0)
    assert topo.writer is _h(topo, B)
    assert _h(topo, A).role == STALE
    # Even when the new writer fails, the stale one is not written to.
    topo.observe_failure(_h(topo, B), "lost", 3.0, definitive=True)
    topo.observe(_h(topo, A), primary(1), 3.1)
    assert topo.writer is None


def test_two_primaries_seen_first_on_different_timelines() -> None:
    topo, _ = _topo()
    topo.observe(_h(topo, A), primary(1), 0.0)
    assert topo.writer is _h(topo, A)
    topo.observe(_h(topo, B), primary(3), 0.1)
    assert topo.writer is _h(topo, B)
    assert _h(topo, A).role == STALE


def test_a_writer_that_turns_into_a_standby_is_dropped() -> None:
    topo, _ = _topo()
    topo.observe(_h(topo, A), primary(1), 0.0)
    topo.observe(_h(topo, A), standby(), 1.0)
    assert topo.writer is None
    assert _h(topo, A).role == REPLICA


def test_discovery_replaces_hosts_and_keeps_known_state() -> None:
    topo, _ = _topo()
    topo.observe(_h(topo, A), primary(1), 0.0)
    added, removed = topo.set_hosts([(*A, "i-a"), (*C, "i-c")], 1.0)
    assert [h.key for h in added] == [C]
    assert [h.key for h in removed] == [B]
    assert topo.writer is _h(topo, A)
    assert _h(topo, A).instance_id == "i-a"
    topo.set_hosts([(*C, "i-c")], 2.0)
    assert topo.writer is None


def test_aurora_naming_another_writer_switches_to_fast_polling() -> None:
    topo, _ = _topo()
    topo.observe(_h(topo, A), ProbeResult(False, instance_id="i-a", writer_instance_id="i-a"), 0.0)
    topo.observe(_h(topo, B), ProbeResult(True, instance_id="i-b", writer_instance_id="i-a"), 0.0)
    assert not topo.fast
    topo.observe(_h(topo, B), ProbeResult(True, instance_id="i-b", writer_instance_id="i-b"), 1.0)
    assert topo.fast


def test_describe_names_every_host() -> None:
    topo, _ = _topo()
    topo.observe(_h(topo, A), primary(1), 0.0)
    topo.observe_failure(_h(topo, B), "Connection refused", 0.0, definitive=True)
    assert topo.describe() == "10.0.0.1:5432 writer, 10.0.0.2:5432 down (Connection refused)"
    assert _h(topo, A).role == WRITER


@pytest.mark.parametrize(
    ("row", "aurora", "expect"),
    [
        (["f", "16/B374D848", "2"], False, (False, 2, (0x16 << 32) | 0xB374D848)),
        (["t", "0/3000148", "1"], False, (True, 1, 0x3000148)),
        (["t", None, None], False, (True, None, None)),
    ],
)
def test_parse_probe(row: list[str | None], aurora: bool, expect: tuple[object, ...]) -> None:
    r = parse_probe(row, aurora)
    assert (r.in_recovery, r.timeline, r.lsn) == expect


def test_parse_probe_aurora_and_garbage() -> None:
    r = parse_probe(["t", "inst-2", "inst-1"], aurora=True)
    assert (r.in_recovery, r.instance_id, r.writer_instance_id) == (True, "inst-2", "inst-1")
    with pytest.raises(ValueError):
        parse_probe(["x", "0/0", "1"], aurora=False)
    with pytest.raises(ValueError):
        parse_probe(["f"], aurora=False)
    assert parse_lsn("nonsense") is None
    assert parse_lsn("G/1") is None


def test_parse_host_port() -> None:
    assert parse_host_port("db1") == ("db1", 5432)
    assert parse_host_port("db1:6000") == ("db1", 6000)
    assert parse_host_port("[::1]:7000") == ("::1", 7000)
    assert parse_host_port("db1:0") is None
    assert parse_host_port("db1:x") is None
    assert parse_host_port("a b") is None


def _cfg(db: dict[str, object], **extra: object) -> None:
    data: dict[str, object] = {
        "auth": {"type": "md5"},
        "databases": [db],
        "users": [{"name": "u", "password": "pw"}],
        **extra,
    }
    build_config(data, env={})


def test_config_hosts_role_and_monitor_login() -> None:
    config = build_config(
        {
            "auth": {"type": "md5"},
            "databases": [
                {"name": "app", "hosts": ["h1:5432", "h2"], "user": "u"},
                {"name": "ro", "hosts": ["h1", "h2"], "role": "reader", "monitor_user": "u"},
            ],
            "users": [{"name": "u", "password": "pw"}],
            "topology": {"poll_interval_s": 0.5, "failover_timeout_s": 10},
        },
        env={},
    )
    app, ro = config.databases
    assert app.hosts == (("h1", 5432), ("h2", 5432))
    assert app.tracked and ro.tracked
    assert ro.role is DatabaseRole.READER
    assert config.topology.poll_interval_s == 0.5
    assert config.topology.failover_timeout_s == 10


@pytest.mark.parametrize(
    ("db", "extra", "problem"),
    [
        ({"name": "a", "hosts": ["h1", "h1"], "user": "u"}, {}, "listed twice"),
        ({"name": "a", "hosts": ["h1", "h2"], "host": "h3", "user": "u"}, {}, "not both"),
        ({"name": "a", "hosts": ["h1", "h2:99999"], "user": "u"}, {}, 'expected "host:port"'),
        ({"name": "a", "hosts": ["h1", "h2"]}, {}, "needs credentials for its topology monitor"),
        ({"name": "a", "hosts": ["h1", "h2"], "monitor_user": "nobody"}, {}, "[[users]] entry"),
        ({"name": "a", "aurora_cluster": "c1", "user": "u"}, {}, "aurora_region: required"),
        (
            {"name": "a", "aurora_cluster": "c1", "aurora_region": "x", "user": "u"},
            {},
            "not an AWS region",
        ),
        ({"name": "a", "aurora_region": "us-east-1"}, {}, "aurora_cluster: required"),
        (
            {"name": "a", "user": "u"},
            {"topology": {"poll_interval_s": 0.5, "fast_poll_interval_s": 1}},
            "must not exceed topology.poll_interval_s",
        ),
    ],
)
def test_config_problems(db: dict[str, object], extra: dict[str, object], problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        _cfg(db, **extra)
    assert problem in str(info.value)


def test_monitor_user_with_unset_password_env_is_one_problem() -> None:
    with pytest.raises(ConfigError) as info:
        build_config(
            {
                "auth": {"type": "trust"},
                "databases": [{"name": "a", "hosts": ["h1", "h2"], "monitor_user": "mon"}],
                "users": [{"name": "mon", "password_env": "MON_PW"}],
            },
            source="t.toml",
            env={},
        )
    assert info.value.problems == [
        "t.toml: users[0].password_env: environment variable MON_PW is not set"
    ]


def _reader_spec(**overrides: object):  # type: ignore[no-untyped-def]
    return pool_spec(
        name="ro/u", host=A[0], port=A[1], reader=True, reader_fallback=False, **overrides
    )


async def test_reader_lag_bound_uses_measured_lag_only() -> None:
    from pgpool_proxy.pool.pool import Pool

    pool = Pool(_reader_spec(max_replica_lag_bytes=1000), lambda coro, name: coro.close())
    topo = Topology("app", (A, B))
    pool.attach_topology(topo)
    # Aurora: no WAL positions, so no lag figure: the replica is used.
    topo.observe(_h(topo, A), ProbeResult(False, instance_id="a"), 0.0)
    topo.observe(_h(topo, B), ProbeResult(True, instance_id="b"), 0.0)
    assert pool.pick_address() == B
    # Measured lag over the bound excludes it; back in only below half the bound.
    topo.observe(_h(topo, A), primary(1, 10_000), 1.0)
    topo.observe(_h(topo, B), standby(8_000), 1.0)
    assert pool.pick_address() is None
    topo.observe(_h(topo, B), standby(9_300), 2.0)  # 700 behind: still out
    assert pool.pick_address() is None
    topo.observe(_h(topo, B), standby(9_600), 3.0)  # 400 behind
    assert pool.pick_address() == B
    pool.close()


async def test_reader_pool_retires_once_per_server_leaving() -> None:
    from pgpool_proxy.pool.pool import Pool

    spec = _reader_spec()
    pool = Pool(spec, lambda coro, name: coro.close())
    topo = Topology("app", (A, B, C))
    pool.attach_topology(topo)
    topo.observe(_h(topo, A), primary(1, 100), 0.0)
    topo.observe(_h(topo, B), standby(100), 0.0)
    topo.observe(_h(topo, C), standby(100), 0.0)
    assert pool.pick_address() == B  # fewest connections, configured order on ties
    pool.by_address = {B: 1, C: 1}  # one busy connection to each replica
    assert pool.pick_address() == B
    gen = pool.generation
    topo.observe_failure(_h(topo, B), "lost", 1.0, definitive=True)
    assert pool.generation == gen + 1
    assert pool.pick_address() == C
    # Later observations while B's busy connection is still counted do not retire again.
    topo.observe(_h(topo, C), standby(100), 1.5)
    topo.observe(_h(topo, A), primary(1, 100), 1.6)
    assert pool.generation == gen + 1
    # B comes back and leaves again: that is a new retirement.
    topo.observe(_h(topo, B), standby(100), 2.0)
    topo.observe_failure(_h(topo, B), "lost", 3.0, definitive=True)
    assert pool.generation == gen + 2
    # No replica and no fallback: nowhere to go.
    topo.observe_failure(_h(topo, C), "lost", 4.0, definitive=True)
    assert pool.pick_address() is None
    pool.close()
