"""Owns IAM token parsing and the local checks every token passes before any signature check.

Sans-IO. Two token shapes are understood:

- ``rds``: what ``generate_db_auth_token`` makes, ``host:port/?Action=connect&DBUser=...`` with
  a SigV4 query signature for service ``rds-db`` (checked by the keyring and passthrough
  verifiers);
- ``sts``: what ``pgpool-proxy token`` makes, a presigned ``sts:GetCallerIdentity`` request
  ``<sts-host>/?Action=GetCallerIdentity&Version=2011-06-15&...`` whose signed headers bind the
  database user and the proxy endpoint (``x-pgpool-dbuser``, ``x-pgpool-endpoint``), plus the
  same two values in clear (``DBUser``, ``Endpoint``) so a refusal can say what was wrong.

Messages name what was wrong but never contain the signature or the session token.
"""

from __future__ import annotations

import calendar
import fnmatch
import hashlib
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final, Literal, Protocol
from urllib.parse import parse_qsl

from ..errors import SqlState

ALGORITHM: Final = "AWS4-HMAC-SHA256"
MAX_EXPIRES_S: Final = 900
MAX_TOKEN_BYTES: Final = 12 * 1024
DBUSER_HEADER: Final = "x-pgpool-dbuser"
ENDPOINT_HEADER: Final = "x-pgpool-endpoint"
STS_SIGNED_HEADERS: Final = f"host;{DBUSER_HEADER};{ENDPOINT_HEADER}"
STS_VERSION: Final = "2011-06-15"

_SIGV4_PARAMS: Final = frozenset(
    {
        "X-Amz-Algorithm",
        "X-Amz-Credential",
        "X-Amz-Date",
        "X-Amz-Expires",
        "X-Amz-SignedHeaders",
        "X-Amz-Security-Token",
        "X-Amz-Signature",
    }
)
_RDS_PARAMS: Final = _SIGV4_PARAMS | {"Action", "DBUser"}
_STS_SIGNED: Final = _SIGV4_PARAMS | {"Action", "Version"}
_STS_CLEAR: Final = frozenset({"DBUser", "Endpoint"})
_REQUIRED: Final = _SIGV4_PARAMS - {"X-Amz-Security-Token"}
_AKID_RE: Final = re.compile(r"[A-Z0-9]{16,128}")
_DATE_RE: Final = re.compile(r"[0-9]{8}T[0-9]{6}Z")
_SIG_RE: Final = re.compile(r"[0-9a-f]{64}")
_HOST_RE: Final = re.compile(r"[A-Za-z0-9.\-\[\]:]+")

TokenKind = Literal["rds", "sts"]


class IamError(Exception):
    """A refused IAM login: the SQLSTATE and a message safe to show the client."""

    def __init__(self, sqlstate: str, message: str) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.message = message


def _bad(message: str) -> IamError:
    return IamError(SqlState.INVALID_PASSWORD, message)


@dataclass(frozen=True, slots=True)
class TokenClaims:
    """What a token says about itself; nothing here is trusted until a verifier agrees."""

    kind: TokenKind
    host: str  # where the signed request goes: the proxy endpoint (rds) or the STS host (sts)
    signed_params: tuple[tuple[str, str], ...]  # the query that was signed (no signature)
    signature: str = field(repr=False)
    access_key_id: str
    scope_date: str
    region: str
    service: str
    amz_date: str
    signed_at: float  # epoch seconds
    expires_s: int
    db_user: str
    endpoint: str  # the proxy "host:port" the token was made for
    has_session_token: bool

    @property
    def expires_at(self) -> float:
        return self.signed_at + self.expires_s


@dataclass(frozen=True, slots=True)
class IamIdentity:
    """Who a verified token belongs to: an ARN (sts) or an access key id (keyring, passthrough)."""

    principal: str
    expires_at: float


class TokenVerifier(Protocol):
    """Checks a token's signature (and who may use it); raises IamError to refuse."""

    token_kind: TokenKind
    name: str

    async def verify(self, claims: TokenClaims, token: str, database: str) -> IamIdentity: ...


def token_hash(token: str) -> str:
    """The cache key of a token: never the token itself."""
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def parse_token(token: str) -> TokenClaims:
    """Parse either token shape, checking format and the parameter whitelist."""
    host, pairs, params = _query_of(token)
    kind, clear = _kind_of(params)
    signature, scope, amz_date, signed_at, expires_s = _sigv4_fields(params)
    endpoint = _endpoint_of(kind, params, host)
    signed = tuple((k, v) for k, v in pairs if k != "X-Amz-Signature" and k not in clear)
    return TokenClaims(
        kind=kind,
        host=host,
        signed_params=signed,
        signature=signature,
        access_key_id=scope[0],
        scope_date=scope[1],
        region=scope[2],
        service=scope[3],
        amz_date=amz_date,
        signed_at=signed_at,
        expires_s=expires_s,
        db_user=params["DBUser"],
        endpoint=endpoint,
        has_session_token="X-Amz-Security-Token" in params,
    )


def _query_of(token: str) -> tuple[str, list[tuple[str, str]], dict[str, str]]:
    """(host, query pairs in order, the same as a dict) of a token, each name at most once."""
    if len(token) > MAX_TOKEN_BYTES:
        raise _bad(f"IAM token is longer than {MAX_TOKEN_BYTES} bytes")
    if token.startswith(("https://", "http://")):
        token = token.split("://", 1)[1]
    host, sep, rest = token.partition("/")
    if not sep or not rest.startswith("?") or not host or not _HOST_RE.fullmatch(host):
        raise _bad("malformed IAM token: expected host:port/?Action=...")
    if "#" in rest:
        raise _bad("malformed IAM token: unexpected fragment")
    try:
        pairs = parse_qsl(rest[1:], keep_blank_values=True, strict_parsing=True)
    except ValueError:
        raise _bad("malformed IAM token: invalid query string") from None
    params: dict[str, str] = {}
    for k, v in pairs:
        if k in params:
            raise _bad(f"malformed IAM token: parameter {k} appears twice")
        params[k] = v
    return host, pairs, params


def _kind_of(params: dict[str, str]) -> tuple[TokenKind, frozenset[str]]:
    """(token shape, the parameters sent in clear) by Action, with the whitelist checked."""
    action = params.get("Action")
    if action == "connect":
        kind: TokenKind = "rds"
        allowed, clear = _RDS_PARAMS, frozenset[str]()
    elif action == "GetCallerIdentity":
        kind = "sts"
        allowed, clear = _STS_SIGNED | _STS_CLEAR, _STS_CLEAR
    else:
        raise _bad("malformed IAM token: Action must be connect or GetCallerIdentity")
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise _bad(f"malformed IAM token: unexpected parameter {unknown[0]}")
    missing = sorted(
        (_REQUIRED | {"DBUser"} | ({"Endpoint", "Version"} if kind == "sts" else set()))
        - set(params)
    )
    if missing:
        raise _bad(f"malformed IAM token: missing parameter {missing[0]}")
    return kind, clear


def _sigv4_fields(params: dict[str, str]) -> tuple[str, list[str], str, float, int]:
    """(signature, credential scope parts, X-Amz-Date, its epoch seconds, X-Amz-Expires),
    each checked for form."""
    signature = params["X-Amz-Signature"]
    if not _SIG_RE.fullmatch(signature):
        raise _bad("malformed IAM token: X-Amz-Signature is not a SigV4 signature")
    if params["X-Amz-Algorithm"] != ALGORITHM:
        raise _bad(f"unsupported IAM token algorithm (expected {ALGORITHM})")
    scope = params["X-Amz-Credential"].split("/")
    if len(scope) != 5 or scope[4] != "aws4_request" or not _AKID_RE.fullmatch(scope[0]):
        raise _bad("malformed IAM token: bad X-Amz-Credential scope")
    amz_date = params["X-Amz-Date"]
    if not _DATE_RE.fullmatch(amz_date):
        raise _bad("malformed IAM token: bad X-Amz-Date")
    try:
        signed_at = float(calendar.timegm(time.strptime(amz_date, "%Y%m%dT%H%M%SZ")))
    except ValueError:
        raise _bad("malformed IAM token: bad X-Amz-Date") from None
    expires = params["X-Amz-Expires"]
    # isdigit() alone admits "²", which int() refuses, and int() refuses over 4300 digits.
    if not (expires.isascii() and expires.isdigit() and len(expires) <= 4) or not (
        1 <= int(expires) <= MAX_EXPIRES_S
    ):
        raise _bad(f"IAM token X-Amz-Expires must be 1..{MAX_EXPIRES_S} seconds")
    return signature, scope, amz_date, signed_at, int(expires)


def _endpoint_of(kind: TokenKind, params: dict[str, str], host: str) -> str:
    """The proxy endpoint the token was made for, once the signed headers are the right ones."""
    if kind == "sts":
        if params["Version"] != STS_VERSION:
            raise _bad(f"malformed IAM token: STS Version must be {STS_VERSION}")
        if params["X-Amz-SignedHeaders"] != STS_SIGNED_HEADERS:
            raise _bad(f"IAM token must sign exactly the headers {STS_SIGNED_HEADERS}")
        return params["Endpoint"]
    if params["X-Amz-SignedHeaders"] != "host":
        raise _bad("IAM token must sign exactly the host header")
    return host


def _norm_endpoint(endpoint: str) -> str:
    return endpoint.lower().rstrip(".")


def precheck(
    claims: TokenClaims,
    *,
    kind: TokenKind,
    user: str,
    endpoint: str,
    region: str,
    max_skew_s: float,
    now: float,
) -> None:
    """The local checks: shape for this verifier, user, audience, region, age and expiry."""
    if claims.kind != kind:
        if kind == "sts":
            raise _bad(
                "this proxy expects a token from `pgpool-proxy token` (a presigned "
                "sts:GetCallerIdentity request), not an RDS auth token"
            )
        raise _bad("this proxy expects an RDS auth token (generate_db_auth_token)")
    service = "sts" if kind == "sts" else "rds-db"
    if claims.service != service:
        raise _bad(f'IAM token is signed for service "{claims.service}", expected "{service}"')
    if claims.scope_date != claims.amz_date[:8]:
        raise _bad("IAM token credential scope date does not match X-Amz-Date")
    if claims.db_user != user:
        raise _bad(f'IAM token is for user "{claims.db_user}", not "{user}"')
    if _norm_endpoint(claims.endpoint) != _norm_endpoint(endpoint):
        raise _bad(f'IAM token was made for "{claims.endpoint}", not for this proxy ("{endpoint}")')
    if claims.region != region:
        raise _bad(f'IAM token is signed for region "{claims.region}", expected "{region}"')
    if claims.signed_at > now + max_skew_s:
        raise _bad("IAM token is dated in the future (check the client's clock)")
    if now > claims.expires_at + max_skew_s:
        ago = int(now - claims.expires_at)
        raise _bad(f"IAM token expired {ago} s ago; generate a new one")


def rule_allows(rules: Iterable[tuple[str, tuple[str, ...]]], arn: str, user: str) -> bool:
    """Whether some (ARN glob, users) rule lets `arn` log in as `user` ("*" = any user)."""
    for pattern, users in rules:
        if fnmatch.fnmatchcase(arn, pattern) and ("*" in users or user in users):
            return True
    return False
