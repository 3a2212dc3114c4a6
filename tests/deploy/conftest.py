"""Fixtures for the deployment tests: a secret in moto (Secrets Manager, tests/conftest.py), and
the environment a container gets from its deployment, pointed at the test PostgreSQL."""

from __future__ import annotations

import json
import os
import socket
import time

import pytest

from tests.deploy import dockerfile
from tests.support.pg import LocalPostgres
from tests.support.proxy import PASSWORDS

APP_PASSWORD = "app-client-pw"
SHUTDOWN_TIMEOUT_S = 10.0


def free_port() -> int:
    # The proxy runs as a separate process that cannot report a port-0 listener back before
    # its health endpoint answers; take an OS-assigned ephemeral port and hand it over.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def secret_arn(moto_server: str, pg: LocalPostgres) -> str:
    """A Secrets Manager secret (RDS JSON) holding the test server's login for alice."""
    import boto3

    client = boto3.client(
        "secretsmanager",
        endpoint_url=moto_server,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    doc = {
        "engine": "postgres",
        "username": "alice",
        "password": PASSWORDS["alice"],
        "host": pg.host,
        "port": str(pg.port),
        "dbname": "app",
    }
    name = f"pgpool-deploy-{os.getpid()}-{time.monotonic_ns()}"
    return str(client.create_secret(Name=name, SecretString=json.dumps(doc))["ARN"])


@pytest.fixture
def container_env(pg: LocalPostgres, moto_server: str, secret_arn: str) -> dict[str, str]:
    """The process environment: what the deployment sets, plus test-only overrides."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PGPOOL_", "AWS_")) and k not in ("PGPASSWORD", "PGSERVICE")
    }
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(dockerfile.REPO), env.get("PYTHONPATH")) if p
    )
    env.update(
        {
            # What the ECS task definition / Kubernetes Deployment set.
            "PGPOOL_DB_HOST": pg.host,
            "PGPOOL_DB_PORT": str(pg.port),
            "PGPOOL_DB_SECRET_ARN": secret_arn,
            "PGPOOL_APP_PASSWORD": APP_PASSWORD,
            # Test-only: loopback ephemeral ports, a shorter drain bound, text logs.
            "PGPOOL_PROXY_LISTEN": f"127.0.0.1:{free_port()}",
            "PGPOOL_METRICS_LISTEN": f"127.0.0.1:{free_port()}",
            "PGPOOL_PROXY_SHUTDOWN_TIMEOUT_S": str(SHUTDOWN_TIMEOUT_S),
            # The task role's credentials; Secrets Manager is moto.
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_ENDPOINT_URL_SECRETS_MANAGER": moto_server,
        }
    )
    return env
