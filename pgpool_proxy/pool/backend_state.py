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


# The members as module names, for the hot path: on Python 3.11 each `BackendState.X` read goes
# through EnumType's __getattr__ hook (about 100 ns, several per transaction); a module name
# is a dict probe.
BACKEND_CONNECTING = BackendState.CONNECTING
BACKEND_LOGIN = BackendState.LOGIN
BACKEND_IDLE = BackendState.IDLE
BACKEND_ACTIVE = BackendState.ACTIVE
BACKEND_RESETTING = BackendState.RESETTING
BACKEND_CLOSED = BackendState.CLOSED
BACKEND_CANCELLING = BackendState.CANCELLING


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
