"""Owns `pgpool-proxy healthcheck`: a container health probe of the metrics endpoint's /healthz.

Slim images have no curl, and a Docker HEALTHCHECK or ECS container health check runs a
command inside the container; this is that command. It finds the metrics address the same way
the proxy does (``[metrics] listen`` in the file, overridden by ``PGPOOL_METRICS_LISTEN``)
without validating the rest of the configuration, so a probe never fails for a reason that has
nothing to do with the running process.
"""

from __future__ import annotations

import os
import sys
import tomllib
import urllib.error
import urllib.request
from collections.abc import Mapping

DEFAULT_CONFIG = "/etc/pgpool-proxy/pgpool-proxy.toml"
ENV_LISTEN = "PGPOOL_METRICS_LISTEN"


class HealthcheckError(Exception):
    """The probe could not be made (no endpoint configured, unreadable file)."""


def metrics_url(config_path: str, path: str, env: Mapping[str, str] | None = None) -> str:
    """The URL of ``path`` on the metrics endpoint configured in ``config_path`` + ``env``."""
    env = os.environ if env is None else env
    listen = env.get(ENV_LISTEN)
    if listen is None:
        try:
            with open(config_path, "rb") as handle:
                data = tomllib.load(handle)
        except OSError as exc:
            raise HealthcheckError(f"cannot read {config_path}: {exc.strerror or exc}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise HealthcheckError(f"{config_path}: invalid TOML: {exc}") from None
        section = data.get("metrics")
        value = section.get("listen") if isinstance(section, dict) else None
        listen = value if isinstance(value, str) else ""
    listen = listen.strip()
    if not listen:
        raise HealthcheckError(f"no metrics endpoint: set [metrics] listen in {config_path}")
    host, _, port = listen.rpartition(":")
    # A wildcard listener is reached over loopback from inside the container.
    if host in ("", "0.0.0.0", "*"):
        host = "127.0.0.1"
    elif host in ("[::]", "::"):
        host = "[::1]"
    return f"http://{host}:{port}{path}"


def probe(url: str, timeout_s: float) -> tuple[bool, str]:
    """(healthy, what happened) for one GET of ``url``."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            body = resp.read(200).decode("utf-8", "replace").strip()
            return resp.status == 200, f"{resp.status} {body}".strip()
    except urllib.error.HTTPError as exc:
        body = exc.read(200).decode("utf-8", "replace").strip()
        return False, f"{exc.code} {body}".strip()
    except (OSError, ValueError) as exc:
        return False, f"{url}: {exc}"


def healthcheck_main(config_path: str, path: str, timeout_s: float) -> int:
    """Exit status 0 when the endpoint answers 200, 1 otherwise (Docker's "unhealthy")."""
    try:
        url = metrics_url(config_path, path)
    except HealthcheckError as exc:
        print(f"pgpool-proxy healthcheck: {exc}", file=sys.stderr)
        return 1
    healthy, detail = probe(url, timeout_s)
    print(f"pgpool-proxy healthcheck: {detail}", file=sys.stdout if healthy else sys.stderr)
    return 0 if healthy else 1
