"""One server connection: login as a PostgreSQL client, then the backend -> client hot path."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from ..auth.server_login import MAX_SERVER_PARAMS_BYTES, params_overflow
from ..errors import DisconnectReason, ProxyError, SqlState, internal_error
from ..link import replies
from ..link.ends import at_boundary
from ..link.prepared import ServerStatements
from ..net.endpoint import Endpoint, Peer
from ..protocol import messages as m
from ..protocol.buffer import RecvBuffer
from ..protocol.constants import (
    B_PARAMETER_STATUS,
    INT32,
    TX_IDLE,
)
from ..protocol.framing import FrameError
from ..protocol.server_scan import (
    EV_AFTER,
    EV_ERROR,
    EV_FATAL,
    EV_NEED,
    EV_NONE,
    EV_NOTIFY,
    EV_PARAM,
    EV_READY,
    EV_ROW,
    EV_UNIT,
    BackendScanner,
)
from ..protocol.sqltables import SQL_SCHEMA, SQL_TRANSIENT
from . import cancel, notify, own_statements
from .backend_state import (
    BACKEND_ACTIVE,
    BACKEND_CANCELLING,
    BACKEND_CLOSED,
    BACKEND_CONNECTING,
    BACKEND_IDLE,
    BACKEND_LOGIN,
    BACKEND_RESETTING,
    BACKEND_TRANSITIONS,
    BackendState,
)

if TYPE_CHECKING:
    from ..auth.server_login import ServerLogin
    from .ends import PoolClient
    from .pool import Pool

log = logging.getLogger("pgpool_proxy.backend")

BACKEND_BUFFER = 64 * 1024
# How long a connection closed with wait_exit keeps its slot waiting for the server to go.
EXIT_WAIT_S = 1.0


InternalDone = Callable[["BackendConnection", list[dict[str, str]], list[list[str | None]]], None]


class BackendConnection(Endpoint):
    """A pooled server connection.

    While linked to a client, `buffer_updated` streams the server's frames to the client and
    stops only at ReadyForQuery (to decide whether the backend can go back to the pool) and at
    ParameterStatus (to keep the client's and this backend's view of reported settings exact).
    """

    __slots__ = (
        "address",
        "applied_sig",
        "cancel_done",
        "cancelling",
        "checked_at",
        "client",
        "close_reason",
        "created_at",
        "done_key_pid",
        "extra_keys",
        "generation",
        "idle_since",
        "idle_tx_since",
        "internal_errors",
        "internal_pending",
        "internal_rows",
        "last_key_pid",
        "last_user",
        "leaving",
        "linked_at",
        "login_user",
        "loop",
        "mid_message",
        "on_internal_done",
        "params",
        "parked",
        "pid",
        "pool",
        "rx_bytes",
        "rx_mark",
        "scanner",
        "secret",
        "silent_since",
        "state",
        "stmts",
        "taint_owner",
        "tx_status",
    )

    def __init__(self, pool: Pool, generation: int) -> None:
        super().__init__(RecvBuffer(BACKEND_BUFFER, BACKEND_BUFFER))
        self.pool = pool
        self.generation = generation
        # The server this connection goes to (pools with several hosts choose per connection).
        self.address: tuple[str, int] = pool.backend_address
        self.state = BACKEND_CONNECTING
        self.scanner = BackendScanner()
        self.client: PoolClient | None = None
        self.params: dict[str, str] = {}
        # Non-reported settings the proxy replayed here for a client (reset for the next one).
        self.extra_keys: set[str] = set()
        # The client whose statements ran code the proxy could not see into here, or any
        # object when unknown: another client gets the session only after a reset.
        self.taint_owner: object | None = None
        self.last_key_pid = 0  # the pid (BackendKeyData) of the client it served last
        # Who a notification this session sends is from (see _notifier): the client whose
        # transaction ended here last, and whether the connection sat in the pool's idle list
        # since (Pool.release) rather than going straight to the next client.
        self.done_key_pid = 0
        self.parked = True
        # The client user this session last served, and the user the server logged in (what
        # SET SESSION AUTHORIZATION DEFAULT returns to).
        self.last_user = ""
        self.login_user = ""
        # The settings signature of the client this backend's settings last matched (see
        # PoolClient._compute_sig); None when unknown.
        self.applied_sig: tuple[object, ...] | None = None
        self.pid = 0
        self.secret = 0
        loop = asyncio.get_running_loop()
        self.loop = loop
        self.created_at = loop.time()
        self.linked_at = self.created_at  # when a client last took it (transaction time)
        # The linked client was sent part of a server message and not yet the rest: nothing of
        # the proxy's own may go to it before the rest (see ClientConnection._cut_mid_message).
        self.mid_message = False
        self.idle_since = self.created_at
        self.tx_status = TX_IDLE
        # Proxy-issued queries (SET replay, reset) whose replies must not reach a client.
        self.internal_pending = 0
        self.internal_errors: list[dict[str, str]] = []
        self.internal_rows: list[list[str | None]] = []
        # Called with the ErrorResponse fields and the rows once the proxy's queries finished.
        self.on_internal_done: InternalDone | None = None
        # Shared prepared statements this server connection holds (transaction mode).
        self.stmts = ServerStatements(pool.spec.max_prepared_statements)
        self.cancelling = False  # a cancel of this session is on its way (one at a time)
        self.cancel_done: list[Callable[[], None]] = []  # to call once it has landed
        self.close_reason: DisconnectReason | None = None
        # Liveness (Pool._watch): bytes received so far, the count the janitor last saw, since
        # when it has seen no new byte while a reply was owed, and the last idle check.
        self.rx_bytes = 0
        self.rx_mark = 0
        self.silent_since: float | None = None
        self.checked_at = self.created_at
        # Since when the janitor has seen the linked client idle inside a transaction, with no
        # new byte from the server (pool.idle_transaction_timeout_s; see pool.health).
        self.idle_tx_since: float | None = None
        # Closed with wait_exit: the timer bounding the wait for the server to go (see close).
        self.leaving: asyncio.TimerHandle | None = None

    # --- state -------------------------------------------------------------------------------

    # Every change of self.state goes through _to, called only by the methods below and the
    # login: other modules say what they do with the connection, not which state it is in.

    def _to(self, new: BackendState) -> None:
        if new not in BACKEND_TRANSITIONS[self.state]:
            raise RuntimeError(f"illegal backend transition {self.state.name} -> {new.name}")
        self.state = new

    def link(self, client: PoolClient) -> None:
        """Serve `client` (handed over by the pool, or kept between a session's transactions)."""
        self._to(BACKEND_ACTIVE)
        self.client = client
        self.mid_message = False  # nothing of this server's has gone to this client yet
        self.last_key_pid = client.key_pid
        self.linked_at = self.loop.time()
        self.scanner.units = client.scanner.units

    def hold(self) -> None:
        """Out of the pool and serving no client, until the pool takes it back (to_idle)."""
        self._to(BACKEND_RESETTING)

    def await_cancel(self) -> None:
        """Released while a cancel is in flight: out of use until it lands (see _cancel)."""
        self._to(BACKEND_CANCELLING)

    def to_idle(self) -> None:
        """Free for the next client: the pool (or the topology monitor) has it back."""
        self._to(BACKEND_IDLE)

    def run_own(
        self, statements: Sequence[str], done: InternalDone | None, *, batch: bool = False
    ) -> None:
        """Run the proxy's own statements, their replies swallowed (pool.own_statements)."""
        own_statements.run_own(self, statements, done, batch=batch)

    def run_own_query(
        self, sql: str, params: Sequence[str | None], done: InternalDone | None
    ) -> None:
        """Run one statement of the proxy's own with $n bound (pool.own_statements)."""
        own_statements.run_own_query(self, sql, params, done)

    def __repr__(self) -> str:
        return f"<backend pid={self.pid} {self.state.name} {self.pool.name}>"

    # --- asyncio callbacks -----------------------------------------------------------------

    def peer(self) -> Peer | None:
        return self.client

    def is_closed(self) -> bool:
        return self.state == BACKEND_CLOSED

    def buffer_updated(self, nbytes: int) -> None:
        rb = self.rbuf
        rb.end += nbytes
        self.rx_bytes += nbytes
        state = self.state
        if state == BACKEND_ACTIVE or state == BACKEND_RESETTING:
            try:
                self._pump()
            except (FrameError, m.ProtocolViolation) as exc:
                log.error("backend %s sent a malformed frame: %s", self.pid, exc)
                # 08006 to the client: the fault is the server's, not the client's protocol use.
                self.fail(DisconnectReason.PROTOCOL_ERROR, "server sent an invalid message")
            except Exception:
                # Never into the event loop's fatal-error path: that would leave the client
                # linked to a backend in an unknown state.
                self.fail_internal()
        elif state == BACKEND_LOGIN:
            self.slow_path_data()
        elif state == BACKEND_IDLE or state == BACKEND_CANCELLING:
            # An idle server speaks only to say goodbye (FATAL on shutdown, idle_session_timeout).
            self.close(DisconnectReason.BACKEND_FAILED)
        elif state == BACKEND_CLOSED:
            rb.consumed(rb.end)  # waiting for the server to go (close with wait_exit)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.wake()
        if self.state != BACKEND_CLOSED:
            self.fail(DisconnectReason.BACKEND_FAILED, "server closed the connection unexpectedly")
        elif self.leaving is not None:
            self._gone()

    def fail_internal(self) -> None:
        """A bug surfaced while handling this server's bytes: drop the server connection (its
        state is unknown) and give the linked client, only it, an internal error."""
        err = internal_error(log, "handling server data: backend %s", self.pid)
        client = self.client
        try:
            self.close(DisconnectReason.INTERNAL_ERROR)
            if client is not None:
                client.backend_failed(err, DisconnectReason.INTERNAL_ERROR)
        except Exception:
            log.exception("internal error closing backend %s", self.pid)
            for end in (self, client):
                if end is not None and end.transport is not None:
                    end.transport.abort()

    # --- hot path ----------------------------------------------------------------------------

    def _pump(self) -> None:
        """Server -> client, once per read: forward every frame, stopping only at the events
        the scanner reports (ReadyForQuery, a unit the proxy answers, an error, a notification,
        a setting, the proxy's own replies).

        Hot-path loop, kept in one function on purpose (issue 16 allows it): each branch is a
        handful of attribute reads, and a call per event would cost more than the work; the rare
        events call out (replies, _idle_point, _notification, _refuse_params)."""
        rb = self.rbuf
        buf = rb.buf
        start = pos = rb.start
        end = rb.end
        scanner = self.scanner
        while True:
            pos = scanner.scan(buf, pos, end)
            if scanner.copy_in:
                # Tell the client's side before the client can see CopyInResponse and answer.
                scanner.copy_in = False
                if self.client is not None:
                    self.client.scanner.copy_in = True
            ev = scanner.event
            if ev == EV_NONE:
                break
            if ev == EV_READY:
                self.tx_status = scanner.status
                if self.internal_pending:
                    # Everything up to here answered the proxy's own query: drop it.
                    start = pos
                    self.internal_pending -= 1
                    if not self.internal_pending:
                        own_statements.finished(self)
                        if self.state != BACKEND_ACTIVE:
                            rb.consumed(pos)
                            if pos != end:
                                self.close(DisconnectReason.BACKEND_FAILED)
                            return
                    continue
                client = self.client
                if client is None:
                    break
                cs = client.scanner
                cs.pending -= 1
                self.pool.total_queries += 1
                if scanner.status == TX_IDLE:
                    self.done_key_pid = client.key_pid
                    self.parked = False
                if cs.units:
                    self._write(start, pos)
                    start = pos
                    replies.ready(client, self)
                if at_boundary(cs, scanner.status) and self._idle_point(client, start, pos):
                    return
                continue
            if ev == EV_UNIT or ev == EV_AFTER:
                client = self.client
                assert client is not None
                units = client.scanner.units
                if ev == EV_UNIT and not replies.synth_at_head(units):
                    n = INT32.unpack_from(buf, pos + 1)[0] + 1
                    keep = replies.on_unit(client, self, buf, pos, n)
                    if keep is not True:
                        self._write(start, pos)
                        start = pos + n
                        if keep and client.transport is not None:
                            client.transport.write(keep)
                    pos += n
                # A reply the proxy gives itself is due: write what precedes it, then it. A frame
                # not consumed yet (EV_UNIT) is matched against the next unit afterwards.
                if replies.synth_at_head(units):
                    self._write(start, pos)
                    start = pos
                    if replies.emit_synths(client, self) and self.release_if_done(client, pos):
                        return
                continue
            if ev == EV_PARAM:
                n = INT32.unpack_from(buf, pos + 1)[0] + 1
                name, value = m.parse_parameter_status(memoryview(buf)[pos + 5 : pos + n])
                client = self.client
                why = params_overflow(self.params, name, value) or (
                    client is not None and params_overflow(client.params, name, value)
                )
                if why:
                    self._refuse_params(why)
                    return
                self.params[name] = value
                self.applied_sig = None
                if client is not None:
                    # Keep the client's expectation equal to what the server reports, including
                    # the server's spelling of values the proxy replayed (utf8 -> UTF8).
                    client.params[name] = value
                    client.settings_sig = None
                    if self.internal_pending and client.wants_internal_params():
                        # A startup setting the proxy restored after the client reset it.
                        self._write(pos, pos + n)
                pos += n
                if self.internal_pending:
                    start = pos
                continue
            if ev == EV_NOTIFY:
                n = INT32.unpack_from(buf, pos + 1)[0] + 1
                client = self.client
                if self.internal_pending:
                    # The replies to the proxy's own statements are dropped; a notification
                    # among them is the client's (its LISTEN pins this session).
                    if client is not None and client.transport is not None:
                        client.transport.write(notify.notification(self, buf, pos, n, client))
                    pos += n
                    start = pos
                    continue
                if client is not None and n >= 9:
                    mapped = notify.notifier_pid(self, INT32.unpack_from(buf, pos + 5)[0], client)
                    if mapped is not None:
                        self._write(start, pos)
                        if client.transport is not None:
                            client.transport.write(
                                b"".join(
                                    (buf[pos : pos + 5], INT32.pack(mapped), buf[pos + 9 : pos + n])
                                )
                            )
                        start = pos + n
                pos += n
                continue
            if ev == EV_FATAL:
                self._server_goodbye(start, pos + INT32.unpack_from(buf, pos + 1)[0] + 1)
                return
            if ev == EV_ERROR or ev == EV_ROW:
                # Only while the proxy's own queries run (scanner.internal).
                n = INT32.unpack_from(buf, pos + 1)[0] + 1
                body = memoryview(buf)[pos + 5 : pos + n]
                if ev == EV_ERROR:
                    self.internal_errors.append(m.parse_error_fields(body))
                else:
                    self.internal_rows.append(m.parse_data_row(body))
                pos += n
                start = pos
                continue
            if ev == EV_NEED:
                if scanner.need > MAX_SERVER_PARAMS_BYTES and buf[pos] == B_PARAMETER_STATUS:
                    # Never buffer a giant ParameterStatus just to refuse it afterwards.
                    self._refuse_params(
                        f"server reported a parameter of {scanner.need} bytes "
                        f"(at most {MAX_SERVER_PARAMS_BYTES})"
                    )
                    return
                # A frame the proxy must read whole is incomplete: flush what precedes it and
                # make room for the rest.
                self._flush(pos if self.internal_pending else start, pos)
                # Room for twice what is held, not the size the header claims: a 5-byte header
                # must not make the proxy allocate up to 1 GB before any of it arrives, nor
                # may a server that trickles it a byte per read double the buffer each time.
                rb.ensure_capacity(min(scanner.need, max(2 * rb.pending(), BACKEND_BUFFER)))
                return
        self._flush(pos if self.internal_pending else start, pos)
        client = self.client
        if (
            client is not None
            and not scanner.skip
            and replies.synth_at_head(client.scanner.units)
            # A reply the proxy answers itself, queued behind a frame that just completed.
            and replies.emit_synths(client, self)
        ):
            self.release_if_done(client, rb.start)

    def _server_goodbye(self, start: int, end: int) -> None:
        """The server ends the session with the FATAL (or PANIC) ErrorResponse ending at `end`
        (57P01 terminated or shutting down, 25P03 idle in transaction, ...). The
        client gets it as the server sent it and is then closed, as on a direct connection:
        nothing of the proxy's own comes after the server's last word. Whatever the server sends
        after it (PostgreSQL sends nothing) is dropped with the connection."""
        client = self.client
        self._flush(start, end)
        log.info("backend %s ended the session with FATAL (pool %s)", self.pid, self.pool.name)
        self.close(DisconnectReason.BACKEND_FAILED)
        if client is not None:
            client.backend_ended()

    def _refuse_params(self, why: str) -> None:
        log.error("backend %s (pool %s): %s; closing it", self.pid, self.pool.name, why)
        self.fail(DisconnectReason.PROTOCOL_ERROR, f"server sent too many parameters: {why}")

    def _idle_point(self, client: PoolClient, start: int, pos: int) -> bool:
        """The client owes nothing and the server is idle: release the backend, or first ask the
        server what state the client's statements left in the session. True when handed off."""
        sc = client.scanner
        if sc.dirty:
            if sc.dirty & SQL_SCHEMA:
                # The schema change is visible to everyone now: plan afresh from here on.
                self.pool.registry.new_epoch()
            sc.dirty &= ~SQL_TRANSIENT
            if sc.dirty:
                self._flush(start, pos)
                client.check_session(self)
                return True
        if not client.release_on_idle or client.pinned:
            return False
        self._flush(start, pos)
        rb = self.rbuf
        if rb.start != rb.end:
            # Bytes after the last reply belong to no one; never pass them on.
            self.close(DisconnectReason.BACKEND_FAILED)
            client.backend_released(None)
            return True
        client.backend_released(self)
        return True

    def release_if_done(self, client: PoolClient, pos: int) -> bool:
        """After the proxy answered a Query itself: release if that was the last reply owed."""
        cs = client.scanner
        if at_boundary(cs, self.tx_status):
            return self._idle_point(client, pos, pos)
        return False

    def _write(self, start: int, pos: int) -> None:
        """Forward buf[start:pos] to the linked client without consuming it (see _flush); it
        ends where a message ends."""
        client = self.client
        if pos > start and client is not None and client.transport is not None:
            client.transport.write(self.rbuf.view[start:pos])
            self.mid_message = False

    def _flush(self, start: int, pos: int) -> None:
        """Forward buf[start:pos] to the linked client in one write and consume up to pos."""
        rb = self.rbuf
        client = self.client
        t = client.transport if client is not None else None
        if t is not None:
            if pos > start:
                t.write(rb.view[start:pos])
                # Only a scan that ends inside a message leaves bytes of it to skip.
                self.mid_message = self.scanner.skip != 0
            rb.consumed(pos)
            if t.get_write_buffer_size():
                # The client transport keeps views of these bytes until it has sent them.
                rb.detach()
        else:
            rb.consumed(pos)

    # --- cancel ------------------------------------------------------------------------------

    def send_cancel(self, done: Callable[[], None] | None = None) -> None:
        """Forward a client's cancel (pool.cancel); ``done`` runs once it has landed."""
        cancel.send_cancel(self, done)

    # --- lifecycle ---------------------------------------------------------------------------

    def fail(
        self, reason: DisconnectReason, message: str, sqlstate: str = SqlState.CONNECTION_FAILURE
    ) -> None:
        """The server connection broke: tell the linked client (08006 unless `sqlstate` says
        otherwise) and discard it."""
        client = self.client
        self.close(reason)
        if client is not None:
            client.backend_failed(ProxyError(sqlstate, f"server connection lost: {message}"))

    def close(self, reason: DisconnectReason, *, wait_exit: bool = False) -> None:
        """Close; with ``wait_exit`` (an idle connection), keep its pool slot until the server
        has closed its end after the Terminate, so a cap on server connections holds as the
        server counts them (pg_stat_activity, max_connections), not only as sockets here."""
        if self.state == BACKEND_CLOSED:
            return
        prev = self.state
        # The proxy's own statements with no client attached (a login's settings check, a reset,
        # the idle check) get no answer now: whoever waits on them learns it here, not after
        # server_check_timeout_s. A linked client hears of the loss from fail().
        lost = self.on_internal_done if self.internal_pending and self.client is None else None
        self._to(BACKEND_CLOSED)
        self.close_reason = reason
        self.client = None
        transport = self.transport
        if transport is not None:
            if prev not in (BACKEND_CONNECTING, BACKEND_LOGIN):
                transport.write(m.TERMINATE)
            if wait_exit and prev == BACKEND_IDLE:
                # PostgreSQL leaves pg_stat_activity and frees its slot before its socket closes:
                # EOF here means the server process is gone. A server that does not go in time
                # is cut off.
                self.leaving = self.loop.call_later(EXIT_WAIT_S, self._gone)
                if self.reading_paused:
                    self.resume_reading()
            else:
                transport.close()
        self.wake()
        self.pool.backend_closed(self, prev)
        log.info("server closed: pool=%s pid=%s reason=%s", self.pool.name, self.pid, reason.value)
        if lost is not None:
            self.on_internal_done = None
            lost(self, [{"C": SqlState.CONNECTION_FAILURE, "M": "server connection lost"}], [])

    def _gone(self) -> None:
        """The server of a connection closed with wait_exit has gone (or was given up on):
        its slot is free now."""
        handle = self.leaving
        if handle is None:
            return
        self.leaving = None
        handle.cancel()
        if self.transport is not None:
            self.transport.abort()
        self.pool.slot_released(self)

    # --- login (pool.server_connect) --------------------------------------------------------

    def logging_in(self) -> None:
        """The startup exchange begins (pool.server_connect)."""
        self._to(BACKEND_LOGIN)

    def logged_in(self, login: ServerLogin) -> None:
        """The server said ReadyForQuery to `login`: ready for queries, idle until used."""
        self.params = login.params
        self.pid, self.secret = login.pid, login.cancel_secret
        self.tx_status = login.tx_status
        self.login_user = self.params.get("session_authorization", "")
        self._to(BACKEND_IDLE)
        self.idle_since = self.loop.time()
        # An idle server connection reads, to notice the server saying goodbye.
        self.resume_reading()


class BackendProtocol(BackendConnection, asyncio.BufferedProtocol):
    """A server connection as the event loop is given it. asyncio's own loop drives a buffered
    protocol only when it is an asyncio.BufferedProtocol, and BackendConnection cannot be one:
    in the compiled twin it is an extension type (backend.pxd), whose base cannot be a Python
    class."""

    __slots__ = ()
