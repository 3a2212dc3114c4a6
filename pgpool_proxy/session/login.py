"""The client's startup phase: SSL/GSS negotiation, StartupMessage, client rules, then
authentication (`session.authenticate`), admission, the pool and the welcome."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

from ..config import (
    REJECT,
    AuthType,
    DatabaseConfig,
    PoolMode,
    UserConfig,
    client_address,
    match_client_rule,
)
from ..counters import AUTH_CLIENT_RULES, AUTH_PASSWORD, AUTH_TLS_REQUIRED
from ..errors import DisconnectReason, ProxyError, SqlState, internal_error
from ..net.endpoint import EndpointClosed
from ..protocol import messages as m
from ..protocol.constants import (
    GSSENC_REQUEST_CODE,
    INT32,
    MAX_STARTUP_PACKET,
    SSL_REQUEST_CODE,
)
from . import canon
from .authenticate import Refusal, authenticate_user, is_tls, send
from .client import ClientConnection
from .client_state import ClientState
from .stepped import LoginTimeout, Stepper, external, more_bytes

if TYPE_CHECKING:
    from ..config import UserConfig
    from ..pool.pool import Pool

log = logging.getLogger("pgpool_proxy.login")

# Startup keys that are not settings.
_NOT_SETTINGS = frozenset({"user", "database", "options", "replication"})

_MAX_WELCOME_CACHE = 1000

# PostgreSQL's identifiers (role and database names) are at most NAMEDATALEN - 1 bytes; a longer
# name can name nothing on the server, so it is refused before any work (and any log line) is
# spent on it.
MAX_NAME_BYTES = 63


async def read_startup_packet(client: ClientConnection) -> bytes:
    """The body of the untyped startup packet (after its length word)."""
    rb = client.rbuf
    while True:
        if rb.end - rb.start >= 4:
            length = INT32.unpack_from(rb.buf, rb.start)[0]
            if length < 8 or length > MAX_STARTUP_PACKET:
                raise ProxyError(SqlState.PROTOCOL_VIOLATION, "invalid length of startup packet")
            if rb.end - rb.start >= length:
                body = bytes(rb.buf[rb.start + 4 : rb.start + length])
                rb.consumed(rb.start + length)
                return body
            rb.ensure_capacity(length)
        await more_bytes(client)


def parse_options(options: str) -> dict[str, str]:
    """Settings from the startup `options` string (`-c name=value` and `--name=value`)."""
    words: list[str] = []
    cur: list[str] = []
    escape = False
    for ch in options:
        if escape:
            cur.append(ch)
            escape = False
        elif ch == "\\":
            escape = True
        elif ch.isspace():
            if cur:
                words.append("".join(cur))
                cur = []
        else:
            cur.append(ch)
    if cur:
        words.append("".join(cur))
    out: dict[str, str] = {}
    i = 0
    while i < len(words):
        w = words[i]
        item = None
        if w == "-c" and i + 1 < len(words):
            item = words[i + 1]
            i += 1
        elif w.startswith("-c") or w.startswith("--"):
            item = w[2:]
        else:
            raise ProxyError(
                SqlState.FEATURE_NOT_SUPPORTED,
                f"unsupported startup option {w!r}: only -c name=value settings are supported",
                severity="FATAL",
            )
        if "=" not in item:
            raise ProxyError(
                SqlState.PROTOCOL_VIOLATION, f"invalid startup option {item!r}: expected name=value"
            )
        k, v = item.split("=", 1)
        out[k.replace("-", "_")] = v
        i += 1
    return out


def start_login(client: ClientConnection, on_done: Callable[[], None] | None = None) -> None:
    """Start a new client's login (session.stepped: no Task; its own callbacks step it).
    `on_done` is called once the login has ended, whichever way."""

    def ended() -> None:
        client.login = None
        if on_done is not None:
            on_done()

    timeout = client.server.config.proxy.client_login_timeout_s
    client.login = Stepper(run_login(client), timeout, ended)
    client.login.start()


async def run_login(client: ClientConnection) -> None:
    """Drive one client from its first byte to ReadyForQuery; closes it on any failure."""
    server = client.server
    timeout = server.config.proxy.client_login_timeout_s
    try:
        cancel = await _login(client)
        if cancel is not None:
            _cancel(client, cancel)
    except EndpointClosed:
        client.close(DisconnectReason.CLIENT_EOF)
    except asyncio.CancelledError:
        # What the login waited on was cancelled (no Task runs it, so nothing cancels the login
        # itself): the proxy is closing, and closed the client already.
        client.close(DisconnectReason.SHUTDOWN)
    except LoginTimeout:
        # A pool is chosen once the client has authenticated: what ran out of time then was the
        # wait for the server (its first connection, a paused pool, the settings check), which
        # the client, and whoever reads its error, should not be told was its own fault.
        pool = client.pool
        message = (
            f"client did not complete login within {timeout:g}s (client_login_timeout_s)"
            if pool is None
            else f"login did not complete within {timeout:g}s (client_login_timeout_s): "
            f"still waiting for a server connection of pool {pool.name}"
        )
        client.fail(
            ProxyError(SqlState.PROTOCOL_VIOLATION, message), DisconnectReason.LOGIN_TIMEOUT
        )
    except ProxyError as exc:
        if client.close_reason is None:
            reason = (
                DisconnectReason.AUTH_FAILED
                if exc.sqlstate in (SqlState.INVALID_PASSWORD, SqlState.INVALID_AUTHORIZATION)
                else DisconnectReason.PROTOCOL_ERROR
                if exc.sqlstate == SqlState.PROTOCOL_VIOLATION
                else DisconnectReason.BACKEND_CONNECT_FAILED
            )
            reason = getattr(exc, "reason", None) or reason
            if reason == DisconnectReason.AUTH_FAILED:
                failures = server.counters.auth_failures
                why = getattr(exc, "auth_reason", None) or AUTH_PASSWORD
                failures[why] = failures.get(why, 0) + 1
            client.fail(exc, reason)
    except m.ProtocolViolation as exc:
        client.fail(
            ProxyError(SqlState.PROTOCOL_VIOLATION, str(exc)), DisconnectReason.PROTOCOL_ERROR
        )
    except Exception:
        # A bug must not leave the client hanging in login with no timeout left to end it.
        client.fail(
            internal_error(
                log,
                "during login of %s",
                client.addr,
                said="internal error in the proxy during login",
            ),
            DisconnectReason.INTERNAL_ERROR,
        )


async def _login(client: ClientConnection) -> m.CancelRequest | None:
    """Startup (TLS, cancel requests), authentication, admission, the pool, the welcome; a
    cancel request is returned for run_login to act on."""
    packet = await _startup(client)
    if packet is None:
        return None  # a peer's question, answered
    if isinstance(packet, m.CancelRequest):
        return packet
    params, user, database, auth_type = _check_startup(client, packet)
    user_cfg, looked_up = await authenticate_user(client, user, auth_type)
    db = _admit(client, database, params)
    if db is None:
        return None  # the admin console took over
    pool, server_params = await _join_pool(client, db, user_cfg, params, looked_up)
    _welcome(client, pool, server_params)
    return None


async def _startup(client: ClientConnection) -> m.StartupMessage | m.CancelRequest | None:
    """The startup packet or a cancel request, after any TLS negotiation; None when it was a
    peer's question (answered here)."""
    server = client.server
    # Each request is answered at most once, and a GSSENCRequest not after TLS was set up, as
    # PostgreSQL's ProcessStartupPacket does (a client may ask in either order): any other is
    # refused as the unknown protocol version its code is.
    ssl_done = gss_done = False
    while True:
        packet = m.parse_startup_packet(await read_startup_packet(client))
        if isinstance(packet, m.SSLRequest | m.GSSENCRequest):
            ssl = isinstance(packet, m.SSLRequest)
            if ssl_done if ssl else gss_done:
                code = SSL_REQUEST_CODE if ssl else GSSENC_REQUEST_CODE
                raise Refusal(
                    SqlState.FEATURE_NOT_SUPPORTED,
                    f"unsupported frontend protocol {code >> 16}.{code & 0xFFFF}: "
                    "server supports 3.0 to 3.0",
                    DisconnectReason.UNSUPPORTED,
                )
            if ssl:
                ssl_done = True
            else:
                gss_done = True
            # Bytes pipelined behind the request were sent before our answer, so they were not
            # encrypted whatever we answer: refuse them (CVE-2021-23214 / CVE-2021-3935 class).
            if client.rbuf.pending():
                raise ProxyError(
                    SqlState.PROTOCOL_VIOLATION,
                    "received unencrypted data after SSL/GSS request",
                )
            tls = server.services.client_tls
            # Like PostgreSQL, no TLS over a Unix socket: the peer is on this host.
            if ssl and tls is not None and not is_unix(client):
                gss_done = True
                send(client, b"S")
                await _start_tls(client, tls)
                continue
            send(client, b"N")  # GSS encryption is not offered; TLS may be disabled
            continue
        if isinstance(packet, m.CancelRequest):
            return packet
        if isinstance(packet, m.PeerIdRequest):
            # A peer that found this instance in DNS asks which keys are ours (runtime.peers);
            # counted with cancel requests, the other connections peers open.
            send(client, m.peer_id_reply(server.peer_id))
            client.close(DisconnectReason.CANCEL_REQUEST)
            return None
        return packet


def _cancel(client: ClientConnection, packet: m.CancelRequest) -> None:
    """Act on a CancelRequest, then close its connection once the cancel has landed, as
    PostgreSQL's postmaster does: drivers (asyncpg) wait for that close before their next
    query, which an early close would let the cancel hit. The wait is bounded by
    cancel_wait_timeout_s alone (not the login timeout: PostgreSQL never writes on a cancel
    connection, and the login timeout's error would)."""
    server = client.server

    def landed() -> None:
        bound.cancel()
        client.close(DisconnectReason.CANCEL_REQUEST)

    bound = asyncio.get_running_loop().call_later(server.config.proxy.cancel_wait_timeout_s, landed)
    server.cancel_request(packet.pid, packet.secret, relayed=client.peer_channel, done=landed)


def _check_startup(
    client: ClientConnection, packet: m.StartupMessage
) -> tuple[dict[str, str], str, str, AuthType]:
    """What the startup packet asks for, refused early when the proxy cannot serve it:
    (parameters, user, database, how the client must authenticate)."""
    server = client.server
    config = server.config
    if client.peer_channel:
        raise Refusal(
            SqlState.PROTOCOL_VIOLATION,
            "the worker relay socket accepts cancel requests only",
            DisconnectReason.UNSUPPORTED,
        )
    major, minor = packet.protocol >> 16, packet.protocol & 0xFFFF
    if major != 3:
        raise Refusal(
            SqlState.FEATURE_NOT_SUPPORTED,
            f"unsupported frontend protocol {major}.{minor}: server supports 3.0 to 3.0",
            DisconnectReason.UNSUPPORTED,
        )
    if server.services.tls_required and not is_tls(client) and not is_unix(client):
        raise Refusal(
            SqlState.INVALID_AUTHORIZATION,
            "SSL/TLS is required to connect to this proxy (client_tls.mode = require); "
            "connect with sslmode=require",
            DisconnectReason.AUTH_FAILED,
            AUTH_TLS_REQUIRED,
        )
    params = packet.params
    unsupported = [k for k in params if k.startswith("_pq_.")]
    if minor > 0 or unsupported:
        send(client, m.negotiate_protocol_version(0, unsupported))
    user = params.get("user", "")
    if not user:
        raise Refusal(
            SqlState.INVALID_AUTHORIZATION,
            "no PostgreSQL user name specified in startup packet",
            DisconnectReason.PROTOCOL_ERROR,
        )
    database = params.get("database") or user
    for what, name in (("user", user), ("database", database)):
        if len(name.encode()) > MAX_NAME_BYTES:
            raise Refusal(
                SqlState.NAME_TOO_LONG,
                f"{what} name in the startup packet is too long ({len(name.encode())} bytes; "
                f"at most {MAX_NAME_BYTES})",
                DisconnectReason.PROTOCOL_ERROR,
            )
    client.user, client.database = user, database
    if params.get("replication", "false").lower() not in ("false", "off", "0", "no"):
        raise Refusal(
            SqlState.FEATURE_NOT_SUPPORTED,
            "replication connections are not supported by the proxy",
            DisconnectReason.UNSUPPORTED,
        )
    if server.client_count > config.proxy.max_client_conn:
        raise Refusal(
            SqlState.TOO_MANY_CONNECTIONS,
            f"no more connections allowed (max_client_conn={config.proxy.max_client_conn})",
            DisconnectReason.TOO_MANY_CLIENTS,
        )
    return params, user, database, _client_rule_method(client, user, database)


def _client_rule_method(client: ClientConnection, user: str, database: str) -> AuthType:
    """How [[client_rules]] says this client authenticates (auth.type when no rule is
    configured); refused as PostgreSQL refuses by pg_hba.conf: 28000, its wording."""
    config = client.server.config
    rules = config.client_rules
    if not rules:
        return config.auth.type
    transport = client.transport
    peer = transport.get_extra_info("peername") if transport is not None else None
    # The kernel's peer address, never client text; a Unix-socket peer has no address.
    tcp = isinstance(peer, tuple)
    addr = client_address(peer[0]) if isinstance(peer, tuple) else None
    rule = None if tcp and addr is None else match_client_rule(rules, addr, user, database)
    if rule is not None and rule.method != REJECT:
        return AuthType(rule.method) if rule.method else config.auth.type
    host = addr.compressed if addr is not None else "[local]"
    encryption = "SSL encryption" if is_tls(client) else "no encryption"
    what = "no pg_hba.conf entry" if rule is None else "pg_hba.conf rejects connection"
    log.info(
        "client refused by client_rules: %s user=%s db=%s (%s)",
        client.addr,
        user,
        database,
        f"rule address={rule.address}" if rule is not None else "no rule matched",
        extra={"event": "client_rules_refused", "addr": client.addr},
    )
    raise Refusal(
        SqlState.INVALID_AUTHORIZATION,
        f'{what} for host "{host}", user "{user}", database "{database}", {encryption}',
        DisconnectReason.AUTH_FAILED,
        AUTH_CLIENT_RULES,
    )


def _admit(
    client: ClientConnection, database: str, params: dict[str, str]
) -> DatabaseConfig | None:
    """The database the client may use now; None when the admin console took it over."""
    server = client.server
    config = server.config
    db = config.database(database)
    if server.draining:
        raise Refusal(
            SqlState.CANNOT_CONNECT_NOW,
            "the proxy is shutting down",
            DisconnectReason.SHUTDOWN,
        )
    if database == config.admin.database:
        # The virtual admin database: the console takes over (it refuses non-admin users).
        server.open_console(client, params)
        return None
    if db is None:
        raise Refusal(
            SqlState.INVALID_CATALOG_NAME,
            f'database "{database}" does not exist',
            DisconnectReason.UNKNOWN_DATABASE,
        )
    return db


async def _join_pool(
    client: ClientConnection,
    db: DatabaseConfig,
    user_cfg: UserConfig | None,
    params: dict[str, str],
    looked_up: str | None = None,
) -> tuple[Pool, dict[str, str]]:
    """The client's pool, mode and settings (in the server's spelling); the server's own
    reported settings."""
    server = client.server
    config = server.config
    settings: dict[str, str] = {}
    if "options" in params:
        settings.update(parse_options(params["options"]))
    for k, v in params.items():
        if k not in _NOT_SETTINGS and not k.startswith("_pq_."):
            settings[k] = v
    pool = server.get_pool(db, user_cfg, client.user, looked_up)
    client.pool = pool
    # Per client, not per pool: users sharing a forced server user may differ in mode.
    client.release_on_idle = config.pool_mode_for(db, user_cfg) == PoolMode.TRANSACTION
    client.scanner.rename = client.release_on_idle and pool.spec.max_prepared_statements > 0
    # Without renaming, a named statement may run in a later transaction than its Parse (where
    # it was judged): each Bind of one is judged unseen.
    client.scanner.opaque_binds = client.release_on_idle and not client.scanner.rename
    server_params = await pool.ensure_server_params()
    if not client.is_open():
        raise EndpointClosed
    if settings:
        # The server's spelling of each value (what a direct login reports), and its refusal
        # of an invalid one, as PostgreSQL refuses it: at login.
        settings = await canon.canonical(pool, settings, server_params)
        if not client.is_open():
            raise EndpointClosed
    tracked = server.tracked_lower
    client.params = {k: server_params[k] for k in server.tracked_params if k in server_params}
    for k, v in settings.items():
        canonical = tracked.get(k.lower())
        if canonical is not None:
            client.params[canonical] = v
            client.startup_settings[canonical.lower()] = v
        else:
            # GUC names are case-insensitive; the server reports them in lower case.
            client.extra_settings[k.lower()] = v
            client.startup_settings[k.lower()] = v
    return pool, server_params


def _welcome(client: ClientConnection, pool: Pool, server_params: dict[str, str]) -> None:
    """AuthenticationOk through ReadyForQuery; from here on the hot path reads."""
    server = client.server
    user, database = client.user, client.database
    client.key_pid, client.key_secret = server.register_cancel_key(client)
    send(
        client,
        b"".join(
            (
                _AUTH_OK,
                _parameter_statuses(pool, client, server_params),
                m.backend_key_data(client.key_pid, client.key_secret),
                _READY,
            )
        ),
    )
    # Counted with the state change: a client closed while still in LOGIN is not uncounted
    # (server.client_closed), so one that failed above must not have been counted.
    pool.clients += 1
    client.to(ClientState.IDLE)
    # Reading may have stopped while login held a full buffer; from now on the hot path reads.
    client.resume_reading()
    server.counters.logins += 1
    mode = "transaction" if client.release_on_idle else "session"
    log.info(
        "client login: %s user=%s db=%s mode=%s",
        client.addr,
        user,
        database,
        mode,
        extra={
            "event": "client_connect",
            "addr": client.addr,
            "user": user,
            "db": database,
            "mode": mode,
        },
    )
    if client.rbuf.pending():
        client.buffer_updated(0)
    else:
        client.rbuf.drop()  # idle until its first query: no buffer held meanwhile


_AUTH_OK = m.auth_ok()
_READY = m.ready_for_query()


def _parameter_statuses(
    pool: Pool, client: ClientConnection, server_params: dict[str, str]
) -> bytes:
    """The ParameterStatus block a client sees at login, built once per distinct settings."""
    sig = client.settings_sig or client.compute_sig()
    cache = pool.welcome_cache
    block = cache.get(sig)
    if block is None:
        shown = dict(server_params)
        shown.update(client.params)
        block = b"".join(m.parameter_status(k, v) for k, v in shown.items())
        if len(cache) >= _MAX_WELCOME_CACHE:
            cache.clear()
        cache[sig] = block
    return block


def is_unix(client: ClientConnection) -> bool:
    """A client of the Unix-socket listener (its peer has no address)."""
    t = client.transport
    return t is not None and not isinstance(t.get_extra_info("peername"), tuple)


async def _start_tls(client: ClientConnection, context: ssl.SSLContext) -> None:
    """Upgrade the client to TLS in place; on failure the client is closed (no ErrorResponse
    can be sent on a connection whose handshake failed)."""
    transport = client.transport
    if transport is None:
        raise EndpointClosed
    try:
        upgraded = await external(
            asyncio.get_running_loop().start_tls(
                transport,
                # The listener made it: a ClientProtocol, so an asyncio.BufferedProtocol.
                cast(asyncio.BufferedProtocol, client),
                context,
                server_side=True,
            )
        )
    except (OSError, ssl.SSLError) as exc:
        log.info("TLS handshake with %s failed: %s", client.addr, exc)
        client.close(DisconnectReason.PROTOCOL_ERROR)
        raise EndpointClosed from None
    if upgraded is None or client.is_closed():
        raise EndpointClosed
    # uvloop's transports do not subclass asyncio.Transport (see Endpoint.connection_made).
    client.transport = upgraded  # type: ignore[assignment]
    client.reading_paused = False  # the TLS transport starts out reading
