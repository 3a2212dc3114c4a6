"""The states of a client connection and which may follow which (ClientConnection.to)."""

from __future__ import annotations

import enum


class ClientState(enum.IntEnum):
    LOGIN = 0
    IDLE = 1  # logged in, no backend
    WAITING = 2  # queued for a backend
    REPLAYING = 3  # linked; the backend is being given this client's settings first
    ACTIVE = 4  # linked to a backend
    PROBING = 5  # linked; the proxy asks the server what the last transaction left behind
    CLOSED = 6
    # Linked; the client's next message waits while the proxy compares what a statement it
    # prepared again returns with what the client was told (see _prepare).
    CHECKING = 7


# Which state may follow which (ClientConnection.to); tests/unit/test_transitions.py checks it.
CLIENT_TRANSITIONS: dict[ClientState, frozenset[ClientState]] = {
    ClientState.LOGIN: frozenset({ClientState.IDLE, ClientState.CLOSED}),
    ClientState.IDLE: frozenset(
        {ClientState.WAITING, ClientState.REPLAYING, ClientState.ACTIVE, ClientState.CLOSED}
    ),
    ClientState.WAITING: frozenset({ClientState.REPLAYING, ClientState.ACTIVE, ClientState.CLOSED}),
    ClientState.REPLAYING: frozenset({ClientState.ACTIVE, ClientState.IDLE, ClientState.CLOSED}),
    ClientState.ACTIVE: frozenset(
        {ClientState.IDLE, ClientState.PROBING, ClientState.CHECKING, ClientState.CLOSED}
    ),
    ClientState.CHECKING: frozenset({ClientState.ACTIVE, ClientState.CLOSED}),
    ClientState.PROBING: frozenset({ClientState.ACTIVE, ClientState.IDLE, ClientState.CLOSED}),
    ClientState.CLOSED: frozenset(),
}
