"""The event-loop lag watchdog on a bare loop: it counts a deliberately held loop in the right
bucket, warns once per window naming how long, stays near zero when idle, and renders as a
Prometheus histogram."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
import uvloop
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from pgpool_proxy.admin.metrics import build_registry
from pgpool_proxy.config import build_config
from pgpool_proxy.runtime.loopwatch import LAG_BOUNDS_S, WARN_EVERY_S, LoopWatch
from pgpool_proxy.runtime.server import ProxyServer
from tests.support.waits import wait_for

LOGGER = "pgpool_proxy.loopwatch"


async def ticks(watch: LoopWatch, n: int, timeout: float = 10) -> None:
    """Wait until the watch has ticked n more times."""
    want = watch.count + n
    await wait_for(lambda: watch.count >= want, timeout=timeout, what=f"{n} watchdog ticks")


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_a_held_loop_is_counted_and_logged(
    loop_kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> LoopWatch:
        watch = LoopWatch(lambda: 100)
        watch.start()
        try:
            await ticks(watch, 2)
            # A callback that blocks, as a runaway regex or a sync call would: the hold is the
            # test, so it is a sleep.
            asyncio.get_running_loop().call_soon(time.sleep, 0.3)
            await ticks(watch, 2)
        finally:
            watch.stop()
        return watch

    caplog.set_level(logging.WARNING, LOGGER)
    runner = uvloop.run if loop_kind == "uvloop" else asyncio.run
    watch = runner(main())
    # The timer is due every 50 ms, so a 300 ms block makes it at least 250 ms late.
    assert 0.25 <= watch.max_s < 1.0, watch.max_s
    assert sum(watch.buckets[LAG_BOUNDS_S.index(0.1) + 1 :]) == 1, watch.buckets
    assert watch.warnings == 1
    warnings = [r for r in caplog.records if r.name == LOGGER]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    held_ms = int(warnings[0].getMessage().split("held for ")[1].split(" ms")[0])
    assert 250 <= held_ms < 1000, warnings[0].getMessage()
    assert "proxy.loop_lag_warn_ms = 100" in warnings[0].getMessage()
    assert warnings[0].lag_ms == pytest.approx(watch.max_s * 1000, abs=0.1)  # type: ignore[attr-defined]


def test_an_idle_loop_shows_near_zero_lag() -> None:
    async def main() -> LoopWatch:
        watch = LoopWatch(lambda: 100)
        watch.start()
        try:
            await ticks(watch, 20)
        finally:
            watch.stop()
        return watch

    watch = uvloop.run(main())
    # Timer granularity is 1 ms; the shared 2-core test machine adds scheduling noise (other
    # processes run), so the bounds are on the median and the 90th percentile.
    assert sum(watch.buckets[: LAG_BOUNDS_S.index(0.005) + 1]) >= 0.5 * watch.count, watch.buckets
    assert sum(watch.buckets[: LAG_BOUNDS_S.index(0.025) + 1]) >= 0.9 * watch.count, watch.buckets


def test_warnings_are_rate_limited_and_count_the_rest(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, LOGGER)
    threshold = [100.0]
    watch = LoopWatch(lambda: threshold[0])
    t = 1000.0
    watch.record(0.2, t)
    watch.record(0.5, t + 1)  # inside the window: folded into the next warning
    watch.record(0.3, t + 2)
    watch.record(0.05, t + 3)  # under the threshold
    watch.record(0.15, t + WARN_EVERY_S + 1)
    messages = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert len(messages) == 2, messages
    assert "held for 200 ms" in messages[0]
    assert "held for 150 ms" in messages[1]
    assert "2 more over the threshold since the last warning, the longest 500 ms" in messages[1]
    assert watch.warnings == 4
    threshold[0] = 0  # 0 turns warnings off, the histogram still counts
    watch.record(5.0, t + 100)
    assert watch.warnings == 4 and watch.count == 6 and watch.max_s == 5.0


def test_buckets_and_rendering() -> None:
    server = ProxyServer(
        build_config(
            {
                "databases": [{"name": "app", "host": "10.0.0.5", "port": 5433}],
                "users": [{"name": "alice", "password": "pw"}],
            },
            env={},
        )
    )
    watch = server.loopwatch
    for lag in (0.0, 0.001, 0.0011, 0.3, 20.0):
        watch.record(lag, 0.0)
    assert watch.buckets[0] == 2 and watch.buckets[1] == 1 and watch.buckets[-1] == 1
    text = generate_latest(build_registry(server)).decode()
    samples = {
        (s.name, s.labels.get("le")): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name.startswith("pgpool_proxy_event_loop_lag")
    }
    assert samples[("pgpool_proxy_event_loop_lag_seconds_bucket", "0.001")] == 2
    assert samples[("pgpool_proxy_event_loop_lag_seconds_bucket", "0.25")] == 3
    assert samples[("pgpool_proxy_event_loop_lag_seconds_bucket", "0.5")] == 4
    assert samples[("pgpool_proxy_event_loop_lag_seconds_bucket", "10.0")] == 4
    assert samples[("pgpool_proxy_event_loop_lag_seconds_bucket", "+Inf")] == 5
    assert samples[("pgpool_proxy_event_loop_lag_seconds_count", None)] == 5
    assert samples[("pgpool_proxy_event_loop_lag_seconds_sum", None)] == pytest.approx(20.3021)
    assert samples[("pgpool_proxy_event_loop_lag_max_seconds", None)] == 20.0
