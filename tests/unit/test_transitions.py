"""Every state machine's transition table, and the guard that enforces it.

For each of the four (client connection, server connection, pool, proxy process): every state
is reachable from the first, CLOSED is reachable from every state and ends everything, and the
guarded transition accepts exactly the table's pairs.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from typing import Any

import pytest

from pgpool_proxy.pool.backend import BackendConnection
from pgpool_proxy.pool.backend_state import BACKEND_TRANSITIONS, BackendState
from pgpool_proxy.pool.pool import Pool
from pgpool_proxy.pool.spec import POOL_TRANSITIONS, PoolState
from pgpool_proxy.runtime.server import SERVER_TRANSITIONS, ProxyServer, ServerState
from pgpool_proxy.session.client import ClientConnection
from pgpool_proxy.session.client_state import CLIENT_TRANSITIONS, ClientState

Table = Mapping[Any, frozenset[Any]]


def _guard(cls: type, method: str) -> Callable[[Any, Any], None]:
    """Call cls.<method> on a bare object in state `old` (the guard reads only .state)."""

    def move(old: Any, new: Any) -> None:
        obj = cls.__new__(cls)  # not object.__new__: the compiled twin's are extension types
        obj.state = old
        getattr(cls, method)(obj, new)
        assert obj.state is new

    return move


MACHINES = [
    pytest.param(
        ClientState, CLIENT_TRANSITIONS, ClientState.LOGIN, _guard(ClientConnection, "to"),
        id="client",
    ),
    pytest.param(
        BackendState, BACKEND_TRANSITIONS, BackendState.CONNECTING,
        _guard(BackendConnection, "_to"), id="backend",
    ),
    pytest.param(PoolState, POOL_TRANSITIONS, PoolState.OPEN, _guard(Pool, "_to"), id="pool"),
    pytest.param(
        ServerState, SERVER_TRANSITIONS, ServerState.SERVING, _guard(ProxyServer, "_to"),
        id="server",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("states", "table", "first", "move"), MACHINES)
def test_table_covers_every_state(states: type[enum.Enum], table: Table, first: Any, move: Any):
    assert set(table) == set(states)
    for targets in table.values():
        assert targets <= set(states)


@pytest.mark.parametrize(("states", "table", "first", "move"), MACHINES)
def test_every_state_is_reachable(states: type[enum.Enum], table: Table, first: Any, move: Any):
    seen, todo = {first}, [first]
    while todo:
        for nxt in table[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    assert seen == set(states)


@pytest.mark.parametrize(("states", "table", "first", "move"), MACHINES)
def test_closed_ends_everything(states: type[enum.Enum], table: Table, first: Any, move: Any):
    closed = states["CLOSED"]
    assert table[closed] == frozenset()
    for state in states:
        if state is not closed:
            assert closed in table[state], f"{state.name} cannot close"


@pytest.mark.parametrize(("states", "table", "first", "move"), MACHINES)
def test_guard_allows_exactly_the_table(
    states: type[enum.Enum], table: Table, first: Any, move: Callable[[Any, Any], None]
):
    for old in states:
        for new in states:
            if new in table[old]:
                move(old, new)
            else:
                with pytest.raises(RuntimeError, match="illegal"):
                    move(old, new)


def test_tables_say_what_the_states_mean() -> None:
    # Session state cannot leave a server connection except through the proxy's own reset.
    assert BackendState.IDLE not in BACKEND_TRANSITIONS[BackendState.CLOSED]
    assert BackendState.ACTIVE in BACKEND_TRANSITIONS[BackendState.IDLE]
    assert BackendState.ACTIVE not in BACKEND_TRANSITIONS[BackendState.LOGIN]
    # A held client message waits only for the proxy's check, then goes on.
    assert CLIENT_TRANSITIONS[ClientState.CHECKING] == {ClientState.ACTIVE, ClientState.CLOSED}
    # A drain is never undone by RESUME; a closed pool never reopens.
    assert ServerState.SERVING not in SERVER_TRANSITIONS[ServerState.DRAINING]
    assert PoolState.OPEN not in POOL_TRANSITIONS[PoolState.CLOSED]
