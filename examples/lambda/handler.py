"""An AWS Lambda handler that reaches PostgreSQL through pgpool-proxy with an IAM token.

The Python counterpart of the RDS Proxy + Node.js pattern: no database password in the
function; its execution role signs a short-lived token, sent as the password over TLS.

Environment:
  PROXY_HOST, PROXY_PORT   the proxy's advertised endpoint ([iam] endpoint)
  DB_USER, DB_NAME         database user (a [[users]] entry with iam = true) and database
  AWS_REGION               set by Lambda; the proxy's [iam] region
  PROXY_CA_FILE            CA bundle that signed the proxy's certificate (shipped with the code)
  CONNECT_TIMEOUT_S        optional, default 5

Package pgpool-proxy (for the token helper; it needs boto3/botocore, which Lambda provides) and
asyncpg with the function. The proxy's [[iam_rules]] must map this function's role ARN
(arn:aws:sts::ACCOUNT:assumed-role/ROLE/*) to DB_USER. README.md next to this file has the
deployment steps and iam-policy.json the execution role's policy.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import time
from typing import Any

import asyncpg

from pgpool_proxy.aws.token import generate_proxy_auth_token

_SSL = ssl.create_default_context(cafile=os.environ.get("PROXY_CA_FILE"))

# Tokens are valid for 900 s. A warm container reuses its token for 10 minutes: signing is
# local and cheap, but the proxy caches verification per token, so reusing it turns every
# invocation after the first into a cache hit instead of an STS round trip on the proxy.
_TOKEN_REUSE_S = 600.0
_cached_token: tuple[float, str] | None = None


def _token(host: str, port: int, user: str, region: str) -> str:
    global _cached_token
    now = time.monotonic()
    if _cached_token is None or now - _cached_token[0] > _TOKEN_REUSE_S:
        _cached_token = (now, generate_proxy_auth_token(host, port, user, region))
    return _cached_token[1]


async def _query(event: dict[str, Any]) -> list[dict[str, Any]]:
    host, port = os.environ["PROXY_HOST"], int(os.environ.get("PROXY_PORT", "6432"))
    user = os.environ["DB_USER"]
    token = _token(host, port, user, os.environ["AWS_REGION"])
    conn = await asyncpg.connect(
        host=host,
        port=port,
        user=user,
        database=os.environ.get("DB_NAME", user),
        password=token,
        ssl=_SSL,  # required: the proxy refuses IAM tokens over plaintext
        # The proxy carries prepared statements across transactions, so asyncpg's cache works.
        # Fail well inside the function's own timeout when the proxy is unreachable.
        timeout=float(os.environ.get("CONNECT_TIMEOUT_S", "5")),
    )
    try:
        rows = await conn.fetch("select now() as now, current_user as user")
        return [dict(r) for r in rows]
    finally:
        await conn.close()


def lambda_handler(event: dict[str, Any], context: object) -> dict[str, Any]:
    rows = asyncio.run(_query(event))
    return {"statusCode": 200, "body": [{k: str(v) for k, v in r.items()} for r in rows]}
