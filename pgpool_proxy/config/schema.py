"""Owns the configuration schema: every key's type and range, and the checks that apply them.

`pgpool_proxy.config` is the public face (settings dataclasses, `ConfigError`, the loaders);
this module holds the machinery `build_config` drives: the per-section key tables, the
`_Checker` that converts raw TOML/environment values while collecting every problem, and the
password-form checks.
"""

from __future__ import annotations

import base64
import binascii
import difflib
import enum
import ipaddress
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, time
from typing import Any, Final

from .build import AuthType, ConfigError, PoolMode
from .envrefs import resolve_env_refs
from .security import ClientTlsMode, IamVerifierKind, ServerTlsMode
from .topology import DatabaseRole

_LOG_LEVELS: Final = ("debug", "info", "warning", "error")
_LOG_FORMATS: Final = ("text", "json")
_MIB: Final = 1024 * 1024
_GIB: Final = 1024 * _MIB


class _Kind(enum.Enum):
    INT = "int"
    FLOAT = "float"
    STR = "str"
    CHOICE = "choice"
    ENUM = "enum"
    LISTEN = "listen"
    BOOL = "bool"
    STRLIST = "strlist"


@dataclass(frozen=True, slots=True)
class _Key:
    kind: _Kind
    lo: float | None = None
    hi: float | None = None
    # True where zero would be meaningless (a zero login timeout would reject every client).
    lo_open: bool = False
    choices: tuple[str, ...] = ()
    enum_type: type[enum.Enum] | None = None
    nonempty: bool = False


_PROXY_KEYS: Final[dict[str, _Key]] = {
    "listen": _Key(_Kind.LISTEN),
    "pool_mode": _Key(_Kind.ENUM, enum_type=PoolMode),
    "max_client_conn": _Key(_Kind.INT, lo=1),
    "client_login_timeout_s": _Key(_Kind.FLOAT, lo=0, lo_open=True),
    "max_message_size_bytes": _Key(_Kind.INT, lo=_MIB, hi=_GIB),
    "max_client_statement_bytes": _Key(_Kind.INT, lo=1024, hi=64 * _GIB),
    "max_client_settings_bytes": _Key(_Kind.INT, lo=1024, hi=_GIB),
    "log_level": _Key(_Kind.CHOICE, choices=_LOG_LEVELS),
    "log_format": _Key(_Kind.CHOICE, choices=_LOG_FORMATS),
    "workers": _Key(_Kind.INT, lo=1, hi=64),
    # Lifecycle (pgpool_proxy.lifecycle): SIGTERM drain bound; SO_REUSEPORT for rolling restarts.
    "shutdown_timeout_s": _Key(_Kind.FLOAT, lo=0),
    "reuse_port": _Key(_Kind.BOOL),
    # pgpool_proxy.loopwatch: warn when the event loop was held this long (0: never).
    "loop_lag_warn_ms": _Key(_Kind.INT, lo=0, hi=3_600_000),
}

# The admin console (dataclass and cross-key checks in config_admin).
_ADMIN_KEYS: Final[dict[str, _Key]] = {
    "database": _Key(_Kind.STR, nonempty=True),
    "admin_users": _Key(_Kind.STRLIST),
    "stats_users": _Key(_Kind.STRLIST),
}

_POOL_KEYS: Final[dict[str, _Key]] = {
    "default_pool_size": _Key(_Kind.INT, lo=1),
    "min_pool_size": _Key(_Kind.INT, lo=0),
    "query_wait_timeout_s": _Key(_Kind.FLOAT, lo=0),
    "server_idle_timeout_s": _Key(_Kind.FLOAT, lo=0),
    "server_lifetime_s": _Key(_Kind.FLOAT, lo=0),
    "server_connect_timeout_s": _Key(_Kind.FLOAT, lo=0, lo_open=True),
    "server_login_retry_s": _Key(_Kind.FLOAT, lo=0, lo_open=True),
    "server_reset_query": _Key(_Kind.STR),
    "max_prepared_statements": _Key(_Kind.INT, lo=0, hi=100_000),
    "statement_cache_bytes": _Key(_Kind.INT, lo=0, hi=64 * _GIB),
    "max_server_connections": _Key(_Kind.INT, lo=0),
    "server_max_scram_iterations": _Key(_Kind.INT, lo=1, hi=10_000_000),
    # Silent servers (pool.pool.Pool._watch) and kernel dead-peer detection (pool.connect).
    "query_timeout_s": _Key(_Kind.FLOAT, lo=0),
    "server_check_delay_s": _Key(_Kind.FLOAT, lo=0),
    "server_check_timeout_s": _Key(_Kind.FLOAT, lo=0, lo_open=True),
    "tcp_keepalive": _Key(_Kind.BOOL),
    "tcp_keepidle_s": _Key(_Kind.INT, lo=1, hi=32767),
    "tcp_keepintvl_s": _Key(_Kind.INT, lo=1, hi=32767),
    "tcp_keepcnt": _Key(_Kind.INT, lo=1, hi=127),
    "tcp_user_timeout_s": _Key(_Kind.FLOAT, lo=0, hi=2_000_000),
}

_AUTH_KEYS: Final[dict[str, _Key]] = {
    "type": _Key(_Kind.ENUM, enum_type=AuthType),
}

_DATABASE_KEYS: Final[dict[str, _Key]] = {
    "name": _Key(_Kind.STR, nonempty=True),
    "host": _Key(_Kind.STR, nonempty=True),
    "port": _Key(_Kind.INT, lo=1, hi=65535),
    "dbname": _Key(_Kind.STR, nonempty=True),
    "user": _Key(_Kind.STR, nonempty=True),
    "password": _Key(_Kind.STR, nonempty=True),
    "password_env": _Key(_Kind.STR, nonempty=True),
    "pool_size": _Key(_Kind.INT, lo=1),
    "pool_mode": _Key(_Kind.ENUM, enum_type=PoolMode),
    "secret_arn": _Key(_Kind.STR, nonempty=True),
    "secret_region": _Key(_Kind.STR, nonempty=True),
    "secret_endpoint_url": _Key(_Kind.STR, nonempty=True),
    # Multi-host databases (dataclass and cross-key checks in config_topology).
    "hosts": _Key(_Kind.STRLIST, nonempty=True),
    "role": _Key(_Kind.ENUM, enum_type=DatabaseRole),
    "reader_fallback": _Key(_Kind.BOOL),
    "max_replica_lag_bytes": _Key(_Kind.INT, lo=0),
    "aurora_cluster": _Key(_Kind.STR, nonempty=True),
    "aurora_region": _Key(_Kind.STR, nonempty=True),
    "aurora_endpoint_url": _Key(_Kind.STR, nonempty=True),
    "monitor_user": _Key(_Kind.STR, nonempty=True),
    # Read host/port/hosts/secret_arn from a named environment variable (config_envrefs).
    "host_env": _Key(_Kind.STR, nonempty=True),
    "port_env": _Key(_Kind.STR, nonempty=True),
    "hosts_env": _Key(_Kind.STR, nonempty=True),
    "secret_arn_env": _Key(_Kind.STR, nonempty=True),
}

_USER_KEYS: Final[dict[str, _Key]] = {
    "name": _Key(_Kind.STR, nonempty=True),
    "password": _Key(_Kind.STR, nonempty=True),
    "password_env": _Key(_Kind.STR, nonempty=True),
    "pool_mode": _Key(_Kind.ENUM, enum_type=PoolMode),
    "iam": _Key(_Kind.BOOL),
}

# TLS, IAM and Secrets Manager (dataclasses and cross-key checks in config_security).
_CLIENT_TLS_KEYS: Final[dict[str, _Key]] = {
    "mode": _Key(_Kind.ENUM, enum_type=ClientTlsMode),
    "cert_file": _Key(_Kind.STR),
    "key_file": _Key(_Kind.STR),
    "min_version": _Key(_Kind.STR),
}

_SERVER_TLS_KEYS: Final[dict[str, _Key]] = {
    "mode": _Key(_Kind.ENUM, enum_type=ServerTlsMode),
    "ca_file": _Key(_Kind.STR),
    "min_version": _Key(_Kind.STR),
}

_IAM_KEYS: Final[dict[str, _Key]] = {
    "verifier": _Key(_Kind.ENUM, enum_type=IamVerifierKind),
    "endpoint": _Key(_Kind.STR),
    "region": _Key(_Kind.STR),
    "max_clock_skew_s": _Key(_Kind.FLOAT, lo=0, hi=900),
    "sts_endpoints": _Key(_Kind.STRLIST, nonempty=True),
    "sts_timeout_s": _Key(_Kind.FLOAT, lo=0, lo_open=True),
    "keyring_file": _Key(_Kind.STR),
    "cache_size": _Key(_Kind.INT, lo=0),
}

_SECRETS_KEYS: Final[dict[str, _Key]] = {
    "refresh_interval_s": _Key(_Kind.FLOAT, lo=0, lo_open=True),
    "refresh_jitter": _Key(_Kind.FLOAT, lo=0, hi=0.9),
    "retry_interval_s": _Key(_Kind.FLOAT, lo=0, lo_open=True),
    "request_timeout_s": _Key(_Kind.FLOAT, lo=0, lo_open=True),
}

_TOPOLOGY_KEYS: Final[dict[str, _Key]] = {
    "poll_interval_s": _Key(_Kind.FLOAT, lo=0.05, hi=60),
    "fast_poll_interval_s": _Key(_Kind.FLOAT, lo=0.02, hi=60),
    "probe_timeout_s": _Key(_Kind.FLOAT, lo=0, lo_open=True, hi=60),
    "failover_timeout_s": _Key(_Kind.FLOAT, lo=0, lo_open=True),
    "discovery_interval_s": _Key(_Kind.FLOAT, lo=1),
}

# [metrics] (dataclass and builder in config_metrics); an empty listen turns the endpoint off.
_METRICS_KEYS: Final[dict[str, _Key]] = {
    "listen": _Key(_Kind.STR),
    "request_timeout_s": _Key(_Kind.FLOAT, lo=0, lo_open=True, hi=300),
}

_IAM_RULE_KEYS: Final[dict[str, _Key]] = {
    "arn": _Key(_Kind.STR, nonempty=True),
    "users": _Key(_Kind.STRLIST, nonempty=True),
}

_SECTIONS: Final[dict[str, dict[str, _Key]]] = {
    "proxy": _PROXY_KEYS,
    "pool": _POOL_KEYS,
    "auth": _AUTH_KEYS,
    "client_tls": _CLIENT_TLS_KEYS,
    "server_tls": _SERVER_TLS_KEYS,
    "iam": _IAM_KEYS,
    "secrets": _SECRETS_KEYS,
    "topology": _TOPOLOGY_KEYS,
    "metrics": _METRICS_KEYS,
    "admin": _ADMIN_KEYS,
}
_ARRAYS: Final[dict[str, dict[str, _Key]]] = {
    "databases": _DATABASE_KEYS,
    "users": _USER_KEYS,
    "iam_rules": _IAM_RULE_KEYS,
}
# Arrays whose entries are not named (no required "name" key).
_UNNAMED_ARRAYS: Final = frozenset({"iam_rules"})

# People arriving from PgBouncer (or guessing from the dataclass) type these; a plain "unknown
# key" would leave them searching the docs for where the setting moved.
_KEY_HINTS: Final[dict[tuple[str, str], str]] = {
    ("proxy", "listen_addr"): 'use listen = "host:port"',
    ("proxy", "listen_host"): 'use listen = "host:port"',
    ("proxy", "listen_port"): 'use listen = "host:port"',
    ("proxy", "auth_type"): "set type in the [auth] section",
    ("proxy", "default_pool_size"): "it belongs in the [pool] section",
    ("proxy", "min_pool_size"): "it belongs in the [pool] section",
    ("pool", "pool_mode"): "it belongs in the [proxy] section",
    ("auth", "auth_type"): "the key is called type",
}

_MD5_HASH_RE: Final = re.compile(r"md5[0-9a-f]{32}")
_SCRAM_PREFIX: Final = "SCRAM-SHA-256$"
_SCRAM_RE: Final = re.compile(
    r"SCRAM-SHA-256\$(?P<iterations>[0-9]+):(?P<salt>[A-Za-z0-9+/=]+)"
    r"\$(?P<stored_key>[A-Za-z0-9+/=]+):(?P<server_key>[A-Za-z0-9+/=]+)"
)
_HOSTNAME_RE: Final = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_])?")

# Marks a value that failed validation; the problem has already been recorded.
_BAD: Final = object()


def _type_name(value: object) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, Mapping):
        return "table"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, datetime | date | time):
        return "date/time"
    return type(value).__name__


def _quote(value: str) -> str:
    # Double quotes match how the value is written in TOML, which is what the reader typed.
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def _format_number(value: float) -> str:
    if isinstance(value, int):  # float() overflows on a TOML integer of 309+ digits
        return str(value)
    return str(int(value)) if value.is_integer() else str(value)


def _env_name(section: str, key: str) -> str:
    return f"PGPOOL_{section.upper()}_{key.upper()}"


class _Checker:
    """Collects problems while converting raw values; never raises until `finish`."""

    def __init__(self, source: str, env: Mapping[str, str]) -> None:
        self.source = source
        self.env = env
        self.problems: list[str] = []

    def add(self, path: str, message: str) -> None:
        self.problems.append(f"{self.source}: {path}: {message}")

    def unknown_key(self, section: str, path: str, key: str, known: Iterable[str]) -> None:
        hint = _KEY_HINTS.get((section, key))
        if hint is None:
            close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
            hint = f"did you mean {_quote(close[0])}?" if close else None
        message = "unknown key"
        if hint:
            message += f"; {hint}"
        self.add(path, message)

    # -- scalar conversion ----------------------------------------------------------------

    def convert(self, spec: _Key, value: object, path: str) -> Any:
        """Validate one value against ``spec``; returns the typed value or `_BAD`."""
        if spec.kind is _Kind.INT:
            return self._int(spec, value, path)
        if spec.kind is _Kind.FLOAT:
            return self._float(spec, value, path)
        if spec.kind is _Kind.ENUM:
            return self._enum(spec, value, path)
        if spec.kind is _Kind.BOOL:
            if not isinstance(value, bool):
                self.add(path, f"expected true or false, got {_type_name(value)}")
                return _BAD
            return value
        if spec.kind is _Kind.STRLIST:
            return self._strlist(spec, value, path)
        if not isinstance(value, str):
            self.add(path, f"expected a string, got {_type_name(value)}")
            return _BAD
        if "\x00" in value:
            # The wire protocol NUL-terminates strings, so such a value could never be sent.
            self.add(path, "must not contain a NUL character")
            return _BAD
        if spec.kind is _Kind.LISTEN:
            return self._listen(value, path)
        if spec.kind is _Kind.CHOICE:
            lowered = value.lower()
            if lowered not in spec.choices:
                self._bad_choice(path, value, spec.choices)
                return _BAD
            return lowered
        if spec.nonempty and not value:
            self.add(path, "must not be empty")
            return _BAD
        return value

    def _strlist(self, spec: _Key, value: object, path: str) -> Any:
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            self.add(path, f"expected an array of strings, got {_type_name(value)}")
            return _BAD
        if spec.nonempty and (not value or not all(value)):
            self.add(path, "must be a non-empty array of non-empty strings")
            return _BAD
        return tuple(value)

    def _int(self, spec: _Key, value: object, path: str) -> Any:
        # bool is an int subclass in Python, but `port = true` is never what anyone meant.
        if isinstance(value, bool) or not isinstance(value, int):
            self.add(path, f"expected an integer, got {_type_name(value)}")
            return _BAD
        return value if self._in_range(spec, value, path) else _BAD

    def _float(self, spec: _Key, value: object, path: str) -> Any:
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.add(path, f"expected a number, got {_type_name(value)}")
            return _BAD
        try:
            number = float(value)
        except OverflowError:  # a TOML integer of 309+ digits
            number = math.inf
        if not math.isfinite(number):
            self.add(path, f"must be a finite number, got {number}")
            return _BAD
        return number if self._in_range(spec, number, path) else _BAD

    def _in_range(self, spec: _Key, value: float, path: str) -> bool:
        lo, hi = spec.lo, spec.hi
        below = lo is not None and (value <= lo if spec.lo_open else value < lo)
        above = hi is not None and value > hi
        if not (below or above):
            return True
        got = _format_number(value)
        if lo is not None and hi is not None:
            self.add(
                path, f"must be between {_format_number(lo)} and {_format_number(hi)}, got {got}"
            )
        elif lo is not None:
            op = ">" if spec.lo_open else ">="
            self.add(path, f"must be {op} {_format_number(lo)}, got {got}")
        else:
            assert hi is not None
            self.add(path, f"must be <= {_format_number(hi)}, got {got}")
        return False

    def _enum(self, spec: _Key, value: object, path: str) -> Any:
        enum_type = spec.enum_type
        assert enum_type is not None
        # Programmatic configs (tests, the demo) may pass the enum member itself.
        if isinstance(value, enum_type):
            return value
        allowed = tuple(str(member.value) for member in enum_type)
        if not isinstance(value, str):
            self.add(path, f"expected a string, got {_type_name(value)}")
            return _BAD
        lowered = value.lower()
        for member in enum_type:
            if member.value == lowered:
                return member
        self._bad_choice(path, value, allowed)
        return _BAD

    def _bad_choice(self, path: str, value: str, allowed: tuple[str, ...]) -> None:
        options = ", ".join(_quote(choice) for choice in allowed)
        self.add(path, f"must be one of {options}; got {_quote(value)}")

    def _listen(self, value: str, path: str) -> Any:
        example = 'expected "host:port", e.g. "127.0.0.1:6432" or "[::1]:6432"'
        if value.startswith("["):
            host, sep, port_text = value[1:].partition("]:")
            if not sep:
                self.add(path, f"{example}; got {_quote(value)}")
                return _BAD
            try:
                ipaddress.IPv6Address(host)
            except ValueError:
                self.add(path, f"{_quote(host)} in brackets is not an IPv6 address")
                return _BAD
        else:
            host, sep, port_text = value.rpartition(":")
            if not sep:
                self.add(path, f"{example}; got {_quote(value)}")
                return _BAD
            if ":" in host:
                self.add(
                    path,
                    f'IPv6 addresses must be bracketed, e.g. "[::1]:6432"; got {_quote(value)}',
                )
                return _BAD
            if not host:
                self.add(
                    path,
                    f'host is empty (use "0.0.0.0:PORT" for all interfaces); got {_quote(value)}',
                )
                return _BAD
            if not self._valid_host(host):
                self.add(path, f"{_quote(host)} is not a valid IP address or host name")
                return _BAD
        if not port_text.isascii() or not port_text.isdigit() or len(port_text) > 5:
            self.add(path, f"port must be a number; got {_quote(value)}")
            return _BAD
        port = int(port_text)
        if port > 65535:
            self.add(path, f"port must be between 0 and 65535, got {port}")
            return _BAD
        return (host, port)

    @staticmethod
    def _valid_host(host: str) -> bool:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            pass
        else:
            return True
        # "300.1.1.1" would otherwise pass as a host name and fail much later, at bind time.
        if re.fullmatch(r"[0-9.]+", host):
            return False
        return _HOSTNAME_RE.fullmatch(host) is not None

    def env_value(self, spec: _Key, raw: str, path: str) -> Any:
        """Turn an environment string into the type the TOML would have had."""
        if spec.kind is _Kind.INT:
            try:
                return int(raw.strip(), 10)
            except ValueError:
                self.add(path, f"expected an integer, got {_quote(raw)}")
                return _BAD
        if spec.kind is _Kind.FLOAT:
            try:
                return float(raw.strip())
            except ValueError:
                self.add(path, f"expected a number, got {_quote(raw)}")
                return _BAD
        if spec.kind is _Kind.BOOL:
            word = raw.strip().lower()
            if word not in ("true", "false"):
                self.add(path, f"expected true or false, got {_quote(raw)}")
                return _BAD
            return word == "true"
        if spec.kind is _Kind.STRLIST:
            return [item.strip() for item in raw.split(",") if item.strip()]
        return raw

    # -- sections -------------------------------------------------------------------------

    def table(self, value: object, path: str, form: str) -> Mapping[str, Any] | None:
        if isinstance(value, Mapping):
            return value
        self.add(path, f"expected a table ({form}), got {_type_name(value)}")
        return None

    def section(self, name: str, raw: object) -> dict[str, Any]:
        """Convert a [proxy]/[pool]/[auth] section, applying environment overrides."""
        specs = _SECTIONS[name]
        table: Mapping[str, Any] = {}
        if raw is not None:
            table = self.table(raw, name, f"[{name}]") or {}
        values: dict[str, Any] = {}
        for key, value in table.items():
            if key not in specs:
                self.unknown_key(name, f"{name}.{key}", key, specs)
            elif value is not None:
                values[key] = self.convert(specs[key], value, f"{name}.{key}")
        for key, spec in specs.items():
            var = _env_name(name, key)
            raw_env = self.env.get(var)
            if raw_env is None:
                continue
            path = f"{name}.{key} (from environment variable {var})"
            value = self.env_value(spec, raw_env, path)
            values[key] = value if value is _BAD else self.convert(spec, value, path)
        return values

    def entries(self, name: str, raw: object) -> list[tuple[str, dict[str, Any]]]:
        """Convert a [[databases]]/[[users]] array; returns (path, values) per table."""
        if raw is None:
            return []
        if isinstance(raw, Mapping) or not isinstance(raw, list | tuple):
            self.add(name, f"expected an array of tables ([[{name}]]), got {_type_name(raw)}")
            return []
        specs = _ARRAYS[name]
        result: list[tuple[str, dict[str, Any]]] = []
        for index, item in enumerate(raw):
            path = f"{name}[{index}]"
            table = self.table(item, path, f"[[{name}]]")
            if table is None:
                continue
            values: dict[str, Any] = {}
            for key, value in table.items():
                if key not in specs:
                    self.unknown_key(name, f"{path}.{key}", key, specs)
                elif value is not None:
                    values[key] = self.convert(specs[key], value, f"{path}.{key}")
            if name not in _UNNAMED_ARRAYS and table.get("name") is None:
                self.add(f"{path}.name", "required")
                values["name"] = _BAD
            self.resolve_password(path, table, values)
            resolve_env_refs(self, name, specs, path, table, values)
            result.append((path, values))
        return result

    def resolve_password(self, path: str, table: Mapping[str, Any], values: dict[str, Any]) -> None:
        """Replace ``password_env`` with the password it points at."""
        var = values.pop("password_env", None)
        if var is None:
            return
        if table.get("password") is not None:
            self.add(f"{path}.password_env", "give either password or password_env, not both")
            values["password"] = _BAD
            return
        if var is _BAD:
            values["password"] = _BAD
            return
        secret = self.env.get(var)
        if secret is None:
            self.add(f"{path}.password_env", f"environment variable {var} is not set")
            values["password"] = _BAD
        elif not secret:
            self.add(f"{path}.password_env", f"environment variable {var} is set but empty")
            values["password"] = _BAD
        else:
            values["password"] = secret

    def finish(self) -> None:
        if self.problems:
            raise ConfigError(self.problems)


def _valid(values: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in values.items() if value is not _BAD}


def _build_security(
    checker: _Checker,
    data: Mapping[str, Any],
    database_entries: list[tuple[str, dict[str, Any]]],
    users: Iterable[Any],
) -> dict[str, Any]:
    """The [client_tls], [server_tls], [iam], [secrets] and [[iam_rules]] parts of a Config,
    with their cross-key checks (see config_security)."""
    from .security import (
        ClientTlsSettings,
        IamRule,
        IamSettings,
        SecretsSettings,
        ServerTlsSettings,
        check_client_tls,
        check_iam,
        check_secret_ref,
        check_server_tls,
    )

    client_values = checker.section("client_tls", data.get("client_tls"))
    server_values = checker.section("server_tls", data.get("server_tls"))
    iam_values = checker.section("iam", data.get("iam"))
    secrets_values = checker.section("secrets", data.get("secrets"))
    rules: list[IamRule] = []
    for _path, values in checker.entries("iam_rules", data.get("iam_rules")):
        if "arn" not in values:
            checker.add(f"{_path}.arn", "required")
        elif "users" not in values:
            checker.add(f"{_path}.users", "required")
        elif all(v is not _BAD for v in values.values()):
            rules.append(IamRule(**values))
    client_tls = ClientTlsSettings(**_valid(client_values))
    server_tls = ServerTlsSettings(**_valid(server_values))
    iam = IamSettings(**_valid(iam_values))
    iam_users = [u.name for u in users if u.iam]
    add = checker.add
    if all(v is not _BAD for v in client_values.values()):
        check_client_tls(add, client_tls, iam_users)
    if all(v is not _BAD for v in server_values.values()):
        check_server_tls(add, server_tls)
    if all(v is not _BAD for v in iam_values.values()):
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
        "secrets": SecretsSettings(**_valid(secrets_values)),
    }


def _check_hosts(checker: _Checker, path: str, values: dict[str, Any]) -> None:
    """Parse a database's ``hosts`` into (host, port) pairs, or mark it invalid."""
    from .topology import check_database_hosts

    if values.get("hosts") is _BAD:
        return
    hosts = check_database_hosts(checker.add, path, values)
    if "hosts" in values:
        values["hosts"] = _BAD if hosts is None else hosts


def _build_topology(
    checker: _Checker, data: Mapping[str, Any], databases: Iterable[Any], users: Iterable[Any]
) -> Any:
    """The [topology] section, and each tracked database's monitor login."""
    from .topology import TopologySettings, check_topology

    values = checker.section("topology", data.get("topology"))
    settings = TopologySettings(**_valid(values))
    if all(v is not _BAD for v in values.values()):
        check_topology(checker.add, settings)
    by_name = {u.name: u for u in users}
    for db in databases:
        if db.monitor_user is not None:
            user = by_name.get(db.monitor_user)
            if (
                user is None
                or not user.password
                or user.password.startswith(("md5", _SCRAM_PREFIX))
            ):
                checker.add(
                    f"databases.{db.name}.monitor_user",
                    f'"{db.monitor_user}" must be a [[users]] entry with a plaintext password',
                )
        elif db.tracked and db.user is None and db.secret_arn is None:
            checker.add(
                f"databases.{db.name}.monitor_user",
                "a multi-host database needs credentials for its topology monitor: set user "
                "(with a password) or secret_arn on the database, or monitor_user",
            )
        elif db.tracked and db.secret_arn is None:
            user = by_name.get(db.user or "")
            password = db.password or (user.password if user is not None else None)
            if password and password.startswith(_SCRAM_PREFIX):
                checker.add(
                    f"databases.{db.name}.monitor_user",
                    "the topology monitor cannot log in with a SCRAM verifier: give the "
                    "database user a plaintext password, or set monitor_user",
                )
    return settings


def _check_user_password(
    checker: _Checker, path: str, password: str | None, auth_type: AuthType | None
) -> None:
    if password is None:
        if auth_type is not None and auth_type is not AuthType.TRUST:
            checker.add(
                f"{path}.password",
                f"required when auth.type is {_quote(auth_type.value)} "
                "(set password or password_env)",
            )
        return
    if password.startswith(_SCRAM_PREFIX):
        if not _valid_scram_verifier(password):
            checker.add(
                f"{path}.password",
                "looks like a SCRAM verifier but is malformed; expected "
                "SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>",
            )
        elif auth_type is AuthType.MD5:
            checker.add(
                f"{path}.password",
                'a SCRAM verifier cannot answer an md5 challenge with auth.type = "md5"; '
                "store the plaintext password or an md5 hash",
            )
    elif _MD5_HASH_RE.fullmatch(password) and auth_type is AuthType.SCRAM_SHA_256:
        checker.add(
            f"{path}.password",
            'an md5 hash cannot be used with auth.type = "scram-sha-256"; '
            "store the plaintext password or a SCRAM verifier",
        )


def _valid_scram_verifier(text: str) -> bool:
    match = _SCRAM_RE.fullmatch(text)
    # int() refuses over 4300 digits; PostgreSQL's iteration count is an int32 anyway.
    if match is None or len(match["iterations"]) > 10 or int(match["iterations"]) < 1:
        return False
    try:
        salt = base64.b64decode(match["salt"], validate=True)
        stored_key = base64.b64decode(match["stored_key"], validate=True)
        server_key = base64.b64decode(match["server_key"], validate=True)
    except (binascii.Error, ValueError):
        return False
    # SHA-256 digests: anything else can never match a client proof.
    return bool(salt) and len(stored_key) == 32 and len(server_key) == 32
