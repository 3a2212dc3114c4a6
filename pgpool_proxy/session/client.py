"""One client connection: its state machine and the client -> backend hot path."""

from __future__ import annotations

import asyncio
import enum
import logging
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
    ClientStatements,
    StatementRegistry,
    Stmt,
    command_complete,
    describe_statement,
    duplicate_parse,
    rebuilt_bind_head,
)
from ..net.endpoint import Endpoint, Peer
from ..pool.backend import BackendConnection, BackendState, InternalDone, server_sqlstate
from ..protocol import messages as m
from ..protocol.constants import (
    F_BIND,
    F_CLOSE,
    F_DESCRIBE,
    F_PARSE,
    F_QUERY,
    F_TERMINATE,
    INT32,
    TX_FAILED,
    TX_IDLE,
)
from ..protocol.framing import (
    CEV_INSPECT,
    CEV_NEED,
    ClientScanner,
    FrameError,
    RecvBuffer,
    peek_type,
)
from ..protocol.sqlscan import (
    SQL_ALL,
    SQL_DDL,
    SQL_DDL_TOLD,
    SQL_DEALLOCATE,
    SQL_FULL,
    SQL_OPAQUE,
    SQL_PATH,
    SQL_PINS,
    SQL_SETTINGS,
    SQL_TRANSIENT,
    classify,
    deallocation,
    drops_all_statements,
    setting_names,
)
from ..protocol.units import U_BIND, U_CLOSE, U_DESCRIBE, U_PARAMS, U_PARSE, U_QUERY, U_QZ, U_Z
from .canon import learn
from .limits import settings_limit_error
from .state import (
    ALWAYS_READ,
    MAX_READ,
    UNTIMED,
    UNTIMED_EXTENDED,
    UNTIMED_STATEMENTS,
    SessionState,
    probe_statements,
    read_probe,
    reset_identity_sql,
    reset_settings_sql,
    reset_sql,
    set_sql,
)

if TYPE_CHECKING:
    from ..pool.pool import Pool
    from .host import SessionHost

log = logging.getLogger("pgpool_proxy.client")

# Small: most clients sit idle, and memory per idle client is what limits how many we hold.
CLIENT_BUFFER = 4096


_MAX_INTERNED_SIGS = 10_000
_UNKNOWN = "\0unknown"  # a value no setting can have (PostgreSQL strings cannot hold NUL)
_NO_REPLAY: tuple[dict[str, str], list[str], bool, dict[str, str]] = ({}, [], False, {})
# A backend whose session state is unknown to the proxy: the next client of any kind resets it.
_UNKNOWN_OWNER = object()

# While a client waits, bytes it sends pile up here; past this much, stop reading it.
WAIT_BUFFER_LIMIT = 64 * 1024


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


class ClientConnection(Endpoint):
    """A client of the proxy.

    Login runs as a coroutine (`session.login`); after it, every byte is handled in
    `buffer_updated` without a task switch: frames are scanned by header and forwarded to the
    linked backend in one write per read.
    """

    __slots__ = (
        "_replay",
        "addr",
        "backend",
        "close_reason",
        "database",
        "distrust",
        "extra_settings",
        "key_pid",
        "key_secret",
        "params",
        "peer_channel",
        "pinned",
        "pool",
        "probe_flags",
        "probe_hex",
        "probe_names",
        "probe_stmts",
        "probe_tries",
        "release_on_idle",
        "scanner",
        "server",
        "settings_sig",
        "startup_settings",
        "state",
        "stmts",
        "unchecked_until",
        "user",
        "wait_since",
    )

    def __init__(self, server: SessionHost, *, peer_channel: bool = False) -> None:
        super().__init__(RecvBuffer(CLIENT_BUFFER, server.config.proxy.max_message_size_bytes + 5))
        self.server = server
        # A connection from a sibling worker, allowed to deliver cancel requests only.
        self.peer_channel = peer_channel
        self.state = ClientState.LOGIN
        self.scanner = ClientScanner(server.config.proxy.max_message_size_bytes)
        self.backend: BackendConnection | None = None
        self.pool: Pool | None = None
        self.release_on_idle = True  # transaction mode; session mode keeps the backend
        self.user = ""
        self.database = ""
        self.addr = ""
        # Settings this client expects on any backend that serves it (reported ones + startup).
        self.params: dict[str, str] = {}
        self.extra_settings: dict[str, str] = {}
        # What the client asked for at startup (lower-case names): RESET returns here.
        self.startup_settings: dict[str, str] = {}
        # The client's named prepared statements (transaction mode), by the client's name.
        self.stmts = ClientStatements()
        # The count of Syncs (scanner.syncs) before which no check may hold a message (checked).
        self.unchecked_until = -1
        # Holding session state that cannot move (advisory lock, temp table, ...): the backend
        # stays linked between transactions until the state is gone.
        self.pinned = False
        # sqlscan flags and setting names of the transaction being checked (PROBING).
        self.probe_flags = 0
        self.probe_names: list[str] = []
        self.probe_hex = False
        self.probe_stmts: list[str] = []
        self.probe_tries = 0
        # The client's search_path puts another schema before pg_catalog: an operator or
        # function name in any statement may run the client's own code (see _link).
        self.distrust = False
        # Interned summary of params + extra_settings; None when either changed since.
        self.settings_sig: tuple[object, ...] | None = None
        self.key_pid = 0
        self.key_secret = 0
        self.wait_since = 0.0
        self._replay: tuple[dict[str, str], list[str], bool, dict[str, str]] = _NO_REPLAY
        self.close_reason: DisconnectReason | None = None

    # --- state -------------------------------------------------------------------------------

    def to(self, new: ClientState) -> None:
        if new not in CLIENT_TRANSITIONS[self.state]:
            raise RuntimeError(f"illegal client transition {self.state.name} -> {new.name}")
        self.state = new

    def is_open(self) -> bool:
        return self.state != ClientState.CLOSED and self.transport is not None

    def is_waiting(self) -> bool:
        return self.state == ClientState.WAITING

    def is_checking(self) -> bool:
        """The server owes the proxy's check (see _prepare), the client's Sync held behind it."""
        return self.state == ClientState.CHECKING

    # --- asyncio callbacks -----------------------------------------------------------------

    def peer(self) -> Peer | None:
        return self.backend

    def is_closed(self) -> bool:
        return self.state == ClientState.CLOSED

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        peer = transport.get_extra_info("peername")
        self.addr = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer or "unix")
        self.server.client_connected(self)

    def buffer_updated(self, nbytes: int) -> None:
        self.rbuf.end += nbytes
        state = self.state
        try:
            if state == ClientState.ACTIVE:
                self._pump()
            elif state == ClientState.IDLE:
                self._on_idle_data()
            elif state == ClientState.LOGIN:
                self.slow_path_data()
            elif state == ClientState.CLOSED:
                self.rbuf.consumed(self.rbuf.end)  # lingering after an error (close_transport)
            elif self.rbuf.pending() > WAIT_BUFFER_LIMIT:
                # WAITING or REPLAYING: keep reading (so a departure is noticed) up to a bound.
                self.pause_reading()
        except FrameError as exc:
            self._frame_error(exc)
        except Exception:
            # Never into the event loop's fatal-error path (see _internal_error).
            self._internal_error()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.wake()
        if self.state != ClientState.CLOSED:
            reason = DisconnectReason.CLIENT_ERROR if exc else DisconnectReason.CLIENT_EOF
            self.close(reason)

    # --- hot path ----------------------------------------------------------------------------

    def _on_idle_data(self) -> None:
        rb = self.rbuf
        # Checked before taking a backend, so a bogus length never costs anyone a server slot.
        t = peek_type(rb.buf, rb.start, rb.end, self.scanner.max_len)
        if t < 0:
            return
        if t == F_TERMINATE:
            self.close(DisconnectReason.CLIENT_TERMINATE)
            return
        pool = self.pool
        assert pool is not None
        idle = pool.idle
        if idle:
            pool.instant_acquires += 1
            self._link(idle.pop())
            return
        backend = pool.acquire(self)
        if backend is None:
            self.to(ClientState.WAITING)
            return
        self._link(backend)

    def backend_assigned(self, backend: BackendConnection) -> None:
        """Called by the pool when this waiting client reaches the head of the queue."""
        self._link(backend)

    def _link(self, backend: BackendConnection) -> None:
        backend.link(self)
        # Whatever unnamed statement this server holds is not this client's. No reply is owed,
        # so what the client's unnamed statement is, is known.
        sc = self.scanner
        sc.unnamed_here = False
        self.backend = backend
        self._sync_flow(backend)
        sig = self.settings_sig or self.compute_sig()
        if self.distrust:
            self.scanner.dirty |= SQL_ALL
        # Whatever the last client left that the proxy could not see is wiped first: all
        # settings when it ran opaque code, and every session object when it was another user
        # sharing this server login.
        reset = ""
        if backend.last_user != self.user and backend.last_user:
            reset = reset_identity_sql()
            backend.stmts.clear()  # the reset deallocates them
        elif backend.taint_owner is not None and backend.taint_owner is not self:
            reset = reset_settings_sql()
        if not reset and backend.applied_sig is sig:
            # The common case: this backend last served settings identical to ours.
            self._activate()
            return
        sql, set_extra, stale, reported = self._settings_diff(backend, reset)
        if sql:
            # Nothing of the client's goes out before the server has accepted its settings: a
            # statement must never run under another client's search_path or timeouts.
            self.to(ClientState.REPLAYING)
            self._replay = (set_extra, stale, bool(reset), reported)
            backend.run_own([UNTIMED + sql], self._replay_done)
            return
        backend.applied_sig = sig
        self._activate()

    def _sync_flow(self, backend: BackendConnection) -> None:
        """Backpressure belongs to the link: each side reads only while the other can write."""
        if self.write_paused:
            backend.pause_reading()
        elif backend.reading_paused:
            backend.resume_reading()
        if backend.write_paused:
            self.pause_reading()
        elif self.reading_paused:
            self.resume_reading()

    def _activate(self) -> None:
        """The backend is ready for this client: forward what the client has sent so far."""
        backend = self.backend
        assert backend is not None
        backend.last_user = self.user
        # Reading may have been paused while the settings replay held the client's bytes.
        self._sync_flow(backend)
        self.to(ClientState.ACTIVE)
        try:
            self._pump()
        except FrameError as exc:
            self._frame_error(exc)

    def compute_sig(self) -> tuple[object, ...]:
        """This client's settings as one interned tuple: equal settings, identical object."""
        params = self.params
        key = (
            *(params.get(k) for k in self.server.tracked_params),
            *sorted(self.extra_settings.items()),
        )
        self.distrust = _distrusts_catalog(self.extra_settings.get("search_path"))
        sigs = self.server.settings_sigs
        if len(sigs) > _MAX_INTERNED_SIGS:
            # Unique settings per client (say, application_name=<uuid>) must not grow this
            # forever; equal-but-distinct signatures only cost a diff, never correctness.
            sigs.clear()
        sig = sigs.setdefault(key, key)
        self.settings_sig = sig
        return sig

    def _replay_done(
        self, backend: BackendConnection, errors: list[dict[str, str]], rows: Any = None
    ) -> None:
        if self.state != ClientState.REPLAYING or self.backend is not backend:
            return
        set_extra, stale, was_reset, reported = self._replay
        self._replay = _NO_REPLAY
        if errors:
            # PostgreSQL refuses a login with an invalid setting; the proxy learns of it only
            # now, so it refuses the session here, with the server's own error. The replay ran
            # as one implicit transaction, now rolled back: what the session holds is unknown.
            backend.taint_owner = _UNKNOWN_OWNER
            fields = errors[0]
            self.backend = None
            backend.client = None
            backend.scanner.units = None
            self.to(ClientState.IDLE)
            backend.pool.release(backend)
            self.fail(
                ProxyError(
                    server_sqlstate(fields, SqlState.PROTOCOL_VIOLATION),
                    fields.get("M", "the server rejected a startup setting"),
                    detail="The proxy applies the client's startup settings to each server "
                    "connection it uses; the server rejected them.",
                ),
                DisconnectReason.SETTINGS_REJECTED,
            )
            return
        bp = backend.params
        if was_reset:
            backend.taint_owner = None
            for k in backend.extra_keys:
                bp.pop(k, None)
            backend.extra_keys = set()
        for k, v in set_extra.items():
            bp[k] = v
            backend.extra_keys.add(k)
        for k in stale:
            bp.pop(k, None)
            backend.extra_keys.discard(k)
        if reported:
            self._adopt_spelling(backend, reported)
        backend.applied_sig = self.settings_sig or self.compute_sig()
        self._activate()

    def _adopt_spelling(self, backend: BackendConnection, sent: dict[str, str]) -> None:
        """After a replay, what the server reports is its spelling of each reported value sent
        (it reports a value only when it differs from the last one it reported, which is then
        still in backend.params). A client told a spelling of its own at login (no server
        connection was free to ask) gets the server's now, before any reply, as directly."""
        bp = backend.params
        assert self.pool is not None
        out = []
        for k, v in sent.items():
            shown = bp.get(k)
            if shown is None or shown == v:
                continue
            learn(self.pool, k, v, shown)
            self.params[k] = shown
            self.settings_sig = None
            if self.startup_settings.get(k.lower()) == v:
                self.startup_settings[k.lower()] = shown
            out.append(m.parameter_status(k, shown))
        if out and self.transport is not None:
            self.transport.write(b"".join(out))

    def _pump(self) -> None:
        rb = self.rbuf
        scanner = self.scanner
        backend = self.backend
        assert backend is not None
        t = backend.transport
        if t is None:
            return  # connection_lost will report it
        buf = rb.buf
        end = rb.end
        run = pos = rb.start
        # Pieces to send when the proxy rewrites messages: one writelines, one system call.
        out: list[Any] | None = None
        while True:
            pos = scanner.scan(buf, pos, end)
            ev = scanner.event
            if ev != CEV_INSPECT:
                break
            if out is None:
                out = []
            if pos > run:
                out.append(rb.view[run:pos])
            pos, run = self._inspect(buf, pos, end, out, backend)
            if self.state != ClientState.ACTIVE:
                if self.state != ClientState.CHECKING:
                    return
                break  # what precedes the held message goes out now
        if pos > run:
            if out is None:
                t.write(rb.view[run:pos])
            else:
                out.append(rb.view[run:pos])
        if out:
            t.writelines(out)
        rb.consumed(pos)
        if t.get_write_buffer_size():
            # The backend transport keeps views of these bytes until it has sent them.
            rb.detach()
        if ev == CEV_NEED:
            rb.ensure_capacity(scanner.need)
        if scanner.terminated:
            self.close(DisconnectReason.CLIENT_TERMINATE)
        elif out is not None and not scanner.pending and not scanner.unsynced and not scanner.units:
            # Everything the client sent was answered by the proxy: nothing holds the backend.
            backend.release_if_done(self, backend.rbuf.start)

    # --- named prepared statements (transaction mode) ----------------------------------------

    def _inspect(
        self, buf: bytearray, pos: int, end: int, out: list[Any], backend: BackendConnection
    ) -> tuple[int, int]:
        """Handle the message at pos; returns (where scanning resumes, where the next run of
        bytes to forward as they are starts)."""
        t = buf[pos]
        frame_end = pos + 1 + INT32.unpack_from(buf, pos + 1)[0]
        units = self.scanner.units
        if t == F_QUERY:
            return self._inspect_query(buf, pos, frame_end, out, backend)
        if t == F_PARSE:
            nul = buf.find(0, pos + 5, frame_end)
            qend = buf.find(0, nul + 1, frame_end)
            if nul < 0 or qend < 0:
                return self._malformed(pos)
            name = bytes(buf[pos + 5 : nul])
            key = bytes(buf[nul + 1 : frame_end])
            if name not in self.stmts:
                limit = self.server.config.proxy.max_client_statement_bytes
                if self.stmts.nbytes + len(key) > limit:
                    return self._statements_over_budget(pos, len(key), limit)
            registry = backend.pool.registry
            sc = self.scanner
            if sc.dirty & SQL_DDL:
                # The schema changed earlier in this transaction: this Parse must be planned
                # after the change, as PostgreSQL plans it, not answered from before it.
                registry.new_epoch()
                sc.dirty = (sc.dirty & ~SQL_DDL) | SQL_DDL_TOLD
            lookup = self._lookup(key, registry)
            stmt = registry.by_key.get(lookup) or self._new_stmt(
                registry,
                key,
                buf,
                nul + 1,
                qend,
                self.server.config.pool.statement_cache_bytes,
                lookup,
            )
            prev = self.stmts.get(name)
            if prev is not None:
                # PostgreSQL refuses to redefine a name; so does the server, in its own order of
                # checks, when asked to reuse the name of a statement it holds.
                self._prepare(backend, prev, out, None)
                out.append(duplicate_parse(prev, key))
                units.append(Action(A_DUPLICATE, U_PARSE, prev, client_name=name))
                return frame_end, frame_end
            self.stmts[name] = stmt
            if stmt in backend.stmts:
                backend.stmts.touch(stmt)
                registry.hits += 1
                done = Action(
                    A_SYNTH, U_PARSE, stmt, reply=PARSE_COMPLETE, client_name=name, prev=prev
                )
                self._push(done, backend)
            else:
                parse = Action(A_PARSE, U_PARSE, stmt, client_name=name, prev=prev)
                self._prepare(backend, stmt, out, parse)
            return frame_end, frame_end
        if t == F_BIND:
            stop = min(frame_end, end)
            p1 = pos + 5 if buf[pos + 5] == 0 else buf.find(0, pos + 5, stop)
            p2 = buf.find(0, p1 + 1, stop) if p1 >= 0 else -1
            if p2 < 0:
                return self._malformed(pos)
            if p2 == p1 + 1:
                self._unnamed_ready(out)
                sc = self.scanner
                if sc.unnamed_flags:
                    sc.dirty |= sc.unnamed_flags
                    if sc.unnamed_names:
                        sc.note_names(sc.unnamed_names)
                units.append(U_BIND)
                return self._through(frame_end, end), pos
            bound = self.stmts.get(bytes(buf[p1 + 1 : p2]))
            if bound is None:
                # Unknown to the proxy: the server answers "does not exist" in its own words, or
                # runs a statement made by SQL PREPARE, whose text the proxy never judged.
                units.append(U_BIND)
                self.scanner.dirty |= SQL_ALL
                return self._through(frame_end, end), pos
            if bound.broken:
                out.append(REFUSED_USE)
                units.append(Action(A_REFUSED, U_DESCRIBE, bound))
            elif self._prepare(backend, bound, out, None, check=True):
                return pos, pos
            out.append(rebuilt_bind_head(bytes(buf[pos + 5 : p1]), bound.name, frame_end - p2 - 1))
            units.append(bound.use_bind)
            if bound.flags:
                self.scanner.dirty |= bound.flags
                if bound.names:
                    self.scanner.note_names(bound.names)
            return self._through(frame_end, end), p2 + 1
        if frame_end > end:
            return self._malformed(pos)
        name = bytes(buf[pos + 6 : frame_end - 1])
        if t == F_DESCRIBE:
            if not name:
                self._unnamed_ready(out)
                units.append(U_DESCRIBE)
                return frame_end, pos
            described = self.stmts.get(name)
            if described is None:
                units.append(U_DESCRIBE)
                return frame_end, pos
            if described.broken:
                # PostgreSQL describes the parameters before it finds the result changed.
                out.append(REFUSED_USE)
                units.append(Action(A_REFUSED, U_DESCRIBE, described, reply=described.told_params))
            elif self._prepare(backend, described, out, None, check=True, describing=True):
                return pos, pos
            out.append(describe_statement(described.name))
            units.append(described.use_describe)
            return frame_end, frame_end
        assert t == F_CLOSE
        if not name and buf[pos + 5] == 0x53:  # S: the unnamed statement
            undo = self.scanner.drop_unnamed()
            units.append(Action(A_UCLOSE, U_CLOSE, undo=undo))
            return frame_end, pos
        # Other clients may use the shared statement: closing it is the LRU's business.
        closed = self.stmts.pop(name) if name in self.stmts else None
        self._push(
            Action(A_SYNTH, U_CLOSE, closed, reply=CLOSE_COMPLETE, client_name=name), backend
        )
        return frame_end, frame_end

    def _unnamed_ready(self, out: list[Any]) -> None:
        """Before a Bind or Describe of the unnamed statement: give the server this client's
        unnamed statement when it holds another's or none (another server connection, or the
        proxy's own Query ran since). A client that has none gets the server's own 26000, never
        another client's statement."""
        sc = self.scanner
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

    def _lookup(self, key: bytes, registry: StatementRegistry) -> bytes:
        """Where a Parse of key is shared: one text names other tables under another
        search_path, and PostgreSQL plans a statement under the path set when it is prepared.
        A path this transaction set or may have set, unknown until it ends, shares nothing."""
        sc = self.scanner
        if sc.dirty & (SQL_PATH | SQL_FULL) or "search_path" in sc.names:
            registry.counter += 1
            return b"%s\0#%x" % (key, registry.counter)
        path = self.extra_settings.get("search_path")
        if path is None:
            return key
        return b"%s\0%s" % (key, path.encode())

    @staticmethod
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
        self, buf: bytearray, pos: int, frame_end: int, out: list[Any], backend: BackendConnection
    ) -> tuple[int, int]:
        """A Query with DEALLOCATE or DISCARD in it (complete in buf)."""
        sc = self.scanner
        # In a failed transaction PostgreSQL refuses every statement, DEALLOCATE included: the
        # server answers it as sent, and the client's statements stay.
        if sc.rename and backend.tx_status != TX_FAILED:
            text = bytes(buf[pos + 5 : frame_end - 1]).decode("utf-8", "replace")
            dealloc, drops_all = deallocation(text)
            if dealloc is not None and not dealloc[0]:
                name = dealloc[1].encode()
                stmt = self.stmts.pop(name, None)
                if stmt is not None:
                    if stmt in backend.stmts:
                        # The server's own DEALLOCATE gives the right reply in every state.
                        backend.stmts.discard(stmt)
                        out.append(m.query(f'DEALLOCATE "{stmt.name.decode()}"'))
                        self._count_query()
                    else:
                        # Answered here: the server never sees this Query, so it keeps the
                        # unnamed statement the client has just dropped.
                        sc.unnamed_here = False
                        self._push(
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
                self.stmts.clear()
                backend.stmts.clear()
        sc.mark(sc.parse_flags, buf, pos + 5, frame_end - 1)
        self._count_query()
        return frame_end, pos

    def _count_query(self) -> None:
        sc = self.scanner
        sc.pending += 1
        sc.syncs_since_execute = 0
        if sc.units:
            sc.units.append(U_QZ if sc.unsynced else U_QUERY)

    def _prepare(
        self,
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
        units = self.scanner.units
        registry = backend.pool.registry
        if stmt in bs:
            bs.touch(stmt)
            registry.hits += 1
            if stmt.evicted:
                registry.touch(stmt, self.server.config.pool.statement_cache_bytes)
            else:
                registry.entries.move_to_end(stmt)
            return False
        registry.misses += 1
        registry.touch(stmt, self.server.config.pool.statement_cache_bytes)
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
        told = self.stmts.shapes.get(stmt)
        if parse is None:
            # Before a Describe, PostgreSQL sends the parameters it was told and only then
            # replans (42P01 when the table is gone): the proxy's own Parse failing in its
            # place gives the client the same (replies.on_unit).
            params = told[0] if describing and told is not None else b""
            parse = Action(A_INJECTED_PARSE, U_PARSE, stmt, reply=params)
        units.append(parse)
        if not check or self.scanner.syncs == self.unchecked_until or told is None:
            return False
        out.append(describe_statement(stmt.name))
        out.append(FLUSH)
        units.append(Action(A_CHECK, U_PARAMS, stmt))
        units.append(Action(A_CHECK, U_DESCRIBE, stmt, reply=told[1]))
        registry.checks += 1
        self.to(ClientState.CHECKING)
        return True

    def checked(self, backend: object, stmt: Stmt, same: bool | None) -> None:
        """The server answered the proxy's Describe of stmt (see _prepare): `same` tells whether
        it returns what the client was told; None when the server refused the Parse or skipped
        the Describe (an error earlier in the batch). The client's message goes on."""
        if not same:
            if same is False:
                self._break(stmt)
            else:
                # The server skips everything up to the client's Sync, which waits behind the
                # held message: no check may wait for an answer before that Sync is sent.
                self.unchecked_until = self.scanner.syncs
        current = self.backend
        if self.state == ClientState.CHECKING and current is backend and current is not None:
            # After the reply being handled, not inside it: the pump writes to this backend.
            current.loop.call_soon(self._resume_checked, current)

    def _resume_checked(self, backend: BackendConnection) -> None:
        if self.state == ClientState.CHECKING and self.backend is backend:
            self._activate()

    def _break(self, stmt: Stmt) -> None:
        """stmt returns something else than this client was told: from now on, each use of a
        name of it fails as PostgreSQL fails it, until the name is prepared again."""
        stmts = self.stmts
        told = stmts.shapes.get(stmt)
        twin = stmt.broken_twin(told[0] if told is not None else b"")
        for name, held in list(stmts.items()):
            if held is stmt:
                stmts[name] = twin

    def _push(self, action: Action, backend: BackendConnection) -> None:
        """Queue a reply the proxy gives itself; with nothing owed ahead of it, give it now."""
        sc = self.scanner
        if (
            not sc.units
            and not sc.pending
            and not backend.scanner.skip
            and not backend.rbuf.pending()
            and self.transport is not None
        ):
            reply = action.reply
            if action.z:
                reply += m.ready_for_query(backend.tx_status)
            self.transport.write(reply)
            return
        if action.z:
            sc.pending += 1
        sc.units.append(action)

    def _through(self, frame_end: int, end: int) -> int:
        """Forward the rest of a frame as it is, streaming what has not arrived yet."""
        if frame_end <= end:
            return frame_end
        self.scanner.skip = frame_end - end
        return end

    def _statements_over_budget(self, pos: int, size: int, limit: int) -> tuple[int, int]:
        held = self.stmts.nbytes
        self.fail(
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

    def _malformed(self, pos: int) -> tuple[int, int]:
        self.fail(
            ProxyError(SqlState.PROTOCOL_VIOLATION, "malformed message: missing string terminator"),
            DisconnectReason.PROTOCOL_ERROR,
        )
        return pos, pos

    # --- session state -----------------------------------------------------------------------

    def wants_internal_params(self) -> bool:
        """ParameterStatus from the proxy's own queries reaches the client only while the proxy
        restores settings the client itself reset."""
        return self.state == ClientState.PROBING

    def check_session(self, backend: BackendConnection) -> None:
        """The client's transaction is over and its statements may have changed the session: ask
        the server what the session now holds before the backend serves anyone else."""
        sc = self.scanner
        flags = sc.dirty
        names = sc.names
        sc.dirty = 0
        sc.names = []
        opaque = bool(flags & SQL_OPAQUE)
        full = bool(flags & SQL_FULL)
        if full or opaque:
            # Anything may have changed: read back every setting the proxy knows of by name.
            names = list(dict.fromkeys([*ALWAYS_READ, *names, *self.extra_settings]))
        names = names[:MAX_READ]
        self.to(ClientState.PROBING)
        self.probe_flags = flags
        self.probe_names = names
        # Rows come in the session's client_encoding: other than UTF8, values travel as hex.
        self.probe_hex = self.params.get("client_encoding", "UTF8").upper() != "UTF8"
        self.probe_tries = 1
        self.probe_stmts = probe_statements(
            full=full,
            pins=bool(flags & (SQL_PINS | SQL_OPAQUE)) or self.pinned,
            names=names,
            # Opaque code may run DEALLOCATE too (EXECUTE in a DO block).
            statements=bool(flags & (SQL_DEALLOCATE | SQL_OPAQUE)) and sc.rename,
            hex_values=self.probe_hex,
            untimed=self._untimed(),
        )
        self._send_own(backend, self.probe_stmts, self._session_checked)

    def _untimed(self) -> tuple[str, ...]:
        """The statements that turn the client's timeouts off for the proxy's (see _send_own)."""
        return UNTIMED_STATEMENTS if self.release_on_idle else UNTIMED_EXTENDED

    def _send_own(
        self, backend: BackendConnection, statements: list[str], done: InternalDone
    ) -> None:
        """Run the proxy's own statements on the linked server connection, between two of the
        client's transactions. In session mode the client's unnamed statement lives there and
        must outlive them (a driver may Parse it before the check and Bind it after), so they
        go in extended protocol; in transaction mode a simple Query, and the client's unnamed
        statement is given again before its next use (see _unnamed_ready)."""
        if self.release_on_idle:
            backend.run_own(["; ".join(statements)], done)
        else:
            backend.run_own(statements, done, batch=True)

    def _session_checked(
        self,
        backend: BackendConnection,
        errors: list[dict[str, str]],
        rows: list[list[str | None]],
    ) -> None:
        if self.state != ClientState.PROBING or self.backend is not backend:
            return
        flags = self.probe_flags
        asked = bool(flags & (SQL_DEALLOCATE | SQL_OPAQUE)) and self.scanner.rename
        if errors and errors[0].get("C") in _TIMED_OUT and self.probe_tries < _PROBE_TRIES:
            # Only the first statement of the check (two settings read) runs under the client's
            # own timeouts, and a failed try changed nothing: try again.
            self.probe_tries += 1
            self._send_own(backend, self.probe_stmts, self._session_checked)
            return
        if errors:
            log.warning(
                "backend %s: session check failed: %s %s",
                backend.pid,
                errors[0].get("C", "?"),
                errors[0].get("M", "?"),
            )
            backend.close(DisconnectReason.RESET_FAILED)
            self.backend_released(None)
            return
        found = read_probe(rows, statements_asked=asked, hex_values=self.probe_hex)
        if found.statements is not None:
            self._statements_found(backend, found.statements)
        if flags & SQL_OPAQUE or len(self.probe_names) >= MAX_READ:
            # Code the proxy cannot see into may have set what no probe can list (a custom
            # setting named only inside a function): no other client gets this session unreset.
            backend.taint_owner = self
        restore = self._adopt_settings(backend, found, full=bool(flags & SQL_FULL))
        if self._settings_over_limit(backend, self.extra_settings):
            return
        if found.pins is not None:
            pinned = found.pins > 0 and self.release_on_idle
            if pinned != self.pinned:
                self.pinned = pinned
                assert self.pool is not None
                self.pool.pinned += 1 if pinned else -1
        if restore:
            # The client reset settings it gave at startup: as PostgreSQL does, RESET returns
            # them to the startup values.
            self.probe_stmts = [*self._untimed(), set_sql(restore)]
            self.probe_tries = 1
            self._send_own(backend, self.probe_stmts, self._settings_restored)
            return
        self._session_known(backend)

    def _statements_found(self, backend: BackendConnection, names: frozenset[str]) -> None:
        """Make the proxy's list of the server's statements the server's own: a DEALLOCATE may
        have dropped some, and one that never ran (an error before it) dropped none."""
        bs = backend.stmts
        for stmt in [s for s in bs.lru if s.name.decode() not in names]:
            bs.discard(stmt)
        missing = names - {s.name.decode() for s in bs.lru}
        if not missing:
            return
        for stmt in list(backend.pool.registry.entries):
            if stmt.name.decode() in missing:
                victim = bs.add(stmt)
                if victim is not None:
                    bs.closing.append(victim)

    def _settings_restored(
        self,
        backend: BackendConnection,
        errors: list[dict[str, str]],
        rows: list[list[str | None]],
    ) -> None:
        if self.state != ClientState.PROBING or self.backend is not backend:
            return
        if errors and errors[0].get("C") in _TIMED_OUT and self.probe_tries < _PROBE_TRIES:
            # Cancelled under the client's own timeouts before they were turned off: try again.
            self.probe_tries += 1
            self._send_own(backend, self.probe_stmts, self._settings_restored)
            return
        if errors:
            backend.close(DisconnectReason.RESET_FAILED)
            self.backend_released(None)
            return
        self._session_known(backend)

    def _session_known(self, backend: BackendConnection) -> None:
        self.settings_sig = None
        backend.applied_sig = self.compute_sig()
        if self.release_on_idle and not self.pinned:
            self.backend_released(backend)
        else:
            self._activate()

    def _settings_over_limit(self, backend: BackendConnection, settings: dict[str, str]) -> bool:
        """Settings too big to keep and replay end the session; the server connection holding
        them is closed, never handed on. True when that happened."""
        err = settings_limit_error(settings, self.server.config.proxy.max_client_settings_bytes)
        if err is None:
            return False
        backend.close(DisconnectReason.MEMORY_LIMIT)
        self.backend = None
        self.fail(err, DisconnectReason.MEMORY_LIMIT)
        return True

    def _adopt_settings(
        self, backend: BackendConnection, found: SessionState, *, full: bool
    ) -> dict[str, str]:
        """Take the server's word for the client's settings; returns the startup settings the
        client has reset, to be given their startup values again."""
        tracked = self.server.tracked_lower
        bp = backend.params
        if full:
            # pg_settings lists every ordinary setting changed in the session; custom ones and
            # the role come from the reads by name below.
            extra = {k: v for k, v in found.settings.items() if k not in tracked}
        else:
            extra = dict(self.extra_settings)
        for k, v in found.named.items():
            if k in tracked or (full and k in found.settings):
                continue
            if full and "." not in k and k not in ALWAYS_READ:
                continue  # not in pg_settings' session list: at its default
            if _at_default(k, v, backend.login_user):
                extra.pop(k, None)
            else:
                assert v is not None
                extra[k] = v
        restore: dict[str, str] = {}
        if full:
            for k, v in self.startup_settings.items():
                if k in tracked:
                    # A reported setting not changed in the session may still equal the startup
                    # value (the server's default): the server's last ParameterStatus tells.
                    if k not in found.settings and bp.get(tracked[k]) != v:
                        restore[k] = v
                elif k not in extra:
                    restore[k] = v
                    extra[k] = v
        self.extra_settings = extra
        for k in backend.extra_keys:
            if k not in extra:
                bp.pop(k, None)
        backend.extra_keys = set(extra)
        bp.update(extra)
        return restore

    def backend_released(self, backend: BackendConnection | None) -> None:
        """The linked backend finished the transaction (transaction mode)."""
        self.backend = None
        self.to(ClientState.IDLE)
        if backend is not None:
            self.scanner.settle_unnamed()  # released at a boundary: every Parse has its answer
        else:
            self.scanner.forget_unsettled()
        self.scanner.reset()
        if backend is not None:
            backend.client = None
            backend.scanner.units = None
            backend.pool.release(backend)
        # Unlinked, nothing limits this client's reading; the next link re-applies its peer's.
        self.resume_reading()
        rb = self.rbuf
        if rb.end > rb.start:
            if self.state == ClientState.IDLE:
                # The next transaction's first bytes arrived while the last one finished.
                try:
                    self._on_idle_data()
                except FrameError as exc:
                    self._frame_error(exc)
        elif len(rb.buf) > rb.initial:
            rb.shrink()

    # --- settings replay ---------------------------------------------------------------------

    def _settings_diff(
        self, backend: BackendConnection, reset: str
    ) -> tuple[str, dict[str, str], list[str], dict[str, str]]:
        """Statements that make backend match what this client expects (after `reset`, when
        given, which returns the session to its defaults), plus the non-reported settings to
        record on the backend and those to forget once the server has accepted them."""
        bp = backend.params
        params = self.params
        extra = self.extra_settings
        if reset:
            values = {k: params[k] for k in self.server.tracked_params if k in params}
            set_extra = dict(extra)
            stale: list[str] = []
            parts = [reset]
        else:
            values = {
                k: params[k]
                for k in self.server.tracked_params
                if k in params and bp.get(k) != params[k]
            }
            set_extra = {k: v for k, v in extra.items() if bp.get(k) != v}
            # Settings an earlier client had replayed here go back to the server default, before
            # anything is set (a reset session authorization also resets the role).
            stale = [k for k in backend.extra_keys if k not in extra]
            parts = [reset_sql(stale)] if stale else []
        reported = dict(values)
        values.update(set_extra)
        if values:
            parts.append(set_sql(values))
        return "; ".join(parts), set_extra, stale, reported

    # --- failures and closing ----------------------------------------------------------------

    def _frame_error(self, exc: FrameError) -> None:
        if exc.too_large:
            err = ProxyError(
                SqlState.PROGRAM_LIMIT_EXCEEDED,
                f"message of {exc.length} bytes exceeds the proxy's limit of {exc.limit} bytes",
                hint="Raise proxy.max_message_size_bytes if such messages are expected.",
            )
            self.fail(err, DisconnectReason.MESSAGE_TOO_LARGE)
        else:
            err = ProxyError(
                SqlState.PROTOCOL_VIOLATION,
                f"invalid message length {exc.length} (message type {exc.type_byte})",
            )
            self.fail(err, DisconnectReason.PROTOCOL_ERROR)

    def _internal_error(self) -> None:
        """A bug surfaced while handling this client's bytes: this client alone gets XX000, and
        its server connection, whose state is unknown, is closed rather than reused."""
        log.exception("internal error handling client data: %s", self.addr)
        backend = self.backend
        try:
            if backend is not None:
                self.backend = None
                backend.client = None
                backend.scanner.units = None
                backend.close(DisconnectReason.INTERNAL_ERROR)
            self.fail(
                ProxyError(SqlState.INTERNAL_ERROR, "internal error in the proxy"),
                DisconnectReason.INTERNAL_ERROR,
            )
        except Exception:
            log.exception("internal error closing client %s", self.addr)
            for end in (self, backend):
                if end is not None and end.transport is not None:
                    end.transport.abort()

    def send_error(self, err: ProxyError) -> None:
        if self.transport is not None:
            self.transport.write(
                m.error_response(
                    err.severity, err.sqlstate, err.message, detail=err.detail, hint=err.hint
                )
            )

    def fail(self, err: ProxyError, reason: DisconnectReason) -> None:
        """Send one ErrorResponse and close."""
        if self.state == ClientState.CLOSED:
            return
        self.send_error(err)
        self.linger = True
        log.info(
            "client error: %s user=%s db=%s %s %s",
            self.addr,
            self.user,
            self.database,
            err.sqlstate,
            err.message,
        )
        self.close(reason)

    def pool_failed(self, err: ProxyError, reason: DisconnectReason | None = None) -> None:
        """No backend could be had (timeout or the server refuses logins)."""
        self.fail(err, reason or DisconnectReason.BACKEND_CONNECT_FAILED)

    def backend_failed(self, err: ProxyError) -> None:
        """The linked backend died; the backend already discarded itself."""
        self.backend = None
        self.fail(err, DisconnectReason.BACKEND_FAILED)

    def backend_ended(self) -> None:
        """The linked backend relayed the server's FATAL to this client and is gone: the client
        goes too, with nothing of the proxy's own after the server's last word."""
        self.backend = None
        self.linger = True
        self.close(DisconnectReason.BACKEND_FAILED)

    def close(self, reason: DisconnectReason) -> None:
        if self.state == ClientState.CLOSED:
            return
        prev = self.state
        self.to(ClientState.CLOSED)
        self.close_reason = reason
        backend = self.backend
        self.backend = None
        pool = self.pool
        if prev == ClientState.WAITING and pool is not None:
            pool.forget_waiter(self)
        was_pinned = self.pinned
        if was_pinned and pool is not None:
            self.pinned = False
            pool.pinned -= 1
        if backend is not None and pool is not None:
            backend.client = None
            backend.scanner.units = None
            self._return_backend(backend, pool, was_pinned)
        self.close_transport()
        # A closed client object may live on until the garbage collector finds its reference
        # cycles: what it held (statement texts, a grown receive buffer) goes now.
        self.stmts.clear()
        self.extra_settings = {}
        self.rbuf.release()
        self.wake()
        self.server.client_closed(self, prev)

    def _return_backend(self, backend: BackendConnection, pool: Pool, pinned: bool) -> None:
        """A client left while holding a backend: reuse it only if provably clean."""
        sc = self.scanner
        clean = (
            sc.pending <= 0
            and not sc.unsynced
            and not sc.skip
            and backend.tx_status == TX_IDLE
            and not backend.internal_pending
            and backend.state == BackendState.ACTIVE
        )
        if not clean:
            backend.close(DisconnectReason.CLIENT_LEFT_MID_TRANSACTION)
            return
        if self.release_on_idle:
            # A session that still holds state (or may: statements since the last check) is
            # wiped before anyone else gets it.
            reset = "DISCARD ALL" if pinned or sc.dirty & ~SQL_TRANSIENT else ""
        else:
            reset = pool.spec.reset_query
            if len(backend.stmts) and not drops_all_statements(reset):
                # A session-mode client may have dropped the shared statements: start afresh.
                reset = f"{reset}; DEALLOCATE ALL" if reset else "DEALLOCATE ALL"
        if reset:
            backend.run_own([reset], _after_reset)
        else:
            # Not pool.release() inline: a chain of waiters that each take the backend and leave
            # at once would otherwise recurse one frame deeper per client.
            backend.hold()
            pool.loop.call_soon(_release_later, backend)


# statement_timeout and lock_timeout, as the client may set them (1 ms) under a session check.
_TIMED_OUT = ("57014", "55P03")
_PROBE_TRIES = 5


def _at_default(name: str, value: str | None, login_user: str) -> bool:
    """Whether a setting read by name holds what a fresh session has."""
    if value is None:
        return True
    if name == "role":
        return value == "none"
    if name == "session_authorization":
        return value == login_user
    # A custom setting that was set and reset reads as '' (PostgreSQL keeps the placeholder).
    return "." in name and value == ""


def _distrusts_catalog(search_path: str | None) -> bool:
    """Whether a search_path names pg_catalog after another schema, so that unqualified
    operators and functions may resolve to the client's own objects first."""
    if not search_path:
        return False
    parts = [p.strip() for p in search_path.split(",")]
    for i, part in enumerate(parts):
        name = part[1:-1] if len(part) > 1 and part[0] == part[-1] == '"' else part.lower()
        if name == "pg_catalog":
            return i > 0 and any(parts[:i])
    return False


def _release_later(backend: BackendConnection) -> None:
    if backend.state == BackendState.RESETTING:
        backend.pool.release(backend)


def _after_reset(
    backend: BackendConnection, errors: list[dict[str, str]], rows: Any = None
) -> None:
    if errors or backend.tx_status != TX_IDLE:
        backend.close(DisconnectReason.RESET_FAILED)
        return
    # Every reset the proxy sends ends with DISCARD ALL or DEALLOCATE ALL, unless an operator's
    # reset_query is used on a backend without shared statements.
    backend.stmts.clear()
    # The reset query may have undone settings the proxy replayed (DISCARD ALL does): mark
    # them unknown, so the next client gets an explicit SET or RESET for each.
    for k in backend.extra_keys:
        backend.params[k] = _UNKNOWN
    backend.applied_sig = None
    backend.pool.release(backend)
