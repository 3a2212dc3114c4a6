"""Config keys of [client_tls], [server_tls], [iam], [[iam_rules]], [secrets] and the per-entry
secret_arn / iam keys: defaults, types and cross-key checks, each problem naming its key."""

from __future__ import annotations

from pathlib import Path

import pytest

from pgpool_proxy.config import (
    ClientTlsMode,
    ConfigError,
    IamVerifierKind,
    ServerTlsMode,
    build_config,
)

ARN = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:app-AbCdEf"


def problems(data: dict[str, object]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        build_config(data, source="t.toml", env={})
    return info.value.problems


def base(**extra: object) -> dict[str, object]:
    data: dict[str, object] = {
        "auth": {"type": "scram-sha-256"},
        "databases": [{"name": "app"}],
        "users": [{"name": "alice", "password": "pw"}],
    }
    data.update(extra)
    return data


def test_defaults() -> None:
    config = build_config(base(), env={})
    assert config.client_tls.mode is ClientTlsMode.DISABLE
    assert config.server_tls.mode is ServerTlsMode.DISABLE
    assert config.iam.verifier is IamVerifierKind.STS
    assert config.iam_rules == ()
    assert config.secrets.refresh_interval_s == 300.0
    assert config.databases[0].secret_arn is None and not config.users[0].iam


def test_iam_user_needs_tls_endpoint_region_and_rules() -> None:
    found = problems(base(users=[{"name": "app", "iam": True}]))
    text = "\n".join(found)
    assert "t.toml: client_tls.mode: IAM authentication (users app) needs client TLS" in text
    assert "t.toml: iam.endpoint: required" in text
    assert "t.toml: iam.region: required" in text
    assert "t.toml: iam_rules:" in text
    # An IAM user needs no password even under SCRAM.
    assert not any("users[0].password" in p for p in found)


def test_full_iam_config(tmp_path: Path) -> None:
    cert = tmp_path / "c.pem"
    cert.write_text("x")
    config = build_config(
        base(
            users=[{"name": "app", "iam": True}],
            client_tls={"mode": "require", "cert_file": str(cert), "key_file": str(cert)},
            iam={"endpoint": "proxy.example.com:6432", "region": "us-east-1"},
            iam_rules=[{"arn": "arn:aws:sts::1:assumed-role/x/*", "users": ["app"]}],
        ),
        env={"PGPOOL_IAM_STS_ENDPOINTS": "http://127.0.0.1:1, https://sts.amazonaws.com"},
    )
    assert config.users[0].iam
    assert config.iam.sts_endpoint_urls() == ("http://127.0.0.1:1", "https://sts.amazonaws.com")
    assert config.iam_rules[0].users == ("app",)


def test_type_and_value_problems() -> None:
    found = problems(
        base(
            client_tls={"mode": "sometimes", "min_version": "SSLv3"},
            server_tls={"mode": "verify-full"},
            iam={"max_clock_skew_s": 5000, "sts_endpoints": "https://x"},
            iam_rules=[{"arn": "*"}],
            secrets={"refresh_jitter": 2},
            users=[{"name": "alice", "password": "pw", "iam": "yes"}],
        )
    )
    text = "\n".join(found)
    assert 'client_tls.mode: must be one of "disable", "allow", "require"' in text
    assert "server_tls.ca_file: required" in text
    assert "iam.max_clock_skew_s: must be between 0 and 900" in text
    assert "iam.sts_endpoints: expected an array of strings" in text
    assert "iam_rules[0].users: required" in text
    assert "secrets.refresh_jitter: must be between 0 and 0.9" in text
    assert "users[0].iam: expected true or false" in text


def test_secret_arn_checks() -> None:
    config = build_config(base(databases=[{"name": "app", "secret_arn": ARN}]), env={})
    assert config.databases[0].secret_arn == ARN
    found = problems(
        base(
            databases=[
                {"name": "a", "secret_arn": "not-an-arn"},
                {"name": "b", "secret_arn": ARN, "user": "u", "password": "p"},
                {"name": "c", "secret_region": "eu-west-1"},
            ]
        )
    )
    text = "\n".join(found)
    assert "databases[0].secret_arn: expected a Secrets Manager ARN" in text
    assert "databases[1].secret_arn: the secret supplies the server user and password" in text
    assert "databases[2].secret_arn: required with secret_region" in text
