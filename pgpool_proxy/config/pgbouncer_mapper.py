"""What every PgBouncer section's mapper shares: the ini entries sorted by section, the tables
being filled in, and the checks that turn one ini value into a typed one or a ``FILE:LINE``
problem.
"""

from __future__ import annotations

import os
from typing import Any

from .ini import IniEntry, IniFiles, PgBouncerNote, cut, shown
from .pgbouncer_tables import FALSE_WORDS, TRUE_WORDS

__all__ = ["IniMapper"]


class IniMapper:
    """Turns parsed ini entries into pgpool-proxy's configuration layout, noting the rest."""

    def __init__(self, ini: IniFiles) -> None:
        self.problems = ini.problems
        self.notes = ini.notes
        self.files = ini.files
        self.origins: dict[str, str] = {}
        self.proxy: dict[str, Any] = {}
        self.pool: dict[str, Any] = {}
        self.auth: dict[str, Any] = {}
        self.client_tls: dict[str, Any] = {}
        self.server_tls: dict[str, Any] = {}
        self.admin: dict[str, Any] = {}
        self.databases: list[dict[str, Any]] = []
        self.users: list[dict[str, Any]] = []
        # The last value of each [pgbouncer] setting wins, as in PgBouncer.
        self.settings: dict[str, IniEntry] = {}
        self.db_entries: dict[str, IniEntry] = {}
        self.user_entries: dict[str, IniEntry] = {}
        self.peer_entries: list[IniEntry] = []
        self.peers: list[dict[str, Any]] = []
        for entry in ini.entries:
            if entry.section == "pgbouncer":
                self.settings[entry.key.lower()] = entry
            elif entry.section == "databases":
                self.db_entries[entry.key] = entry
            elif entry.section == "users":
                self.user_entries[entry.key] = entry
            else:
                self.peer_entries.append(entry)

    # helpers

    def note(self, entry: IniEntry, setting: str, message: str, severity: str = "warning") -> None:
        self.notes.append(PgBouncerNote(entry.where, cut(setting), message, severity))

    def bad(self, entry: IniEntry, setting: str, message: str) -> None:
        self.problems.append(f"{entry.where}: {cut(setting)}: {message}")

    def integer(self, entry: IniEntry, value: str, setting: str, lo: int, hi: int) -> int | None:
        text = value.strip()
        digits = text.removeprefix("-")
        if not digits.isdigit() or not digits.isascii() or len(digits) > 18:
            self.bad(entry, setting, f"expected an integer, got {shown(value)}")
            return None
        number = int(text)
        if not lo <= number <= hi:
            self.bad(entry, setting, f"must be between {lo} and {hi}, got {number}")
            return None
        return number

    def seconds(self, entry: IniEntry, setting: str) -> float | None:
        try:
            number = float(entry.value) if len(entry.value) <= 40 else float("nan")
        except ValueError:
            number = float("nan")
        if number != number or number in (float("inf"), float("-inf")) or number < 0:
            self.bad(entry, setting, f"expected a number of seconds >= 0, got {shown(entry.value)}")
            return None
        return number

    def boolean(self, entry: IniEntry, setting: str) -> bool | None:
        lowered = entry.value.lower()
        if lowered in TRUE_WORDS:
            return True
        if lowered in FALSE_WORDS:
            return False
        self.bad(entry, setting, f"expected 0 or 1, got {shown(entry.value)}")
        return None

    def path(self, entry: IniEntry) -> str:
        # PgBouncer expands ~ in file names, as a shell would.
        return os.path.normpath(os.path.join(entry.base, os.path.expanduser(entry.value)))

    def pool_mode(self, entry: IniEntry, value: str, setting: str) -> str | None:
        lowered = value.lower()
        if lowered in ("session", "transaction"):
            return lowered
        if lowered == "statement":
            self.note(
                entry,
                setting,
                "statement pooling is not supported; transaction pooling is used (it runs "
                "every workload statement pooling accepts)",
            )
            return "transaction"
        self.bad(entry, setting, f"expected session, transaction or statement, got {shown(value)}")
        return None

    # [pgbouncer]

    def data(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "proxy": self.proxy,
            "pool": self.pool,
            "auth": self.auth,
        }
        for name, table in (
            ("client_tls", self.client_tls),
            ("server_tls", self.server_tls),
            ("admin", self.admin),
        ):
            if table:
                data[name] = table
        data["databases"] = self.databases
        data["users"] = self.users
        if self.peers:
            data["peers"] = self.peers
        return data
