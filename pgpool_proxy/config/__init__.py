"""Owns the proxy's configuration: typed, immutable settings loaded from TOML plus environment.

This is the public API; the modules inside are its implementation.
"""

from __future__ import annotations

from .admin import AdminSettings, check_admin
from .build import (
    AuthSettings,
    AuthType,
    Config,
    ConfigError,
    DatabaseConfig,
    PoolMode,
    PoolSettings,
    ProxySettings,
    UserConfig,
    build_config,
    load_config,
    parse_config,
)
from .check import check_config_main
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
    region_of_secret_arn,
)
from .topology import DatabaseRole, TopologySettings, parse_host_port

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
    "MetricsSettings",
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
    "load_config",
    "parse_config",
    "parse_host_port",
    "region_of_secret_arn",
]
