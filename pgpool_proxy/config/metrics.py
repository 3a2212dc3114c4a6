"""Owns the ``[metrics]`` settings: where the Prometheus, /healthz and /readyz endpoint listens."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .schema import _Checker


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


def build_metrics(checker: _Checker, data: Mapping[str, Any]) -> MetricsSettings:
    """The [metrics] section of a Config; an empty ``listen`` means no endpoint."""
    from .schema import _BAD, _valid

    values = checker.section("metrics", data.get("metrics"))
    listen = values.pop("listen", None)
    if isinstance(listen, str) and listen.strip():
        where = "metrics.listen"
        if "PGPOOL_METRICS_LISTEN" in checker.env:
            where += " (from environment variable PGPOOL_METRICS_LISTEN)"
        address = checker._listen(listen.strip(), where)
        if address is not _BAD:
            values["listen_host"], values["listen_port"] = address
    return MetricsSettings(**_valid(values))
