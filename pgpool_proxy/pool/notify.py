"""Whose notification is it: the pid a client sees in a NotificationResponse that a server
connection of the proxy sent (the proxy hands out its own pids, see
ProxyServer.register_cancel_key)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ..protocol.constants import (
    INT32,
)

if TYPE_CHECKING:
    from .backend import BackendConnection
    from .ends import PoolClient

log = logging.getLogger("pgpool_proxy.backend")


def notification(
    backend: BackendConnection, buf: bytearray, pos: int, n: int, client: PoolClient
) -> bytes:
    """The NotificationResponse at pos as the client must see it (see _notifier)."""
    mapped = notifier_pid(backend, INT32.unpack_from(buf, pos + 5)[0], client) if n >= 9 else None
    if mapped is None:
        return bytes(buf[pos : pos + n])
    return b"".join((buf[pos : pos + 5], INT32.pack(mapped), buf[pos + 9 : pos + n]))


def notifier_pid(backend: BackendConnection, pid: int, client: PoolClient) -> int | None:
    """The pid a client knows for the session that sent a notification: its own (from
    BackendKeyData) when it notified itself, and for another of the proxy's server
    connections the client whose COMMIT sent it, as near as the proxy can tell. None for
    a session outside the proxy: its pid is passed on, and never equals a pid the proxy
    gives clients (see ProxyServer.register_cancel_key).

    PostgreSQL answers the COMMIT and signals the listeners at the same time, so the
    listener's copy may arrive after the proxy has handed the notifier's connection to the
    next client, or before the reply to the COMMIT that sent it."""
    if pid == backend.pid:
        return client.key_pid
    # One lookup per pool, not a scan of every server connection: a NOTIFY flood from
    # outside the proxy must not cost the loop per connection.
    for pool in client.server.pools.values():
        b = pool.by_pid.get(pid)
        if b is not None and b.address == backend.address:
            if b.client is not None and b.parked:
                # It waited in the pool after its last transaction ended and serves a
                # client again: most likely that client's COMMIT, its reply overtaken. (A
                # notification of the earlier transaction would have come while it waited.)
                return b.last_key_pid or None
            # Idle, or handed straight on: the transaction that ended there last.
            return b.done_key_pid or b.last_key_pid or None
    return None
