"""Owns the multi-host settings: the ``[topology]`` section and a database's hosts and role.

`databases` holds the per-database keys (``hosts``, ``role``, ``aurora_*``) and calls
`check_hosts`; the monitor's login is checked there too, with the users at hand.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from .schema import BAD, Add, Checker, Key, Kind, all_valid, only_valid
from .tables import read_section

__all__ = [
    "TOPOLOGY_KEYS",
    "DatabaseRole",
    "TopologySettings",
    "build_topology",
    "check_database_hosts",
    "check_hosts",
    "check_topology",
    "parse_host_port",
]

_HOST_PORT_RE: Final = re.compile(
    r"(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[^:\s\[\]]+))(?::(?P<port>[0-9]+))?"
)
_CLUSTER_ID_RE: Final = re.compile(r"[A-Za-z][A-Za-z0-9-]{0,62}")
_REGION_RE: Final = re.compile(r"[a-z]{2}(-[a-z]+)+-[0-9]+")


class DatabaseRole(enum.Enum):
    """Which servers of a multi-host database a pool's connections go to."""

    WRITER = "writer"  # the one host that is not in recovery
    READER = "reader"  # replicas, balanced; the writer only as a fallback


@dataclass(frozen=True, slots=True)
class TopologySettings:
    """The ``[topology]`` section: how writer tracking polls and how long clients wait."""

    # Steady-state poll of every host (pg_is_in_recovery + timeline + WAL position).
    poll_interval_s: float = 1.0
    # Poll interval once anything failed, until a writer is confirmed again.
    fast_poll_interval_s: float = 0.2
    # Connect + login + probe query; a host that does not answer within it counts as down.
    probe_timeout_s: float = 2.0
    # New transactions wait this long for a writer to be confirmed, then get an error.
    failover_timeout_s: float = 30.0
    # How often the Aurora cluster's members are re-read (aurora_cluster databases).
    discovery_interval_s: float = 30.0


def parse_host_port(text: str, default_port: int = 5432) -> tuple[str, int] | None:
    """Parse "host", "host:port" or "[v6]:port" into (host, port); None when malformed."""
    match = _HOST_PORT_RE.fullmatch(text.strip())
    if match is None:
        return None
    host = match["v6"] or match["host"]
    port = int(match["port"]) if match["port"] else default_port
    if not 1 <= port <= 65535:
        return None
    return host, port


def check_database_hosts(
    add: Add, path: str, values: Mapping[str, Any]
) -> tuple[tuple[str, int], ...] | None:
    """Cross-key checks of one [[databases]] entry's multi-host keys; returns its parsed
    ``hosts`` (None when absent or invalid)."""
    hosts = values.get("hosts")
    aurora = values.get("aurora_cluster")
    parsed: list[tuple[str, int]] = []
    ok = True
    if hosts is not None and "host" in values:
        add(f"{path}.hosts", "give either host/port or hosts, not both")
    if isinstance(hosts, list | tuple):
        port = values.get("port")
        for i, item in enumerate(hosts):
            hp = parse_host_port(item, port if isinstance(port, int) else 5432)
            if hp is None:
                add(f"{path}.hosts[{i}]", f'expected "host:port", got "{item}"')
                ok = False
            elif hp in parsed:
                add(f"{path}.hosts[{i}]", f'"{item}" is listed twice')
                ok = False
            else:
                parsed.append(hp)
    if isinstance(aurora, str):
        if not _CLUSTER_ID_RE.fullmatch(aurora):
            add(f"{path}.aurora_cluster", f'"{aurora}" is not a DB cluster identifier')
        if hosts is not None or "host" in values:
            add(f"{path}.aurora_cluster", "the cluster supplies the hosts: remove host/hosts")
        region = values.get("aurora_region")
        if region is None:
            add(f"{path}.aurora_region", "required with aurora_cluster")
        elif isinstance(region, str) and not _REGION_RE.fullmatch(region):
            add(f"{path}.aurora_region", f'"{region}" is not an AWS region name')
    elif "aurora_region" in values or "aurora_endpoint_url" in values:
        add(f"{path}.aurora_cluster", "required with aurora_region / aurora_endpoint_url")
    return tuple(parsed) if parsed and ok else None


def check_topology(add: Add, settings: TopologySettings) -> None:
    """The fast poll (after a failure) must not be slower than the steady one."""
    if settings.fast_poll_interval_s > settings.poll_interval_s:
        add(
            "topology.fast_poll_interval_s",
            f"must not exceed topology.poll_interval_s ({settings.poll_interval_s:g}), "
            f"got {settings.fast_poll_interval_s:g}",
        )


TOPOLOGY_KEYS: Final[dict[str, Key]] = {
    "poll_interval_s": Key(Kind.FLOAT, lo=0.05, hi=60),
    "fast_poll_interval_s": Key(Kind.FLOAT, lo=0.02, hi=60),
    "probe_timeout_s": Key(Kind.FLOAT, lo=0, lo_open=True, hi=60),
    "failover_timeout_s": Key(Kind.FLOAT, lo=0, lo_open=True),
    "discovery_interval_s": Key(Kind.FLOAT, lo=1),
}


def check_hosts(checker: Checker, path: str, values: dict[str, Any]) -> None:
    """Parse a database's ``hosts`` into (host, port) pairs, or mark it invalid."""
    if values.get("hosts") is BAD:
        return
    hosts = check_database_hosts(checker.add, path, values)
    if "hosts" in values:
        values["hosts"] = BAD if hosts is None else hosts


def build_topology(checker: Checker, raw: object) -> TopologySettings:
    """The [topology] section, with its cross-key check."""
    values = read_section(checker, "topology", raw, TOPOLOGY_KEYS)
    settings = TopologySettings(**only_valid(values))
    if all_valid(values):
        check_topology(checker.add, settings)
    return settings
