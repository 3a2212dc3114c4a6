"""Owns ``[[peers]]``: the other proxy instances behind the same load balancer, to which a
cancel request for one of their clients is forwarded (PgBouncer 1.19+'s peering). This
instance's own id and the DNS name that lists peers are ``[proxy]`` keys (core)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from .core import MAX_PEER_ID
from .schema import BAD, Checker, Key, Kind

__all__ = ["PEER_KEYS", "PeerConfig", "build_peers"]

PEER_KEYS: Final[dict[str, Key]] = {
    "peer_id": Key(Kind.INT, lo=1, hi=MAX_PEER_ID),
    "host": Key(Kind.STR, nonempty=True),
    "port": Key(Kind.INT, lo=1, hi=65535),
}


@dataclass(frozen=True, slots=True)
class PeerConfig:
    """One ``[[peers]]`` entry: where the instance whose cancel keys carry ``peer_id`` listens."""

    peer_id: int
    host: str
    port: int = 6432


def build_peers(checker: Checker, entries: list[tuple[str, dict[str, Any]]]) -> list[PeerConfig]:
    """The valid [[peers]] entries. An entry naming this instance's own peer_id is allowed and
    skipped (PgBouncer's rule: every instance can share one list)."""
    peers: list[PeerConfig] = []
    seen: dict[int, str] = {}
    for path, values in entries:
        if any(v is BAD for v in values.values()):
            continue
        for key in ("peer_id", "host"):
            if key not in values:
                checker.add(f"{path}.{key}", "required")
        if "peer_id" not in values or "host" not in values:
            continue
        peer_id = values["peer_id"]
        if peer_id in seen:
            checker.add(f"{path}.peer_id", f"{peer_id} is already used by {seen[peer_id]}")
            continue
        seen[peer_id] = path
        peers.append(PeerConfig(**values))
    return peers
