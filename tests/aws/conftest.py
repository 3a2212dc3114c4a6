"""Fixtures for the AWS tests: TLS material, a fake STS, moto in server mode (all on 127.0.0.1)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from pgpool_devkit.tls_material import CertFiles
from tests.support.fake_sts import FakeSts
from tests.support.tlsfiles import TlsDir

# Principals the fake STS knows: access key id -> (secret key, ARN).
STS_KEYS = {
    "AKIAAPPLAMBDA0000001": ("lambda-secret", "arn:aws:sts::123456789012:assumed-role/app-fn/s1"),
    "AKIAINTRUDER00000001": ("intruder-secret", "arn:aws:iam::123456789012:user/intruder"),
}
ENDPOINT_HOST, ENDPOINT_PORT = "db-proxy.example.com", 5432
REGION = "us-east-1"


@pytest.fixture(scope="module")
def proxy_cert() -> Iterator[CertFiles]:
    d = TlsDir()
    yield d.issue("proxy", ["127.0.0.1", "localhost"])
    d.remove()


@pytest.fixture(scope="module")
def fake_sts() -> Iterator[FakeSts]:
    sts = FakeSts(STS_KEYS).start()
    yield sts
    sts.stop()


def tls_section(files: CertFiles, mode: str = "allow") -> dict[str, Any]:
    return {"mode": mode, "cert_file": str(files.cert_file), "key_file": str(files.key_file)}


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake credentials for botocore (never real ones: no profile, no instance metadata)."""
    for k, v in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_EC2_METADATA_DISABLED": "true",
    }.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
