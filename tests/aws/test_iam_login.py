"""IAM token logins end to end: real clients over TLS, the `sts` verifier against a fake STS that
checks real botocore signatures, `keyring` with generate_db_auth_token, `passthrough` against the
test PostgreSQL. Refusals carry 28000/28P01 and say why; tokens never reach the logs."""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
from pathlib import Path
from typing import Any

import asyncpg
import boto3
import botocore.auth
import psycopg
import pytest
from botocore.credentials import Credentials

from pgpool_devkit.tls_material import CertFiles
from pgpool_proxy.aws.sigv4 import make_sts_token
from pgpool_proxy.cli import main as cli_main
from tests.aws.conftest import ENDPOINT_HOST, ENDPOINT_PORT, REGION, STS_KEYS, tls_section
from tests.support.fake_sts import FakeSts
from tests.support.pg import LocalPostgres
from tests.support.proxy import PASSWORDS, ProxyThread, StartProxy

LAMBDA_KEY = "AKIAAPPLAMBDA0000001"
INTRUDER_KEY = "AKIAINTRUDER00000001"


def creds(akid: str) -> Credentials:
    return Credentials(akid, STS_KEYS[akid][0])


def sts_token(fake: FakeSts, user: str = "alice", akid: str = LAMBDA_KEY, **kw: Any) -> str:
    args: dict[str, Any] = {
        "host": ENDPOINT_HOST,
        "port": ENDPOINT_PORT,
        "user": user,
        "region": REGION,
        "credentials": creds(akid),
        "sts_url": fake.url,
    }
    args.update(kw)
    return make_sts_token(**args)


def iam_users() -> list[dict[str, Any]]:
    # alice logs in with IAM; her password is only what the proxy uses toward the server.
    return [
        {"name": "alice", "password": PASSWORDS["alice"], "iam": True},
        {"name": "bob", "password": PASSWORDS["bob"]},
    ]


def iam_section(**kw: Any) -> dict[str, Any]:
    section = {"endpoint": f"{ENDPOINT_HOST}:{ENDPOINT_PORT}", "region": REGION}
    section.update(kw)
    return section


@pytest.fixture
def sts_proxy(start_proxy: StartProxy, proxy_cert: CertFiles, fake_sts: FakeSts) -> ProxyThread:
    return start_proxy(
        client_tls=tls_section(proxy_cert),
        users=iam_users(),
        iam=iam_section(sts_endpoints=[fake_sts.url]),
        iam_rules=[{"arn": "arn:aws:sts::123456789012:assumed-role/app-*", "users": ["alice"]}],
    )


def connect(proxy: ProxyThread, password: str, sslmode: str = "require", user: str = "alice"):  # type: ignore[no-untyped-def]
    return psycopg.connect(
        host=proxy.host,
        port=proxy.port,
        user=user,
        dbname="app",
        password=password,
        sslmode=sslmode,
        connect_timeout=10,
        prepare_threshold=None,
    )


async def refusal(proxy: ProxyThread, password: str, user: str = "alice", ssl: Any = True) -> Any:
    ctx: Any = ssl
    if ssl is True:
        import ssl as ssl_mod

        ctx = ssl_mod.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl_mod.CERT_NONE
    with pytest.raises(asyncpg.PostgresError) as info:
        await asyncpg.connect(
            host=proxy.host, port=proxy.port, user=user, database="app", password=password, ssl=ctx
        )
    return info.value


def test_sts_token_login_with_libpq(sts_proxy: ProxyThread, fake_sts: FakeSts) -> None:
    token = sts_token(fake_sts)
    with connect(sts_proxy, token) as conn:
        assert conn.pgconn.ssl_in_use
        assert conn.execute("select current_user").fetchone() == ("alice",)
    # Password users are unaffected on the same proxy.
    with connect(sts_proxy, PASSWORDS["bob"], user="bob") as conn:
        assert conn.execute("select current_user").fetchone() == ("bob",)


async def test_sts_burst_costs_one_sts_call(sts_proxy: ProxyThread, fake_sts: FakeSts) -> None:
    token = sts_token(fake_sts)
    before = fake_sts.calls
    import ssl

    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE

    async def one() -> str:
        conn = await asyncpg.connect(
            host=sts_proxy.host,
            port=sts_proxy.port,
            user="alice",
            database="app",
            password=token,
            ssl=ctx,
            statement_cache_size=0,
        )
        try:
            return str(await conn.fetchval("select current_user"))
        finally:
            await conn.close()

    assert await asyncio.gather(*(one() for _ in range(25))) == ["alice"] * 25
    assert fake_sts.calls - before == 1


async def test_sts_refusals(
    sts_proxy: ProxyThread, fake_sts: FakeSts, caplog: pytest.LogCaptureFixture
) -> None:
    # The proxy's own logs, at every level (botocore's debug log of the *client* signing in
    # this process shows signatures by design).
    caplog.set_level(logging.DEBUG, logger="pgpool_proxy")
    good = sts_token(fake_sts)
    sig = good.split("X-Amz-Signature=")[1][:64]
    tampered = good.replace(sig, ("0" if sig[0] != "0" else "1") + sig[1:])
    err = await refusal(sts_proxy, tampered)
    assert err.sqlstate == "28P01" and "signature does not match" in _m(err)

    err = await refusal(sts_proxy, sts_token(fake_sts, user="bob"))
    assert err.sqlstate == "28P01" and 'is for user "bob", not "alice"' in _m(err)

    err = await refusal(sts_proxy, sts_token(fake_sts, host="other.example.com"))
    assert err.sqlstate == "28P01" and "was made for" in _m(err)

    old = datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=1)
    orig = botocore.auth.get_current_datetime
    botocore.auth.get_current_datetime = lambda: old.replace(tzinfo=None)  # type: ignore[assignment]
    try:
        expired = sts_token(fake_sts)
    finally:
        botocore.auth.get_current_datetime = orig  # type: ignore[assignment]
    err = await refusal(sts_proxy, expired)
    assert err.sqlstate == "28P01" and "expired" in _m(err)

    # A valid signature by a principal no [[iam_rules]] entry lets in.
    err = await refusal(sts_proxy, sts_token(fake_sts, akid=INTRUDER_KEY))
    assert err.sqlstate == "28000" and "user/intruder is not allowed" in _m(err)

    # A token signed for an STS host outside the allow-list is never sent anywhere.
    err = await refusal(sts_proxy, sts_token(fake_sts, sts_url="http://127.0.0.2:9"))
    assert err.sqlstate == "28P01" and "not an allowed STS endpoint" in _m(err)

    # No TLS, no IAM: the token would cross the network in clear.
    err = await refusal(sts_proxy, good, ssl=False)
    assert err.sqlstate == "28000" and "requires an SSL connection" in _m(err)

    err = await refusal(sts_proxy, "")
    assert err.sqlstate == "28P01" and "malformed" in _m(err)

    for token in (good, tampered, expired):
        assert token.split("X-Amz-Signature=")[1][:64] not in caplog.text
        assert token not in caplog.text


def _m(err: Any) -> str:
    return str(err.args[0] if err.args else err)


# --------------------------------------------------------------------------------------------
# keyring


def rds_token(akid: str, secret: str, user: str = "alice") -> str:
    session = boto3.session.Session(
        aws_access_key_id=akid, aws_secret_access_key=secret, region_name=REGION
    )
    token: str = session.client("rds").generate_db_auth_token(ENDPOINT_HOST, ENDPOINT_PORT, user)
    return token


async def test_keyring(start_proxy: StartProxy, proxy_cert: CertFiles, tmp_path: Path) -> None:
    keyring = tmp_path / "keys.json"
    keyring.write_text(
        json.dumps(
            {
                "AKIAOPERATORKEY00001": {"secret_access_key": "op-secret", "users": ["alice"]},
                "AKIAOTHERKEY00000001": {"secret_access_key": "other", "users": ["bob"]},
            }
        )
    )
    proxy = start_proxy(
        client_tls=tls_section(proxy_cert, "require"),
        users=iam_users(),
        iam=iam_section(verifier="keyring", keyring_file=str(keyring)),
    )
    token = rds_token("AKIAOPERATORKEY00001", "op-secret")
    with connect(proxy, token) as conn:
        assert conn.execute("select current_user").fetchone() == ("alice",)
    err = await refusal(proxy, rds_token("AKIAOPERATORKEY00001", "wrong-secret"))
    assert err.sqlstate == "28P01" and "signature does not match" in _m(err)
    err = await refusal(proxy, rds_token("AKIAUNKNOWNKEY000001", "x"))
    assert err.sqlstate == "28P01" and "does not know" in _m(err)
    err = await refusal(proxy, rds_token("AKIAOTHERKEY00000001", "other"))
    assert err.sqlstate == "28000" and 'may not log in as "alice"' in _m(err)
    # A token for the sts verifier is the wrong kind here.
    sts_kind = make_sts_token(
        host=ENDPOINT_HOST,
        port=ENDPOINT_PORT,
        user="alice",
        region=REGION,
        credentials=Credentials("AKIAOPERATORKEY00001", "op-secret"),
    )
    err = await refusal(proxy, sts_kind)
    assert err.sqlstate == "28P01" and "expects an RDS auth token" in _m(err)


# --------------------------------------------------------------------------------------------
# passthrough: the server itself judges the token (here: a role whose password is the token,
# standing in for an IAM-enabled RDS role)

HBA = [
    "host all alice 127.0.0.1/32 scram-sha-256",
    "host all bob 127.0.0.1/32 md5",
    "host all carol 127.0.0.1/32 trust",
]


async def test_passthrough(
    pg: LocalPostgres, start_proxy: StartProxy, proxy_cert: CertFiles
) -> None:
    token = rds_token("AKIAPASSTHROUGH00001", "pt-secret", user="iam_dave")
    pg.create_role("iam_dave", token)
    pg.set_hba([*HBA, "host all iam_dave 127.0.0.1/32 scram-sha-256"])
    try:
        proxy = start_proxy(
            client_tls=tls_section(proxy_cert),
            users=[*iam_users(), {"name": "iam_dave", "iam": True}],
            # The pool itself logs in with credentials the proxy holds (a forced user here).
            databases=[
                {
                    "name": "app",
                    "host": pg.host,
                    "port": pg.port,
                    "user": "alice",
                    "password": PASSWORDS["alice"],
                }
            ],
            iam=iam_section(verifier="passthrough"),
        )
        with connect(proxy, token, user="iam_dave") as conn:
            assert conn.execute("select current_user").fetchone() == ("alice",)
        other = rds_token("AKIAPASSTHROUGH00001", "not-it", user="iam_dave")
        err = await refusal(proxy, other, user="iam_dave")
        assert err.sqlstate == "28P01" and "database refused the IAM token" in _m(err)
    finally:
        pg.set_hba(HBA)
        pg.psql("DROP ROLE iam_dave")


# --------------------------------------------------------------------------------------------
# the client helper


def test_token_cli(
    sts_proxy: ProxyThread,
    fake_sts: FakeSts,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", LAMBDA_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", STS_KEYS[LAMBDA_KEY][0])
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    args = ["token", "--host", ENDPOINT_HOST, "--port", str(ENDPOINT_PORT), "--user", "alice"]
    assert cli_main([*args, "--region", REGION, "--sts-endpoint", fake_sts.url]) == 0
    token = capsys.readouterr().out.strip()
    with connect(sts_proxy, token) as conn:
        assert conn.execute("select current_user").fetchone() == ("alice",)


def test_lambda_example_handler(
    sts_proxy: ProxyThread,
    fake_sts: FakeSts,
    proxy_cert: CertFiles,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """examples/lambda/handler.py runs as Lambda would run it (credentials in the environment);
    the proxy's certificate is for 127.0.0.1, so the example connects there while the token
    names the advertised endpoint the proxy is configured with."""
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "examples" / "lambda" / "handler.py"
    spec = importlib.util.spec_from_file_location("lambda_handler_example", path)
    assert spec is not None and spec.loader is not None
    for k, v in {
        "AWS_ACCESS_KEY_ID": LAMBDA_KEY,
        "AWS_SECRET_ACCESS_KEY": STS_KEYS[LAMBDA_KEY][0],
        "AWS_REGION": REGION,
        "PROXY_HOST": ENDPOINT_HOST,
        "PROXY_PORT": str(ENDPOINT_PORT),
        "DB_USER": "alice",
        "DB_NAME": "app",
        "PROXY_CA_FILE": str(proxy_cert.ca_file),
    }.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    real_token = module.generate_proxy_auth_token
    real_connect = module.asyncpg.connect

    def token(*args: Any, **kw: Any) -> str:
        return str(real_token(*args, sts_endpoint=fake_sts.url, **kw))

    async def connect(**kw: Any) -> Any:
        # DNS for the advertised name points at the proxy; here that is 127.0.0.1.
        kw.update(host=sts_proxy.host, port=sts_proxy.port)
        return await real_connect(**kw)

    monkeypatch.setattr(module, "generate_proxy_auth_token", token)
    monkeypatch.setattr(module.asyncpg, "connect", connect)
    result = module.lambda_handler({}, None)
    assert result["statusCode"] == 200
    assert result["body"][0]["user"] == "alice"
