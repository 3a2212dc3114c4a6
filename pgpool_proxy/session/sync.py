"""Session settings across server connections: the client's settings given to each server
connection it gets (replay), and what a transaction left in the session read back (check).

Functions of a ClientConnection, kept apart from its state machine and byte pump.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import TYPE_CHECKING, Any

from ..auth.server_login import server_sqlstate
from ..errors import DisconnectReason, ProxyError, SqlState
from ..pool.backend import BackendConnection, InternalDone
from ..protocol import messages as m
from ..protocol.sqlscan import (
    SQL_DEALLOCATE,
    SQL_FULL,
    SQL_OPAQUE,
    SQL_PINS,
)
from .canon import learn
from .client_state import ClientState
from .limits import settings_limit_error
from .state import (
    ALWAYS_READ,
    MAX_READ,
    UNTIMED_EXTENDED,
    UNTIMED_STATEMENTS,
    SessionState,
    probe_statements,
    read_probe,
    reset_sql,
    set_sql,
)

if TYPE_CHECKING:
    from .client import ClientConnection

log = logging.getLogger("pgpool_proxy.client")

_MAX_INTERNED_SIGS = 10_000
NO_REPLAY: tuple[dict[str, str], list[str], bool, dict[str, str]] = ({}, [], False, {})
# A backend whose session state is unknown to the proxy: the next client of any kind resets it.
_UNKNOWN_OWNER = object()
# statement_timeout and lock_timeout, as the client may set them (1 ms) under a session check.
_TIMED_OUT = ("57014", "55P03")
_PROBE_TRIES = 5


def compute_sig(client: ClientConnection) -> tuple[object, ...]:
    """This client's settings as one interned tuple: equal settings, identical object."""
    params = client.params
    key = (
        *(params.get(k) for k in client.server.tracked_params),
        *sorted(client.extra_settings.items()),
    )
    client.distrust = _distrusts_catalog(client.extra_settings.get("search_path"))
    sigs = client.server.settings_sigs
    if len(sigs) > _MAX_INTERNED_SIGS:
        # Unique settings per client (say, application_name=<uuid>) must not grow this
        # forever; equal-but-distinct signatures only cost a diff, never correctness.
        sigs.clear()
    sig = sigs.setdefault(key, key)
    client.settings_sig = sig
    return sig


def replay_done(
    client: ClientConnection,
    backend: BackendConnection,
    errors: list[dict[str, str]],
    rows: Any = None,
) -> None:
    if client.state != ClientState.REPLAYING or client.backend is not backend:
        return
    set_extra, stale, was_reset, reported = client.replay
    client.replay = NO_REPLAY
    if errors:
        # PostgreSQL refuses a login with an invalid setting; the proxy learns of it only
        # now, so it refuses the session here, with the server's own error. The replay ran
        # as one implicit transaction, now rolled back: what the session holds is unknown.
        backend.taint_owner = _UNKNOWN_OWNER
        fields = errors[0]
        client.backend = None
        backend.client = None
        backend.scanner.units = None
        client.to(ClientState.IDLE)
        backend.pool.release(backend)
        client.fail(
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
        _adopt_spelling(client, backend, reported)
    backend.applied_sig = client.settings_sig or compute_sig(client)
    client.activate()


def _adopt_spelling(
    client: ClientConnection, backend: BackendConnection, sent: dict[str, str]
) -> None:
    """After a replay, what the server reports is its spelling of each reported value sent
    (it reports a value only when it differs from the last one it reported, which is then
    still in backend.params). A client told a spelling of its own at login (no server
    connection was free to ask) gets the server's now, before any reply, as directly."""
    bp = backend.params
    assert client.pool is not None
    out = []
    for k, v in sent.items():
        shown = bp.get(k)
        if shown is None or shown == v:
            continue
        learn(client.pool, k, v, shown)
        client.params[k] = shown
        client.settings_sig = None
        if client.startup_settings.get(k.lower()) == v:
            client.startup_settings[k.lower()] = shown
        out.append(m.parameter_status(k, shown))
    if out and client.transport is not None:
        client.transport.write(b"".join(out))


def wants_internal_params(client: ClientConnection) -> bool:
    """ParameterStatus from the proxy's own queries reaches the client only while the proxy
    restores settings the client itself reset."""
    return client.state == ClientState.PROBING


def check_session(client: ClientConnection, backend: BackendConnection) -> None:
    """The client's transaction is over and its statements may have changed the session: ask
    the server what the session now holds before the backend serves anyone else."""
    sc = client.scanner
    flags = sc.dirty
    names = sc.names
    sc.dirty = 0
    sc.names = []
    opaque = bool(flags & SQL_OPAQUE)
    full = bool(flags & SQL_FULL)
    if full or opaque:
        # Anything may have changed: read back every setting the proxy knows of by name.
        names = list(dict.fromkeys([*ALWAYS_READ, *names, *client.extra_settings]))
    names = names[:MAX_READ]
    client.to(ClientState.PROBING)
    client.probe_flags = flags
    client.probe_names = names
    # Rows come in the session's client_encoding: other than UTF8, values travel as hex.
    client.probe_hex = client.params.get("client_encoding", "UTF8").upper() != "UTF8"
    client.probe_tries = 1
    client.probe_stmts = probe_statements(
        full=full,
        pins=bool(flags & (SQL_PINS | SQL_OPAQUE)) or client.pinned,
        names=names,
        # Opaque code may run DEALLOCATE too (EXECUTE in a DO block).
        statements=bool(flags & (SQL_DEALLOCATE | SQL_OPAQUE)) and sc.rename,
        hex_values=client.probe_hex,
        untimed=_untimed(client),
    )
    _send_own(client, backend, client.probe_stmts, partial(_session_checked, client))


def _untimed(client: ClientConnection) -> tuple[str, ...]:
    """The statements that turn the client's timeouts off for the proxy's (see _send_own)."""
    return UNTIMED_STATEMENTS if client.release_on_idle else UNTIMED_EXTENDED


def _send_own(
    client: ClientConnection, backend: BackendConnection, statements: list[str], done: InternalDone
) -> None:
    """Run the proxy's own statements on the linked server connection, between two of the
    client's transactions. In session mode the client's unnamed statement lives there and
    must outlive them (a driver may Parse it before the check and Bind it after), so they
    go in extended protocol; in transaction mode a simple Query, and the client's unnamed
    statement is given again before its next use (see _unnamed_ready)."""
    if client.release_on_idle:
        backend.run_own(["; ".join(statements)], done)
    else:
        backend.run_own(statements, done, batch=True)


def _session_checked(
    client: ClientConnection,
    backend: BackendConnection,
    errors: list[dict[str, str]],
    rows: list[list[str | None]],
) -> None:
    if client.state != ClientState.PROBING or client.backend is not backend:
        return
    flags = client.probe_flags
    asked = bool(flags & (SQL_DEALLOCATE | SQL_OPAQUE)) and client.scanner.rename
    if errors and errors[0].get("C") in _TIMED_OUT and client.probe_tries < _PROBE_TRIES:
        # Only the first statement of the check (two settings read) runs under the client's
        # own timeouts, and a failed try changed nothing: try again.
        client.probe_tries += 1
        _send_own(client, backend, client.probe_stmts, partial(_session_checked, client))
        return
    if errors:
        log.warning(
            "backend %s: session check failed: %s %s",
            backend.pid,
            errors[0].get("C", "?"),
            errors[0].get("M", "?"),
        )
        backend.close(DisconnectReason.RESET_FAILED)
        client.backend_released(None)
        return
    found = read_probe(rows, statements_asked=asked, hex_values=client.probe_hex)
    if found.statements is not None:
        _statements_found(client, backend, found.statements)
    if flags & SQL_OPAQUE or len(client.probe_names) >= MAX_READ:
        # Code the proxy cannot see into may have set what no probe can list (a custom
        # setting named only inside a function): no other client gets this session unreset.
        backend.taint_owner = client
    restore = _adopt_settings(client, backend, found, full=bool(flags & SQL_FULL))
    if _settings_over_limit(client, backend, client.extra_settings):
        return
    if found.pins is not None:
        pinned = found.pins > 0 and client.release_on_idle
        if pinned != client.pinned:
            client.pinned = pinned
            assert client.pool is not None
            client.pool.pinned += 1 if pinned else -1
    if restore:
        # The client reset settings it gave at startup: as PostgreSQL does, RESET returns
        # them to the startup values.
        client.probe_stmts = [*_untimed(client), set_sql(restore)]
        client.probe_tries = 1
        _send_own(client, backend, client.probe_stmts, partial(_settings_restored, client))
        return
    _session_known(client, backend)


def _statements_found(
    client: ClientConnection, backend: BackendConnection, names: frozenset[str]
) -> None:
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
    client: ClientConnection,
    backend: BackendConnection,
    errors: list[dict[str, str]],
    rows: list[list[str | None]],
) -> None:
    if client.state != ClientState.PROBING or client.backend is not backend:
        return
    if errors and errors[0].get("C") in _TIMED_OUT and client.probe_tries < _PROBE_TRIES:
        # Cancelled under the client's own timeouts before they were turned off: try again.
        client.probe_tries += 1
        _send_own(client, backend, client.probe_stmts, partial(_settings_restored, client))
        return
    if errors:
        backend.close(DisconnectReason.RESET_FAILED)
        client.backend_released(None)
        return
    _session_known(client, backend)


def _session_known(client: ClientConnection, backend: BackendConnection) -> None:
    client.settings_sig = None
    backend.applied_sig = compute_sig(client)
    if client.release_on_idle and not client.pinned:
        client.backend_released(backend)
    else:
        client.activate()


def _settings_over_limit(
    client: ClientConnection, backend: BackendConnection, settings: dict[str, str]
) -> bool:
    """Settings too big to keep and replay end the session; the server connection holding
    them is closed, never handed on. True when that happened."""
    err = settings_limit_error(settings, client.server.config.proxy.max_client_settings_bytes)
    if err is None:
        return False
    backend.close(DisconnectReason.MEMORY_LIMIT)
    client.backend = None
    client.fail(err, DisconnectReason.MEMORY_LIMIT)
    return True


def _adopt_settings(
    client: ClientConnection, backend: BackendConnection, found: SessionState, *, full: bool
) -> dict[str, str]:
    """Take the server's word for the client's settings; returns the startup settings the
    client has reset, to be given their startup values again."""
    tracked = client.server.tracked_lower
    bp = backend.params
    if full:
        # pg_settings lists every ordinary setting changed in the session; custom ones and
        # the role come from the reads by name below.
        extra = {k: v for k, v in found.settings.items() if k not in tracked}
    else:
        extra = dict(client.extra_settings)
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
        for k, v in client.startup_settings.items():
            if k in tracked:
                # A reported setting not changed in the session may still equal the startup
                # value (the server's default): the server's last ParameterStatus tells.
                if k not in found.settings and bp.get(tracked[k]) != v:
                    restore[k] = v
            elif k not in extra:
                restore[k] = v
                extra[k] = v
    client.extra_settings = extra
    for k in backend.extra_keys:
        if k not in extra:
            bp.pop(k, None)
    backend.extra_keys = set(extra)
    bp.update(extra)
    return restore


def settings_diff(
    client: ClientConnection, backend: BackendConnection, reset: str
) -> tuple[str, dict[str, str], list[str], dict[str, str]]:
    """Statements that make backend match what this client expects (after `reset`, when
    given, which returns the session to its defaults), plus the non-reported settings to
    record on the backend and those to forget once the server has accepted them."""
    bp = backend.params
    params = client.params
    extra = client.extra_settings
    if reset:
        values = {k: params[k] for k in client.server.tracked_params if k in params}
        set_extra = dict(extra)
        stale: list[str] = []
        parts = [reset]
    else:
        values = {
            k: params[k]
            for k in client.server.tracked_params
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
