"""Owns SHOW CONFIG and SET on the admin console: which settings are shown, which change live,
and validating a new value with the same rules as the configuration file.

A SET lasts until the next RELOAD (which re-reads the file), as in PgBouncer.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import TYPE_CHECKING, Any, Final

from ..config import (
    SECTIONS,
    AdminSettings,
    Config,
    ConfigError,
    PoolSettings,
    ProxySettings,
    check_admin,
    setting_from_text,
)
from ..errors import SqlState
from .commands import CommandError
from .show import Result

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
    }
)

_SHOWN: Final = (
    ("proxy", ProxySettings),
    ("pool", PoolSettings),
    ("admin", AdminSettings),
)

CONFIG_COLUMNS: Final = (("key", 25), ("value", 25), ("default", 25), ("changeable", 25))


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


def show_config(server: ProxyServer) -> Result:
    cfg = server.config
    result = Result(CONFIG_COLUMNS)
    for section, cls in _SHOWN:
        current: Any = getattr(cfg, section)
        default: Any = cls()
        for f in dataclasses.fields(cls):
            if f.name == "listen_port":
                continue
            key = f.name
            value, dflt = getattr(current, key), getattr(default, key)
            if key == "listen_host":
                key = "listen"
                value = f"{current.listen_host}:{current.listen_port}"
                dflt = f"{default.listen_host}:{default.listen_port}"
            live = (section, key) in LIVE
            result.rows.append(
                [f"{section}.{key}", _text(value), _text(dflt), "yes" if live else "no"]
            )
    result.rows.append(["auth.type", _text(cfg.auth.type), _text(type(cfg.auth)().type), "no"])
    return result


def _resolve(key: str) -> tuple[str, str]:
    if "." in key:
        section, _, name = key.partition(".")
        if name in SECTIONS.get(section, {}):
            return section, name
    else:
        matches = [(s, key) for s in ("proxy", "pool", "admin", "auth") if key in SECTIONS[s]]
        if len(matches) == 1:
            return matches[0]
    raise CommandError(
        SqlState.UNDEFINED_OBJECT,
        f'unrecognized configuration parameter "{key}"',
        hint="SHOW CONFIG lists the settings (section.key).",
    )


def set_setting(server: ProxyServer, key: str, raw: str) -> tuple[str, Config]:
    """The new Config with `key` set to `raw` (checked like the file's value), and the key's
    full name; raises CommandError. The caller applies it."""
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
