"""Backend -> client: matching the server's replies to the reply units of a link.

Called by the backend's hot path only where a unit needs the proxy (see session.prepared): a
reply to drop, a reply the proxy writes itself, an error that undoes what the proxy assumed.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any

from ..protocol import messages as m
from ..protocol.constants import B_ERROR
from ..protocol.units import TERMINATES, U_FZ, U_QUERY, U_QZ, U_UPARSE, U_Z
from .prepared import (
    A_DUPLICATE,
    A_INJECTED_CLOSE,
    A_INJECTED_PARSE,
    A_PARSE,
    A_SYNTH,
    A_USE,
    CLOSE_COMPLETE,
    Action,
)

if TYPE_CHECKING:
    from ..pool.backend import BackendConnection
    from .client import ClientConnection

_STALE_PLAN = "cached plan must not change result type"


def synth_at_head(units: deque[Any]) -> bool:
    if not units:
        return False
    u = units[0]
    return u.__class__ is Action and u.kind == A_SYNTH


def emit_synths(client: ClientConnection, backend: BackendConnection) -> bool:
    """Write the replies the proxy answers itself that are now due; True when one of them ended
    with ReadyForQuery (an answered Query)."""
    units = client.scanner.units
    t = client.transport
    z = False
    while synth_at_head(units):
        a: Action = units.popleft()
        reply = a.reply
        if a.z:
            reply += m.ready_for_query(backend.tx_status)
            client.scanner.pending -= 1
            z = True
        if t is not None:
            t.write(reply)
    return z


def ready(client: ClientConnection, backend: BackendConnection) -> None:
    """A ReadyForQuery arrived: it ends the oldest Query/Sync unit. Units before it that got no
    reply were skipped by the server after an error."""
    units = client.scanner.units
    while units:
        u = units.popleft()
        if u.__class__ is int:
            if u <= 0:  # ended by ReadyForQuery
                if u == U_QUERY or u == U_QZ:
                    client.scanner.unnamed_query_ran()
                break
            if u == U_UPARSE:
                client.scanner.unnamed_refused(answered=False)
            continue
        _undo(client, backend, u)
    emit_synths(client, backend)


def on_unit(
    client: ClientConnection, backend: BackendConnection, buf: bytearray, pos: int, n: int
) -> bool | bytes:
    """The frame at pos ends the unit at the head of the queue; returns True to forward it,
    False to drop it, or the bytes to send in its place."""
    units = client.scanner.units
    u = units.popleft()
    t = buf[pos]
    if t == B_ERROR:
        result: bool | bytes = True
        if u.__class__ is Action:
            fields = m.parse_error_fields(memoryview(buf)[pos + 5 : pos + n])
            if u.kind == A_DUPLICATE and fields.get("C") == "42P05":
                name = u.client_name.decode("utf-8", "replace")
                result = m.error_response(
                    fields.get("S", "ERROR"), "42P05", f'prepared statement "{name}" already exists'
                )
            else:
                _failed(client, backend, u, fields)
        elif u == U_UPARSE:
            client.scanner.unnamed_refused(answered=True)
        # The server now skips everything up to the next Sync, a Query or FunctionCall inside
        # the batch included: no ReadyForQuery comes for those.
        while units and units[0] != U_Z:
            v = units.popleft()
            if v.__class__ is Action:
                _undo(client, backend, v)
            elif v == U_QZ or v == U_FZ:
                client.scanner.pending -= 1
            elif v == U_UPARSE:
                client.scanner.unnamed_refused(answered=False)
        return result
    if u.__class__ is not Action or not TERMINATES[u.unit][t]:
        units.appendleft(u)  # not a reply this unit expects: pass it on, keep waiting
        return True
    return u.kind != A_INJECTED_PARSE and u.kind != A_INJECTED_CLOSE


def _failed(
    client: ClientConnection, backend: BackendConnection, a: Action, fields: dict[str, str]
) -> None:
    kind = a.kind
    stmt = a.stmt
    if stmt is None:
        return  # the unnamed statement, given again (ClientConnection._unnamed_ready)
    if kind == A_PARSE:
        backend.stmts.discard(stmt)
        _forget(client, a)
    elif kind == A_INJECTED_PARSE:
        if fields.get("C") != "42P05":  # "already exists": it is there after all
            backend.stmts.discard(stmt)
    elif kind == A_INJECTED_CLOSE:
        backend.stmts.unclose(stmt)
    elif kind == A_USE:
        code = fields.get("C")
        if code == "0A000" and _STALE_PLAN in fields.get("M", ""):
            # DDL changed the statement's result: the client gets this error once per server
            # that prepared the old plan, as it would directly; the next Parse of the same text
            # gets a fresh statement instead of the stale one.
            backend.pool.registry.retire(stmt)
        elif code == "26000":
            backend.stmts.discard(stmt)


def _undo(client: ClientConnection, backend: BackendConnection, a: Action) -> None:
    """The server skipped this unit's message (an earlier error in the pipeline)."""
    stmt = a.stmt
    kind = a.kind
    if stmt is None:
        return
    if kind == A_PARSE:
        backend.stmts.discard(stmt)
        _forget(client, a)
    elif kind == A_INJECTED_PARSE:
        backend.stmts.discard(stmt)
    elif kind == A_INJECTED_CLOSE:
        backend.stmts.unclose(stmt)
    elif kind == A_SYNTH:
        if a.reply == CLOSE_COMPLETE or a.z:
            client.stmts[a.client_name] = stmt
        else:
            _forget(client, a)


def _forget(client: ClientConnection, a: Action) -> None:
    """Undo a Parse in the client's view: its name means what it meant before."""
    if client.stmts.get(a.client_name) is a.stmt:
        if a.prev is not None:
            client.stmts[a.client_name] = a.prev
        else:
            del client.stmts[a.client_name]
