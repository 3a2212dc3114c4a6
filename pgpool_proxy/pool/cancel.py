"""Forwarding a client's CancelRequest to the server connection serving it, one at a time,
and keeping that connection out of use until the cancel has landed.

``done`` callbacks run once the server has acted on the cancel (or the attempt failed): the
client's own cancel connection is closed only then, as PostgreSQL's postmaster does, because
drivers (asyncpg) wait for that close before their next query, which a late cancel would hit."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..protocol import messages as m
from .backend_state import BackendState

if TYPE_CHECKING:
    from .backend import BackendConnection

log = logging.getLogger("pgpool_proxy.backend")


def send_cancel(backend: BackendConnection, done: Callable[[], None] | None = None) -> None:
    """Forward a client's cancel; the backend is not reused until the cancel has landed."""
    if backend.transport is None:
        if done is not None:
            done()
        return
    if done is not None:
        backend.cancel_done.append(done)
    if backend.cancelling:
        return  # one cancel at a time: a flood of them must not outlive this transaction
    backend.cancelling = True
    backend.pool.spawn(_cancel(backend), "cancel")


async def _cancel(backend: BackendConnection) -> None:
    try:
        host, port = backend.address
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port), backend.pool.connect_timeout_s
        )
        writer.write(m.cancel_request(backend.pid, backend.secret))
        # The postmaster signals the backend before it closes this socket. It sends nothing;
        # whatever a server does send is dropped as it comes, not gathered until EOF.
        await asyncio.wait_for(_until_eof(reader), backend.pool.connect_timeout_s)
        writer.close()
    except (OSError, TimeoutError) as exc:
        log.warning("cancel for backend %s failed: %s", backend.pid, exc)
    finally:
        backend.cancelling = False
        waiting, backend.cancel_done = backend.cancel_done, []
        for done in waiting:
            done()
        if backend.state == BackendState.CANCELLING:
            backend.pool.release(backend)


async def _until_eof(reader: asyncio.StreamReader) -> None:
    while await reader.read(4096):
        pass
