"""Owns the proxy's configuration: typed, immutable settings loaded from TOML plus environment.

`load_config` reads a TOML file, `parse_config` a TOML string and `build_config` an already
parsed mapping; all three apply ``PGPOOL_<SECTION>_<KEY>`` environment overrides and resolve
``password_env`` references, then validate everything at once.  Any problem, anywhere, ends in
a single `ConfigError` whose ``problems`` list names the file and the key of each one, so an
operator fixes a broken file in one round trip instead of one error per restart.
"""

from __future__ import annotations

import base64
import binascii
import difflib
import enum
import ipaddress
import math
import os
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time
from typing import Any, Final

__all__ = [
    "AuthSettings",
    "AuthType",
    "Config",
    "ConfigError",
    "DatabaseConfig",
    "PoolMode",
    "PoolSettings",
    "ProxySettings",
    "UserConfig",
    "build_config",
    "load_config",
    "parse_config",
]


class PoolMode(enum.Enum):
    """When a server connection goes back to the pool."""

    TRANSACTION = "transaction"
    SESSION = "session"


class AuthType(enum.Enum):
    """How clients prove who they are to the proxy."""

    SCRAM_SHA_256 = "scram-sha-256"
    MD5 = "md5"
    TRUST = "trust"


@dataclass(frozen=True, slots=True)
class ProxySettings:
    """The ``[proxy]`` section: the client-facing listener."""

    listen_host: str = "127.0.0.1"
    listen_port: int = 6432
    pool_mode: PoolMode = PoolMode.TRANSACTION
    max_client_conn: int = 10000
    client_login_timeout_s: float = 10.0
    max_message_size_bytes: int = 64 * 1024 * 1024
    log_level: str = "info"
    log_format: str = "text"


@dataclass(frozen=True, slots=True)
class PoolSettings:
    """The ``[pool]`` section: server connection pools (one per database)."""

    default_pool_size: int = 20
    min_pool_size: int = 0
    query_wait_timeout_s: float = 120.0
    server_idle_timeout_s: float = 600.0
    server_lifetime_s: float = 3600.0
    server_connect_timeout_s: float = 15.0
    server_login_retry_s: float = 1.0
    server_reset_query: str = "DISCARD ALL"


@dataclass(frozen=True, slots=True)
class AuthSettings:
    """The ``[auth]`` section: client authentication."""

    type: AuthType = AuthType.SCRAM_SHA_256


@dataclass(frozen=True, slots=True)
class DatabaseConfig:
    """One ``[[databases]]`` entry: a name clients connect to and the server behind it."""

    name: str
    host: str = "127.0.0.1"
    port: int = 5432
    dbname: str = ""
    user: str | None = None
    # Kept out of repr so logging a Config (or a traceback showing one) cannot leak it.
    password: str | None = field(default=None, repr=False)
    pool_size: int | None = None
    pool_mode: PoolMode | None = None


@dataclass(frozen=True, slots=True)
class UserConfig:
    """One ``[[users]]`` entry: a client login the proxy accepts."""

    name: str
    password: str | None = field(default=None, repr=False)
    pool_mode: PoolMode | None = None


@dataclass(frozen=True, slots=True)
class Config:
    """The whole validated configuration, as returned by `load_config` and friends."""

    proxy: ProxySettings
    pool: PoolSettings
    auth: AuthSettings
    databases: tuple[DatabaseConfig, ...]
    users: tuple[UserConfig, ...]
    source: str = "<defaults>"
    # Lookups happen on every client login, so they are indexed once here rather than scanned.
    _databases_by_name: Mapping[str, DatabaseConfig] = field(init=False, repr=False, compare=False)
    _users_by_name: Mapping[str, UserConfig] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # A Config built by hand skips the loader's checks; a silently shadowed duplicate would
        # make lookups disagree with iteration order, so refuse it outright.
        databases = {db.name: db for db in self.databases}
        if len(databases) != len(self.databases):
            raise ValueError("duplicate database names in Config.databases")
        users = {user.name: user for user in self.users}
        if len(users) != len(self.users):
            raise ValueError("duplicate user names in Config.users")
        # Plain dicts rather than MappingProxyType so dataclasses.asdict() (which deep-copies
        # unknown types) still works; they are private and never handed out.
        object.__setattr__(self, "_databases_by_name", databases)
        object.__setattr__(self, "_users_by_name", users)

    def database(self, name: str) -> DatabaseConfig | None:
        """The database clients know as ``name``, or None."""
        return self._databases_by_name.get(name)

    def user(self, name: str) -> UserConfig | None:
        """The configured user ``name``, or None."""
        return self._users_by_name.get(name)

    def pool_size_for(self, db: DatabaseConfig) -> int:
        """Maximum server connections for ``db``."""
        return db.pool_size if db.pool_size is not None else self.pool.default_pool_size

    def pool_mode_for(self, db: DatabaseConfig, user: UserConfig | None) -> PoolMode:
        """Pool mode for ``user`` on ``db``: the user's override, then the database's, then the
        proxy default."""
        if user is not None and user.pool_mode is not None:
            return user.pool_mode
        if db.pool_mode is not None:
            return db.pool_mode
        return self.proxy.pool_mode


class ConfigError(Exception):
    """Invalid configuration; ``problems`` holds every problem, each ``"FILE: key: message"``."""

    def __init__(self, problems: Iterable[str]) -> None:
        self.problems: list[str] = list(problems)
        super().__init__("\n".join(self.problems))

    def __str__(self) -> str:
        return "\n".join(self.problems)


# --------------------------------------------------------------------------------------------
# Schema
# --------------------------------------------------------------------------------------------

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
    "log_level": _Key(_Kind.CHOICE, choices=_LOG_LEVELS),
    "log_format": _Key(_Kind.CHOICE, choices=_LOG_FORMATS),
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
}

_USER_KEYS: Final[dict[str, _Key]] = {
    "name": _Key(_Kind.STR, nonempty=True),
    "password": _Key(_Kind.STR, nonempty=True),
    "password_env": _Key(_Kind.STR, nonempty=True),
    "pool_mode": _Key(_Kind.ENUM, enum_type=PoolMode),
}

_SECTIONS: Final[dict[str, dict[str, _Key]]] = {
    "proxy": _PROXY_KEYS,
    "pool": _POOL_KEYS,
    "auth": _AUTH_KEYS,
}
_ARRAYS: Final[dict[str, dict[str, _Key]]] = {
    "databases": _DATABASE_KEYS,
    "users": _USER_KEYS,
}

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
_TOML_POSITION_RE: Final = re.compile(
    r"\s*\(at (?:line (?P<line>\d+), column (?P<column>\d+)|(?P<end>end of document))\)\s*$"
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
    return str(int(value)) if float(value).is_integer() else str(value)


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
        number = float(value)
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
        if not port_text.isascii() or not port_text.isdigit():
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
            if "name" not in table or table["name"] is None:
                self.add(f"{path}.name", "required")
                values["name"] = _BAD
            self.resolve_password(path, table, values)
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
    if match is None or int(match["iterations"]) < 1:
        return False
    try:
        salt = base64.b64decode(match["salt"], validate=True)
        stored_key = base64.b64decode(match["stored_key"], validate=True)
        server_key = base64.b64decode(match["server_key"], validate=True)
    except (binascii.Error, ValueError):
        return False
    # SHA-256 digests: anything else can never match a client proof.
    return bool(salt) and len(stored_key) == 32 and len(server_key) == 32


def build_config(
    data: Mapping[str, Any], source: str = "<dict>", env: Mapping[str, str] | None = None
) -> Config:
    """Validate an already parsed configuration mapping (same layout as the TOML file).

    ``env`` defaults to ``os.environ``; pass ``{}`` for a config that ignores the environment.
    Raises `ConfigError` listing every problem found.
    """
    checker = _Checker(source, os.environ if env is None else env)
    if not isinstance(data, Mapping):
        checker.add("<top level>", f"expected a table, got {_type_name(data)}")
        checker.finish()

    known = [*_SECTIONS, *_ARRAYS]
    for name in data:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
            hint = f"; did you mean {_quote(close[0])}?" if close else ""
            checker.add(name, f"unknown section{hint}")

    proxy_values = checker.section("proxy", data.get("proxy"))
    pool_values = checker.section("pool", data.get("pool"))
    auth_values = checker.section("auth", data.get("auth"))
    database_entries = checker.entries("databases", data.get("databases"))
    user_entries = checker.entries("users", data.get("users"))

    listen = proxy_values.pop("listen", None)
    if listen is not None and listen is not _BAD:
        proxy_values["listen_host"], proxy_values["listen_port"] = listen
    proxy = ProxySettings(**_valid(proxy_values))

    pool = PoolSettings(**_valid(pool_values))
    if (
        pool_values.get("min_pool_size") is not _BAD
        and pool_values.get("default_pool_size") is not _BAD
        and pool.min_pool_size > pool.default_pool_size
    ):
        checker.add(
            "pool.min_pool_size",
            f"must not exceed pool.default_pool_size ({pool.default_pool_size}), "
            f"got {pool.min_pool_size}",
        )
    min_pool_valid = pool_values.get("min_pool_size") is not _BAD

    # An invalid auth.type would otherwise cascade into a "password required" for every user.
    auth_type: AuthType | None = None
    if auth_values.get("type") is not _BAD:
        auth_type = auth_values.get("type", AuthSettings().type)
    auth = AuthSettings(**_valid(auth_values))

    if not database_entries and not isinstance(data.get("databases"), Mapping):
        checker.add("databases", "at least one [[databases]] entry is required")
    databases: list[DatabaseConfig] = []
    seen_databases: dict[str, str] = {}
    for path, values in database_entries:
        name = values["name"]
        if name is not _BAD:
            if name in seen_databases:
                checker.add(
                    f"{path}.name",
                    f"duplicate database {_quote(name)} (first defined at {seen_databases[name]})",
                )
            else:
                seen_databases[name] = path
        pool_size = values.get("pool_size")
        if isinstance(pool_size, int) and min_pool_valid and pool_size < pool.min_pool_size:
            checker.add(
                f"{path}.pool_size",
                f"must be at least pool.min_pool_size ({pool.min_pool_size}), got {pool_size}",
            )
        if any(value is _BAD for value in values.values()):
            continue
        values.setdefault("dbname", name)
        databases.append(DatabaseConfig(**values))

    users: list[UserConfig] = []
    seen_users: dict[str, str] = {}
    for path, values in user_entries:
        name = values["name"]
        if name is not _BAD:
            if name in seen_users:
                checker.add(
                    f"{path}.name",
                    f"duplicate user {_quote(name)} (first defined at {seen_users[name]})",
                )
            else:
                seen_users[name] = path
        password = values.get("password")
        if password is not _BAD:
            _check_user_password(checker, path, password, auth_type)
        if any(value is _BAD for value in values.values()):
            continue
        users.append(UserConfig(**values))

    checker.finish()
    return Config(
        proxy=proxy,
        pool=pool,
        auth=auth,
        databases=tuple(databases),
        users=tuple(users),
        source=source,
    )


def parse_config(
    text: str, source: str = "<string>", env: Mapping[str, str] | None = None
) -> Config:
    """Parse and validate TOML text; ``source`` names it in problem messages."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([_toml_problem(source, exc)]) from None
    return build_config(data, source=source, env=env)


def load_config(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Config:
    """Read, parse and validate the TOML file at ``path``."""
    source = os.fspath(path)
    try:
        with open(source, "rb") as handle:
            raw = handle.read()
    except OSError as exc:
        raise ConfigError([f"{source}: cannot read file: {exc.strerror or exc}"]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            [f"{source}: file is not valid UTF-8 (byte offset {exc.start})"]
        ) from None
    return parse_config(text, source=source, env=env)


def _toml_problem(source: str, exc: tomllib.TOMLDecodeError) -> str:
    message = str(exc)
    match = _TOML_POSITION_RE.search(message)
    if match is None:
        return f"{source}: invalid TOML: {message}"
    reason = message[: match.start()]
    where = "end of file" if match["end"] else f"line {match['line']}, column {match['column']}"
    return f"{source}: {where}: invalid TOML: {reason}"
