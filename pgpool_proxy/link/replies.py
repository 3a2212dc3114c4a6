"""Backend -> client: matching the server's replies to the reply units of a link.

Called by the backend's hot path only where a unit needs the proxy (see link.prepared): a
reply to drop, a reply the proxy writes itself, an error that undoes what the proxy assumed.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from ..protocol import messages as m
from ..protocol.constants import B_ERROR, B_PARAMETER_DESCRIPTION, B_ROW_DESCRIPTION
from ..protocol.units import TERMINATES, U_DESCRIBE, U_FZ, U_QUERY, U_QZ, U_UPARSE, U_Z
from .ends import LinkClient, LinkServer
from .prepared import (
    A_CHECK,
    A_DUPLICATE,
    A_INJECTED_CLOSE,
    A_INJECTED_PARSE,
    A_PARSE,
    A_REFUSED,
    A_SYNTH,
    A_UCLOSE,
    A_USE,
    CLOSE_COMPLETE,
    STALE_PLAN,
    STALE_PLAN_FUNCTION,
    Action,
    Stmt,
    result_shape,
    stale_plan_error,
)


def synth_at_head(units: deque[Any]) -> bool:
    if not units:
        return False
    u = units[0]
    return u.__class__ is Action and u.kind == A_SYNTH


def emit_synths(client: LinkClient, backend: LinkServer) -> bool:
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


def ready(client: LinkClient, backend: LinkServer) -> None:
    """A ReadyForQuery arrived: it ends the oldest Query/Sync unit. Units before it that got no
    reply were skipped by the server after an error."""
    units = client.scanner.units
    skipped: list[Action] = []
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
        if u.kind == A_UCLOSE:
            client.scanner.undo_drop_unnamed(u.undo)
        else:
            skipped.append(u)
    _undo_all(client, backend, skipped)
    emit_synths(client, backend)


def _undo_all(client: LinkClient, backend: LinkServer, skipped: list[Action]) -> None:
    """Undo skipped units last first: each restores the view the one before it left (a Parse of
    s1 and then a Close of s1, both skipped, leave no s1)."""
    for a in reversed(skipped):
        _undo(client, backend, a)


def on_unit(
    client: LinkClient, backend: LinkServer, buf: bytearray, pos: int, n: int
) -> bool | bytes:
    """The frame at pos ends the unit at the head of the queue; returns True to forward it,
    False to drop it, or the bytes to send in its place."""
    units = client.scanner.units
    u = units.popleft()
    t = buf[pos]
    if t == B_ERROR:
        result: bool | bytes = True
        failed: dict[str, str] | None = None
        if u.__class__ is Action:
            fields = m.parse_error_fields(memoryview(buf)[pos + 5 : pos + n])
            if u.kind == A_DUPLICATE and fields.get("C") == "42P05":
                name = u.client_name.decode("utf-8", "replace")
                result = m.error_response(
                    fields.get("S", "ERROR"), "42P05", f'prepared statement "{name}" already exists'
                )
            elif u.kind == A_INJECTED_PARSE and u.reply and fields.get("C") != "25P02":
                # Before a client's Describe (session.statements._prepare); in a failed
                # transaction PostgreSQL refuses the Describe before sending anything.
                result = u.reply + bytes(buf[pos : pos + n])
                failed = fields
            elif u.kind == A_REFUSED:
                registry = backend.pool.registry
                result = u.reply + (
                    registry.stale_error or stale_plan_error(fields.get("S", "ERROR"))
                )
            else:
                if (
                    u.kind == A_USE
                    and fields.get("R") == STALE_PLAN_FUNCTION
                    and fields.get("C") == "0A000"
                ):
                    backend.pool.registry.stale_error = bytes(buf[pos : pos + n])
                failed = fields
        elif u == U_UPARSE:
            client.scanner.unnamed_refused(answered=True)
        # The server now skips everything up to the next Sync, a Query or FunctionCall inside
        # the batch included: no ReadyForQuery comes for those.
        skipped: list[Action] = []
        while units and units[0] != U_Z:
            v = units.popleft()
            if v.__class__ is Action:
                if v.kind == A_UCLOSE:
                    # In order: the unnamed Parses skipped after it are judged by what it undid.
                    client.scanner.undo_drop_unnamed(v.undo)
                else:
                    skipped.append(v)
            elif v == U_QZ or v == U_FZ:
                client.scanner.pending -= 1
            elif v == U_UPARSE:
                client.scanner.unnamed_refused(answered=False)
        _undo_all(client, backend, skipped)
        if failed is not None:
            # After the skipped ones: the failed message came before them.
            _failed(client, backend, u, failed)
        return result
    if u.__class__ is not Action or not TERMINATES[u.unit][t]:
        units.appendleft(u)  # not a reply this unit expects: pass it on, keep waiting
        if t == B_PARAMETER_DESCRIPTION and u.__class__ is Action and u.kind == A_USE:
            client.stmts.told_params = bytes(buf[pos : pos + n])
        return True
    kind = u.kind
    if kind == A_USE:
        if t == B_ROW_DESCRIPTION and u.unit == U_DESCRIBE:
            _described(client, backend, u.stmt, buf, pos, n)
        return True
    if kind == A_CHECK:
        if u.unit == U_DESCRIBE:
            stmt = u.stmt
            assert stmt is not None
            now = result_shape(buf, pos, n) if t == B_ROW_DESCRIPTION else None
            same = now == u.reply
            if not same:
                _result_changed(backend, stmt)
            client.checked(backend, stmt, same)
        return False
    return kind != A_INJECTED_PARSE and kind != A_INJECTED_CLOSE


def _described(
    client: LinkClient,
    backend: LinkServer,
    stmt: Stmt | None,
    buf: bytearray,
    pos: int,
    n: int,
) -> None:
    """The client is told what stmt returns: PostgreSQL holds the statement to that from now on
    (the proxy holds it to it on other server connections: session.statements._prepare)."""
    if stmt is None:
        return
    shape = result_shape(buf, pos, n)
    if shape is None:
        return
    stmts = client.stmts
    stmts.shapes[stmt] = (stmts.told_params, shape)
    if stmt.shape is None:
        stmt.shape = shape
    elif stmt.shape != shape:
        # One text, two results: the schema changed where the proxy did not see it, and this
        # connection has the new plan under a name other clients hold with the old one.
        _result_changed(backend, stmt)
        stmt.shape = shape


def _result_changed(backend: LinkServer, stmt: Stmt) -> None:
    """stmt's result differs from what a client was told: the next Parse of its text gets a new
    statement, and this server connection drops its copy (closed before its next Parse), so that
    every later use of it here is checked again."""
    backend.pool.registry.retire(stmt)
    bs = backend.stmts
    if stmt in bs:
        bs.discard(stmt)
        bs.closing.append(stmt.tombstone())


def _failed(client: LinkClient, backend: LinkServer, a: Action, fields: dict[str, str]) -> None:
    kind = a.kind
    stmt = a.stmt
    if stmt is None:
        return  # the unnamed statement, given again (session.statements._unnamed_ready)
    if kind == A_CHECK:
        if a.unit == U_DESCRIBE:
            client.checked(backend, stmt, None)
    elif kind == A_PARSE:
        backend.stmts.discard(stmt)
        _forget(client, a)
    elif kind == A_INJECTED_PARSE:
        if fields.get("C") != "42P05":  # "already exists": it is there after all
            backend.stmts.discard(stmt)
    elif kind == A_INJECTED_CLOSE:
        backend.stmts.unclose(stmt)
    elif kind == A_USE:
        code = fields.get("C")
        if code == "0A000" and STALE_PLAN in fields.get("M", ""):
            # DDL changed the statement's result: the client gets this error once per server
            # that prepared the old plan, as it would directly; the next Parse of the same text
            # gets a fresh statement instead of the stale one.
            backend.pool.registry.retire(stmt)
        elif code == "26000":
            backend.stmts.discard(stmt)


def _undo(client: LinkClient, backend: LinkServer, a: Action) -> None:
    """The server skipped this unit's message (an earlier error in the pipeline)."""
    stmt = a.stmt
    kind = a.kind
    if stmt is None:
        return
    if kind == A_CHECK:
        if a.unit == U_DESCRIBE:
            client.checked(backend, stmt, None)
    elif kind == A_PARSE:
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


def _forget(client: LinkClient, a: Action) -> None:
    """Undo a Parse in the client's view: its name means what it meant before."""
    if client.stmts.get(a.client_name) is a.stmt:
        if a.prev is not None:
            client.stmts[a.client_name] = a.prev
        else:
            del client.stmts[a.client_name]
