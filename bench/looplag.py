"""Event-loop lag of the proxy under each benchmark run, from its own Prometheus histogram
(``pgpool_proxy_event_loop_lag_seconds``, scraped before and after the run)."""

from __future__ import annotations

import urllib.request
from dataclasses import dataclass
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

LAG = "pgpool_proxy_event_loop_lag_seconds"


@dataclass(frozen=True)
class LagSnapshot:
    buckets: list[tuple[float, float]]  # (upper bound, cumulative count), +Inf last
    max_s: float


def scrape(host: str, port: int, timeout_s: float = 5) -> LagSnapshot | None:
    """The proxy's lag histogram now, or None when the endpoint does not answer."""
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=timeout_s) as resp:
            text = resp.read().decode()
    except OSError:
        return None
    buckets: dict[float, float] = {}
    max_s = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == f"{LAG}_bucket":
                # With workers the same bucket comes once per worker: their sum is the process
                # group's histogram.
                le = float(s.labels["le"])
                buckets[le] = buckets.get(le, 0.0) + s.value
            elif s.name == "pgpool_proxy_event_loop_lag_max_seconds":
                max_s = max(max_s, s.value)
    return LagSnapshot(sorted(buckets.items()), max_s)


def between(before: LagSnapshot | None, after: LagSnapshot | None) -> dict[str, Any] | None:
    """Ticks, p99 and max lag (ms) of what happened between two scrapes. The p99 is the upper
    bound of its bucket; the max is exact when it was a new record, else its bucket's bound."""
    if before is None or after is None or len(before.buckets) != len(after.buckets):
        return None
    delta = [(le, a - b) for (le, a), (_, b) in zip(after.buckets, before.buckets, strict=True)]
    total = delta[-1][1] if delta else 0
    if not total:
        return None
    p99 = next(le for le, n in delta if n >= 0.99 * total)
    top = next(le for le, n in delta if n >= total)
    worst = after.max_s if after.max_s > before.max_s else min(top, after.max_s)
    return {
        "ticks": int(total),
        "p99_ms": _ms(min(p99, after.max_s)),
        "max_ms": _ms(worst),
    }


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)
