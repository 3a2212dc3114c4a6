"""Cancel keys: issuing the pid and secret of a client's BackendKeyData, and routing a
CancelRequest to the client's server connection, to the sibling worker that issued the key
(over its Unix socket) or to the peer instance whose key it is (runtime.peers).

Functions of a ProxyServer, which keeps the methods session.host.SessionHost names.

Every path calls ``done`` once the request has been acted on (signalled by the server, refused,
or given up on): the client's cancel connection stays open until then, as it does with
PostgreSQL, so a driver that waits for that close never sends its next query ahead of the cancel.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..auth import entropy
from ..counters import (
    CANCEL_FORWARDED,
    CANCEL_IDLE,
    CANCEL_RELAYED,
    CANCEL_SENT,
    CANCEL_UNKNOWN,
)
from ..protocol.messages import cancel_request as cancel_request_packet
from ..session.client_state import ClientState
from .peers import FORWARDED, PID_MASK, key_peer, key_secret
from .workers import MIN_CLIENT_PID, WORKER_SHIFT

if TYPE_CHECKING:
    from ..session.client import ClientConnection
    from .server import ProxyServer

log = logging.getLogger("pgpool_proxy.server")


def register_cancel_key(server: ProxyServer, client: ClientConnection) -> tuple[int, int]:
    """A pid and secret for the client's BackendKeyData, unique in this worker."""
    prefix = server.identity.index << WORKER_SHIFT
    while True:
        raw = int.from_bytes(entropy.token_bytes(7), "big")
        pid = prefix | (raw & ((1 << WORKER_SHIFT) - 1))
        # Never a pid a server process can have (Linux caps pids at 2**22): a client compares
        # a notification's pid with its own to tell its own notifications from others', and
        # the proxy passes other sessions' pids on unchanged.
        if pid >= MIN_CLIENT_PID and pid not in server.clients:
            break
    server.clients[pid] = client
    return pid, key_secret(server.peer_id, raw >> WORKER_SHIFT)


def nothing() -> None:
    """The default ``done``: a cancel nobody waits on."""


def cancel_request(
    server: ProxyServer,
    pid: int,
    secret: int,
    *,
    relayed: bool = False,
    done: Callable[[], None] = nothing,
) -> None:
    """A CancelRequest that arrived here: from a client, forwarded by a peer (the pid's top
    bit, see runtime.peers) or relayed by a sibling worker (``relayed``)."""
    ident = server.identity
    results = server.counters.cancel_requests
    forwarded = bool(pid & FORWARDED)
    pid &= PID_MASK
    if server.peer_id and key_peer(secret) != server.peer_id:
        # Another instance's key: passed on once, never again (no loops between peers).
        if not (forwarded or relayed) and server.peering.forward(
            key_peer(secret), pid, secret, done
        ):
            results[CANCEL_FORWARDED] += 1
        else:
            results[CANCEL_UNKNOWN] += 1
            done()
        return
    owner = pid >> WORKER_SHIFT
    if owner != ident.index:
        if ident.count > 1 and owner < ident.count and not relayed:
            results[CANCEL_RELAYED] += 1
            server.spawn(relay_cancel(server, owner, pid, secret, done), "relay-cancel")
        else:
            results[CANCEL_UNKNOWN] += 1
            done()
        return
    client = server.clients.get(pid)
    if client is None or not secrets.compare_digest(
        client.key_secret.to_bytes(4, "big"), secret.to_bytes(4, "big")
    ):
        results[CANCEL_UNKNOWN] += 1
        log.debug("cancel request with an unknown key ignored")
        done()
        return
    backend = client.backend
    # Only the backend serving this client right now may be cancelled.
    if backend is not None and client.state in (ClientState.ACTIVE, ClientState.CHECKING):
        results[CANCEL_SENT] += 1
        backend.send_cancel(done)
    else:
        results[CANCEL_IDLE] += 1
        done()


async def relay_cancel(
    server: ProxyServer, owner: int, pid: int, secret: int, done: Callable[[], None] = nothing
) -> None:
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_unix_connection(server.identity.peer_socket(owner)), 5
        )
        writer.write(cancel_request_packet(pid, secret))
        # The sibling closes once the cancel has landed, within its own cancel_wait_timeout_s.
        await asyncio.wait_for(reader.read(), server.config.proxy.cancel_wait_timeout_s + 1)
        writer.close()
    except (OSError, TimeoutError) as exc:
        log.warning("could not relay a cancel request to worker %d: %s", owner, exc)
    finally:
        done()
