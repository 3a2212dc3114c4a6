"""Owns `Config`: the whole validated configuration, one frozen object per load or reload.

A reload builds a new Config and swaps it in; nothing ever mutates one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from .admin import AdminSettings
from .client_rules import ClientRule
from .core import AuthSettings, PoolMode, PoolSettings, ProxySettings
from .databases import DatabaseConfig
from .metrics import MetricsSettings
from .peers import PeerConfig
from .security import ClientTlsSettings, IamRule, IamSettings, SecretsSettings, ServerTlsSettings
from .topology import TopologySettings
from .users import UserConfig

__all__ = ["Config"]


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
    # The client address allow-list, first match wins; empty admits every address.
    client_rules: tuple[ClientRule, ...] = ()
    secrets: SecretsSettings = field(default_factory=SecretsSettings)
    topology: TopologySettings = field(default_factory=TopologySettings)
    admin: AdminSettings = field(default_factory=AdminSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    peers: tuple[PeerConfig, ...] = ()
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

    def auth_lookup_for(self, db: DatabaseConfig | None) -> tuple[str, str, str | None] | None:
        """(auth_user, auth_query, auth_dbname or None for the client's own) for users not in
        [[users]] who log into ``db``; None when they are not looked up."""
        auth = self.auth
        user = (db.auth_user if db is not None else None) or auth.auth_user
        if not user:
            return None
        query = (db.auth_query if db is not None else None) or auth.auth_query
        dbname = (db.auth_dbname if db is not None else None) or auth.auth_dbname or None
        return user, query, dbname

    def pool_size_for(self, db: DatabaseConfig) -> int:
        """Maximum server connections for ``db``."""
        return db.pool_size if db.pool_size is not None else self.pool.default_pool_size

    def max_db_connections_for(self, db: DatabaseConfig) -> int:
        """The cap on server connections across ``db``'s pools (0: none)."""
        if db.max_db_connections is not None:
            return db.max_db_connections
        return self.pool.max_db_connections

    def max_user_connections_for(self, server_user: str) -> int:
        """The cap on server connections logged in as ``server_user`` across pools (0: none)."""
        user = self.user(server_user)
        if user is not None and user.max_user_connections is not None:
            return user.max_user_connections
        return self.pool.max_user_connections

    def has_connection_caps(self) -> bool:
        """Whether any cap across pools applies (the process, a database or a user)."""
        pool = self.pool
        return bool(
            pool.max_server_connections
            or pool.max_db_connections
            or pool.max_user_connections
            or any(db.max_db_connections for db in self.databases)
            or any(u.max_user_connections for u in self.users)
        )

    def pool_mode_for(self, db: DatabaseConfig, user: UserConfig | None) -> PoolMode:
        """Pool mode for ``user`` on ``db``: the user's override, then the database's, then the
        proxy default."""
        if user is not None and user.pool_mode is not None:
            return user.pool_mode
        if db.pool_mode is not None:
            return db.pool_mode
        return self.proxy.pool_mode
