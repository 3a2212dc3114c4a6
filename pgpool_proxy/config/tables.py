"""Owns reading the file's tables: a ``[section]`` or an array of ``[[tables]]`` converted key
by key against its key table, with ``PGPOOL_<SECTION>_<KEY>`` overrides, hints for unknown keys
and the ``*_env`` references of array entries.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import Any, Final

from .envrefs import resolve_env_refs, resolve_password
from .schema import BAD, Checker, Key, env_name, quote, type_name

__all__ = ["read_entries", "read_section"]

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


def _unknown_key(checker: Checker, section: str, path: str, key: str, known: Iterable[str]) -> None:
    hint = _KEY_HINTS.get((section, key))
    if hint is None:
        close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
        hint = f"did you mean {quote(close[0])}?" if close else None
    message = "unknown key"
    if hint:
        message += f"; {hint}"
    checker.add(path, message)


def read_section(
    checker: Checker, name: str, raw: object, specs: Mapping[str, Key]
) -> dict[str, Any]:
    """Convert the ``[name]`` section against ``specs``, applying environment overrides."""
    table: Mapping[str, Any] = {}
    if raw is not None:
        table = checker.table(raw, name, f"[{name}]") or {}
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key not in specs:
            _unknown_key(checker, name, f"{name}.{key}", key, specs)
        elif value is not None:
            values[key] = checker.convert(specs[key], value, f"{name}.{key}")
    for key, spec in specs.items():
        var = env_name(name, key)
        raw_env = checker.env.get(var)
        if raw_env is None:
            continue
        path = f"{name}.{key} (from environment variable {var})"
        value = checker.env_value(spec, raw_env, path)
        values[key] = value if value is BAD else checker.convert(spec, value, path)
    return values


def read_entries(
    checker: Checker, name: str, raw: object, specs: Mapping[str, Key], named: bool = True
) -> list[tuple[str, dict[str, Any]]]:
    """Convert the ``[[name]]`` array against ``specs``; returns (path, values) per table.

    ``named`` arrays require a ``name`` in each entry.
    """
    if raw is None:
        return []
    if isinstance(raw, Mapping) or not isinstance(raw, list | tuple):
        checker.add(name, f"expected an array of tables ([[{name}]]), got {type_name(raw)}")
        return []
    result: list[tuple[str, dict[str, Any]]] = []
    for index, item in enumerate(raw):
        path = f"{name}[{index}]"
        table = checker.table(item, path, f"[[{name}]]")
        if table is None:
            continue
        values: dict[str, Any] = {}
        for key, value in table.items():
            if key not in specs:
                _unknown_key(checker, name, f"{path}.{key}", key, specs)
            elif value is not None:
                values[key] = checker.convert(specs[key], value, f"{path}.{key}")
        if named and table.get("name") is None:
            checker.add(f"{path}.name", "required")
            values["name"] = BAD
        resolve_password(checker, path, table, values)
        resolve_env_refs(checker, name, specs, path, table, values)
        result.append((path, values))
    return result
