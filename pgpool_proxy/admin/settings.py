"""Owns SHOW CONFIG and SET on the admin console: which settings are shown, which change live,
and validating a new value with the same rules as the configuration file.

A SET lasts until the next RELOAD (which re-reads the file), as in PgBouncer.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from ..config import (
    SECTIONS,
    AdminSettings,
    AuthSettings,
    Config,
    ConfigError,
    PoolSettings,
    ProxySettings,
    check_admin,
    setting_from_text,
)
from ..errors import SqlState
from .commands import CommandError
from .show_result import Result, Row

if TYPE_CHECKING:
    from ..runtime.server import ProxyServer

# Settings that SET (and RELOAD) change in a running proxy; see lifecycle for what they affect.
# auth.type is not among them: whether each user's stored password suits it is checked for the
# whole file, so it changes with RELOAD only.
LIVE: Final = frozenset(
    {
        ("proxy", "pool_mode"),
        ("proxy", "max_client_conn"),
        ("proxy", "client_login_timeout_s"),
        ("proxy", "max_message_size_bytes"),
        ("proxy", "max_client_statement_bytes"),
        ("proxy", "max_client_settings_bytes"),
        ("proxy", "log_level"),
        ("proxy", "shutdown_timeout_s"),
        ("proxy", "loop_lag_warn_ms"),
        *(("pool", f.name) for f in dataclasses.fields(PoolSettings)),
        *(("admin", f.name) for f in dataclasses.fields(AdminSettings)),
        # auth_query's cache and bound (read at each look-up).
        ("auth", "auth_cache_s"),
        ("auth", "auth_negative_cache_s"),
        ("auth", "auth_refresh_s"),
        ("auth", "auth_query_timeout_s"),
    }
)
# Changed by RELOAD, which checks them against [[users]] and [[databases]]; not by SET.
_RELOAD_ONLY: Final = frozenset(
    {("auth", "auth_user"), ("auth", "auth_query"), ("auth", "auth_dbname")}
)

# The sections SHOW CONFIG shows (and SET may change), in this order.
_SHOWN: Final[Mapping[str, type[Any]]] = {
    "proxy": ProxySettings,
    "pool": PoolSettings,
    "admin": AdminSettings,
    "auth": AuthSettings,
}

CONFIG_COLUMNS: Final = (("key", 25), ("value", 25), ("default", 25), ("changeable", 25))


@dataclass(frozen=True, slots=True)
class Alias:
    """A PgBouncer setting that is one of ours under another name (and maybe another unit)."""

    section: str
    field: str  # the settings dataclass's attribute
    # PgBouncer's value is ours times this (tcp_user_timeout is in milliseconds, ours seconds).
    scale: int = 1


# PgBouncer's name for each of our settings that means the same thing. SHOW CONFIG shows these
# under PgBouncer's name (monitoring written for PgBouncer reads them: prometheus-pgbouncer-
# exporter's pgbouncer_config_* series), and SET accepts both names. An entry whose field this
# build does not have is skipped, so a setting added later is shown once it exists.
PGBOUNCER_NAMES: Final[Mapping[str, Alias]] = {
    "admin_users": Alias("admin", "admin_users"),
    "auth_type": Alias("auth", "type"),
    "auth_user": Alias("auth", "auth_user"),
    "auth_query": Alias("auth", "auth_query"),
    "auth_dbname": Alias("auth", "auth_dbname"),
    "client_idle_timeout": Alias("pool", "client_idle_timeout_s"),
    "client_login_timeout": Alias("proxy", "client_login_timeout_s"),
    "default_pool_size": Alias("pool", "default_pool_size"),
    "idle_transaction_timeout": Alias("pool", "idle_transaction_timeout_s"),
    "listen_addr": Alias("proxy", "listen_host"),
    "listen_port": Alias("proxy", "listen_port"),
    "max_client_conn": Alias("proxy", "max_client_conn"),
    "max_db_connections": Alias("pool", "max_db_connections"),
    "max_packet_size": Alias("proxy", "max_message_size_bytes"),
    "max_prepared_statements": Alias("pool", "max_prepared_statements"),
    "max_user_connections": Alias("pool", "max_user_connections"),
    "min_pool_size": Alias("pool", "min_pool_size"),
    "pool_mode": Alias("proxy", "pool_mode"),
    "query_timeout": Alias("pool", "query_timeout_s"),
    "query_wait_timeout": Alias("pool", "query_wait_timeout_s"),
    "reserve_pool_size": Alias("pool", "reserve_pool_size"),
    "reserve_pool_timeout": Alias("pool", "reserve_pool_timeout_s"),
    "server_check_delay": Alias("pool", "server_check_delay_s"),
    "server_check_query": Alias("pool", "server_check_query"),
    "server_connect_timeout": Alias("pool", "server_connect_timeout_s"),
    "server_idle_timeout": Alias("pool", "server_idle_timeout_s"),
    "server_lifetime": Alias("pool", "server_lifetime_s"),
    "server_login_retry": Alias("pool", "server_login_retry_s"),
    "server_reset_query": Alias("pool", "server_reset_query"),
    "so_reuseport": Alias("proxy", "reuse_port"),
    "stats_users": Alias("admin", "stats_users"),
    "unix_socket_dir": Alias("proxy", "unix_socket_dir"),
    "tcp_keepalive": Alias("pool", "tcp_keepalive"),
    "tcp_keepcnt": Alias("pool", "tcp_keepcnt"),
    "tcp_keepidle": Alias("pool", "tcp_keepidle_s"),
    "tcp_keepintvl": Alias("pool", "tcp_keepintvl_s"),
    "tcp_user_timeout": Alias("pool", "tcp_user_timeout_s", scale=1000),
}

# PgBouncer settings the proxy does not have but whose PgBouncer value states what it does:
# shown (not changeable) while no alias above supplies them. "0" is PgBouncer's "no limit".
FIXED: Final[Mapping[str, str]] = {
    "max_db_connections": "0",
    "max_user_connections": "0",
}

_TRUE: Final = frozenset({"1", "on", "yes", "true"})
_FALSE: Final = frozenset({"0", "off", "no", "false"})


def _text(value: object) -> str:
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _pgbouncer_text(value: object, scale: int) -> str:
    """A value as PgBouncer prints it: booleans 0/1, numbers in PgBouncer's unit."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if scale != 1 and isinstance(value, int | float):
        return _text(round(value * scale))
    return _text(value)


def _fields(section: str) -> frozenset[str]:
    return frozenset(f.name for f in dataclasses.fields(_SHOWN[section]))


def _aliases() -> dict[str, Alias]:
    """The PgBouncer names whose setting exists in this build."""
    return {k: a for k, a in PGBOUNCER_NAMES.items() if a.field in _fields(a.section)}


def _live(section: str, field: str) -> bool:
    return (section, "listen" if field.startswith("listen_") else field) in LIVE


def show_config(server: ProxyServer) -> Result:
    """PgBouncer's keys first (sorted, as PgBouncer lists them), then the proxy's own as
    section.key."""
    cfg = server.config
    aliases = _aliases()
    named: list[Row] = []
    for key, alias in aliases.items():
        current: Any = getattr(cfg, alias.section)
        default: Any = type(current)()
        named.append(
            [
                key,
                _pgbouncer_text(getattr(current, alias.field), alias.scale),
                _pgbouncer_text(getattr(default, alias.field), alias.scale),
                "yes" if _live(alias.section, alias.field) else "no",
            ]
        )
    named += [[key, value, value, "no"] for key, value in FIXED.items() if key not in aliases]
    named.sort(key=lambda row: str(row[0]))
    covered = {(a.section, a.field) for a in aliases.values()}
    own: list[Row] = []
    for section, cls in _SHOWN.items():
        current = getattr(cfg, section)
        default = cls()
        for f in dataclasses.fields(cls):
            if (section, f.name) in covered:
                continue
            value, dflt = getattr(current, f.name), getattr(default, f.name)
            live = (section, f.name) in LIVE
            own.append([f"{section}.{f.name}", _text(value), _text(dflt), "yes" if live else "no"])
    return Result(CONFIG_COLUMNS, named + own)


def _unknown(key: str) -> CommandError:
    return CommandError(
        SqlState.UNDEFINED_OBJECT,
        f'unrecognized configuration parameter "{key}"',
        hint="SHOW CONFIG lists the settings (PgBouncer's names, then the proxy's section.key).",
    )


def _resolve(key: str) -> tuple[str, str]:
    if "." in key:
        section, _, name = key.partition(".")
        if name in SECTIONS.get(section, {}):
            return section, name
    else:
        matches = [(s, key) for s in ("proxy", "pool", "admin", "auth") if key in SECTIONS[s]]
        if len(matches) == 1:
            return matches[0]
    raise _unknown(key)


def _from_pgbouncer(key: str, alias: Alias, raw: str) -> tuple[str, str]:
    """(our key, our text) for a SET under PgBouncer's name."""
    if alias.field.startswith("listen_"):
        raise CommandError(
            SqlState.CANT_CHANGE_RUNTIME_PARAM,
            f'parameter "{key}" (proxy.listen) cannot be changed without restarting the proxy',
        )
    default = getattr(_SHOWN[alias.section](), alias.field)
    text = raw.strip()
    if isinstance(default, bool):
        # PgBouncer's booleans are 0/1 (and on/off, yes/no); the file's are true/false.
        word = text.lower()
        text = "true" if word in _TRUE else "false" if word in _FALSE else text
    elif alias.scale != 1:
        try:
            text = repr(float(text) / alias.scale)
        except ValueError:
            raise CommandError(
                SqlState.INVALID_PARAMETER_VALUE,
                f"{key}: expected a number (milliseconds, as in PgBouncer), got '{raw}'",
            ) from None
    return alias.field, text


def set_setting(server: ProxyServer, key: str, raw: str) -> tuple[str, Config]:
    """The new Config with `key` set to `raw` (checked like the file's value), and the key's
    full name; raises CommandError. The caller applies it."""
    alias = _aliases().get(key)
    if alias is not None:
        section = alias.section
        name, raw = _from_pgbouncer(key, alias, raw)
    elif key in FIXED:
        raise CommandError(
            SqlState.CANT_CHANGE_RUNTIME_PARAM,
            f'parameter "{key}" is PgBouncer\'s; the proxy has no such setting and behaves as '
            f"{key} = {FIXED[key]} does in PgBouncer",
        )
    else:
        section, name = _resolve(key)
    full = f"{section}.{name}"
    if (section, name) == ("auth", "type"):
        raise CommandError(
            SqlState.CANT_CHANGE_RUNTIME_PARAM,
            'parameter "auth.type" cannot be changed with SET: every user\'s stored password '
            "must suit it (an md5 hash cannot do SCRAM, a SCRAM verifier cannot answer md5)",
            hint="Change auth.type (and the passwords) in the configuration file, then RELOAD; "
            "the reload checks them together.",
        )
    if (section, name) in _RELOAD_ONLY:
        raise CommandError(
            SqlState.CANT_CHANGE_RUNTIME_PARAM,
            f'parameter "{full}" cannot be changed with SET: it must name a [[users]] entry '
            "(or a [[databases]] entry) the proxy can use",
            hint=f"Change {full} in the configuration file, then RELOAD; the reload checks it.",
        )
    if (section, name) not in LIVE:
        raise CommandError(
            SqlState.CANT_CHANGE_RUNTIME_PARAM,
            f'parameter "{full}" cannot be changed without restarting the proxy',
        )
    try:
        value = setting_from_text(section, name, raw)
    except ConfigError as exc:
        raise CommandError(SqlState.INVALID_PARAMETER_VALUE, exc.problems[0]) from None
    cfg = server.config
    new_section: Any = dataclasses.replace(getattr(cfg, section), **{name: value})
    if section == "pool" and new_section.min_pool_size > new_section.default_pool_size:
        raise CommandError(
            SqlState.INVALID_PARAMETER_VALUE,
            f"pool.min_pool_size ({new_section.min_pool_size}) must not exceed "
            f"pool.default_pool_size ({new_section.default_pool_size})",
        )
    if section == "admin" and name == "admin_users" and not value:
        raise CommandError(
            SqlState.INVALID_PARAMETER_VALUE,
            "admin.admin_users must not be empty: nobody could run SET, RELOAD or SHUTDOWN on "
            "the console again",
            hint="Edit the configuration file and RELOAD to remove every admin user.",
        )
    if section == "admin":
        problems: list[str] = []
        check_admin(
            lambda path, msg: problems.append(f"{path}: {msg}"),
            new_section,
            (d.name for d in cfg.databases),
            (u.name for u in cfg.users),
        )
        if problems:
            raise CommandError(SqlState.INVALID_PARAMETER_VALUE, problems[0])
    return full, dataclasses.replace(cfg, **{section: new_section})
