"""Owns the event-loop lag watchdog: one timer that notices when something held the loop.

Every client of a process shares its one event loop, so a callback that computes for 300 ms
delays every client by 300 ms. A timer due every ``INTERVAL_S`` runs late by however long the
loop was held (a slow callback, a blocking call, a GC pause, a starved CPU); that lateness is
recorded in a histogram and, past ``proxy.loop_lag_warn_ms``, logged. Nothing here runs per
message: the cost is one timer callback per interval. Counts are plain ints read at scrape.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Final

log = logging.getLogger("pgpool_proxy.loopwatch")

# 20 ticks a second: a block shorter than the interval may fall between two ticks and show
# only partly, so the lag recorded is a lower bound of how long the loop was held (it is
# exactly the delay a timer, or a client's readable socket, saw).
INTERVAL_S: Final = 0.05

# Upper bounds (seconds) of the histogram buckets; one more slot counts lags above the last.
LAG_BOUNDS_S: Final = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

# A saturated loop is late on every tick: one warning per window, with a count of the rest.
WARN_EVERY_S: Final = 10.0


class LoopWatch:
    """Measures the lag of a periodic timer on the running loop (start/stop from that loop)."""

    __slots__ = (
        "_due",
        "_handle",
        "_last_warn",
        "_loop",
        "_suppressed",
        "_suppressed_max",
        "buckets",
        "count",
        "interval_s",
        "max_s",
        "sum_s",
        "warn_ms",
        "warnings",
    )

    def __init__(self, warn_ms: Callable[[], float], interval_s: float = INTERVAL_S) -> None:
        # A callable so a RELOAD or an admin SET takes effect at the next tick.
        self.warn_ms = warn_ms
        self.interval_s = interval_s
        self.buckets = [0] * (len(LAG_BOUNDS_S) + 1)  # not cumulative; +Inf last
        self.count = 0
        self.sum_s = 0.0
        self.max_s = 0.0
        self.warnings = 0  # ticks at or over the threshold (logged or folded into the next log)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._due = 0.0
        self._last_warn = float("-inf")
        self._suppressed = 0
        self._suppressed_max = 0.0

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._schedule(time.monotonic())

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._loop = None

    def _schedule(self, now: float) -> None:
        assert self._loop is not None
        # time.monotonic, not loop.time(): uvloop's clock is cached per iteration in whole ms.
        self._due = now + self.interval_s
        self._handle = self._loop.call_later(self.interval_s, self._tick)

    def _tick(self) -> None:
        now = time.monotonic()
        self.record(max(0.0, now - self._due), now)
        if self._loop is not None:
            self._schedule(time.monotonic())

    def record(self, lag_s: float, now: float) -> None:
        self.count += 1
        self.sum_s += lag_s
        if lag_s > self.max_s:
            self.max_s = lag_s
        i = 0
        for bound in LAG_BOUNDS_S:
            if lag_s <= bound:
                break
            i += 1
        self.buckets[i] += 1
        threshold_ms = self.warn_ms()
        if threshold_ms > 0 and lag_s * 1000 >= threshold_ms:
            self.warnings += 1
            self._warn(lag_s, now, threshold_ms)

    def _warn(self, lag_s: float, now: float, threshold_ms: float) -> None:
        if now - self._last_warn < WARN_EVERY_S:
            self._suppressed += 1
            self._suppressed_max = max(self._suppressed_max, lag_s)
            return
        more = ""
        if self._suppressed:
            more = (
                f"; {self._suppressed} more over the threshold since the last warning, "
                f"the longest {self._suppressed_max * 1000:.0f} ms"
            )
        log.warning(
            "event loop held for %.0f ms (proxy.loop_lag_warn_ms = %g): every client of this "
            "process waited that long%s",
            lag_s * 1000,
            threshold_ms,
            more,
            extra={"event": "loop_lag", "lag_ms": round(lag_s * 1000, 1)},
        )
        self._last_warn = now
        self._suppressed = 0
        self._suppressed_max = 0.0

    def cumulative(self) -> list[tuple[str, float]]:
        """(le, cumulative count) pairs, as a Prometheus histogram wants them."""
        out: list[tuple[str, float]] = []
        total = 0
        for bound, n in zip((*LAG_BOUNDS_S, float("inf")), self.buckets, strict=True):
            total += n
            out.append(("+Inf" if bound == float("inf") else repr(float(bound)), total))
        return out
