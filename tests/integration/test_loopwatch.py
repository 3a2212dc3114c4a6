"""The event-loop lag watchdog in a serving proxy: a callback that holds the proxy's loop shows in
/metrics and in a warning log line naming how long; an idle proxy shows near-zero lag."""

from __future__ import annotations

import logging
import time

import pytest

from tests.integration.test_metrics import scrape, value
from tests.support.proxy import ProxyThread, StartProxy
from tests.support.waits import wait_for_sync

METRICS = {"listen": "127.0.0.1:0"}
LAG = "pgpool_proxy_event_loop_lag_seconds"


def wait_ticks(proxy: ProxyThread, n: int, timeout: float = 10) -> None:
    def count() -> int:
        assert proxy.server is not None
        return proxy.server.loopwatch.count

    want = proxy.call(count) + n
    wait_for_sync(lambda: proxy.call(count) >= want, timeout=timeout, what=f"{n} watchdog ticks")


def test_a_held_proxy_loop_is_measured_and_logged(
    start_proxy: StartProxy, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "pgpool_proxy.loopwatch")
    proxy = start_proxy(metrics=METRICS, proxy={"loop_lag_warn_ms": 150})
    wait_ticks(proxy, 2)
    before = scrape(proxy)
    assert value(before, f"{LAG}_bucket", le="+Inf") == value(before, f"{LAG}_count") > 0
    assert value(before, f"{LAG}_count") - value(before, f"{LAG}_bucket", le="0.1") == 0
    # On the proxy's own loop, as a runaway regex or a blocking call would: the hold is the
    # test, so it is a sleep.
    proxy.call(lambda: time.sleep(0.4))
    wait_ticks(proxy, 2)
    after = scrape(proxy)
    late = value(after, f"{LAG}_count") - value(after, f"{LAG}_bucket", le="0.25")
    assert late == 1, after
    assert 0.35 <= value(after, "pgpool_proxy_event_loop_lag_max_seconds") < 2.0
    lines = [r.getMessage() for r in caplog.records if r.name == "pgpool_proxy.loopwatch"]
    assert len(lines) == 1, lines
    held_ms = int(lines[0].split("event loop held for ")[1].split(" ms")[0])
    assert 350 <= held_ms < 2000 and "loop_lag_warn_ms = 150" in lines[0], lines


def test_an_idle_proxy_shows_near_zero_lag(start_proxy: StartProxy) -> None:
    proxy = start_proxy(metrics=METRICS)
    wait_ticks(proxy, 20)
    samples = scrape(proxy)
    count = value(samples, f"{LAG}_count")
    assert count >= 20
    # Timer granularity is 1 ms; the shared 2-core test machine adds scheduling noise (other
    # processes run), so the bounds are on the median and the 90th percentile.
    assert value(samples, f"{LAG}_bucket", le="0.005") >= 0.5 * count, samples
    assert value(samples, f"{LAG}_bucket", le="0.025") >= 0.9 * count, samples
