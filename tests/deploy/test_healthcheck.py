"""`pgpool-proxy healthcheck`: where it looks, and its exit status against a real HTTP server.

The end-to-end use (the Dockerfile's HEALTHCHECK against the running proxy) is in
test_entrypoint.py; here the endpoint is a small local server whose answer the test controls.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from pgpool_proxy.cli import main as cli_main
from pgpool_proxy.healthcheck import HealthcheckError, metrics_url


def test_url_from_the_file_and_the_environment(tmp_path: Path) -> None:
    conf = tmp_path / "c.toml"
    conf.write_text('[metrics]\nlisten = "0.0.0.0:9432"\n')
    assert metrics_url(str(conf), "/healthz", env={}) == "http://127.0.0.1:9432/healthz"
    env = {"PGPOOL_METRICS_LISTEN": "[::]:9500"}
    assert metrics_url(str(conf), "/readyz", env=env) == "http://[::1]:9500/readyz"
    env = {"PGPOOL_METRICS_LISTEN": "10.0.0.5:9600"}
    assert metrics_url(str(conf), "/healthz", env=env) == "http://10.0.0.5:9600/healthz"
    # The rest of the file is not validated: a probe must not fail for unrelated keys.
    conf.write_text('[metrics]\nlisten = "127.0.0.1:1"\n[nonsense]\nx = 1\n')
    assert metrics_url(str(conf), "/healthz", env={}) == "http://127.0.0.1:1/healthz"


def test_no_endpoint_is_an_error(tmp_path: Path) -> None:
    conf = tmp_path / "c.toml"
    conf.write_text('[proxy]\nlisten = "0.0.0.0:6432"\n')
    with pytest.raises(HealthcheckError, match="set \\[metrics\\] listen"):
        metrics_url(str(conf), "/healthz", env={})
    with pytest.raises(HealthcheckError, match="cannot read"):
        metrics_url(str(tmp_path / "missing.toml"), "/healthz", env={})


class _Handler(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        body = b"ok\n" if self.status == 200 else b"draining\n"
        self.send_response(self.status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def endpoint() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(5)


def test_exit_status_follows_the_endpoint(
    endpoint: ThreadingHTTPServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    port = endpoint.server_address[1]
    conf = tmp_path / "c.toml"
    conf.write_text(f'[metrics]\nlisten = "0.0.0.0:{port}"\n')
    monkeypatch.delenv("PGPOOL_METRICS_LISTEN", raising=False)
    _Handler.status = 200
    assert cli_main(["healthcheck", "--config", str(conf)]) == 0
    assert "200 ok" in capsys.readouterr().out
    _Handler.status = 503
    try:
        assert cli_main(["healthcheck", "--config", str(conf), "--path", "/readyz"]) == 1
    finally:
        _Handler.status = 200
    assert "503 draining" in capsys.readouterr().err
    # Nothing listening: unhealthy, with the reason.
    endpoint.shutdown()
    endpoint.server_close()
    assert cli_main(["healthcheck", "--config", str(conf), "--timeout", "1"]) == 1
    assert f"127.0.0.1:{port}" in capsys.readouterr().err
