"""Owns ``<key>_env`` references in ``[[databases]]``: a key's value read from a named variable.

Containers get per-deployment values (the database endpoint from a CloudFormation output, a
secret's ARN) as environment variables, while the configuration file is baked into the image
or mounted from a ConfigMap. ``PGPOOL_<SECTION>_<KEY>`` overrides cannot address an entry of
an array, so an entry names its own variables, as ``password_env`` already does::

    [[databases]]
    name = "app"
    host_env = "PGPOOL_DB_HOST"              # host = $PGPOOL_DB_HOST
    port_env = "PGPOOL_DB_PORT"              # port = int($PGPOOL_DB_PORT), range-checked
    secret_arn_env = "PGPOOL_DB_SECRET_ARN"

The value is converted and checked exactly as if it had been written in the file; a variable
that is unset or empty is a configuration error naming the key and the variable (a silent
default would point a proxy at the wrong server). ``password_env`` (in [[databases]] and
[[users]]) is resolved here too, apart: its value must never appear in a message.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from .schema import BAD, Checker, Key

__all__ = ["ENV_REFS", "resolve_env_refs", "resolve_password"]

# Per array: reference key -> the key it supplies. password_env is older and resolved apart
# (its value must never appear in a message).
ENV_REFS: Final[dict[str, dict[str, str]]] = {
    "databases": {
        "host_env": "host",
        "port_env": "port",
        "hosts_env": "hosts",  # comma-separated "host:port" list
        "secret_arn_env": "secret_arn",
    },
}


def resolve_env_refs(
    checker: Checker,
    array: str,
    specs: Mapping[str, Key],
    path: str,
    table: Mapping[str, Any],
    values: dict[str, Any],
) -> None:
    """Replace each ``<key>_env`` in ``values`` with ``<key>`` read from the environment."""
    for ref, target in ENV_REFS.get(array, {}).items():
        var = values.pop(ref, None)
        if var is None:
            continue
        spec = specs.get(target)
        if spec is None:
            # The target key does not exist in this build (e.g. hosts before multi-host).
            checker.add(f"{path}.{ref}", f"{target} is not a key of [[{array}]]")
            continue
        if table.get(target) is not None:
            checker.add(f"{path}.{ref}", f"give either {target} or {ref}, not both")
            values[target] = BAD
            continue
        if var is BAD:
            values[target] = BAD
            continue
        raw = checker.env.get(var)
        if raw is None or not raw.strip():
            state = "is not set" if raw is None else "is set but empty"
            checker.add(f"{path}.{ref}", f"environment variable {var} {state}")
            values[target] = BAD
            continue
        where = f"{path}.{target} (from environment variable {var})"
        value = checker.env_value(spec, raw.strip(), where)
        values[target] = value if value is BAD else checker.convert(spec, value, where)


def resolve_password(
    checker: Checker, path: str, table: Mapping[str, Any], values: dict[str, Any]
) -> None:
    """Replace ``password_env`` with the password it points at."""
    var = values.pop("password_env", None)
    if var is None:
        return
    if table.get("password") is not None:
        checker.add(f"{path}.password_env", "give either password or password_env, not both")
        values["password"] = BAD
        return
    if var is BAD:
        values["password"] = BAD
        return
    secret = checker.env.get(var)
    if secret is None:
        checker.add(f"{path}.password_env", f"environment variable {var} is not set")
        values["password"] = BAD
    elif not secret:
        checker.add(f"{path}.password_env", f"environment variable {var} is set but empty")
        values["password"] = BAD
    else:
        values["password"] = secret
