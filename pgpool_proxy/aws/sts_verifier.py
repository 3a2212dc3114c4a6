"""Owns the `sts` IAM verifier: replays a presigned GetCallerIdentity to an allow-listed STS."""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from urllib.parse import quote, urlencode, urlsplit

from ..auth.iam import (
    DBUSER_HEADER,
    ENDPOINT_HEADER,
    IamError,
    IamIdentity,
    TokenClaims,
    TokenKind,
    rule_allows,
)
from ..config import IamRule
from ..errors import SqlState

log = logging.getLogger("pgpool_proxy.iam")

MAX_RESPONSE = 64 * 1024

# STS error codes and what they mean for the person holding the token.
_STS_ERRORS = {
    "SignatureDoesNotMatch": "signature does not match (the token was altered, or made for "
    "another user or endpoint)",
    "IncompleteSignature": "signature is incomplete",
    "InvalidClientTokenId": "the access key in the token is not valid",
    "ExpiredToken": "the AWS session credentials that signed the token have expired",
    "AccessDenied": "the request was denied by STS",
    "RequestExpired": "the token has expired",
}


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None  # a redirect becomes an HTTPError: never follow one off the allow-list


_OPENER = urllib.request.build_opener(_NoRedirect)


class StsVerifier:
    """Signature check by STS itself; the returned ARN is mapped to users by [[iam_rules]]."""

    token_kind: TokenKind = "sts"
    name = "sts"

    def __init__(self, endpoints: tuple[str, ...], rules: tuple[IamRule, ...], timeout_s: float):
        # netloc -> base URL; the token's host picks one, the scheme always comes from config.
        self.endpoints = {urlsplit(url).netloc.lower(): url for url in endpoints}
        self.rules = [(r.arn, r.users) for r in rules]
        self.timeout_s = timeout_s
        self.calls = 0  # STS round trips made (the token cache keeps this low)

    async def verify(self, claims: TokenClaims, token: str, database: str) -> IamIdentity:
        base = self.endpoints.get(claims.host.lower())
        if base is None:
            raise IamError(
                SqlState.INVALID_PASSWORD,
                f'IAM token is signed for STS at "{claims.host}", which is not an allowed STS '
                "endpoint of this proxy (iam.sts_endpoints)",
            )
        query = urlencode(
            (*claims.signed_params, ("X-Amz-Signature", claims.signature)),
            quote_via=quote,
            safe="-_.~",
        )
        request = urllib.request.Request(
            f"{base}/?{query}",
            headers={
                DBUSER_HEADER: claims.db_user,
                ENDPOINT_HEADER: claims.endpoint,
                "Accept": "application/json",
            },
        )
        self.calls += 1
        status, body = await asyncio.to_thread(self._send, request)
        if status != 200:
            code = _error_code(body)
            reason = _STS_ERRORS.get(code, f"STS refused it ({code or status})")
            raise IamError(SqlState.INVALID_PASSWORD, f"IAM token rejected: {reason}")
        arn = _arn(body)
        if arn is None:
            log.warning("STS at %s answered 200 without an ARN", base)
            raise IamError(SqlState.INVALID_AUTHORIZATION, "could not verify the IAM token")
        if not rule_allows(self.rules, arn, claims.db_user):
            raise IamError(
                SqlState.INVALID_AUTHORIZATION,
                f'IAM principal {arn} is not allowed to log in as "{claims.db_user}" '
                "(no matching [[iam_rules]] entry)",
            )
        return IamIdentity(principal=arn, expires_at=claims.expires_at)

    def _send(self, request: urllib.request.Request) -> tuple[int, bytes]:
        try:
            with _OPENER.open(request, timeout=self.timeout_s) as resp:
                return int(resp.status), resp.read(MAX_RESPONSE)
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read(MAX_RESPONSE)
        except (OSError, ValueError) as exc:
            # The URL and its query hold a credential: log only where it went.
            log.warning("STS at %s unreachable: %s", request.host, getattr(exc, "reason", exc))
            raise IamError(
                SqlState.INVALID_AUTHORIZATION,
                "could not verify the IAM token: STS is unreachable from the proxy",
            ) from None


def _arn(body: bytes) -> str | None:
    text = body.strip()
    if text.startswith(b"{"):
        try:
            doc = json.loads(text)
            arn = doc["GetCallerIdentityResponse"]["GetCallerIdentityResult"]["Arn"]
        except (ValueError, KeyError, TypeError):
            return None
        return arn if isinstance(arn, str) and arn.startswith("arn:") else None
    found = _xml_field(text, "Arn")
    return found if found and found.startswith("arn:") else None


def _error_code(body: bytes) -> str:
    text = body.strip()
    if text.startswith(b"{"):
        try:
            code = json.loads(text)["Error"]["Code"]
            return str(code)
        except (ValueError, KeyError, TypeError):
            return ""
    return _xml_field(text, "Code") or ""


def _xml_field(text: bytes, name: str) -> str | None:
    if b"<!DOCTYPE" in text or b"<!ENTITY" in text:
        return None
    try:
        root = ET.fromstring(text)
    except ET.ParseError:
        return None
    for el in root.iter():
        if el.tag.rsplit("}", 1)[-1] == name and el.text:
            return el.text.strip()
    return None
