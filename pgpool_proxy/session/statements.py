"""Prepared statements through a shared pool: the client's messages that name statements,
inspected and rewritten on their way to whichever server connection the client has now.

Functions of a ClientConnection (session.client calls `inspect` from its hot path), kept apart
so the connection's own module holds only its state machine and the byte pump.
"""

from __future__ import annotations

import logging
from collections import deque
from functools import partial
from typing import TYPE_CHECKING, Any

from ..errors import DisconnectReason, ProxyError, SqlState
from ..link.prepared import (
    A_CHECK,
    A_DUPLICATE,
    A_INJECTED_CLOSE,
    A_INJECTED_PARSE,
    A_PARSE,
    A_REFUSED,
    A_SYNTH,
    A_UCLOSE,
    CLOSE_COMPLETE,
    CLOSE_UNNAMED_STATEMENT,
    FLUSH,
    PARSE_COMPLETE,
    REFUSED_USE,
    Action,
    StatementRegistry,
    Stmt,
    command_complete,
    describe_statement,
    duplicate_parse,
    rebuilt_bind_head,
)
from ..pool.backend import BackendConnection
from ..protocol import messages as m
from ..protocol.constants import (
    F_BIND,
    F_CLOSE,
    F_DESCRIBE,
    F_PARSE,
    F_QUERY,
    INT32,
    TX_FAILED,
)
from ..protocol.sqlscan import (
    SQL_ALL,
    SQL_DDL,
    SQL_DDL_TOLD,
    SQL_FULL,
    SQL_PATH,
    SQL_SETTINGS,
    classify,
    deallocation,
    setting_names,
)
from ..protocol.units import U_BIND, U_CLOSE, U_DESCRIBE, U_PARAMS, U_PARSE, U_QUERY, U_QZ, U_Z
from .client_state import ClientState

if TYPE_CHECKING:
    from .client import ClientConnection

log = logging.getLogger("pgpool_proxy.client")


def inspect(
    client: ClientConnection,
    buf: bytearray,
    pos: int,
    end: int,
    out: list[Any],
    backend: BackendConnection,
) -> tuple[int, int]:
    """Handle the message at pos; returns (where scanning resumes, where the next run of
    bytes to forward as they are starts)."""
    t = buf[pos]
    frame_end = pos + 1 + INT32.unpack_from(buf, pos + 1)[0]
    units = client.scanner.units
    if t == F_QUERY:
        return _inspect_query(client, buf, pos, frame_end, out, backend)
    if t == F_PARSE:
        return _on_parse(client, buf, pos, frame_end, end, out, backend, units)
    if t == F_BIND:
        return _on_bind(client, buf, pos, frame_end, end, out, backend, units)
    if frame_end > end:
        return _malformed(client, pos)
    if t == F_DESCRIBE:
        return _on_describe(client, buf, pos, frame_end, out, backend, units)
    assert t == F_CLOSE
    return _on_close(client, buf, pos, frame_end, backend, units)


def _on_parse(
    client: ClientConnection,
    buf: bytearray,
    pos: int,
    frame_end: int,
    end: int,
    out: list[Any],
    backend: BackendConnection,
    units: deque[Any],
) -> tuple[int, int]:
    """Parse: share the statement through the pool's registry, answering it from the
    server connection's own copy when it holds one."""
    nul = buf.find(0, pos + 5, frame_end)
    qend = buf.find(0, nul + 1, frame_end)
    if nul < 0 or qend < 0:
        return _malformed(client, pos)
    name = bytes(buf[pos + 5 : nul])
    key = bytes(buf[nul + 1 : frame_end])
    if name not in client.stmts:
        limit = client.server.config.proxy.max_client_statement_bytes
        if client.stmts.nbytes + len(key) > limit:
            return _statements_over_budget(client, pos, len(key), limit)
    registry = backend.pool.registry
    sc = client.scanner
    if sc.dirty & SQL_DDL:
        # The schema changed earlier in this transaction: this Parse must be planned
        # after the change, as PostgreSQL plans it, not answered from before it.
        registry.new_epoch()
        sc.dirty = (sc.dirty & ~SQL_DDL) | SQL_DDL_TOLD
    lookup = _lookup(client, key, registry)
    stmt = registry.by_key.get(lookup) or _new_stmt(
        registry,
        key,
        buf,
        nul + 1,
        qend,
        client.server.config.pool.statement_cache_bytes,
        lookup,
    )
    prev = client.stmts.get(name)
    if prev is not None:
        # PostgreSQL refuses to redefine a name; so does the server, in its own order of
        # checks, when asked to reuse the name of a statement it holds.
        _prepare(client, backend, prev, out, None)
        out.append(duplicate_parse(prev, key))
        units.append(Action(A_DUPLICATE, U_PARSE, prev, client_name=name))
        return frame_end, frame_end
    client.stmts[name] = stmt
    if stmt in backend.stmts:
        backend.stmts.touch(stmt)
        registry.hits += 1
        done = Action(A_SYNTH, U_PARSE, stmt, reply=PARSE_COMPLETE, client_name=name, prev=prev)
        _push(client, done, backend)
    else:
        parse = Action(A_PARSE, U_PARSE, stmt, client_name=name, prev=prev)
        _prepare(client, backend, stmt, out, parse)
    return frame_end, frame_end


def _on_bind(
    client: ClientConnection,
    buf: bytearray,
    pos: int,
    frame_end: int,
    end: int,
    out: list[Any],
    backend: BackendConnection,
    units: deque[Any],
) -> tuple[int, int]:
    """Bind: rename to the shared statement, preparing it first where this server lacks it."""
    stop = min(frame_end, end)
    p1 = pos + 5 if buf[pos + 5] == 0 else buf.find(0, pos + 5, stop)
    p2 = buf.find(0, p1 + 1, stop) if p1 >= 0 else -1
    if p2 < 0:
        return _malformed(client, pos)
    if p2 == p1 + 1:
        _unnamed_ready(client, out)
        sc = client.scanner
        if sc.unnamed_flags:
            sc.dirty |= sc.unnamed_flags
            if sc.unnamed_names:
                sc.note_names(sc.unnamed_names)
        units.append(U_BIND)
        return _through(client, frame_end, end), pos
    bound = client.stmts.get(bytes(buf[p1 + 1 : p2]))
    if bound is None:
        # Unknown to the proxy: the server answers "does not exist" in its own words, or
        # runs a statement made by SQL PREPARE, whose text the proxy never judged.
        units.append(U_BIND)
        client.scanner.dirty |= SQL_ALL
        return _through(client, frame_end, end), pos
    if bound.broken:
        out.append(REFUSED_USE)
        units.append(Action(A_REFUSED, U_DESCRIBE, bound))
    elif _prepare(client, backend, bound, out, None, check=True):
        return pos, pos
    out.append(rebuilt_bind_head(bytes(buf[pos + 5 : p1]), bound.name, frame_end - p2 - 1))
    units.append(bound.use_bind)
    if bound.flags:
        client.scanner.dirty |= bound.flags
        if bound.names:
            client.scanner.note_names(bound.names)
    return _through(client, frame_end, end), p2 + 1


def _on_describe(
    client: ClientConnection,
    buf: bytearray,
    pos: int,
    frame_end: int,
    out: list[Any],
    backend: BackendConnection,
    units: deque[Any],
) -> tuple[int, int]:
    """Describe of a statement (a portal's goes through), checked like a Bind."""
    name = bytes(buf[pos + 6 : frame_end - 1])
    if not name:
        _unnamed_ready(client, out)
        units.append(U_DESCRIBE)
        return frame_end, pos
    described = client.stmts.get(name)
    if described is None:
        units.append(U_DESCRIBE)
        return frame_end, pos
    if described.broken:
        # PostgreSQL describes the parameters before it finds the result changed.
        out.append(REFUSED_USE)
        units.append(Action(A_REFUSED, U_DESCRIBE, described, reply=described.told_params))
    elif _prepare(client, backend, described, out, None, check=True, describing=True):
        return pos, pos
    out.append(describe_statement(described.name))
    units.append(described.use_describe)
    return frame_end, frame_end


def _on_close(
    client: ClientConnection,
    buf: bytearray,
    pos: int,
    frame_end: int,
    backend: BackendConnection,
    units: deque[Any],
) -> tuple[int, int]:
    """Close: the client forgets its name; the shared statement stays for the LRU."""
    name = bytes(buf[pos + 6 : frame_end - 1])
    if not name and buf[pos + 5] == 0x53:  # S: the unnamed statement
        undo = client.scanner.drop_unnamed()
        units.append(Action(A_UCLOSE, U_CLOSE, undo=undo))
        return frame_end, pos
    # Other clients may use the shared statement: closing it is the LRU's business.
    closed = client.stmts.pop(name) if name in client.stmts else None
    _push(client, Action(A_SYNTH, U_CLOSE, closed, reply=CLOSE_COMPLETE, client_name=name), backend)
    return frame_end, frame_end


def _unnamed_ready(client: ClientConnection, out: list[Any]) -> None:
    """Before a Bind or Describe of the unnamed statement: give the server this client's
    unnamed statement when it holds another's or none (another server connection, or the
    proxy's own Query ran since). A client that has none gets the server's own 26000, never
    another client's statement."""
    sc = client.scanner
    if sc.unnamed_here:
        return
    sc.unnamed_here = True
    units = sc.units
    sc.settle_unnamed()  # nothing is owed here: every Parse sent has its answer
    kept = sc.unnamed
    if kept is not None and kept[0] is not None:
        out.append(kept[0])
        units.append(Action(A_INJECTED_PARSE, U_PARSE))
    else:
        out.append(CLOSE_UNNAMED_STATEMENT)
        units.append(Action(A_INJECTED_CLOSE, U_CLOSE))


def _lookup(client: ClientConnection, key: bytes, registry: StatementRegistry) -> bytes:
    """Where a Parse of key is shared: one text names other tables under another
    search_path, and PostgreSQL plans a statement under the path set when it is prepared.
    A path this transaction set or may have set, unknown until it ends, shares nothing."""
    sc = client.scanner
    if sc.dirty & (SQL_PATH | SQL_FULL) or "search_path" in sc.names:
        registry.counter += 1
        return b"%s\0#%x" % (key, registry.counter)
    path = client.extra_settings.get("search_path")
    if path is None:
        return key
    return b"%s\0%s" % (key, path.encode())


def _new_stmt(
    registry: StatementRegistry,
    key: bytes,
    buf: bytearray,
    start: int,
    end: int,
    budget: int,
    lookup: bytes | None = None,
) -> Stmt:
    flags = classify(buf, start, end)
    names = setting_names(buf, start, end) if flags & SQL_SETTINGS else None
    return registry.add(key, flags, names, budget, lookup)


def _inspect_query(
    client: ClientConnection,
    buf: bytearray,
    pos: int,
    frame_end: int,
    out: list[Any],
    backend: BackendConnection,
) -> tuple[int, int]:
    """A Query with DEALLOCATE or DISCARD in it (complete in buf)."""
    sc = client.scanner
    # In a failed transaction PostgreSQL refuses every statement, DEALLOCATE included: the
    # server answers it as sent, and the client's statements stay.
    if sc.rename and backend.tx_status != TX_FAILED:
        text = bytes(buf[pos + 5 : frame_end - 1]).decode("utf-8", "replace")
        dealloc, drops_all = deallocation(text)
        if dealloc is not None and not dealloc[0]:
            name = dealloc[1].encode()
            stmt = client.stmts.pop(name, None)
            if stmt is not None:
                if stmt in backend.stmts:
                    # The server's own DEALLOCATE gives the right reply in every state.
                    backend.stmts.discard(stmt)
                    out.append(m.query(f'DEALLOCATE "{stmt.name.decode()}"'))
                    _count_query(client)
                else:
                    # Answered here: the server never sees this Query, so it keeps the
                    # unnamed statement the client has just dropped.
                    sc.unnamed_here = False
                    _push(
                        client,
                        Action(
                            A_SYNTH,
                            U_Z,
                            stmt,
                            reply=command_complete(b"DEALLOCATE"),
                            client_name=name,
                            z=True,
                        ),
                        backend,
                    )
                return frame_end, frame_end
        if drops_all:
            # Corrected from the server's own list once the transaction is over.
            client.stmts.clear()
            backend.stmts.clear()
    sc.mark(sc.parse_flags, buf, pos + 5, frame_end - 1)
    _count_query(client)
    return frame_end, pos


def _count_query(client: ClientConnection) -> None:
    sc = client.scanner
    sc.pending += 1
    sc.syncs_since_execute = 0
    if sc.units:
        sc.units.append(U_QZ if sc.unsynced else U_QUERY)


def _prepare(
    client: ClientConnection,
    backend: BackendConnection,
    stmt: Stmt,
    out: list[Any],
    parse: Action | None,
    *,
    check: bool = False,
    describing: bool = False,
) -> bool:
    """Make sure the server has stmt before the message being handled: send its Parse (the
    client's, when `parse` is given, else the proxy's own), first closing the least recently
    used statement if the server's cache is full.

    With `check` (a Bind or Describe of the client's), the proxy's own Parse of a statement
    whose result the client was told by a Describe is followed by a Describe of its own and
    a Flush, and True is returned: the client's message waits (CHECKING) until the server
    says what the statement returns now. PostgreSQL holds a prepared statement to the result
    it was prepared with (0A000 after a schema change that alters it); a Parse made now may
    return another, which must never reach the client under the old description."""
    bs = backend.stmts
    units = client.scanner.units
    registry = backend.pool.registry
    if stmt in bs:
        bs.touch(stmt)
        registry.hits += 1
        if stmt.evicted:
            registry.touch(stmt, client.server.config.pool.statement_cache_bytes)
        else:
            registry.entries.move_to_end(stmt)
        return False
    registry.misses += 1
    registry.touch(stmt, client.server.config.pool.statement_cache_bytes)
    # Statements the pool forgot go from the server before anything is prepared there (a
    # forgotten one may come back under its old name).
    bs.sweep(registry)
    if bs.closing:
        for dead in bs.closing:
            out.append(dead.close_frame)
            units.append(Action(A_INJECTED_CLOSE, U_CLOSE, dead))
        bs.closing.clear()
    victim = bs.add(stmt)
    if victim is not None:
        out.append(victim.close_frame)
        units.append(Action(A_INJECTED_CLOSE, U_CLOSE, victim))
    out.append(stmt.parse_head)
    out.append(stmt.key)
    told = client.stmts.shapes.get(stmt)
    if parse is None:
        # Before a Describe, PostgreSQL sends the parameters it was told and only then
        # replans (42P01 when the table is gone): the proxy's own Parse failing in its
        # place gives the client the same (replies.on_unit).
        params = told[0] if describing and told is not None else b""
        parse = Action(A_INJECTED_PARSE, U_PARSE, stmt, reply=params)
    units.append(parse)
    if not check or client.scanner.syncs == client.unchecked_until or told is None:
        return False
    out.append(describe_statement(stmt.name))
    out.append(FLUSH)
    units.append(Action(A_CHECK, U_PARAMS, stmt))
    units.append(Action(A_CHECK, U_DESCRIBE, stmt, reply=told[1]))
    registry.checks += 1
    client.to(ClientState.CHECKING)
    return True


def checked(client: ClientConnection, backend: object, stmt: Stmt, same: bool | None) -> None:
    """The server answered the proxy's Describe of stmt (see _prepare): `same` tells whether
    it returns what the client was told; None when the server refused the Parse or skipped
    the Describe (an error earlier in the batch). The client's message goes on."""
    if not same:
        if same is False:
            _break(client, stmt)
        else:
            # The server skips everything up to the client's Sync, which waits behind the
            # held message: no check may wait for an answer before that Sync is sent.
            client.unchecked_until = client.scanner.syncs
    current = client.backend
    if client.state == ClientState.CHECKING and current is backend and current is not None:
        # After the reply being handled, not inside it: the pump writes to this backend.
        current.loop.call_soon(partial(_resume_checked, client), current)


def _resume_checked(client: ClientConnection, backend: BackendConnection) -> None:
    if client.state == ClientState.CHECKING and client.backend is backend:
        try:
            client.activate()
        except Exception:
            client.fail_internal()  # a deferred callback: the loop must not see it


def _break(client: ClientConnection, stmt: Stmt) -> None:
    """stmt returns something else than this client was told: from now on, each use of a
    name of it fails as PostgreSQL fails it, until the name is prepared again."""
    stmts = client.stmts
    told = stmts.shapes.get(stmt)
    twin = stmt.broken_twin(told[0] if told is not None else b"")
    for name, held in list(stmts.items()):
        if held is stmt:
            stmts[name] = twin


def _push(client: ClientConnection, action: Action, backend: BackendConnection) -> None:
    """Queue a reply the proxy gives itself; with nothing owed ahead of it, give it now."""
    sc = client.scanner
    if (
        not sc.units
        and not sc.pending
        and not backend.scanner.skip
        and not backend.rbuf.pending()
        and client.transport is not None
    ):
        reply = action.reply
        if action.z:
            reply += m.ready_for_query(backend.tx_status)
        client.transport.write(reply)
        return
    if action.z:
        sc.pending += 1
    sc.units.append(action)


def _through(client: ClientConnection, frame_end: int, end: int) -> int:
    """Forward the rest of a frame as it is, streaming what has not arrived yet."""
    if frame_end <= end:
        return frame_end
    client.scanner.skip = frame_end - end
    return end


def _statements_over_budget(
    client: ClientConnection, pos: int, size: int, limit: int
) -> tuple[int, int]:
    held = client.stmts.nbytes
    client.fail(
        ProxyError(
            SqlState.PROGRAM_LIMIT_EXCEEDED,
            f"prepared statement of {size} bytes would bring this connection's named "
            f"statements to {held + size} bytes, over proxy.max_client_statement_bytes "
            f"({limit})",
            hint="Close statements that are no longer used (Close message or DEALLOCATE), "
            "or raise proxy.max_client_statement_bytes.",
            severity="FATAL",
        ),
        DisconnectReason.MEMORY_LIMIT,
    )
    return pos, pos


def _malformed(client: ClientConnection, pos: int) -> tuple[int, int]:
    client.fail(
        ProxyError(SqlState.PROTOCOL_VIOLATION, "malformed message: missing string terminator"),
        DisconnectReason.PROTOCOL_ERROR,
    )
    return pos, pos
