"""`workers = 4`, one AWS caller: a burst of IAM logins spread over every worker costs one STS
call per distinct token, and Secrets Manager is fetched by worker 0 only, through a rotation.
Real processes (the supervisor forks), a fake STS, moto, real PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import signal
import ssl
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import boto3
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pgpool_devkit.tls_material import CertFiles
from pgpool_proxy.aws.sigv4 import make_sts_token
from tests.aws.conftest import ENDPOINT_HOST, ENDPOINT_PORT, REGION, STS_KEYS
from tests.support.fake_sts import FakeSts
from tests.support.pg import LocalPostgres, quote_literal
from tests.support.proxyproc import ProxyProcess
from tests.support.waits import wait_for

pytestmark = pytest.mark.usefixtures("aws_env")

WORKERS = 4
LAMBDA_KEY = "AKIAAPPLAMBDA0000001"


@pytest.fixture(scope="module")
def rot_pg() -> Iterator[LocalPostgres]:
    """A server of its own: a test changes a role's password."""
    server = LocalPostgres()
    try:
        server.start()
        server.create_role("app_user", "pw-1")
        server.create_database("app", owner="app_user")
        yield server
    finally:
        server.cleanup()


def secret_text(pg: LocalPostgres, password: str) -> str:
    return json.dumps(
        {"username": "app_user", "password": password, "host": pg.host, "port": str(pg.port)}
    )


class Workers(ProxyProcess):
    metrics_port = 0

    def metric(self, name: str) -> dict[str, float]:
        """worker -> value of `name` (summed over its other labels)."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as resp:
            body = resp.read().decode()
        out: dict[str, float] = {}
        for family in text_string_to_metric_families(body):
            for s in family.samples:
                if s.name == name:
                    w = s.labels["worker"]
                    out[w] = out.get(w, 0.0) + s.value
        return out


@pytest.fixture
def secret_arn(moto_server: str, rot_pg: LocalPostgres, request: pytest.FixtureRequest) -> str:
    sm = boto3.client("secretsmanager", region_name=REGION, endpoint_url=moto_server)
    name = f"workers-{request.node.name}"
    arn: str = sm.create_secret(Name=name, SecretString=secret_text(rot_pg, "pw-1"))["ARN"]
    rot_pg.psql(f"ALTER ROLE app_user PASSWORD {quote_literal('pw-1')}")
    return arn


@pytest.fixture
def workers(
    rot_pg: LocalPostgres,
    tmp_path: Path,
    proxy_cert: CertFiles,
    fake_sts: FakeSts,
    moto_server: str,
    secret_arn: str,
) -> Iterator[Workers]:
    cfg = tmp_path / "proxy.toml"
    cfg.write_text(
        f"""
[proxy]
listen = "127.0.0.1:0"
workers = {WORKERS}

[pool]
default_pool_size = 4
server_lifetime_s = 0.3
server_login_retry_s = 0.05

[client_tls]
mode = "allow"
cert_file = "{proxy_cert.cert_file}"
key_file = "{proxy_cert.key_file}"

[iam]
endpoint = "{ENDPOINT_HOST}:{ENDPOINT_PORT}"
region = "{REGION}"
sts_endpoints = ["{fake_sts.url}"]

[[iam_rules]]
arn = "arn:aws:sts::123456789012:assumed-role/app-*"
users = ["alice"]

[secrets]
refresh_interval_s = 600

[metrics]
listen = "127.0.0.1:0"

[[databases]]
name = "app"
host = "{rot_pg.host}"
port = {rot_pg.port}
secret_arn = "{secret_arn}"
secret_endpoint_url = "{moto_server}"

[[users]]
name = "alice"
iam = true
"""
    )
    proc = Workers(cfg, 0, tmp_path / "proxy.log")
    try:
        (found,) = proc.wait_for(r"listening on 127\.0\.0\.1:(\d+) with")
        proc.port = int(found.group(1))
        proc.wait_for(r"\[w\d+\]: .*listening on", count=WORKERS)
        (found,) = proc.wait_for(r"metrics on http://127\.0\.0\.1:(\d+)/metrics for all")
        proc.metrics_port = int(found.group(1))
        proc.wait_for(r"\[w\d+\]: .*metrics on http", count=WORKERS)
        yield proc
    finally:
        proc.stop(signal.SIGTERM)


def no_verify() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    return ctx


def sts_token(fake: FakeSts, expires_s: int = 900) -> str:
    from botocore.credentials import Credentials

    return make_sts_token(
        host=ENDPOINT_HOST,
        port=ENDPOINT_PORT,
        user="alice",
        region=REGION,
        credentials=Credentials(LAMBDA_KEY, STS_KEYS[LAMBDA_KEY][0]),
        sts_url=fake.url,
        expires_s=expires_s,
    )


async def login_burst(proxy: Workers, tokens: list[str]) -> set[int]:
    """One login per token in `tokens`, all at once; the workers that served them."""
    ctx = no_verify()

    async def one(token: str) -> int:
        conn = await asyncpg.connect(
            host="127.0.0.1",
            port=proxy.port,
            user="alice",
            database="app",
            password=token,
            ssl=ctx,
            statement_cache_size=0,
            timeout=30,
        )
        try:
            assert await conn.fetchval("select current_user") == "app_user"
            # The cancel key's pid names the worker in its top bits.
            return conn.get_server_pid() >> 24
        finally:
            await conn.close()

    return set(await asyncio.gather(*(one(t) for t in tokens)))


async def test_iam_burst_costs_one_sts_call_per_token(workers: Workers, fake_sts: FakeSts) -> None:
    before = fake_sts.calls
    served = await login_burst(workers, [sts_token(fake_sts)] * 100)
    assert served == set(range(WORKERS))  # SO_REUSEPORT spread the burst over every worker
    one_token = fake_sts.calls - before
    # Four distinct tokens (a fleet of four functions), 25 logins each.
    tokens = [sts_token(fake_sts, 899 - i) for i in range(4)]
    before = fake_sts.calls
    served = await login_burst(workers, tokens * 25)
    four_tokens = fake_sts.calls - before
    print(f"STS calls: 100 logins, 1 token: {one_token}; 100 logins, 4 tokens: {four_tokens}")
    assert (one_token, four_tokens) == (1, 4)
    verifications = workers.metric("pgpool_proxy_iam_verifications_total")
    assert sum(verifications.values()) == 5


async def test_secret_fetched_by_one_worker_through_a_rotation(
    workers: Workers, rot_pg: LocalPostgres, moto_server: str, secret_arn: str, fake_sts: FakeSts
) -> None:
    startup = workers.metric("pgpool_proxy_secret_refreshes_total")
    assert set(startup) == {str(i) for i in range(WORKERS)}
    sm = boto3.client("secretsmanager", region_name=REGION, endpoint_url=moto_server)
    stages = sm.describe_secret(SecretId=secret_arn)["VersionIdsToStages"]
    (old_id,) = [v for v, s in stages.items() if "AWSCURRENT" in s]
    # Warm every worker's pool with pw-1 (server connections live 0.3 s: logins all the time).
    token = sts_token(fake_sts)
    assert await login_burst(workers, [token] * 40) == set(range(WORKERS))
    # The rotation Lambda's steps: AWSPENDING, the password change, then the label move.
    new_id = sm.put_secret_value(
        SecretId=secret_arn, SecretString=secret_text(rot_pg, "pw-2"), VersionStages=["AWSPENDING"]
    )["VersionId"]
    rot_pg.psql(f"ALTER ROLE app_user PASSWORD {quote_literal('pw-2')}")

    async def everyone_logs_in() -> bool:
        # Every worker's pool must make a new server login (lifetime 0.3 s) with pw-2.
        await asyncio.sleep(0)
        return await login_burst(workers, [token] * 40) == set(range(WORKERS))

    await wait_for(everyone_logs_in, what="every worker serving after the password change")
    sm.update_secret_version_stage(
        SecretId=secret_arn,
        VersionStage="AWSCURRENT",
        MoveToVersionId=new_id,
        RemoveFromVersionId=old_id,
    )
    assert await login_burst(workers, [token] * 40) == set(range(WORKERS))
    after = workers.metric("pgpool_proxy_secret_refreshes_total")
    print(f"secret fetches: startup {startup}, after the rotation {after}")
    # Only worker 0 called Secrets Manager: once at startup, then forced refreshes for the
    # rotation that every worker's refused logins went through.
    assert {w: v for w, v in after.items() if w != "0"} == {str(i): 0 for i in range(1, WORKERS)}
    assert startup["0"] == 1
    assert after["0"] - startup["0"] <= 2
