"""Owns the proxy's configuration: typed, immutable settings loaded from TOML plus environment.

This module is the public API; import from here, not from the modules inside. They import one
way, each only from those listed before it:

- `schema`: `Key`, `Checker` (value conversion collecting every problem), `ConfigError`;
- `envrefs`, `tables`: ``*_env`` references; reading a section or an array against its keys;
- `core` ([proxy], [pool], [auth]), `users`, `topology`, `databases`, `security` ([client_tls],
  [server_tls], [iam], [[iam_rules]], [secrets]), `admin`, `metrics`, `client_rules`
  ([[client_rules]], the client address allow-list), `peers` ([[peers]]): each section's
  dataclasses, key table, cross-key checks and builder;
- `model` (`Config`), `keys` (the registry of key tables), `build` (the loaders), `check`
  (``pgpool-proxy check``);
- `tomlwrite` (a configuration mapping as TOML text), `ini` (reading pgbouncer.ini, its
  connection strings and its auth_file), `pgbouncer_tables` (the table of PgBouncer settings),
  `pgbouncer_mapper` (the checks every section's mapper shares), `pgbouncer_settings`
  (``[pgbouncer]``), `pgbouncer_entries` (users, databases, peers), `pgbouncer` (the
  conversion: ``pgpool-proxy convert`` and ``run --pgbouncer-ini``).
"""

from __future__ import annotations

from .admin import AdminSettings, check_admin
from .build import build_config, load_config, parse_config
from .check import check_config_main
from .client_rules import REJECT, ClientRule, client_address, match_client_rule
from .core import AuthSettings, AuthType, PoolMode, PoolSettings, ProxySettings
from .databases import DatabaseConfig
from .ini import PgBouncerNote, looks_like_pgbouncer_ini
from .keys import SECTIONS, setting_from_text
from .metrics import MetricsSettings
from .model import Config
from .peers import PeerConfig
from .pgbouncer import (
    PGBOUNCER_DATABASE_PARAMS,
    PGBOUNCER_SETTINGS,
    PGBOUNCER_USER_PARAMS,
    PgBouncerConversion,
    convert_pgbouncer_ini,
    load_pgbouncer_config,
)
from .schema import ConfigError
from .security import (
    ClientTlsMode,
    ClientTlsSettings,
    IamRule,
    IamSettings,
    IamVerifierKind,
    SecretsSettings,
    ServerTlsMode,
    ServerTlsSettings,
    region_of_secret_arn,
)
from .topology import DatabaseRole, TopologySettings, parse_host_port
from .users import UserConfig

__all__ = [
    "PGBOUNCER_DATABASE_PARAMS",
    "PGBOUNCER_SETTINGS",
    "PGBOUNCER_USER_PARAMS",
    "REJECT",
    "SECTIONS",
    "AdminSettings",
    "AuthSettings",
    "AuthType",
    "ClientRule",
    "ClientTlsMode",
    "ClientTlsSettings",
    "Config",
    "ConfigError",
    "DatabaseConfig",
    "DatabaseRole",
    "IamRule",
    "IamSettings",
    "IamVerifierKind",
    "MetricsSettings",
    "PeerConfig",
    "PgBouncerConversion",
    "PgBouncerNote",
    "PoolMode",
    "PoolSettings",
    "ProxySettings",
    "SecretsSettings",
    "ServerTlsMode",
    "ServerTlsSettings",
    "TopologySettings",
    "UserConfig",
    "build_config",
    "check_admin",
    "check_config_main",
    "client_address",
    "convert_pgbouncer_ini",
    "load_config",
    "load_pgbouncer_config",
    "looks_like_pgbouncer_ini",
    "match_client_rule",
    "parse_config",
    "parse_host_port",
    "region_of_secret_arn",
    "setting_from_text",
]
