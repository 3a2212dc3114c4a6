"""Logs: one structured line per client connect and disconnect (typed reason) and pool error, in
text and JSON; never a password or an IAM token, even at debug level."""

from __future__ import annotations

import io
import json
import logging
import ssl
from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest
from botocore.credentials import Credentials

from pgpool_devkit.tls_material import CertFiles
from pgpool_proxy.aws.sigv4 import make_rds_token, make_sts_token
from pgpool_proxy.cli import JsonFormatter, TextFormatter
from tests.support.proxy import PASSWORDS, ProxyThread, StartProxy
from tests.support.tlsfiles import TlsDir
from tests.support.waits import wait_for

ENDPOINT = ("db-proxy.example.com", 5432)
REGION = "us-east-1"
# Secrets the test hands the proxy; none may ever appear in a log line.
WRONG_PASSWORD = "Wr0ng-pa55word-7f3a9c"
SECRET_KEY = "s3cr3t-access-key-never-logged-0123456789"


class Captured:
    def __init__(self) -> None:
        self.text = io.StringIO()
        self.json = io.StringIO()

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.json.getvalue().splitlines() if line]

    async def events(self, name: str, count: int) -> list[dict[str, Any]]:
        """The records of event `name`, once there are `count` (the proxy logs on its thread)."""

        def found() -> list[dict[str, Any]]:
            return [r for r in self.records() if r.get("event") == name]

        await wait_for(lambda: len(found()) >= count, what=f"{count} x {name} logged")
        return found()


@pytest.fixture
def captured() -> Iterator[Captured]:
    """Every pgpool_proxy log record at DEBUG, through the text and the JSON formatter."""
    cap = Captured()
    text = logging.StreamHandler(cap.text)
    text.setFormatter(TextFormatter("%(levelname)s %(name)s: %(message)s"))
    js = logging.StreamHandler(cap.json)
    js.setFormatter(JsonFormatter())
    logger = logging.getLogger("pgpool_proxy")
    old = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(text)
    logger.addHandler(js)
    try:
        yield cap
    finally:
        logger.removeHandler(text)
        logger.removeHandler(js)
        logger.setLevel(old)


@pytest.fixture(scope="module")
def cert() -> Iterator[CertFiles]:
    d = TlsDir()
    yield d.issue("proxy", ["127.0.0.1", "localhost"])
    d.remove()


def _tls() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


@pytest.fixture
def iam_proxy(start_proxy: StartProxy, cert: CertFiles) -> ProxyThread:
    return start_proxy(
        client_tls={
            "mode": "allow",
            "cert_file": str(cert.cert_file),
            "key_file": str(cert.key_file),
        },
        users=[
            {"name": "alice", "password": PASSWORDS["alice"]},
            {"name": "carol", "password": PASSWORDS["carol"], "iam": True},
        ],
        # An allow-listed STS that is not there: verification fails after the token was sent.
        iam={
            "endpoint": f"{ENDPOINT[0]}:{ENDPOINT[1]}",
            "region": REGION,
            "sts_endpoints": ["http://127.0.0.1:9"],
            "sts_timeout_s": 2,
        },
        iam_rules=[{"arn": "arn:aws:sts::123456789012:assumed-role/app-*", "users": ["carol"]}],
    )


async def test_no_password_or_token_in_logs(iam_proxy: ProxyThread, captured: Captured) -> None:
    proxy = iam_proxy
    creds = Credentials("AKIAEXAMPLE000000001", SECRET_KEY)
    host, port = ENDPOINT
    sts = make_sts_token(
        host=host,
        port=port,
        user="carol",
        region=REGION,
        credentials=creds,
        sts_url="http://127.0.0.1:9",
    )
    rds = make_rds_token(host=host, port=port, user="carol", region=REGION, credentials=creds)
    # A good login (the proxy then logs into PostgreSQL with alice's password), a wrong
    # password, and two IAM tokens that are refused at different stages.
    conn = await asyncpg.connect(proxy.dsn(), statement_cache_size=0)
    assert await conn.fetchval("SELECT 1") == 1
    await conn.close()
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(proxy.dsn(password=WRONG_PASSWORD))
    for token in (sts, rds):
        with pytest.raises(asyncpg.PostgresError):
            await asyncpg.connect(
                host=proxy.host,
                port=proxy.port,
                user="carol",
                database="app",
                password=token,
                ssl=_tls(),
            )
    for out in (captured.text.getvalue(), captured.json.getvalue()):
        assert "client login" in out and "IAM login refused" in out
        for secret in (PASSWORDS["alice"], PASSWORDS["carol"], WRONG_PASSWORD, SECRET_KEY):
            assert secret not in out
        for token in (sts, rds):
            assert token not in out
            assert token.split("X-Amz-Signature=")[1][:64] not in out
            assert token.split("X-Amz-Credential=")[1].split("&")[0] not in out


async def test_connect_and_disconnect_lines_are_structured(
    start_proxy: StartProxy, captured: Captured
) -> None:
    proxy = start_proxy()
    conn = await asyncpg.connect(proxy.dsn(), statement_cache_size=0)
    await conn.fetchval("SELECT 1")
    await conn.close()
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(proxy.dsn(password=WRONG_PASSWORD))
    connects = await captured.events("client_connect", 1)
    assert len(connects) == 1
    assert connects[0]["user"] == "alice" and connects[0]["db"] == "app"
    assert connects[0]["addr"].startswith("127.0.0.1:") and connects[0]["mode"] == "transaction"
    disconnects = await captured.events("client_disconnect", 2)
    assert sorted(r["reason"] for r in disconnects) == ["auth_failed", "client_terminate"]
    gone = next(r for r in disconnects if r["reason"] == "client_terminate")
    assert gone["addr"] == connects[0]["addr"] and gone["user"] == "alice"
    assert all(r["level"] and r["logger"].startswith("pgpool_proxy") for r in captured.records())
    # The text format names the same events (key=value at the end of the line).
    lines = captured.text.getvalue().splitlines()
    (login,) = [line for line in lines if "client login:" in line]
    assert login.endswith(" event=client_connect") and "user=alice db=app" in login
    closed = [line for line in lines if "client closed:" in line]
    assert len(closed) == 2 and all(line.endswith(" event=client_disconnect") for line in closed)


async def test_pool_error_line(start_proxy: StartProxy, captured: Captured) -> None:
    # The server refuses the proxy's login: pool error, logged once with its SQLSTATE.
    proxy = start_proxy(
        databases=[{"name": "app", "host": "127.0.0.1", "port": 1, "pool_size": 1}],
        pool={"server_connect_timeout_s": 2},
    )
    with pytest.raises((asyncpg.PostgresError, OSError)):
        await asyncpg.connect(proxy.dsn(), statement_cache_size=0)
    errors = await captured.events("pool_error", 1)
    assert errors and errors[0]["pool"] == "app/alice" and errors[0]["sqlstate"] == "08001"
