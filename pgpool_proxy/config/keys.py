"""Owns the registry of every key table: which ``[sections]`` and ``[[arrays]]`` a file may
have, and converting one setting from text as the file's value would be (the console's SET).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from .admin import ADMIN_KEYS
from .client_rules import CLIENT_RULE_KEYS
from .core import AUTH_KEYS, POOL_KEYS, PROXY_KEYS
from .databases import DATABASE_KEYS
from .metrics import METRICS_KEYS
from .peers import PEER_KEYS
from .schema import BAD, Checker, ConfigError, Key
from .security import CLIENT_TLS_KEYS, IAM_KEYS, IAM_RULE_KEYS, SECRETS_KEYS, SERVER_TLS_KEYS
from .topology import TOPOLOGY_KEYS
from .users import USER_KEYS

__all__ = ["ARRAYS", "SECTIONS", "setting_from_text"]

# In this order in "did you mean" hints for an unknown section.
SECTIONS: Final[Mapping[str, Mapping[str, Key]]] = {
    "proxy": PROXY_KEYS,
    "pool": POOL_KEYS,
    "auth": AUTH_KEYS,
    "client_tls": CLIENT_TLS_KEYS,
    "server_tls": SERVER_TLS_KEYS,
    "iam": IAM_KEYS,
    "secrets": SECRETS_KEYS,
    "topology": TOPOLOGY_KEYS,
    "metrics": METRICS_KEYS,
    "admin": ADMIN_KEYS,
}
ARRAYS: Final[Mapping[str, Mapping[str, Key]]] = {
    "databases": DATABASE_KEYS,
    "users": USER_KEYS,
    "iam_rules": IAM_RULE_KEYS,
    "client_rules": CLIENT_RULE_KEYS,
    "peers": PEER_KEYS,
}


def setting_from_text(section: str, key: str, text: str) -> Any:
    """``section.key`` converted from ``text`` and checked like the file's (or an environment
    override's) value; raises `ConfigError` with one problem, ``"section.key: message"``.

    Only the key's own type and range are checked, not how it relates to other keys."""
    spec = SECTIONS[section][key]
    path = f"{section}.{key}"
    # The checker prefixes a source; a single setting has none, so it is stripped again.
    checker = Checker("SET", {})
    value = checker.env_value(spec, text, path)
    if value is not BAD:
        value = checker.convert(spec, value, path)
    if checker.problems or value is BAD:
        raise ConfigError([problem.removeprefix("SET: ") for problem in checker.problems])
    return value
