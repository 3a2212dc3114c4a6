"""Owns the admin console settings: the ``[admin]`` section and its cross-key checks.

`pgpool_proxy.config` re-exports `AdminSettings`; the key table lives with the others in
`pgpool_proxy.config_schema`, and `build_config` calls `check_admin`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

Add = Callable[[str, str], None]


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
    checker: Any, raw: object, databases: Iterable[Any], users: Iterable[Any]
) -> AdminSettings:
    """The ``[admin]`` part of a Config (``checker`` is config_schema's problem collector)."""
    from .schema import _BAD, _valid

    values = checker.section("admin", raw)
    admin = AdminSettings(**_valid(values))
    if all(v is not _BAD for v in values.values()):
        check_admin(checker.add, admin, (d.name for d in databases), (u.name for u in users))
    return admin
