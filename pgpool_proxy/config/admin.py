"""Owns the admin console settings: the ``[admin]`` section, its key table and cross-key checks.

The console's SET runs `check_admin` on a single changed value, so it takes an `Add` callback.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from .schema import Add, Checker, Key, Kind, all_valid, only_valid
from .tables import read_section

__all__ = ["ADMIN_KEYS", "AdminSettings", "build_admin", "check_admin"]


@dataclass(frozen=True, slots=True)
class AdminSettings:
    """The ``[admin]`` section: the virtual admin database and who may use it."""

    # Clients that connect to this database name get the admin console instead of a pool.
    database: str = "pgbouncer"
    # May run every command (PAUSE, RELOAD, SHUTDOWN, SET ...).
    admin_users: tuple[str, ...] = ()
    # May only run SHOW commands.
    stats_users: tuple[str, ...] = ()

    def allowed(self, user: str) -> bool:
        """Whether ``user`` may log into the console at all."""
        return user in self.admin_users or user in self.stats_users


ADMIN_KEYS: Final[dict[str, Key]] = {
    "database": Key(Kind.STR, nonempty=True),
    "admin_users": Key(Kind.STRLIST),
    "stats_users": Key(Kind.STRLIST),
}


def check_admin(
    add: Add, admin: AdminSettings, database_names: Iterable[str], user_names: Iterable[str]
) -> None:
    """The admin database must not shadow a real one, and its users must be able to log in."""
    if admin.database in set(database_names):
        add(
            "admin.database",
            f'"{admin.database}" is also a [[databases]] entry; the admin console would hide it '
            "(rename one of them)",
        )
    users = set(user_names)
    for key in ("admin_users", "stats_users"):
        for name in getattr(admin, key):
            if name not in users:
                add(
                    f"admin.{key}",
                    f'user "{name}" is not in [[users]]; admin users log in like any other user',
                )


def build_admin(
    checker: Checker, raw: object, database_names: Iterable[str], user_names: Iterable[str]
) -> AdminSettings:
    """The ``[admin]`` section, checked against the databases and users the file names."""
    values = read_section(checker, "admin", raw, ADMIN_KEYS)
    admin = AdminSettings(**only_valid(values))
    if all_valid(values):
        check_admin(checker.add, admin, database_names, user_names)
    return admin
