"""The states of a server connection and which may follow which (BackendConnection._to)."""

from __future__ import annotations

import enum


class BackendState(enum.IntEnum):
    CONNECTING = 0
    LOGIN = 1
    IDLE = 2  # in the pool
    ACTIVE = 3  # linked to a client
    RESETTING = 4  # running the proxy's own queries with no client attached
    CLOSED = 5
    # Released while a client's cancel is on its way to the server: reused only once it has
    # landed, so it cannot hit the next client's query.
    CANCELLING = 6


# Which state may follow which (BackendConnection._to); tests/unit/test_transitions.py checks it.
BACKEND_TRANSITIONS: dict[BackendState, frozenset[BackendState]] = {
    BackendState.CONNECTING: frozenset({BackendState.LOGIN, BackendState.CLOSED}),
    BackendState.LOGIN: frozenset({BackendState.IDLE, BackendState.CLOSED}),
    BackendState.IDLE: frozenset(
        {BackendState.ACTIVE, BackendState.RESETTING, BackendState.CLOSED}
    ),
    BackendState.ACTIVE: frozenset(
        {BackendState.IDLE, BackendState.RESETTING, BackendState.CANCELLING, BackendState.CLOSED}
    ),
    BackendState.RESETTING: frozenset(
        {BackendState.IDLE, BackendState.ACTIVE, BackendState.CANCELLING, BackendState.CLOSED}
    ),
    BackendState.CANCELLING: frozenset({BackendState.IDLE, BackendState.CLOSED}),
    BackendState.CLOSED: frozenset(),
}
