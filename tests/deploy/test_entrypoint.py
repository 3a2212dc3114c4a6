"""The container's entry command, run outside Docker: the Dockerfile's ENTRYPOINT + CMD with the
shipped deploy/pgpool-proxy.toml, configured only through the environment the ECS task and the
Kubernetes Deployment set (database endpoint, Secrets Manager ARN, client password), in front
of the test PostgreSQL with its server login held in Secrets Manager (moto).

What Docker adds on top (PID 1, the non-root user, the HEALTHCHECK schedule) is covered by
test_docker.py where an engine exists.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from tests.deploy import dockerfile
from tests.deploy.conftest import APP_PASSWORD, SHUTDOWN_TIMEOUT_S
from tests.support.pg import LocalPostgres
from tests.support.proxy import PASSWORDS
from tests.support.waits import wait_for_sync

IMAGE_CONFIG = "/etc/pgpool-proxy/pgpool-proxy.toml"


def _local_command(command: list[str]) -> list[str]:
    """The image's command with the image's paths replaced by the repository's files.

    The image's ``pgpool-proxy`` is the wheel's console script, which runs ``pgpool_proxy.cli:
    main`` exactly as ``python -m pgpool_proxy`` does; the module form runs this checkout's code
    whatever the installed script points at.
    """
    copied = dockerfile.copied_files()
    assert copied.get(IMAGE_CONFIG) == "deploy/pgpool-proxy.toml", copied
    assert command[0] == "pgpool-proxy", command
    local = [
        str(dockerfile.REPO / copied[IMAGE_CONFIG]) if a == IMAGE_CONFIG else a for a in command
    ]
    return [sys.executable, "-m", "pgpool_proxy", *local[1:]]


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@dataclass
class Container:
    """The proxy process as the container would run it."""

    proc: subprocess.Popen[bytes]
    env: dict[str, str]
    port: int
    metrics: str
    log: Path

    def logs(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def connect(self, **kw: object) -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(
            host="127.0.0.1",
            port=self.port,
            user="app",
            password=APP_PASSWORD,
            dbname="app",
            connect_timeout=5,
            **kw,  # type: ignore[arg-type]
        )


@pytest.fixture
def container(container_env: dict[str, str], tmp_path: Path) -> Iterator[Container]:
    env = container_env
    port = int(env["PGPOOL_PROXY_LISTEN"].rpartition(":")[2])
    metrics_port = int(env["PGPOOL_METRICS_LISTEN"].rpartition(":")[2])
    log = tmp_path / "proxy.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            _local_command(dockerfile.entry_command()),
            env=env,
            cwd=tmp_path,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    box = Container(proc, env, port, f"http://127.0.0.1:{metrics_port}", log)
    try:
        yield box
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def _wait_healthy(box: Container, deadline_s: float = 30.0) -> None:
    """Run the Dockerfile's HEALTHCHECK command until it passes, as Docker would."""
    command = _local_command(dockerfile.healthcheck_command())
    last = [""]

    def healthy() -> bool:
        if box.proc.poll() is not None:
            pytest.fail(f"the proxy exited with {box.proc.returncode}:\n{box.logs()}")
        done = subprocess.run(command, env=box.env, capture_output=True, text=True, timeout=15)
        last[0] = done.stderr
        return done.returncode == 0

    wait_for_sync(
        healthy,
        timeout=deadline_s,
        what=lambda: f"HEALTHCHECK to pass (last: {last[0].strip()}):\n{box.logs()}",
        interval=0.2,  # a subprocess a try
    )


def test_entry_command_serves_and_drains_on_sigterm(
    container: Container, pg: LocalPostgres
) -> None:
    box = container
    _wait_healthy(box)
    assert _get(box.metrics + "/healthz")[0] == 200
    status, body = _get(box.metrics + "/readyz")
    assert status == 200, body

    alice = {"user": "alice", "password": PASSWORDS["alice"], "dbname": "app"}
    pg.psql("CREATE TABLE IF NOT EXISTS deploy_drain (n int); TRUNCATE deploy_drain", **alice)

    with box.connect(autocommit=True) as probe:
        # The server login came from the secret, not from the client's credentials.
        assert probe.execute("select current_user").fetchone() == ("alice",)

    conn = box.connect()
    try:
        conn.execute("insert into deploy_drain values (1)")
        slept: list[object] = []

        def long_statement() -> None:
            try:
                slept.append(conn.execute("select pg_sleep(1.5), 'done'").fetchone())
            except Exception as exc:
                slept.append(exc)

        worker = threading.Thread(target=long_statement)
        worker.start()
        running = (
            "select count(*) from pg_stat_activity where state = 'active' "
            "and query like '%pg_sleep(1.5)%' and pid <> pg_backend_pid()"
        )
        wait_for_sync(
            lambda: pg.psql(running, **alice) == "1", what="the long statement on the server"
        )
        box.proc.send_signal(signal.SIGTERM)
        worker.join(15)
        assert slept and not isinstance(slept[0], Exception), slept
        assert slept[0] == ("", "done")

        # Draining: not ready for the load balancer, and new clients are turned away.
        try:
            status, body = _get(box.metrics + "/readyz")
            assert status == 503, (status, body)
        except OSError:
            pass  # the endpoint already closed: not ready either
        with pytest.raises(psycopg.OperationalError):
            box.connect().close()

        # The transaction in flight finishes: more work, then COMMIT.
        conn.execute("insert into deploy_drain values (2)")
        conn.commit()
    finally:
        try:
            rc = box.proc.wait(SHUTDOWN_TIMEOUT_S + 5)
        finally:
            conn.close()
    assert rc == 0, box.logs()
    # The drain ended when the transaction did, not at shutdown_timeout_s.
    assert "ran out" not in box.logs(), box.logs()
    rows = pg.psql("select n from deploy_drain order by n", **alice)
    assert rows.split() == ["1", "2"], rows


def test_entry_command_refuses_to_start_without_its_environment(
    container_env: dict[str, str],
) -> None:
    """A container started without the deployment's variables exits at once with status 1 and
    names every missing variable (what ECS and Kubernetes show as the container's last log)."""
    unset = ("PGPOOL_DB_HOST", "PGPOOL_DB_PORT")
    env = {k: v for k, v in container_env.items() if k not in unset}
    done = subprocess.run(
        _local_command(dockerfile.entry_command()),
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 1
    assert "PGPOOL_DB_HOST is not set" in done.stderr
    assert "PGPOOL_DB_PORT is not set" in done.stderr
