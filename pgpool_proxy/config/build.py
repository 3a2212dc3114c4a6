"""Owns loading: `load_config` reads a TOML file, `parse_config` a TOML string and
`build_config` an already parsed mapping.

All three apply ``PGPOOL_<SECTION>_<KEY>`` environment overrides and resolve ``*_env``
references, then validate everything at once. Any problem, anywhere, ends in a single
`ConfigError` whose ``problems`` list names the file and the key of each one, so an operator
fixes a broken file in one round trip instead of one error per restart.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Mapping
from typing import Any, Final

from .admin import build_admin
from .client_rules import build_client_rules
from .core import AUTH_KEYS, POOL_KEYS, PROXY_KEYS, build_auth, build_pool, build_proxy
from .databases import (
    DATABASE_KEYS,
    build_databases,
    check_auth_lookups,
    check_monitor_logins,
)
from .keys import ARRAYS, SECTIONS
from .metrics import build_metrics
from .model import Config
from .peers import PEER_KEYS, build_peers
from .schema import BAD, Checker, ConfigError, quote, type_name
from .security import build_security
from .tables import read_entries, read_section
from .topology import build_topology
from .users import USER_KEYS, build_users

__all__ = ["build_config", "load_config", "parse_config"]

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
    checker = Checker(source, os.environ if env is None else env)
    if not isinstance(data, Mapping):
        checker.add("<top level>", f"expected a table, got {type_name(data)}")
        checker.finish()
    _check_section_names(checker, data)

    # Conversion problems of the core tables are reported before any cross-key problem.
    proxy_values = read_section(checker, "proxy", data.get("proxy"), PROXY_KEYS)
    pool_values = read_section(checker, "pool", data.get("pool"), POOL_KEYS)
    auth_values = read_section(checker, "auth", data.get("auth"), AUTH_KEYS)
    database_entries = read_entries(checker, "databases", data.get("databases"), DATABASE_KEYS)
    user_entries = read_entries(checker, "users", data.get("users"), USER_KEYS)

    proxy = build_proxy(proxy_values)
    pool = build_pool(checker, pool_values)
    auth, auth_type = build_auth(auth_values)
    min_pool_size = None if pool_values.get("min_pool_size") is BAD else pool.min_pool_size
    databases = build_databases(checker, data.get("databases"), database_entries, min_pool_size)
    users = build_users(checker, user_entries, auth_type)
    security = build_security(checker, data, database_entries, users)
    topology = build_topology(checker, data.get("topology"))
    # Every user the file names counts, valid or not: one whose password_env is unset is
    # already a problem, and a "not in [[users]]" on top of it would be wrong.
    user_names = {values["name"] for _, values in user_entries if values["name"] is not BAD}
    check_monitor_logins(checker, databases, users, user_names)
    check_auth_lookups(checker, auth, databases, users, user_names)
    admin = build_admin(checker, data.get("admin"), (d.name for d in databases), user_names)
    metrics = build_metrics(checker, data.get("metrics"))
    client_rules = build_client_rules(checker, data.get("client_rules"))
    peer_entries = read_entries(checker, "peers", data.get("peers"), PEER_KEYS, named=False)
    peers = build_peers(checker, peer_entries)
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
        client_rules=client_rules,
        peers=tuple(peers),
        **security,
    )


def _check_section_names(checker: Checker, data: Mapping[str, Any]) -> None:
    known = [*SECTIONS, *ARRAYS]
    for name in data:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
            hint = f"; did you mean {quote(close[0])}?" if close else ""
            checker.add(name, f"unknown section{hint}")


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
