"""Owns the client side of IAM login: the token a client sends to the proxy as its password."""

from __future__ import annotations

from typing import Any

from .sigv4 import make_rds_token, make_sts_token


class TokenError(Exception):
    """No AWS credentials could be found to sign a token."""


def generate_proxy_auth_token(
    host: str,
    port: int,
    user: str,
    region: str,
    *,
    session: Any = None,
    sts_endpoint: str | None = None,
    kind: str = "sts",
) -> str:
    """A token to use as the password for `user` at the proxy `host:port`.

    `kind="sts"` (the proxy's default verifier) presigns sts:GetCallerIdentity; `kind="rds"`
    makes a standard RDS auth token (keyring and passthrough verifiers). Credentials come from
    `session` (a boto3 Session) or boto3's default chain: environment, profile, ECS/Lambda role.
    """
    if session is None:
        import boto3

        session = boto3.session.Session()
    creds = session.get_credentials()
    if creds is None:
        raise TokenError("no AWS credentials found (environment, profile or instance role)")
    frozen = creds.get_frozen_credentials()
    from botocore.credentials import Credentials

    credentials = Credentials(frozen.access_key, frozen.secret_key, frozen.token)
    if kind == "rds":
        return make_rds_token(
            host=host, port=port, user=user, region=region, credentials=credentials
        )
    return make_sts_token(
        host=host,
        port=port,
        user=user,
        region=region,
        credentials=credentials,
        sts_url=sts_endpoint,
    )
