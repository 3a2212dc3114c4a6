"""Owns the proxy's configuration: typed, immutable settings loaded from TOML plus environment.

`load_config` reads a TOML file, `parse_config` a TOML string and `build_config` an already
parsed mapping; all three apply ``PGPOOL_<SECTION>_<KEY>`` environment overrides and resolve
``password_env`` references, then validate everything at once.  Any problem, anywhere, ends in
a single `ConfigError` whose ``problems`` list names the file and the key of each one, so an
operator fixes a broken file in one round trip instead of one error per restart.
"""

from __future__ import annotations

import difflib
import enum
import os
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from .admin import AdminSettings, build_admin
from .metrics import MetricsSettings
from .security import (
    ClientTlsMode,
    ClientTlsSettings,
    IamRule,
    IamSettings,
    IamVerifierKind,
    SecretsSettings,
    ServerTlsMode,
    ServerTlsSettings,
)
from .topology import DatabaseRole, TopologySettings

__all__ = [
    "AdminSettings",
    "AuthSettings",
    "AuthType",
    "ClientTlsMode",
    "ClientTlsSettings",
    "Config",
    "ConfigError",
    "DatabaseConfig",
    "DatabaseRole",
    "IamRule",
    "IamSettings",
    "IamVerifierKind",
    "PoolMode",
    "PoolSettings",
    "ProxySettings",
    "SecretsSettings",
    "ServerTlsMode",
    "ServerTlsSettings",
    "TopologySettings",
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
    # What the proxy keeps per client, bounded: texts of its named prepared statements (as big
    # as the largest message, so any one statement the proxy accepts can be named), and the
    # settings it changed (replayed on every server connection it uses).
    max_client_statement_bytes: int = 64 * 1024 * 1024
    max_client_settings_bytes: int = 1024 * 1024
    log_level: str = "info"
    log_format: str = "text"
    workers: int = 1
    # SIGTERM waits this long for transactions to finish before closing what is left.
    shutdown_timeout_s: float = 30.0
    # SO_REUSEPORT on a single-worker listener: lets a new proxy bind the port while this one
    # drains (rolling restarts).
    reuse_port: bool = False
    # Log a warning when the event loop was held this long (one callback, a blocking call, a
    # starved CPU); 0 turns the warning off (the lag histogram is always kept).
    loop_lag_warn_ms: int = 100


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
    # Shared prepared statements each server connection keeps (transaction mode); 0 turns the
    # renaming of named statements off.
    max_prepared_statements: int = 200
    # Bytes of statement text each pool keeps for sharing (least recently used forgotten).
    statement_cache_bytes: int = 64 * 1024 * 1024
    # Server connections this proxy may hold across all pools (0: no cap beyond pool sizes);
    # with N proxies, N x this must fit the database's max_connections.
    max_server_connections: int = 0
    # The most PBKDF2 iterations a server's SCRAM challenge may ask of the proxy (PostgreSQL's
    # default is 4096); a server asking more is refused rather than allowed to burn CPU.
    server_max_scram_iterations: int = 100_000
    # A server that owes a client a reply and sends nothing for this long is given up on: the
    # query is cancelled, the server connection closed, the client told 57014 (0: off).
    query_timeout_s: float = 0.0
    # A pooled server connection idle this long is asked an empty query before more idle time;
    # one that stays silent for server_check_timeout_s (as does one silent on a reset or a
    # settings replay) is closed and replaced (0: no periodic check).
    server_check_delay_s: float = 30.0
    server_check_timeout_s: float = 10.0
    # Kernel dead-peer detection on client and server sockets (see pool.connect.TcpTuning).
    tcp_keepalive: bool = True
    tcp_keepidle_s: int = 15
    tcp_keepintvl_s: int = 5
    tcp_keepcnt: int = 3
    tcp_user_timeout_s: float = 30.0


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
    # Server credentials from AWS Secrets Manager (instead of user/password).
    secret_arn: str | None = None
    secret_region: str | None = None  # default: the ARN's region
    secret_endpoint_url: str | None = None  # moto, a VPC endpoint
    # Several servers (a primary and its replicas): the proxy tracks which one is the writer.
    hosts: tuple[tuple[str, int], ...] = ()
    role: DatabaseRole = DatabaseRole.WRITER
    reader_fallback: bool = True  # a reader database uses the writer when no replica is usable
    max_replica_lag_bytes: int = 0  # 0: no bound
    # Hosts from an Aurora cluster's members instead of host/hosts.
    aurora_cluster: str | None = None
    aurora_region: str | None = None
    aurora_endpoint_url: str | None = None
    # The [[users]] entry the topology monitor logs in as when the database has no user.
    monitor_user: str | None = None

    def addresses(self) -> tuple[tuple[str, int], ...]:
        """The configured servers, in order (discovery may add more at run time)."""
        return self.hosts or ((self.host, self.port),)

    @property
    def tracked(self) -> bool:
        """Whether a topology monitor decides where this database's connections go."""
        return (
            len(self.hosts) > 1
            or self.aurora_cluster is not None
            or (self.role is DatabaseRole.READER)
        )


@dataclass(frozen=True, slots=True)
class UserConfig:
    """One ``[[users]]`` entry: a client login the proxy accepts."""

    name: str
    password: str | None = field(default=None, repr=False)
    pool_mode: PoolMode | None = None
    # Authenticate this user with an AWS IAM token (see [iam]); password is then only what the
    # proxy uses to log into the server.
    iam: bool = False


@dataclass(frozen=True, slots=True)
class Config:
    """The whole validated configuration, as returned by `load_config` and friends."""

    proxy: ProxySettings
    pool: PoolSettings
    auth: AuthSettings
    databases: tuple[DatabaseConfig, ...]
    users: tuple[UserConfig, ...]
    source: str = "<defaults>"
    client_tls: ClientTlsSettings = field(default_factory=ClientTlsSettings)
    server_tls: ServerTlsSettings = field(default_factory=ServerTlsSettings)
    iam: IamSettings = field(default_factory=IamSettings)
    iam_rules: tuple[IamRule, ...] = ()
    secrets: SecretsSettings = field(default_factory=SecretsSettings)
    topology: TopologySettings = field(default_factory=TopologySettings)
    admin: AdminSettings = field(default_factory=AdminSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
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


_TOML_POSITION_RE: Final = re.compile(
    r"\s*\(at (?:line (?P<line>\d+), column (?P<column>\d+)|(?P<end>end of document))\)\s*$"
)


def build_config(
    data: Mapping[str, Any], source: str = "<dict>", env: Mapping[str, str] | None = None
) -> Config:
    """Validate an already parsed configuration mapping (same layout as the TOML file).

    ``env`` defaults to ``os.environ``; pass ``{}`` for a config that ignores the environment.
    Raises `ConfigError` listing every problem found.
    """
    # Imported here, not at the top: the schema's key tables are built from this module's enums.
    from .schema import (
        _ARRAYS,
        _BAD,
        _SECTIONS,
        _build_security,
        _build_topology,
        _check_hosts,
        _check_user_password,
        _Checker,
        _quote,
        _type_name,
        _valid,
    )

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
        _check_hosts(checker, path, values)
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
        if password is not _BAD and not values.get("iam"):
            _check_user_password(checker, path, password, auth_type)
        if any(value is _BAD for value in values.values()):
            continue
        users.append(UserConfig(**values))

    security = _build_security(checker, data, database_entries, users)
    topology = _build_topology(checker, data, databases, users)
    admin = build_admin(checker, data.get("admin"), databases, users)
    from .metrics import build_metrics

    metrics = build_metrics(checker, data)
    checker.finish()
    return Config(
        proxy=proxy,
        pool=pool,
        auth=auth,
        databases=tuple(databases),
        users=tuple(users),
        source=source,
        topology=topology,
        admin=admin,
        metrics=metrics,
        **security,
    )


def parse_config(
    text: str, source: str = "<string>", env: Mapping[str, str] | None = None
) -> Config:
    """Parse and validate TOML text; ``source`` names it in problem messages."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([_toml_problem(source, exc)]) from None
    except ValueError as exc:  # tomllib lets int()'s own refusals through (over 4300 digits)
        raise ConfigError([f"{source}: invalid TOML: {exc}"]) from None
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
