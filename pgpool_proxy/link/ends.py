"""The two ends of a link as reply matching sees them.

Protocol types rather than the connection classes, so this package sits below both the pool
(server end) and the session (client end) and neither of those imports the other's class here.
Members are read-only properties where the link code never rebinds them: a plain attribute of
the connection classes satisfies them.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from ..protocol.client_scan import ClientScanner
from ..protocol.constants import TX_IDLE
from .prepared import ClientStatements, ServerStatements, StatementRegistry, Stmt


class LinkClient(Protocol):
    """The client end: its message scanner (which holds the reply units), its statements."""

    @property
    def scanner(self) -> ClientScanner: ...

    @property
    def stmts(self) -> ClientStatements: ...

    @property
    def transport(self) -> asyncio.Transport | None: ...

    def checked(self, backend: object, stmt: Stmt, same: bool | None) -> None:
        """The server answered the proxy's Describe of stmt on `backend` (see
        session.statements._prepare)."""


class LinkPool(Protocol):
    @property
    def registry(self) -> StatementRegistry: ...


class LinkServer(Protocol):
    """The server end: its transaction status, its statements, its pool's shared registry."""

    @property
    def tx_status(self) -> int: ...

    @property
    def stmts(self) -> ServerStatements: ...

    @property
    def pool(self) -> LinkPool: ...


def at_boundary(scanner: ClientScanner, tx_status: int) -> bool:
    """The link is between two transactions: the client is owed no reply (every Query and Sync
    answered), has sent no extended-protocol message that still waits for its Sync, is not
    mid-way through skipping a message, and the server is outside a transaction block. Only
    here may the server connection go to another client, or the client be closed losing
    nothing."""
    return (
        scanner.pending <= 0 and not scanner.unsynced and not scanner.skip and tx_status == TX_IDLE
    )
