"""Owns the configuration check command: validate a config file and report, without starting."""

from __future__ import annotations

import sys

from .build import load_config
from .schema import ConfigError

__all__ = ["check_config_main"]


def check_config_main(path: str) -> int:
    """Validate the config at ``path`` (with environment overrides); return the exit status.

    Prints a one-line summary to stdout and returns 0 when the file is valid; otherwise prints
    every problem, one per line, to stderr and returns 1.
    """
    try:
        config = load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 1
    print(
        f"OK: {config.source}: {len(config.databases)} databases, {len(config.users)} users, "
        f"pool_mode={config.proxy.pool_mode.value}"
    )
    return 0
