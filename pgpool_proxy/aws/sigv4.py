"""Owns SigV4 query signatures with botocore: recomputing a token's, and presigning new ones."""

from __future__ import annotations

import hmac
from urllib.parse import quote, urlencode

from botocore.auth import SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from ..auth.iam import (
    DBUSER_HEADER,
    ENDPOINT_HEADER,
    MAX_EXPIRES_S,
    STS_VERSION,
    TokenClaims,
)


def signature_matches(claims: TokenClaims, secret_access_key: str) -> bool:
    """Recompute the token's signature with botocore's SigV4 for `secret_access_key`."""
    query = urlencode(claims.signed_params, quote_via=quote, safe="-_.~")
    request = AWSRequest(method="GET", url=f"https://{claims.host}/?{query}")
    if claims.kind == "sts":
        request.headers[DBUSER_HEADER] = claims.db_user
        request.headers[ENDPOINT_HEADER] = claims.endpoint
    request.context["timestamp"] = claims.amz_date
    auth = SigV4QueryAuth(
        Credentials(claims.access_key_id, secret_access_key),
        claims.service,
        claims.region,
        expires=claims.expires_s,
    )
    canonical = auth.canonical_request(request)
    expected = auth.signature(auth.string_to_sign(request, canonical), request)
    return hmac.compare_digest(str(expected), claims.signature)


def make_sts_token(
    *,
    host: str,
    port: int,
    user: str,
    region: str,
    credentials: Credentials,
    sts_url: str | None = None,
    expires_s: int = MAX_EXPIRES_S,
) -> str:
    """A token for the proxy's `sts` verifier: a presigned sts:GetCallerIdentity request that
    binds `user` and the proxy endpoint `host:port` in signed headers."""
    base = (sts_url or f"https://sts.{region}.amazonaws.com").rstrip("/")
    endpoint = f"{host}:{port}"
    request = AWSRequest(
        method="GET",
        url=f"{base}/?Action=GetCallerIdentity&Version={STS_VERSION}",
        headers={DBUSER_HEADER: user, ENDPOINT_HEADER: endpoint},
    )
    SigV4QueryAuth(credentials, "sts", region, expires=expires_s).add_auth(request)
    url: str = request.url
    clear = urlencode({"DBUser": user, "Endpoint": endpoint}, quote_via=quote, safe="-_.~")
    return f"{url.split('://', 1)[1]}&{clear}"


def make_rds_token(
    *, host: str, port: int, user: str, region: str, credentials: Credentials
) -> str:
    """An RDS auth token, exactly as ``rds.generate_db_auth_token`` makes it."""
    request = AWSRequest(
        method="GET", url=f"https://{host}:{port}/?Action=connect&DBUser={quote(user, safe='')}"
    )
    SigV4QueryAuth(credentials, "rds-db", region, expires=MAX_EXPIRES_S).add_auth(request)
    url: str = request.url
    return url.split("://", 1)[1]
