"""IAM tokens without sockets: parsing, local checks, botocore signature recomputation, the
token cache and single-flight verification, and the fake STS's independent SigV4 check."""

from __future__ import annotations

import asyncio
import time
from urllib.parse import parse_qsl, urlsplit

import boto3
import pytest
from botocore.credentials import Credentials

from pgpool_proxy.auth.iam import (
    IamError,
    IamIdentity,
    TokenClaims,
    parse_token,
    precheck,
    rule_allows,
)
from pgpool_proxy.aws.iam_cache import IamAuthenticator
from pgpool_proxy.aws.sigv4 import make_rds_token, make_sts_token, signature_matches
from pgpool_proxy.config import IamSettings
from tests.support.fake_sts import sigv4_query_signature

AKID, SECRET = "AKIAEXAMPLEKEY000001", "example/secret+key"
CREDS = Credentials(AKID, SECRET)
ENDPOINT = "db-proxy.example.com:5432"
REGION = "us-east-1"


def sts_token(user: str = "alice", **kw: object) -> str:
    args: dict[str, object] = {
        "host": "db-proxy.example.com",
        "port": 5432,
        "user": user,
        "region": REGION,
        "credentials": CREDS,
    }
    args.update(kw)
    return make_sts_token(**args)  # type: ignore[arg-type]


def check(token: str, kind: str = "sts", user: str = "alice", now: float | None = None) -> None:
    precheck(
        parse_token(token),
        kind=kind,  # type: ignore[arg-type]
        user=user,
        endpoint=ENDPOINT,
        region=REGION,
        max_skew_s=60,
        now=time.time() if now is None else now,
    )


def test_sts_token_round_trip() -> None:
    token = sts_token()
    claims = parse_token(token)
    assert claims.kind == "sts" and claims.host == "sts.us-east-1.amazonaws.com"
    assert (claims.db_user, claims.endpoint, claims.service) == ("alice", ENDPOINT, "sts")
    assert "DBUser" not in dict(claims.signed_params)  # clear copies are not replayed
    check(token)
    assert signature_matches(claims, SECRET)
    assert not signature_matches(claims, SECRET + "x")


def test_rds_token_from_boto3_generate_db_auth_token() -> None:
    session = boto3.session.Session(
        aws_access_key_id=AKID, aws_secret_access_key=SECRET, region_name=REGION
    )
    token = session.client("rds").generate_db_auth_token("db-proxy.example.com", 5432, "a+b@c")
    ours = parse_token(
        make_rds_token(
            host="db-proxy.example.com", port=5432, user="a+b@c", region=REGION, credentials=CREDS
        )
    )
    claims = parse_token(token)
    assert claims.kind == "rds" and claims.db_user == "a+b@c"
    check(token, kind="rds", user="a+b@c")
    assert signature_matches(claims, SECRET)
    assert [k for k, _ in ours.signed_params] == [k for k, _ in claims.signed_params]


def test_independent_sigv4_agrees_with_botocore() -> None:
    token = sts_token()
    parts = urlsplit("https://" + token)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k not in ("DBUser", "Endpoint")]
    sig = dict(query).pop("X-Amz-Signature")
    headers = {"host": parts.netloc, "x-pgpool-dbuser": "alice", "x-pgpool-endpoint": ENDPOINT}
    unsigned = [(k, v) for k, v in query if k != "X-Amz-Signature"]
    assert sigv4_query_signature(SECRET, "GET", "/", unsigned, headers) == sig
    headers["x-pgpool-dbuser"] = "bob"
    assert sigv4_query_signature(SECRET, "GET", "/", unsigned, headers) != sig


def refusal(token: str, **kw: object) -> str:
    with pytest.raises(IamError) as info:
        check(token, **kw)  # type: ignore[arg-type]
    return info.value.message


def test_local_checks_name_what_is_wrong() -> None:
    token = sts_token()
    assert 'is for user "alice", not "bob"' in refusal(token, user="bob")
    assert "expects an RDS auth token" in refusal(token, kind="rds")
    other = sts_token(host="evil.example.com")
    assert "was made for" in refusal(other)
    assert "region" in refusal(sts_token(region="eu-west-1"))
    assert "expired" in refusal(token, now=time.time() + 2000)
    assert "future" in refusal(token, now=time.time() - 600)
    assert "X-Amz-Expires" in refusal(token.replace("X-Amz-Expires=900", "X-Amz-Expires=3600"))


@pytest.mark.parametrize(
    ("mutate", "expect"),
    [
        (lambda t: "", "malformed"),
        (lambda t: "not a token", "malformed"),
        (lambda t: t + "&Extra=1", "unexpected parameter Extra"),
        (lambda t: t + "&DBUser=bob", "appears twice"),
        (lambda t: t.replace("X-Amz-Algorithm=AWS4-HMAC-SHA256", "X-Amz-Algorithm=MD5"), "algo"),
        (lambda t: t.replace("Action=GetCallerIdentity", "Action=AssumeRole"), "Action"),
        (lambda t: t.replace("%3Bx-pgpool-endpoint", ""), "sign exactly"),
        (lambda t: t + "#frag", "fragment"),
        (lambda t: t + "&x=" + "a" * 13000, "longer than"),
    ],
)
def test_malformed_tokens(mutate: object, expect: str) -> None:
    with pytest.raises(IamError) as info:
        parse_token(mutate(sts_token()))  # type: ignore[operator]
    assert expect in info.value.message
    assert info.value.sqlstate == "28P01"


def test_tokens_with_session_credentials_up_to_8k() -> None:
    creds = Credentials(AKID, SECRET, "FwoGZXIvYXdzE" + "A" * 6000)
    token = make_sts_token(
        host="db-proxy.example.com", port=5432, user="alice", region=REGION, credentials=creds
    )
    assert len(token) > 6000
    claims = parse_token(token)
    assert claims.has_session_token and signature_matches(claims, SECRET)


def test_messages_never_contain_secrets() -> None:
    token = sts_token()
    sig = parse_token(token).signature
    for kw in ({"user": "bob"}, {"now": time.time() + 5000}):
        assert sig not in refusal(token, **kw)


def test_rules() -> None:
    rules = [("arn:aws:sts::123456789012:assumed-role/app-*", ("app", "report"))]
    assert rule_allows(rules, "arn:aws:sts::123456789012:assumed-role/app-lambda/s1", "app")
    assert not rule_allows(rules, "arn:aws:sts::123456789012:assumed-role/app-lambda/s1", "root")
    assert not rule_allows(rules, "arn:aws:sts::999999999999:assumed-role/app-x/s", "app")
    assert rule_allows([("*", ("*",))], "arn:aws:iam::1:user/x", "anyone")


class CountingVerifier:
    token_kind = "sts"
    name = "counting"

    def __init__(self, fail: bool = False) -> None:
        self.calls = 0
        self.fail = fail

    async def verify(self, claims: TokenClaims, token: str, database: str) -> IamIdentity:
        self.calls += 1
        # A verification that takes a while, so that concurrent logins overlap it.
        await asyncio.sleep(0.05)
        if self.fail:
            raise IamError("28P01", "nope")
        return IamIdentity("arn:aws:iam::1:user/x", claims.expires_at)


def settings(**kw: object) -> IamSettings:
    return IamSettings(endpoint=ENDPOINT, region=REGION, **kw)  # type: ignore[arg-type]


async def test_burst_costs_one_verification_and_cache_until_expiry() -> None:
    verifier = CountingVerifier()
    auth = IamAuthenticator(settings(), verifier)  # type: ignore[arg-type]
    token = sts_token()
    results = await asyncio.gather(*(auth.authenticate(token, "alice", "app") for _ in range(50)))
    assert {r.principal for r in results} == {"arn:aws:iam::1:user/x"}
    assert verifier.calls == 1
    await auth.authenticate(token, "alice", "app")
    assert verifier.calls == 1 and auth.cache_hits == 1
    # Local checks run even on a cache hit: the cached token is still refused for bob.
    with pytest.raises(IamError):
        await auth.authenticate(token, "bob", "app")
    # Past expiry the cache no longer vouches for it (and the local check refuses it).
    auth.clock = lambda: time.time() + 2000
    with pytest.raises(IamError, match="expired"):
        await auth.authenticate(token, "alice", "app")


async def test_failures_are_shared_but_not_cached() -> None:
    verifier = CountingVerifier(fail=True)
    auth = IamAuthenticator(settings(), verifier)  # type: ignore[arg-type]
    token = sts_token()
    outcomes = await asyncio.gather(
        *(auth.authenticate(token, "alice", "app") for _ in range(10)), return_exceptions=True
    )
    assert all(isinstance(o, IamError) for o in outcomes)
    assert verifier.calls == 1
    with pytest.raises(IamError):
        await auth.authenticate(token, "alice", "app")
    assert verifier.calls == 2


async def test_cache_is_bounded() -> None:
    verifier = CountingVerifier()
    auth = IamAuthenticator(settings(cache_size=3), verifier)  # type: ignore[arg-type]
    for user in ("a", "b", "c", "d", "e"):
        await auth.authenticate(sts_token(user=user), user, "app")
    assert len(auth._cache) == 3
