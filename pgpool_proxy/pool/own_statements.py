"""The proxy's own statements on a server connection (resets, setting replays, checks, the
topology probe, auth_query): sent with their replies swallowed by the hot path, and the
errors and rows handed to the caller's callback once the last has answered.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..protocol import messages as m
from .backend_state import BackendState

if TYPE_CHECKING:
    from .backend import BackendConnection, InternalDone

log = logging.getLogger("pgpool_proxy.backend")


def run_own(
    backend: BackendConnection,
    statements: Sequence[str],
    done: InternalDone | None,
    *,
    batch: bool = False,
) -> None:
    """Run the proxy's own statements, their replies swallowed; `done` gets the errors and
    rows once the last has answered (or the connection is lost). Each statement is one
    simple Query; with `batch`, all are one extended-protocol batch (messages.internal_batch),
    which leaves the session's unnamed statement (a session-mode client's own) as it is.
    With no client linked, the connection is held out of the pool meanwhile."""
    assert backend.transport is not None
    if backend.client is None and backend.state != BackendState.RESETTING:
        backend.hold()
    backend.on_internal_done = done
    backend.scanner.internal = True
    if batch:
        backend.internal_pending += 1
        backend.transport.write(m.internal_batch(statements))
        return
    client = backend.client
    if client is not None:
        # A simple Query drops the server's unnamed statement.
        client.scanner.unnamed_here = False
    backend.internal_pending += len(statements)
    backend.transport.write(b"".join(m.query(sql) for sql in statements))


def run_own_query(
    backend: BackendConnection, sql: str, params: Sequence[str | None], done: InternalDone | None
) -> None:
    """Run one statement of the proxy's own with its $n bound to `params` (extended
    protocol: values never enter the SQL text); `done` as for run_own."""
    assert backend.transport is not None
    if backend.client is None and backend.state != BackendState.RESETTING:
        backend.hold()
    backend.on_internal_done = done
    backend.scanner.internal = True
    backend.internal_pending += 1
    backend.transport.write(m.internal_batch([(sql, params)]))


def finished(backend: BackendConnection) -> None:
    """The last of the proxy's statements has answered (BackendConnection._pump)."""
    backend.scanner.internal = False
    errors, backend.internal_errors = backend.internal_errors, []
    rows, backend.internal_rows = backend.internal_rows, []
    cb = backend.on_internal_done
    backend.on_internal_done = None
    if cb is not None:
        cb(backend, errors, rows)
    else:
        for fields in errors:
            log.warning(
                "backend %s: proxy-issued statement failed: %s %s",
                backend.pid,
                fields.get("C", "?"),
                fields.get("M", "?"),
            )
