"""Owns the ``[[databases]]`` entries: a name clients connect to and the server(s) behind it,
and the login a multi-host database's topology monitor uses.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from .core import AuthSettings, PoolMode
from .schema import BAD, Checker, Key, Kind, check_unique_name, quote
from .topology import DatabaseRole, check_hosts
from .users import SCRAM_PREFIX, UserConfig

__all__ = [
    "DATABASE_KEYS",
    "DatabaseConfig",
    "build_databases",
    "check_auth_lookups",
    "check_monitor_logins",
]

DATABASE_KEYS: Final[dict[str, Key]] = {
    "name": Key(Kind.STR, nonempty=True),
    "host": Key(Kind.STR, nonempty=True),
    "port": Key(Kind.INT, lo=1, hi=65535),
    "dbname": Key(Kind.STR, nonempty=True),
    "user": Key(Kind.STR, nonempty=True),
    "password": Key(Kind.STR, nonempty=True),
    "password_env": Key(Kind.STR, nonempty=True),
    "pool_size": Key(Kind.INT, lo=1),
    "pool_mode": Key(Kind.ENUM, enum_type=PoolMode),
    "max_db_connections": Key(Kind.INT, lo=0),
    "secret_arn": Key(Kind.STR, nonempty=True),
    "secret_region": Key(Kind.STR, nonempty=True),
    "secret_endpoint_url": Key(Kind.STR, nonempty=True),
    # Multi-host databases (cross-key checks in topology).
    "hosts": Key(Kind.STRLIST, nonempty=True),
    "role": Key(Kind.ENUM, enum_type=DatabaseRole),
    "reader_fallback": Key(Kind.BOOL),
    "max_replica_lag_bytes": Key(Kind.INT, lo=0),
    "aurora_cluster": Key(Kind.STR, nonempty=True),
    "aurora_region": Key(Kind.STR, nonempty=True),
    "aurora_endpoint_url": Key(Kind.STR, nonempty=True),
    "monitor_user": Key(Kind.STR, nonempty=True),
    # auth_query for this database (PgBouncer's per-database auth_user/auth_query/auth_dbname).
    "auth_user": Key(Kind.STR, nonempty=True),
    "auth_query": Key(Kind.STR, nonempty=True),
    "auth_dbname": Key(Kind.STR, nonempty=True),
    # Read host/port/hosts/secret_arn from a named environment variable (envrefs).
    "host_env": Key(Kind.STR, nonempty=True),
    "port_env": Key(Kind.STR, nonempty=True),
    "hosts_env": Key(Kind.STR, nonempty=True),
    "secret_arn_env": Key(Kind.STR, nonempty=True),
}


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
    # Server connections across this database's pools; None: pool.max_db_connections (0: none).
    max_db_connections: int | None = None
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
    # Overrides of [auth] auth_user/auth_query/auth_dbname for clients of this database.
    auth_user: str | None = None
    auth_query: str | None = None
    auth_dbname: str | None = None

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


def build_databases(
    checker: Checker,
    raw: object,
    entries: list[tuple[str, dict[str, Any]]],
    min_pool_size: int | None,
) -> list[DatabaseConfig]:
    """The valid [[databases]] entries (``raw`` is the file's value, ``min_pool_size`` None when
    pool.min_pool_size is invalid); duplicates and bad host lists are problems."""
    if not entries and not isinstance(raw, Mapping):
        checker.add("databases", "at least one [[databases]] entry is required")
    databases: list[DatabaseConfig] = []
    seen: dict[str, str] = {}
    for path, values in entries:
        name = values["name"]
        check_unique_name(checker, seen, path, name, "database")
        pool_size = values.get("pool_size")
        if isinstance(pool_size, int) and min_pool_size is not None and pool_size < min_pool_size:
            checker.add(
                f"{path}.pool_size",
                f"must be at least pool.min_pool_size ({min_pool_size}), got {pool_size}",
            )
        check_hosts(checker, path, values)
        if any(value is BAD for value in values.values()):
            continue
        values.setdefault("dbname", name)
        databases.append(DatabaseConfig(**values))
    return databases


def check_monitor_logins(
    checker: Checker,
    databases: Iterable[DatabaseConfig],
    users: Iterable[UserConfig],
    user_names: Collection[str],
) -> None:
    """Each tracked database's topology monitor must be able to log in with a password.

    ``user_names`` are all the users the file names, ``users`` only the valid ones."""
    by_name = {u.name: u for u in users}
    for db in databases:
        if db.monitor_user is not None:
            user = by_name.get(db.monitor_user)
            if user is None and db.monitor_user in user_names:
                continue  # an invalid [[users]] entry: its own problem says what is wrong
            if user is None or not user.password or user.password.startswith(("md5", SCRAM_PREFIX)):
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
            if password and password.startswith(SCRAM_PREFIX):
                checker.add(
                    f"databases.{db.name}.monitor_user",
                    "the topology monitor cannot log in with a SCRAM verifier: give the "
                    "database user a plaintext password, or set monitor_user",
                )


def check_auth_lookups(
    checker: Checker,
    auth: AuthSettings,
    databases: Iterable[DatabaseConfig],
    users: Iterable[UserConfig],
    user_names: Collection[str],
) -> None:
    """Each auth_user must be a [[users]] entry the proxy can log into PostgreSQL with, and each
    auth_dbname a [[databases]] entry."""
    by_name = {u.name: u for u in users}
    names: set[str] = set()
    dbs = list(databases)
    db_names = {db.name for db in dbs}
    wanted: list[tuple[str, str, str | None]] = []
    if auth.auth_user:
        wanted.append(("auth.auth_user", auth.auth_user, auth.auth_dbname or None))
    elif auth.auth_dbname:
        checker.add("auth.auth_dbname", "has no effect without auth.auth_user")
    for db in dbs:
        if db.auth_user is not None:
            wanted.append((f"databases.{db.name}.auth_user", db.auth_user, db.auth_dbname))
        elif db.auth_dbname is not None:
            if not auth.auth_user:
                names.add(db.name)
            elif db.auth_dbname not in db_names:
                checker.add(
                    f"databases.{db.name}.auth_dbname",
                    f"{quote(db.auth_dbname)} is not a [[databases]] entry",
                )
    for path, name, dbname in wanted:
        user = by_name.get(name)
        if user is None and name in user_names:
            continue  # an invalid [[users]] entry: its own problem says what is wrong
        if user is None or not user.password or user.password.startswith(SCRAM_PREFIX):
            checker.add(
                path,
                f"{quote(name)} must be a [[users]] entry with a password the proxy can log "
                "into PostgreSQL with (plaintext, or an md5 hash for md5 server auth)",
            )
        if dbname is not None and dbname not in db_names:
            checker.add(
                path.replace("auth_user", "auth_dbname"),
                f"{quote(dbname)} is not a [[databases]] entry",
            )
    for name in sorted(names):
        checker.add(f"databases.{name}.auth_dbname", "has no effect without an auth_user")
