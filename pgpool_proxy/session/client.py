"""One client connection: its state machine and the client -> backend hot path."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from functools import partial
from typing import TYPE_CHECKING, Any

from ..errors import DisconnectReason, ProxyError, SqlState, internal_error
from ..link.ends import at_boundary
from ..link.prepared import (
    ClientStatements,
    Stmt,
)
from ..net.endpoint import Endpoint, Peer
from ..pool.backend import BackendConnection
from ..pool.backend_state import BackendState
from ..protocol import messages as m
from ..protocol.buffer import RecvBuffer
from ..protocol.client_scan import CEV_INSPECT, CEV_NEED, NO_UNITS, ClientScanner
from ..protocol.constants import (
    F_TERMINATE,
    TX_IDLE,
)
from ..protocol.deallocate import drops_all_statements
from ..protocol.framing import FrameError, peek_type
from ..protocol.sqltables import (
    SQL_ALL,
    SQL_TRANSIENT,
)
from . import statements, sync
from .client_state import (
    CLIENT_ACTIVE,
    CLIENT_CHECKING,
    CLIENT_CLOSED,
    CLIENT_IDLE,
    CLIENT_LOGIN,
    CLIENT_REPLAYING,
    CLIENT_TRANSITIONS,
    CLIENT_WAITING,
    ClientState,
)
from .state import (
    UNTIMED,
    reset_identity_sql,
    reset_settings_sql,
)
from .statements import inspect as inspect_message

if TYPE_CHECKING:
    from ..pool.pool import Pool
    from .host import SessionHost
    from .stepped import Stepper

log = logging.getLogger("pgpool_proxy.client")

# Small: most clients sit idle, and memory per idle client is what limits how many we hold.
CLIENT_BUFFER = 4096


_UNKNOWN = "\0unknown"  # a value no setting can have (PostgreSQL strings cannot hold NUL)

# While a client waits, bytes it sends pile up here; past this much, stop reading it.
WAIT_BUFFER_LIMIT = 64 * 1024


class ClientConnection(Endpoint):
    """A client of the proxy.

    Login runs as a coroutine stepped by this connection's callbacks (`session.login`,
    `session.stepped`); after it, every byte is handled in `buffer_updated` without a task
    switch: frames are scanned by header and forwarded to the linked backend in one write per
    read.
    """

    __slots__ = (
        "addr",
        "backend",
        "close_reason",
        "database",
        "distrust",
        "extra_settings",
        "idle_since",
        "key_pid",
        "key_secret",
        "login",
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
        "replay",
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
        self.state = CLIENT_LOGIN
        # The login's Stepper until the login has ended (session.login.start_login).
        self.login: Stepper | None = None
        self.scanner = ClientScanner(server.config.proxy.max_message_size_bytes)
        # No reply-unit queue while idle: an empty deque is 760 bytes, a fifth of what an idle
        # client costs. _link gives it one; a transaction's end takes it (backend_released).
        self.scanner.units = NO_UNITS
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
        # While IDLE: when the janitor first saw it so (session.idle); 0.0 until then. Reset
        # as each transaction ends, so the hot path pays one store and no clock read.
        self.idle_since = 0.0
        self.replay: tuple[dict[str, str], list[str], bool, dict[str, str]] = sync.NO_REPLAY
        self.close_reason: DisconnectReason | None = None

    # --- state -------------------------------------------------------------------------------

    def to(self, new: ClientState) -> None:
        if new not in CLIENT_TRANSITIONS[self.state]:
            raise RuntimeError(f"illegal client transition {self.state.name} -> {new.name}")
        self.state = new

    def is_open(self) -> bool:
        return self.state != CLIENT_CLOSED and self.transport is not None

    def is_waiting(self) -> bool:
        return self.state == CLIENT_WAITING

    def is_checking(self) -> bool:
        """The server owes the proxy's check (see _prepare), the client's Sync held behind it."""
        return self.state == CLIENT_CHECKING

    # --- asyncio callbacks -----------------------------------------------------------------

    def peer(self) -> Peer | None:
        return self.backend

    def is_closed(self) -> bool:
        return self.state == CLIENT_CLOSED

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        peer = transport.get_extra_info("peername")
        self.addr = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer or "unix")
        self.server.client_connected(self)

    def buffer_updated(self, nbytes: int) -> None:
        self.rbuf.end += nbytes
        state = self.state
        try:
            if state == CLIENT_ACTIVE:
                self._pump()
            elif state == CLIENT_IDLE:
                self._on_idle_data()
            elif state == CLIENT_LOGIN:
                login = self.login
                if login is None:
                    self.slow_path_data()  # the admin console's task reads
                else:
                    login.poke()
                    # Bytes the login is not waiting for (it waits on something else): held,
                    # up to one buffer.
                    if self.login is not None and not login.wants_bytes() and self.rbuf.is_full():
                        self.pause_reading()
            elif state == CLIENT_CLOSED:
                self.rbuf.consumed(self.rbuf.end)  # lingering after an error (close_transport)
            elif self.rbuf.pending() > WAIT_BUFFER_LIMIT:
                # WAITING or REPLAYING: keep reading (so a departure is noticed) up to a bound.
                self.pause_reading()
        except FrameError as exc:
            self._frame_error(exc)
        except Exception:
            # Never into the event loop's fatal-error path (see fail_internal).
            self.fail_internal()

    def wake(self) -> None:
        super().wake()
        login = self.login
        if login is not None:
            login.poke()  # it finds the connection gone and ends

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.wake()
        if self.state != CLIENT_CLOSED:
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
            self.to(CLIENT_WAITING)
            return
        self._link(backend)

    def backend_assigned(self, backend: BackendConnection) -> None:
        """Called by the pool when this waiting client reaches the head of the queue."""
        self._link(backend)

    def _link(self, backend: BackendConnection) -> None:
        sc = self.scanner
        if sc.units is NO_UNITS:
            sc.units = deque()
        backend.link(self)
        # Whatever unnamed statement this server holds is not this client's. No reply is owed,
        # so what the client's unnamed statement is, is known.
        sc.unnamed_here = False
        self.backend = backend
        self._sync_flow(backend)
        sig = self.settings_sig or sync.compute_sig(self)
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
            self.activate()
            return
        sql, set_extra, stale, reported = sync.settings_diff(self, backend, reset)
        if sql:
            # Nothing of the client's goes out before the server has accepted its settings: a
            # statement must never run under another client's search_path or timeouts.
            self.to(CLIENT_REPLAYING)
            self.replay = (set_extra, stale, bool(reset), reported)
            backend.run_own([UNTIMED + sql], partial(sync.replay_done, self))
            return
        backend.applied_sig = sig
        self.activate()

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

    def activate(self) -> None:
        """The backend is ready for this client: forward what the client has sent so far."""
        backend = self.backend
        assert backend is not None
        backend.last_user = self.user
        # Reading may have been paused while the settings replay held the client's bytes.
        self._sync_flow(backend)
        self.to(CLIENT_ACTIVE)
        try:
            self._pump()
        except FrameError as exc:
            self._frame_error(exc)

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
            pos, run = inspect_message(self, buf, pos, end, out, backend)
            if self.state != CLIENT_ACTIVE:
                if self.state != CLIENT_CHECKING:
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

    # --- what the pool and the link call (their halves live in session.statements/sync) --------

    def checked(self, backend: object, stmt: Stmt, same: bool | None) -> None:
        statements.checked(self, backend, stmt, same)

    def check_session(self, backend: BackendConnection) -> None:
        sync.check_session(self, backend)

    def wants_internal_params(self) -> bool:
        return sync.wants_internal_params(self)

    def compute_sig(self) -> tuple[object, ...]:
        return sync.compute_sig(self)

    def backend_released(self, backend: BackendConnection | None) -> None:
        """The linked backend finished the transaction (transaction mode)."""
        self.backend = None
        self.to(CLIENT_IDLE)
        self.idle_since = 0.0
        if backend is not None:
            self.scanner.settle_unnamed()  # released at a boundary: every Parse has its answer
        else:
            self.scanner.forget_unsettled()
        self.scanner.reset()
        self.scanner.units = NO_UNITS  # nothing is owed now (see __init__)
        if backend is not None:
            backend.client = None
            backend.scanner.units = None
            backend.pool.release(backend)
        # Unlinked, nothing limits this client's reading; the next link re-applies its peer's.
        self.resume_reading()
        rb = self.rbuf
        if rb.end > rb.start:
            if self.state == CLIENT_IDLE:
                # The next transaction's first bytes arrived while the last one finished.
                try:
                    self._on_idle_data()
                except FrameError as exc:
                    self._frame_error(exc)
        else:
            rb.drop()

    # --- settings replay ---------------------------------------------------------------------

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

    def fail_internal(self) -> None:
        """A bug surfaced while handling this client's bytes: this client alone gets XX000, and
        its server connection, whose state is unknown, is closed rather than reused."""
        err = internal_error(log, "handling client data: %s", self.addr)
        backend = self.backend
        try:
            if backend is not None:
                self.backend = None
                backend.client = None
                backend.scanner.units = None
                backend.close(DisconnectReason.INTERNAL_ERROR)
            self.fail(err, DisconnectReason.INTERNAL_ERROR)
        except Exception:
            log.exception("internal error closing client %s", self.addr)
            for end in (self, backend):
                if end is not None and end.transport is not None:
                    end.transport.abort()

    def send_error(self, err: ProxyError) -> None:
        transport = self.transport
        # Mid TLS handshake (session.login._start_tls) the socket's bytes belong to the TLS
        # layer, its protocol, and the client reads TLS records: a plaintext ErrorResponse would
        # reach it as a broken record. Nothing is said there, as PostgreSQL says nothing.
        protocol: object = transport.get_protocol() if transport is not None else None
        if transport is not None and protocol is self:
            transport.write(
                m.error_response(
                    err.severity, err.sqlstate, err.message, detail=err.detail, hint=err.hint
                )
            )

    def fail(self, err: ProxyError, reason: DisconnectReason) -> None:
        """Send one ErrorResponse and close."""
        self._fail(err, reason, self._cut_mid_message())

    def _fail(self, err: ProxyError, reason: DisconnectReason, cut: bool) -> None:
        if self.state == CLIENT_CLOSED:
            return
        if not cut:
            self.send_error(err)
        self.linger = True
        log.info(
            "client error: %s user=%s db=%s %s %s%s",
            self.addr,
            self.user,
            self.database,
            err.sqlstate,
            err.message,
            " (closed without it: a server message to the client was cut short)" if cut else "",
        )
        self.close(reason)

    def _cut_mid_message(self) -> bool:
        """Part of a server message has gone to this client and the rest never will. Whatever
        the proxy wrote next would be read as the rest of that message (a row's bytes), so the
        client is closed without an ErrorResponse: what a client sees of a server that dies
        mid-message."""
        backend = self.backend
        return backend is not None and backend.mid_message

    def pool_failed(self, err: ProxyError, reason: DisconnectReason | None = None) -> None:
        """No backend could be had (timeout or the server refuses logins)."""
        self.fail(err, reason or DisconnectReason.BACKEND_CONNECT_FAILED)

    def backend_failed(
        self, err: ProxyError, reason: DisconnectReason = DisconnectReason.BACKEND_FAILED
    ) -> None:
        """The linked backend died; the backend already discarded itself."""
        cut = self._cut_mid_message()
        self.backend = None
        self._fail(err, reason, cut)

    def backend_ended(self) -> None:
        """The linked backend relayed the server's FATAL to this client and is gone: the client
        goes too, with nothing of the proxy's own after the server's last word."""
        self.backend = None
        self.linger = True
        self.close(DisconnectReason.BACKEND_FAILED)

    def close(self, reason: DisconnectReason) -> None:
        if self.state == CLIENT_CLOSED:
            return
        prev = self.state
        self.to(CLIENT_CLOSED)
        self.close_reason = reason
        backend = self.backend
        self.backend = None
        pool = self.pool
        if prev == CLIENT_WAITING and pool is not None:
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
        # Closed by the janitor for idling in a transaction (pool.idle_transaction_timeout_s),
        # with nothing owed: a ROLLBACK ends the transaction, so the connection can be reused.
        rollback = self.close_reason is DisconnectReason.IDLE_TRANSACTION_TIMEOUT
        clean = (
            at_boundary(sc, TX_IDLE if rollback else backend.tx_status)
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
        if rollback:
            # ROLLBACK alone keeps the server's prepared statements (not transactional), which
            # the proxy's record of them must then keep too (_after_rollback).
            if reset:
                backend.run_own(["ROLLBACK", reset], _after_reset)
            else:
                backend.run_own(["ROLLBACK"], _after_rollback)
        elif reset:
            backend.run_own([reset], _after_reset)
        else:
            # Not pool.release() inline: a chain of waiters that each take the backend and leave
            # at once would otherwise recurse one frame deeper per client.
            backend.hold()
            pool.loop.call_soon(_release_later, backend)


class ClientProtocol(ClientConnection, asyncio.BufferedProtocol):
    """A client connection as the event loop is given it. asyncio's own loop drives a buffered
    protocol only when it is an asyncio.BufferedProtocol, and ClientConnection cannot be one:
    in the compiled twin it is an extension type (client.pxd), whose base cannot be a Python
    class."""

    __slots__ = ()


def _release_later(backend: BackendConnection) -> None:
    if backend.state == BackendState.RESETTING:
        try:
            backend.pool.release(backend)
        except Exception:
            backend.fail_internal()  # a deferred callback: the loop must not see it


def _after_rollback(
    backend: BackendConnection, errors: list[dict[str, str]], rows: Any = None
) -> None:
    if errors or backend.tx_status != TX_IDLE:
        backend.close(DisconnectReason.RESET_FAILED)
        return
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
