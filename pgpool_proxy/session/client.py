"""One client connection: its state machine and the client -> backend hot path."""

from __future__ import annotations

import asyncio
import enum
import logging
from typing import TYPE_CHECKING

from ..endpoint import Endpoint
from ..errors import DisconnectReason, ProxyError, SqlState
from ..pool.backend import BackendConnection, BackendState
from ..protocol import messages as m
from ..protocol.constants import F_TERMINATE, TX_IDLE
from ..protocol.framing import ClientScanner, FrameError, RecvBuffer, peek_type

if TYPE_CHECKING:
    from ..pool.pool import Pool
    from ..server import ProxyServer

log = logging.getLogger("pgpool_proxy.client")

# Small: most clients sit idle, and memory per idle client is what limits how many we hold.
CLIENT_BUFFER = 4096


_MAX_INTERNED_SIGS = 10_000
_UNKNOWN = "\0unknown"  # a value no setting can have (PostgreSQL strings cannot hold NUL)
_NO_REPLAY: tuple[dict[str, str], list[str]] = ({}, [])

# While a client waits, bytes it sends pile up here; past this much, stop reading it.
WAIT_BUFFER_LIMIT = 64 * 1024


class ClientState(enum.IntEnum):
    LOGIN = 0
    IDLE = 1  # logged in, no backend
    WAITING = 2  # queued for a backend
    REPLAYING = 3  # linked; the backend is being given this client's settings first
    ACTIVE = 4  # linked to a backend
    CLOSED = 5


_ALLOWED: dict[ClientState, frozenset[ClientState]] = {
    ClientState.LOGIN: frozenset({ClientState.IDLE, ClientState.CLOSED}),
    ClientState.IDLE: frozenset(
        {ClientState.WAITING, ClientState.REPLAYING, ClientState.ACTIVE, ClientState.CLOSED}
    ),
    ClientState.WAITING: frozenset({ClientState.REPLAYING, ClientState.ACTIVE, ClientState.CLOSED}),
    ClientState.REPLAYING: frozenset({ClientState.ACTIVE, ClientState.IDLE, ClientState.CLOSED}),
    ClientState.ACTIVE: frozenset({ClientState.IDLE, ClientState.CLOSED}),
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
        "extra_settings",
        "key_pid",
        "key_secret",
        "params",
        "peer_channel",
        "pool",
        "release_on_idle",
        "scanner",
        "server",
        "settings_sig",
        "state",
        "user",
        "wait_since",
    )

    def __init__(self, server: ProxyServer, *, peer_channel: bool = False) -> None:
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
        # Interned summary of params + extra_settings; None when either changed since.
        self.settings_sig: tuple[object, ...] | None = None
        self.key_pid = 0
        self.key_secret = 0
        self.wait_since = 0.0
        self._replay: tuple[dict[str, str], list[str]] = _NO_REPLAY
        self.close_reason: DisconnectReason | None = None

    # --- state -------------------------------------------------------------------------------

    def to(self, new: ClientState) -> None:
        if new not in _ALLOWED[self.state]:
            raise RuntimeError(f"illegal client transition {self.state.name} -> {new.name}")
        self.state = new

    def is_open(self) -> bool:
        return self.state != ClientState.CLOSED and self.transport is not None

    def is_waiting(self) -> bool:
        return self.state == ClientState.WAITING

    # --- asyncio callbacks -----------------------------------------------------------------

    def peer(self) -> Endpoint | None:
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
                self.wake()
            elif self.rbuf.pending() > WAIT_BUFFER_LIMIT:
                # WAITING or REPLAYING: keep reading (so a departure is noticed) up to a bound.
                self.pause_reading()
        except FrameError as exc:
            self._frame_error(exc)

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
        backend.to(BackendState.ACTIVE)
        backend.client = self
        self.backend = backend
        self._sync_flow(backend)
        sig = self.settings_sig or self.compute_sig()
        if backend.applied_sig is sig:
            # The common case: this backend last served settings identical to ours.
            self._activate()
            return
        sql, set_extra, reset = self._settings_diff(backend)
        if sql:
            # Nothing of the client's goes out before the server has accepted its settings: a
            # statement must never run under another client's search_path or timeouts.
            self.to(ClientState.REPLAYING)
            self._replay = (set_extra, reset)
            backend.on_internal_done = self._replay_done
            backend.send_internal(sql)
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
        sigs = self.server.settings_sigs
        if len(sigs) > _MAX_INTERNED_SIGS:
            # Unique settings per client (say, application_name=<uuid>) must not grow this
            # forever; equal-but-distinct signatures only cost a diff, never correctness.
            sigs.clear()
        sig = sigs.setdefault(key, key)
        self.settings_sig = sig
        return sig

    def _replay_done(self, backend: BackendConnection, errors: list[dict[str, str]]) -> None:
        if self.state != ClientState.REPLAYING or self.backend is not backend:
            return
        set_extra, reset = self._replay
        self._replay = _NO_REPLAY
        if errors:
            # PostgreSQL refuses a login with an invalid setting; the proxy learns of it only
            # now, so it refuses the session here, with the server's own error.
            fields = errors[0]
            self.backend = None
            backend.client = None
            self.to(ClientState.IDLE)
            backend.pool.release(backend)
            self.fail(
                ProxyError(
                    fields.get("C", SqlState.PROTOCOL_VIOLATION),
                    fields.get("M", "the server rejected a startup setting"),
                    detail="The proxy applies the client's startup settings to each server "
                    "connection it uses; the server rejected them.",
                ),
                DisconnectReason.SETTINGS_REJECTED,
            )
            return
        bp = backend.params
        for k, v in set_extra.items():
            bp[k] = v
            backend.extra_keys.add(k)
        for k in reset:
            bp.pop(k, None)
            backend.extra_keys.discard(k)
        backend.applied_sig = self.settings_sig or self.compute_sig()
        self._activate()

    def _pump(self) -> None:
        rb = self.rbuf
        start = rb.start
        scanner = self.scanner
        pos = scanner.scan(rb.buf, start, rb.end)
        if pos > start:
            backend = self.backend
            assert backend is not None
            t = backend.transport
            if t is None:
                return  # connection_lost will report it
            t.write(rb.view[start:pos])
            rb.consumed(pos)
            if t.get_write_buffer_size():
                # The backend transport keeps a view of these bytes until it has sent them.
                rb.detach()
        if scanner.terminated:
            self.close(DisconnectReason.CLIENT_TERMINATE)

    def backend_released(self, backend: BackendConnection | None) -> None:
        """The linked backend finished the transaction (transaction mode)."""
        self.backend = None
        self.to(ClientState.IDLE)
        self.scanner.reset()
        if backend is not None:
            backend.client = None
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

    def _settings_diff(self, backend: BackendConnection) -> tuple[str, dict[str, str], list[str]]:
        """SET/RESET statements that make backend match what this client expects, plus the
        non-reported settings to record on the backend once the server has accepted them."""
        bp = backend.params
        params = self.params
        parts = [
            f"SET {m.quote_ident(k)} TO {m.quote_literal(params[k])}"
            for k in self.server.tracked_params
            if k in params and bp.get(k) != params[k]
        ]
        extra = self.extra_settings
        set_extra = {k: v for k, v in extra.items() if bp.get(k) != v}
        parts.extend(
            f"SET {m.quote_ident(k)} TO {m.quote_literal(v)}" for k, v in set_extra.items()
        )
        # Settings an earlier client had replayed here go back to the server default.
        reset = [k for k in backend.extra_keys if k not in extra]
        parts.extend(f"RESET {m.quote_ident(k)}" for k in reset)
        return "; ".join(parts), set_extra, reset

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

    def close(self, reason: DisconnectReason) -> None:
        if self.state == ClientState.CLOSED:
            return
        prev = self.state
        self.state = ClientState.CLOSED
        self.close_reason = reason
        backend = self.backend
        self.backend = None
        pool = self.pool
        if prev == ClientState.WAITING and pool is not None:
            pool.forget_waiter(self)
        if backend is not None and pool is not None:
            backend.client = None
            self._return_backend(backend, pool)
        transport = self.transport
        if transport is not None:
            transport.close()
        self.wake()
        self.server.client_closed(self, prev)

    def _return_backend(self, backend: BackendConnection, pool: Pool) -> None:
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
        reset = pool.spec.reset_query if not self.release_on_idle else ""
        if reset:
            backend.to(BackendState.RESETTING)
            backend.on_internal_done = _after_reset
            backend.send_internal(reset)
        else:
            # Not pool.release() inline: a chain of waiters that each take the backend and leave
            # at once would otherwise recurse one frame deeper per client.
            backend.to(BackendState.RESETTING)
            pool.loop.call_soon(_release_later, backend)


def _release_later(backend: BackendConnection) -> None:
    if backend.state == BackendState.RESETTING:
        backend.pool.release(backend)


def _after_reset(backend: BackendConnection, errors: list[dict[str, str]]) -> None:
    if errors or backend.tx_status != TX_IDLE:
        backend.close(DisconnectReason.RESET_FAILED)
        return
    # The reset query may have undone settings the proxy replayed (DISCARD ALL does): mark
    # them unknown, so the next client gets an explicit SET or RESET for each.
    for k in backend.extra_keys:
        backend.params[k] = _UNKNOWN
    backend.applied_sig = None
    backend.pool.release(backend)
