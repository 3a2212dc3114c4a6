"""Owns the ``[metrics]`` settings: where the Prometheus, /healthz and /readyz endpoint listens."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from .schema import BAD, Checker, Key, Kind, only_valid
from .tables import read_section

__all__ = ["METRICS_KEYS", "MetricsSettings", "build_metrics"]


@dataclass(frozen=True, slots=True)
class MetricsSettings:
    """The ``[metrics]`` section; no HTTP endpoint unless ``listen`` is set."""

    listen_host: str = ""
    listen_port: int = 0
    # Seconds a request may take to arrive, and (with workers) a sibling to answer a snapshot.
    request_timeout_s: float = 5.0

    @property
    def enabled(self) -> bool:
        return bool(self.listen_host)


# An empty listen turns the endpoint off, so it is a plain string checked here, not a LISTEN key.
METRICS_KEYS: Final[dict[str, Key]] = {
    "listen": Key(Kind.STR),
    "request_timeout_s": Key(Kind.FLOAT, lo=0, lo_open=True, hi=300),
}


def build_metrics(checker: Checker, raw: object) -> MetricsSettings:
    """The [metrics] section of a Config; an empty ``listen`` means no endpoint."""
    values = read_section(checker, "metrics", raw, METRICS_KEYS)
    listen = values.pop("listen", None)
    if isinstance(listen, str) and listen.strip():
        where = "metrics.listen"
        if "PGPOOL_METRICS_LISTEN" in checker.env:
            where += " (from environment variable PGPOOL_METRICS_LISTEN)"
        address = checker.listen(listen.strip(), where)
        if address is not BAD:
            values["listen_host"], values["listen_port"] = address
    return MetricsSettings(**only_valid(values))
