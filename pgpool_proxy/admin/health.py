"""Owns the readiness decision behind /readyz (and the pgpool_proxy_ready gauge)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..runtime.server import ProxyServer


def readiness(server: ProxyServer) -> tuple[bool, str]:
    """(ready, why): listening, not draining, and every tracked database has a known writer.

    A database without a topology (one plain host) counts as ready: the pool finds out about
    its server on the next connect, and a load balancer cannot do better.
    """
    # Draining first: the drain closes the listener, and the reason should say why.
    if getattr(server, "draining", False):
        return False, "draining (shutting down)"
    listener: Any = getattr(server, "_server", None)
    if listener is None or not listener.is_serving():
        return False, "not listening"
    topologies: dict[str, Any] = getattr(server, "topologies", None) or {}
    for name, topology in sorted(topologies.items()):
        if getattr(topology, "writer", None) is None:
            return False, f"no writer known for {getattr(topology, 'name', name)}"
    return True, "ready"
