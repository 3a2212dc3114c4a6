"""Owns the proxy's TLS contexts: one facing clients, one for connections to PostgreSQL."""

from __future__ import annotations

import ssl

from ..config import ClientTlsMode, ClientTlsSettings, ServerTlsMode, ServerTlsSettings

_VERSIONS = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}


class TlsSetupError(Exception):
    """A certificate, key or CA bundle could not be loaded; the message names the key."""


def client_side_context(settings: ClientTlsSettings) -> ssl.SSLContext | None:
    """The context clients' TLS handshakes run with, or None when client TLS is disabled."""
    if settings.mode is ClientTlsMode.DISABLE:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = _VERSIONS[settings.min_version]
    try:
        ctx.load_cert_chain(settings.cert_file, settings.key_file)
    except (OSError, ssl.SSLError) as exc:
        raise TlsSetupError(
            f"client_tls.cert_file/key_file: cannot load {settings.cert_file} with "
            f"{settings.key_file}: {_reason(exc)}"
        ) from None
    # PostgreSQL clients never renegotiate or need tickets shared across workers.
    ctx.options |= ssl.OP_NO_RENEGOTIATION | ssl.OP_NO_TICKET
    return ctx


def server_side_context(settings: ServerTlsSettings) -> ssl.SSLContext | None:
    """The context for connections to PostgreSQL, or None when server TLS is disabled."""
    mode = settings.mode
    if mode is ServerTlsMode.DISABLE:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = _VERSIONS[settings.min_version]
    if mode in (ServerTlsMode.VERIFY_CA, ServerTlsMode.VERIFY_FULL):
        try:
            ctx.load_verify_locations(cafile=settings.ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise TlsSetupError(
                f"server_tls.ca_file: cannot load {settings.ca_file}: {_reason(exc)}"
            ) from None
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.check_hostname = mode is ServerTlsMode.VERIFY_FULL
    else:
        # prefer/require encrypt without authenticating the server, as libpq does.
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)
