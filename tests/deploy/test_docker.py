"""The image itself, where a Docker engine is available (skipped otherwise, e.g. on these CI
machines, which have the docker CLI at most): build it, check what it runs as and how big it
is, run it on the host network against the test PostgreSQL until Docker reports it healthy,
serve a query, and stop it with `docker stop` (SIGTERM to PID 1) for a clean exit 0.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from collections.abc import Iterator

import psycopg
import pytest

from tests.deploy import dockerfile
from tests.deploy.conftest import APP_PASSWORD, SHUTDOWN_TIMEOUT_S
from tests.support.waits import wait_for_sync

# python:3.12-slim is ~125 MB; the proxy and its dependencies (botocore is most of it) add
# ~70 MB. Well above that means build tools or caches leaked into the runtime stage.
MAX_IMAGE_BYTES = 300 * 1024 * 1024


def _engine_available() -> str | None:
    """None when a Docker engine answers, else why not."""
    docker = shutil.which("docker")
    if docker is None:
        return "no docker CLI on PATH"
    try:
        done = subprocess.run([docker, "info"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"docker info failed: {exc}"
    if done.returncode != 0:
        return "no Docker engine reachable (docker info failed)"
    return None


_WHY_NOT = _engine_available()
pytestmark = pytest.mark.skipif(_WHY_NOT is not None, reason=f"Docker image test: {_WHY_NOT}")


def _docker(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def image() -> Iterator[str]:
    tag = f"pgpool-proxy-test:{uuid.uuid4().hex[:12]}"
    built = _docker("build", "-t", tag, str(dockerfile.REPO), timeout=1200)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    yield tag
    _docker("image", "rm", "-f", tag)


def test_image_runs_as_non_root_and_is_small(image: str) -> None:
    inspect = json.loads(_docker("image", "inspect", image).stdout)[0]
    assert inspect["Config"]["User"] not in ("", "root", "0", "0:0")
    assert inspect["Size"] < MAX_IMAGE_BYTES, inspect["Size"]
    uid = _docker("run", "--rm", "--entrypoint", "id", image, "-u")
    assert uid.stdout.strip() == "10001"
    version = _docker("run", "--rm", image, "--version")
    assert version.stdout.startswith("pgpool-proxy ")


def test_container_is_healthy_serves_and_stops_cleanly(
    image: str, container_env: dict[str, str]
) -> None:
    wanted = (
        "PGPOOL_DB_HOST",
        "PGPOOL_DB_PORT",
        "PGPOOL_DB_SECRET_ARN",
        "PGPOOL_APP_PASSWORD",
        "PGPOOL_PROXY_LISTEN",
        "PGPOOL_METRICS_LISTEN",
        "PGPOOL_PROXY_SHUTDOWN_TIMEOUT_S",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_DEFAULT_REGION",
        "AWS_EC2_METADATA_DISABLED",
        "AWS_ENDPOINT_URL_SECRETS_MANAGER",
    )
    env_args = [a for k in wanted for a in ("-e", f"{k}={container_env[k]}")]
    name = f"pgpool-proxy-test-{uuid.uuid4().hex[:8]}"
    run = _docker("run", "-d", "--name", name, "--network", "host", *env_args, image)
    assert run.returncode == 0, run.stderr
    try:

        def decided() -> str:
            got = _docker("inspect", "-f", "{{.State.Health.Status}}", name).stdout.strip()
            return got if got in ("healthy", "unhealthy") else ""

        status = wait_for_sync(
            decided,
            timeout=90,
            what="Docker's health check to decide",
            interval=1,  # a docker command a try
        )
        assert status == "healthy", _docker("logs", name).stderr[-3000:]
        port = int(container_env["PGPOOL_PROXY_LISTEN"].rpartition(":")[2])
        with psycopg.connect(
            host="127.0.0.1", port=port, user="app", password=APP_PASSWORD, dbname="app"
        ) as conn:
            assert conn.execute("select current_user").fetchone() == ("alice",)
        stop = _docker("stop", "-t", str(int(SHUTDOWN_TIMEOUT_S) + 10), name, timeout=60)
        assert stop.returncode == 0, stop.stderr
        code = _docker("inspect", "-f", "{{.State.ExitCode}}", name).stdout.strip()
        assert code == "0", _docker("logs", name).stderr[-3000:]
    finally:
        _docker("rm", "-f", name)
