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


# The members as module names, for the hot path: on Python 3.11 each `ClientState.X` read goes
# through EnumType's __getattr__ hook (about 100 ns, several per transaction); a module name
# is a dict probe.
CLIENT_LOGIN = ClientState.LOGIN
CLIENT_IDLE = ClientState.IDLE
CLIENT_WAITING = ClientState.WAITING
CLIENT_REPLAYING = ClientState.REPLAYING
CLIENT_ACTIVE = ClientState.ACTIVE
CLIENT_CHECKING = ClientState.CHECKING
CLIENT_CLOSED = ClientState.CLOSED


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
