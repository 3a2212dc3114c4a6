"""Owns the TLS, IAM and Secrets Manager settings: their dataclasses and cross-key checks.

Nothing here does I/O except checking that configured files exist.
"""

from __future__ import annotations

import enum
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from .schema import Add, Checker, Key, Kind, all_valid, only_valid
from .tables import read_entries, read_section
from .users import UserConfig

__all__ = [
    "CLIENT_TLS_KEYS",
    "DEFAULT_STS_ENDPOINTS",
    "IAM_KEYS",
    "IAM_RULE_KEYS",
    "SECRETS_KEYS",
    "SERVER_TLS_KEYS",
    "TLS_VERSIONS",
    "ClientTlsMode",
    "ClientTlsSettings",
    "IamRule",
    "IamSettings",
    "IamVerifierKind",
    "SecretsSettings",
    "ServerTlsMode",
    "ServerTlsSettings",
    "build_security",
    "check_client_tls",
    "check_iam",
    "check_secret_ref",
    "check_server_tls",
    "region_of_secret_arn",
]


class ClientTlsMode(enum.Enum):
    """Whether clients may or must use TLS to the proxy."""

    DISABLE = "disable"  # answer SSLRequest with N
    ALLOW = "allow"  # TLS when the client asks for it, plaintext otherwise
    REQUIRE = "require"  # refuse clients that do not ask for TLS


class ServerTlsMode(enum.Enum):
    """libpq's sslmode for the proxy's own connections to PostgreSQL."""

    DISABLE = "disable"
    PREFER = "prefer"
    REQUIRE = "require"
    VERIFY_CA = "verify-ca"
    VERIFY_FULL = "verify-full"


class IamVerifierKind(enum.Enum):
    """How the signature of a client's IAM token is checked."""

    STS = "sts"
    KEYRING = "keyring"
    PASSTHROUGH = "passthrough"


TLS_VERSIONS: Final = ("TLSv1.2", "TLSv1.3")


@dataclass(frozen=True, slots=True)
class ClientTlsSettings:
    """The ``[client_tls]`` section: TLS between clients and the proxy."""

    mode: ClientTlsMode = ClientTlsMode.DISABLE
    cert_file: str = ""
    key_file: str = ""
    min_version: str = "TLSv1.2"


@dataclass(frozen=True, slots=True)
class ServerTlsSettings:
    """The ``[server_tls]`` section: TLS between the proxy and PostgreSQL."""

    mode: ServerTlsMode = ServerTlsMode.DISABLE
    ca_file: str = ""
    min_version: str = "TLSv1.2"


DEFAULT_STS_ENDPOINTS: Final = ("https://sts.{region}.amazonaws.com", "https://sts.amazonaws.com")


@dataclass(frozen=True, slots=True)
class IamSettings:
    """The ``[iam]`` section: IAM token authentication of clients (users with ``iam = true``)."""

    verifier: IamVerifierKind = IamVerifierKind.STS
    endpoint: str = ""  # the proxy's advertised "host:port", which tokens must name
    region: str = ""
    max_clock_skew_s: float = 60.0
    sts_endpoints: tuple[str, ...] = DEFAULT_STS_ENDPOINTS
    sts_timeout_s: float = 5.0
    keyring_file: str = ""
    cache_size: int = 10000

    def sts_endpoint_urls(self) -> tuple[str, ...]:
        """The allow-listed STS base URLs, with ``{region}`` filled in."""
        return tuple(url.format(region=self.region).rstrip("/") for url in self.sts_endpoints)


@dataclass(frozen=True, slots=True)
class IamRule:
    """One ``[[iam_rules]]`` entry: principals (ARN glob) allowed to log in as some users."""

    arn: str
    users: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class SecretsSettings:
    """The ``[secrets]`` section: how AWS Secrets Manager credentials are cached."""

    refresh_interval_s: float = 300.0
    refresh_jitter: float = 0.2
    retry_interval_s: float = 5.0
    request_timeout_s: float = 5.0


_ARN_RE: Final = re.compile(r"arn:aws[a-z-]*:secretsmanager:([a-z0-9-]+):\d{12}:secret:.+")
_REGION_RE: Final = re.compile(r"[a-z]{2}(-[a-z]+)+-\d+")


def region_of_secret_arn(arn: str) -> str | None:
    """The region named in a Secrets Manager ARN, or None when ``arn`` is not one."""
    match = _ARN_RE.fullmatch(arn)
    return match.group(1) if match else None


def check_client_tls(add: Add, tls: ClientTlsSettings, iam_users: Sequence[str]) -> None:
    """Cross-key checks of ``[client_tls]``: files present when TLS is on; IAM needs TLS."""
    if tls.mode is not ClientTlsMode.DISABLE:
        for key in ("cert_file", "key_file"):
            path = getattr(tls, key)
            if not path:
                add(f"client_tls.{key}", f'required when client_tls.mode is "{tls.mode.value}"')
            elif not os.path.isfile(path):
                add(f"client_tls.{key}", f"file not found: {path}")
    if tls.min_version not in TLS_VERSIONS:
        add("client_tls.min_version", f"must be one of {', '.join(TLS_VERSIONS)}")
    if iam_users and tls.mode is ClientTlsMode.DISABLE:
        add(
            "client_tls.mode",
            f'IAM authentication (users {", ".join(iam_users)}) needs client TLS: set "allow" '
            'or "require" (tokens are bearer credentials and never cross the network in clear)',
        )


def check_server_tls(add: Add, tls: ServerTlsSettings) -> None:
    """``ca_file`` is required for the verifying modes and must exist when given."""
    verifying = tls.mode in (ServerTlsMode.VERIFY_CA, ServerTlsMode.VERIFY_FULL)
    if verifying and not tls.ca_file:
        add("server_tls.ca_file", f'required when server_tls.mode is "{tls.mode.value}"')
    elif tls.ca_file and not os.path.isfile(tls.ca_file):
        add("server_tls.ca_file", f"file not found: {tls.ca_file}")
    if tls.min_version not in TLS_VERSIONS:
        add("server_tls.min_version", f"must be one of {', '.join(TLS_VERSIONS)}")


def check_iam(add: Add, iam: IamSettings, iam_users: Sequence[str], rules: int) -> None:
    """With IAM users configured: endpoint, region and the verifier's own inputs are needed."""
    if not iam_users:
        return
    host, sep, port = iam.endpoint.rpartition(":")
    if not iam.endpoint:
        add("iam.endpoint", 'required with IAM users: the "host:port" clients sign tokens for')
    elif not sep or not host or not port.isdigit():
        add("iam.endpoint", f'expected "host:port", got "{iam.endpoint}"')
    if not iam.region:
        add("iam.region", "required with IAM users (the region tokens are signed for)")
    elif not _REGION_RE.fullmatch(iam.region):
        add("iam.region", f'"{iam.region}" is not an AWS region name (e.g. "us-east-1")')
    if iam.verifier is IamVerifierKind.STS:
        for url in iam.sts_endpoint_urls():
            if not url.startswith(("https://", "http://")):
                add("iam.sts_endpoints", f'"{url}" must be an http(s) URL')
        if rules == 0:
            add("iam_rules", 'the "sts" verifier needs at least one [[iam_rules]] entry')
    if iam.verifier is IamVerifierKind.KEYRING:
        if not iam.keyring_file:
            add("iam.keyring_file", 'required when iam.verifier is "keyring"')
        elif not os.path.isfile(iam.keyring_file):
            add("iam.keyring_file", f"file not found: {iam.keyring_file}")


def check_secret_ref(
    add: Add, path: str, arn: str, region: str | None, has_user: bool, has_password: bool
) -> None:
    """A database's ``secret_arn``: a Secrets Manager ARN, not combined with user/password."""
    arn_region = region_of_secret_arn(arn)
    if arn_region is None:
        add(
            f"{path}.secret_arn",
            'expected a Secrets Manager ARN ("arn:aws:secretsmanager:REGION:ACCOUNT:secret:NAME")',
        )
    if region is not None and not _REGION_RE.fullmatch(region):
        add(f"{path}.secret_region", f'"{region}" is not an AWS region name')
    if has_user or has_password:
        add(
            f"{path}.secret_arn",
            "the secret supplies the server user and password: remove user/password",
        )


CLIENT_TLS_KEYS: Final[dict[str, Key]] = {
    "mode": Key(Kind.ENUM, enum_type=ClientTlsMode),
    "cert_file": Key(Kind.STR),
    "key_file": Key(Kind.STR),
    "min_version": Key(Kind.STR),
}

SERVER_TLS_KEYS: Final[dict[str, Key]] = {
    "mode": Key(Kind.ENUM, enum_type=ServerTlsMode),
    "ca_file": Key(Kind.STR),
    "min_version": Key(Kind.STR),
}

IAM_KEYS: Final[dict[str, Key]] = {
    "verifier": Key(Kind.ENUM, enum_type=IamVerifierKind),
    "endpoint": Key(Kind.STR),
    "region": Key(Kind.STR),
    "max_clock_skew_s": Key(Kind.FLOAT, lo=0, hi=900),
    "sts_endpoints": Key(Kind.STRLIST, nonempty=True),
    "sts_timeout_s": Key(Kind.FLOAT, lo=0, lo_open=True),
    "keyring_file": Key(Kind.STR),
    "cache_size": Key(Kind.INT, lo=0),
}

SECRETS_KEYS: Final[dict[str, Key]] = {
    "refresh_interval_s": Key(Kind.FLOAT, lo=0, lo_open=True),
    "refresh_jitter": Key(Kind.FLOAT, lo=0, hi=0.9),
    "retry_interval_s": Key(Kind.FLOAT, lo=0, lo_open=True),
    "request_timeout_s": Key(Kind.FLOAT, lo=0, lo_open=True),
}

IAM_RULE_KEYS: Final[dict[str, Key]] = {
    "arn": Key(Kind.STR, nonempty=True),
    "users": Key(Kind.STRLIST, nonempty=True),
}


def build_security(
    checker: Checker,
    data: Mapping[str, Any],
    database_entries: list[tuple[str, dict[str, Any]]],
    users: Iterable[UserConfig],
) -> dict[str, Any]:
    """The [client_tls], [server_tls], [iam], [secrets] and [[iam_rules]] parts of a Config
    (by field name), with their cross-key checks."""
    client_values = read_section(checker, "client_tls", data.get("client_tls"), CLIENT_TLS_KEYS)
    server_values = read_section(checker, "server_tls", data.get("server_tls"), SERVER_TLS_KEYS)
    iam_values = read_section(checker, "iam", data.get("iam"), IAM_KEYS)
    secrets_values = read_section(checker, "secrets", data.get("secrets"), SECRETS_KEYS)
    rules: list[IamRule] = []
    for path, values in read_entries(
        checker, "iam_rules", data.get("iam_rules"), IAM_RULE_KEYS, named=False
    ):
        if "arn" not in values:
            checker.add(f"{path}.arn", "required")
        elif "users" not in values:
            checker.add(f"{path}.users", "required")
        elif all_valid(values):
            rules.append(IamRule(**values))
    client_tls = ClientTlsSettings(**only_valid(client_values))
    server_tls = ServerTlsSettings(**only_valid(server_values))
    iam = IamSettings(**only_valid(iam_values))
    iam_users = [u.name for u in users if u.iam]
    add = checker.add
    if all_valid(client_values):
        check_client_tls(add, client_tls, iam_users)
    if all_valid(server_values):
        check_server_tls(add, server_tls)
    if all_valid(iam_values):
        check_iam(add, iam, iam_users, len(rules))
    for path, values in database_entries:
        arn = values.get("secret_arn")
        if isinstance(arn, str):
            region = values.get("secret_region")
            check_secret_ref(
                add,
                path,
                arn,
                region if isinstance(region, str) else None,
                "user" in values,
                "password" in values,
            )
        elif "secret_region" in values or "secret_endpoint_url" in values:
            add(f"{path}.secret_arn", "required with secret_region / secret_endpoint_url")
    return {
        "client_tls": client_tls,
        "server_tls": server_tls,
        "iam": iam,
        "iam_rules": tuple(rules),
        "secrets": SecretsSettings(**only_valid(secrets_values)),
    }
