"""Server credentials from AWS Secrets Manager (moto in server mode on 127.0.0.1): rotation while
clients run, serving on when Secrets Manager goes away, and clear startup errors."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import asyncpg
import boto3
import pytest

from pgpool_proxy.aws.secrets import DbCredentials, SecretError, parse_db_secret
from pgpool_proxy.runtime.services import StartupError
from tests.aws.conftest import REGION
from tests.support.pg import LocalPostgres, quote_literal
from tests.support.proxy import ProxyThread, make_config
from tests.support.waits import wait_for

pytestmark = pytest.mark.usefixtures("aws_env")


@pytest.fixture(scope="module")
def sm_pg() -> Iterator[LocalPostgres]:
    """A server of its own: these tests change a role's password."""
    server = LocalPostgres()
    try:
        server.start()
        server.create_role("app_user", "pw-1")
        server.create_database("app", owner="app_user")
        yield server
    finally:
        server.cleanup()


def sm_client(url: str) -> Any:
    return boto3.client("secretsmanager", region_name=REGION, endpoint_url=url)


def secret_json(pg: LocalPostgres, password: str, port: Any = None) -> str:
    return json.dumps(
        {
            "username": "app_user",
            "password": password,
            "engine": "postgres",
            "host": pg.host,
            "port": str(pg.port) if port is None else port,
            "dbname": "app",
            "dbClusterIdentifier": "test-cluster",
        }
    )


def create_secret(url: str, name: str, text: str) -> str:
    arn: str = sm_client(url).create_secret(Name=name, SecretString=text)["ARN"]
    return arn


def proxy_for(pg: LocalPostgres, arn: str, url: str, **sections: Any) -> ProxyThread:
    sections.setdefault("pool", {})
    sections["pool"] = {
        "default_pool_size": 4,
        "server_lifetime_s": 0.3,  # new server logins all the time
        "server_login_retry_s": 0.05,
        **sections["pool"],
    }
    config = make_config(
        pg,
        databases=[
            {
                "name": "app",
                "host": pg.host,
                "port": pg.port,
                "secret_arn": arn,
                "secret_endpoint_url": url,
            }
        ],
        **sections,
    )
    return ProxyThread(config)


class Hammers:
    """Clients running short transactions until stopped, counting those that succeeded."""

    def __init__(self, proxy: ProxyThread, clients: int) -> None:
        self.proxy = proxy
        self.counts = [0] * clients
        self.errors: list[BaseException] = []
        self._stop = asyncio.Event()
        self._tasks = [asyncio.create_task(self._run(i)) for i in range(clients)]

    async def _run(self, i: int) -> None:
        conn = await asyncpg.connect(self.proxy.dsn(), ssl=False, statement_cache_size=0)
        try:
            while not self._stop.is_set():
                try:
                    assert await conn.fetchval("select current_user") == "app_user"
                    self.counts[i] += 1
                except Exception as exc:
                    self.errors.append(exc)
                    return
                await asyncio.sleep(0.01)  # pacing: a steady load, not a busy loop
        finally:
            await conn.close()

    async def advance(self, more: int, also: Callable[[], object] = lambda: True) -> None:
        """Wait until every client has had `more` more transactions succeed (and `also()`)."""
        want = [n + more for n in self.counts]

        def done() -> object:
            assert not self.errors, self.errors
            return all(n >= w for n, w in zip(self.counts, want, strict=True)) and also()

        await wait_for(done, timeout=30, what=f"{more} more transactions of every client")

    async def stop(self) -> list[int]:
        self._stop.set()
        await asyncio.gather(*self._tasks)
        return self.counts


async def test_rotation_while_clients_run(sm_pg: LocalPostgres, moto_server: str) -> None:
    client = sm_client(moto_server)
    arn = create_secret(moto_server, "rotating", secret_json(sm_pg, "pw-1"))
    old_version = client.describe_secret(SecretId=arn)["VersionIdsToStages"]
    (old_id,) = [v for v, stages in old_version.items() if "AWSCURRENT" in stages]
    with proxy_for(sm_pg, arn, moto_server, secrets={"refresh_interval_s": 600}) as proxy:
        hammers = Hammers(proxy, 6)
        await hammers.advance(5)
        # The rotation Lambda's steps: createSecret, setSecret, (testSecret), finishSecret.
        new_id = client.put_secret_value(
            SecretId=arn, SecretString=secret_json(sm_pg, "pw-2"), VersionStages=["AWSPENDING"]
        )["VersionId"]
        sm_pg.psql(f"ALTER ROLE app_user PASSWORD {quote_literal('pw-2')}")
        changed_at = time.time()

        def in_use() -> DbCredentials | None:
            secret = proxy.call(lambda: proxy.server.services.secrets.secrets[arn])  # type: ignore[union-attr]
            return secret.preferred or secret.value

        # Only AWSPENDING works now: the proxy finds it, and the clients go on meanwhile.
        await hammers.advance(10, lambda: (c := in_use()) is not None and c.password == "pw-2")
        client.update_secret_version_stage(
            SecretId=arn,
            VersionStage="AWSCURRENT",
            MoveToVersionId=new_id,
            RemoveFromVersionId=old_id,
        )
        await hammers.advance(10)
        counts = await hammers.stop()
        assert hammers.errors == []
        assert all(n > 20 for n in counts), counts
        # A server connection born after the password change serves clients: it logged in
        # with the new password.
        conn = await asyncpg.connect(proxy.dsn(), ssl=False, statement_cache_size=0)
        try:
            started = await conn.fetchval(
                "select extract(epoch from backend_start) from pg_stat_activity "
                "where pid = pg_backend_pid()"
            )
            assert float(started) > changed_at
        finally:
            await conn.close()
        secret = proxy.call(lambda: proxy.server.services.secrets.secrets[arn])  # type: ignore[union-attr]
        now_used = secret.preferred or secret.value
        assert now_used is not None and now_used.password == "pw-2"
        # Startup fetch, then forced refreshes only for the first 28P01s of the rotation
        # window (at most one per concurrent login, pool size 4; after that AWSPENDING is
        # used directly), not one per new server connection (~20 here). No polling:
        # refresh_interval_s is 600.
        assert 2 <= secret.fetches <= 6, secret.fetches


async def test_keeps_serving_when_secrets_manager_is_gone(sm_pg: LocalPostgres) -> None:
    from moto.server import ThreadedMotoServer

    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    host, port = moto.get_host_and_port()
    url = f"http://{host}:{port}"
    stopped = False
    try:
        pw = "pw-steady"
        sm_pg.psql(f"ALTER ROLE app_user PASSWORD {quote_literal(pw)}")
        arn = create_secret(url, "steady", secret_json(sm_pg, pw, port=sm_pg.port))
        proxy = proxy_for(
            sm_pg,
            arn,
            url,
            secrets={"refresh_interval_s": 0.2, "retry_interval_s": 0.2, "request_timeout_s": 1},
        )
        with proxy:
            hammers = Hammers(proxy, 3)
            await hammers.advance(5)
            moto.stop()
            stopped = True

            def refresh_failed() -> bool:
                secret = proxy.call(lambda: proxy.server.services.secrets.secrets[arn])  # type: ignore[union-attr]
                return "unreachable" in secret.last_error or "refused" in secret.last_error

            # Background refreshes fail; backends (server_lifetime_s 0.3) keep being replaced.
            await hammers.advance(20, refresh_failed)
            counts = await hammers.stop()
            assert hammers.errors == []
            assert all(n > 20 for n in counts), counts
    finally:
        if not stopped:
            moto.stop()


@pytest.mark.parametrize(
    ("text", "expect"),
    [
        ("not json", "is not JSON"),
        (json.dumps({"username": "app_user"}), 'has no "password" string'),
        (json.dumps({"password": "x"}), 'has no "username" string'),
        (json.dumps({"username": "u", "password": "p", "port": "fivefour"}), '"port" must be'),
        (json.dumps(["u", "p"]), "must be a JSON object"),
    ],
)
def test_wrong_shape_is_a_clear_startup_error(
    sm_pg: LocalPostgres, moto_server: str, text: str, expect: str
) -> None:
    arn = create_secret(moto_server, f"bad-{abs(hash(text))}", text)
    with pytest.raises(StartupError) as info:
        proxy_for(sm_pg, arn, moto_server).start()
    assert expect in str(info.value) and arn in str(info.value)
    assert "app_user" not in str(info.value) or "username" in expect


def test_missing_secret_is_a_clear_startup_error(sm_pg: LocalPostgres, moto_server: str) -> None:
    arn = "arn:aws:secretsmanager:us-east-1:123456789012:secret:nope-AbCdEf"
    with pytest.raises(StartupError, match="ResourceNotFoundException"):
        proxy_for(sm_pg, arn, moto_server).start()


def test_parse_db_secret_shapes() -> None:
    base = {"username": "u", "password": "p"}
    assert parse_db_secret(json.dumps({**base, "port": "5432"}), "a").port == 5432
    assert parse_db_secret(json.dumps({**base, "port": 5432}), "a").port == 5432
    assert parse_db_secret(json.dumps(base), "a").port is None
    assert "'p'" not in repr(parse_db_secret(json.dumps(base), "a"))
    with pytest.raises(SecretError):
        parse_db_secret(json.dumps({**base, "port": True}), "a")
