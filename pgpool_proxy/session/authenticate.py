"""Owns a client's authentication: the md5, SCRAM-SHA-256 and IAM exchanges, auth_query's
stored passwords for users not in [[users]], and the refusal every failed step raises.

`session.login` runs the startup phase around it (TLS, the startup packet, client rules before,
admission and the pool after).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ..auth import entropy
from ..auth.iam import IamError
from ..auth.md5 import is_md5_hash, verify_md5_response
from ..auth.scram import MECHANISM, ScramError
from ..auth.scram_server import ScramServer
from ..config import AuthType, UserConfig
from ..counters import (
    AUTH_IAM,
    AUTH_PASSWORD,
    AUTH_PROTOCOL,
    AUTH_TLS_REQUIRED,
    AUTH_UNKNOWN_USER,
)
from ..errors import DisconnectReason, ProxyError, SqlState
from ..net.endpoint import EndpointClosed
from ..protocol import messages as m
from ..protocol.constants import AUTH_CLEARTEXT, F_PASSWORD, INT32
from .client import ClientConnection
from .stepped import external, read_message

if TYPE_CHECKING:
    from .host import LookupKey

log = logging.getLogger("pgpool_proxy.login")

# Largest password/SASL message accepted from a client (IAM tokens later need several KB).
MAX_AUTH_MESSAGE = 16 * 1024


def send(client: ClientConnection, data: bytes) -> None:
    transport = client.transport
    # The client left, or the proxy closed it (a drain, a KILL), while the login waited: a
    # closed client may keep a half-closed transport while it lingers (close_transport), and
    # writing there raises.
    if transport is None or client.is_closed():
        raise EndpointClosed
    transport.write(data)


async def read_password_message(client: ClientConnection) -> bytes:
    t, body = await read_message(client, MAX_AUTH_MESSAGE, "authentication")
    if t != F_PASSWORD:
        raise ProxyError(
            SqlState.PROTOCOL_VIOLATION, f"expected password response, got message type {chr(t)!r}"
        )
    return body


class Refusal(ProxyError):
    """A login refused with an ErrorResponse, and why the client was disconnected."""

    def __init__(
        self,
        sqlstate: str,
        message: str,
        reason: DisconnectReason,
        auth_reason: str | None = None,
    ) -> None:
        super().__init__(sqlstate, message)
        self.reason = reason
        # For AUTH_FAILED: which counters.AUTH_* refusal this is (the metrics label).
        self.auth_reason = auth_reason


def auth_failed(user: str, why: str = AUTH_PASSWORD) -> Refusal:
    return Refusal(
        SqlState.INVALID_PASSWORD,
        f'password authentication failed for user "{user}"',
        DisconnectReason.AUTH_FAILED,
        why,
    )


def is_tls(client: ClientConnection) -> bool:
    t = client.transport
    return t is not None and t.get_extra_info("ssl_object") is not None


async def authenticate_user(
    client: ClientConnection, user: str, auth_type: AuthType
) -> tuple[UserConfig | None, str | None]:
    """Authenticate `user` by `auth_type` (auth.type, or a client rule's method): its
    configuration as in force after (a reload may have happened while the client answered), and
    for a user not in [[users]] the stored password auth_query found for it."""
    server = client.server
    config = server.config
    user_cfg = config.user(user)
    looked_up: str | None = None
    key: LookupKey | None = None
    if (
        user_cfg is None
        and auth_type is not AuthType.TRUST
        and client.database != config.admin.database
    ):
        # A database the proxy does not have is still looked up where auth_dbname says, so a
        # user with the right password hears 3D000 after authenticating, as PostgreSQL says it,
        # not a 28P01 that sends them to check the password.
        key = server.auth_lookups.key_for(config.database(client.database), user)
        if key is not None:
            # Unknown names are looked up too (and refused after the same exchange as a wrong
            # password), so the answer and its timing say nothing about who exists.
            looked_up = await server.auth_lookups.secret(key)
            if not client.is_open():
                raise EndpointClosed
    await _authenticate(client, user, user_cfg, auth_type, looked_up, key)
    # Authentication waited for the client: a reload may have happened meanwhile. Go on with
    # the configuration in force now, and refuse a user it no longer has.
    config = server.config
    if user_cfg is not None:
        user_cfg = config.user(user)
        if user_cfg is None:
            raise Refusal(
                SqlState.INVALID_AUTHORIZATION,
                f'no such user: "{user}" was removed from the proxy configuration',
                DisconnectReason.AUTH_FAILED,
                AUTH_UNKNOWN_USER,
            )
    return user_cfg, looked_up


_AUTH_CLEARTEXT = b"R" + INT32.pack(8) + INT32.pack(AUTH_CLEARTEXT)


async def _authenticate_iam(client: ClientConnection, user: str) -> None:
    """The client's password is an IAM token: local checks, then the configured verifier."""
    iam = client.server.services.iam
    if not is_tls(client):
        raise Refusal(
            SqlState.INVALID_AUTHORIZATION,
            f'IAM authentication for user "{user}" requires an SSL connection (sslmode=require)',
            DisconnectReason.AUTH_FAILED,
            AUTH_TLS_REQUIRED,
        )
    send(client, _AUTH_CLEARTEXT)
    token = m.parse_password(await read_password_message(client))
    if iam is None:  # the config loader makes this unreachable
        raise auth_failed(user, AUTH_IAM)
    try:
        # A Task of its own: the STS or Lambda call under it keeps its timeouts.
        identity = await external(iam.authenticate(token, user, client.database))
    except IamError as exc:
        log.info("IAM login refused: %s user=%s: %s", client.addr, user, exc.message)
        raise Refusal(
            exc.sqlstate,
            f'IAM authentication failed for user "{user}": {exc.message}',
            DisconnectReason.AUTH_FAILED,
            AUTH_IAM,
        ) from None
    log.info("IAM login: %s user=%s principal=%s", client.addr, user, identity.principal)


async def _authenticate(
    client: ClientConnection,
    user: str,
    user_cfg: UserConfig | None,
    auth_type: AuthType,
    looked_up: str | None = None,
    lookup_key: LookupKey | None = None,
) -> None:
    server = client.server
    if user_cfg is not None and user_cfg.iam:
        await _authenticate_iam(client, user)
        return
    if auth_type == AuthType.TRUST:
        if user_cfg is None:
            raise Refusal(
                SqlState.INVALID_AUTHORIZATION,
                f'no such user: "{user}" is not configured in the proxy',
                DisconnectReason.AUTH_FAILED,
                AUTH_UNKNOWN_USER,
            )
        return
    secret = user_cfg.password if user_cfg is not None else looked_up
    # The config loader guarantees each stored secret suits auth.type (no md5 hash under SCRAM,
    # no SCRAM verifier under md5), so there is no silent downgrade here. What auth_query finds
    # is checked as PostgreSQL checks it: an md5 hash cannot answer SCRAM (refused like an
    # unknown user), and under md5 a SCRAM verifier runs SCRAM. Under md5 a name with nothing
    # stored also runs SCRAM (against a mock verifier), as PostgreSQL does with its default
    # password_encryption: an unknown name looks like the usual (SCRAM-stored) role. A client
    # rule naming the other method than auth.type meets [[users]] secrets the same way.
    if auth_type == AuthType.SCRAM_SHA_256 and secret is not None and is_md5_hash(secret):
        secret = None
    refused = AUTH_PASSWORD if secret is not None else AUTH_UNKNOWN_USER
    md5_exchange = auth_type == AuthType.MD5 and (
        (secret is None and lookup_key is None)
        or (secret is not None and not secret.startswith("SCRAM-SHA-256$"))
    )
    if md5_exchange:
        salt = entropy.token_bytes(4)
        send(client, m.auth_md5(salt))
        response = m.parse_password(await read_password_message(client))
        if secret is None or not verify_md5_response(response, secret, user, salt):
            _refresh(client, lookup_key)
            raise auth_failed(user, refused)
        return
    # Unknown users run the same exchange against a mock verifier, so probing reveals nothing.
    verifier = await server.scram_verifier(user, secret)
    scram = ScramServer(verifier)
    send(client, m.auth_sasl([MECHANISM]))
    mechanism, first = m.parse_sasl_initial_response(await read_password_message(client))
    if mechanism != MECHANISM:
        raise Refusal(
            SqlState.PROTOCOL_VIOLATION,
            f"client selected an invalid SASL authentication mechanism ({mechanism})",
            DisconnectReason.AUTH_FAILED,
            AUTH_PROTOCOL,
        )
    try:
        send(client, m.auth_sasl_continue(scram.handle_client_first(first)))
        final = await read_password_message(client)
        server_final = scram.handle_client_final(final)
    except ScramError:
        _refresh(client, lookup_key)
        raise auth_failed(user, refused) from None
    if secret is None:
        raise auth_failed(user, refused)
    send(client, m.auth_sasl_final(server_final))
    server.remember_client_key(user, verifier, scram.client_key, looked_up)


def _refresh(client: ClientConnection, key: LookupKey | None) -> None:
    """A looked-up user failed to log in: maybe its password changed in PostgreSQL (looked
    again in the background, so the refusal is not slower than an unknown user's)."""
    if key is not None:
        client.server.auth_lookups.refresh_after_failure(key)
