"""Owns reading a PgBouncer configuration (pgbouncer.ini, its ``%include`` files and its
``auth_file``) and mapping it onto pgpool-proxy's configuration.

`convert_pgbouncer_ini` returns the mapping in the layout `build_config` takes, plus a note for
every PgBouncer setting that has no equivalent (never dropped silently). Problems that make
the file unusable (a malformed line, a bad number, a missing include) are collected and raised
together as one `ConfigError`, one ``FILE:LINE: ...`` line each.

Reading the files is `ini`'s part; the table of settings is `pgbouncer_tables`'; what each
setting becomes is `pgbouncer_settings` (``[pgbouncer]``) and `pgbouncer_entries` (users,
databases, peers), on the shared checks of `pgbouncer_mapper`. This module runs them in order.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .build import build_config
from .ini import PgBouncerNote, read_ini
from .model import Config
from .pgbouncer_entries import EntriesMapper
from .pgbouncer_settings import SettingsMapper
from .pgbouncer_tables import PGBOUNCER_DATABASE_PARAMS, PGBOUNCER_SETTINGS, PGBOUNCER_USER_PARAMS
from .schema import ConfigError
from .tomlwrite import toml_text

__all__ = [
    "PGBOUNCER_DATABASE_PARAMS",
    "PGBOUNCER_SETTINGS",
    "PGBOUNCER_USER_PARAMS",
    "PgBouncerConversion",
    "convert_pgbouncer_ini",
    "load_pgbouncer_config",
]


@dataclass(frozen=True, slots=True)
class PgBouncerConversion:
    """A converted PgBouncer configuration: ``data`` in `build_config`'s layout, the notes on
    what was not converted, and the ini file it came from."""

    data: dict[str, Any]
    notes: tuple[PgBouncerNote, ...]
    source: str
    # "section.key", "databases[0]", "users[1]" -> "FILE:LINE" it came from.
    origins: Mapping[str, str] = field(default_factory=dict)

    def config(self, env: Mapping[str, str] | None = None) -> Config:
        """The validated `Config`; raises `ConfigError` when invalid, each problem naming the
        ini (or auth_file) line the offending value came from where it is known."""
        try:
            return build_config(self.data, source=self.source, env=env)
        except ConfigError as exc:
            raise ConfigError([self._locate(problem) for problem in exc.problems]) from None

    def _locate(self, problem: str) -> str:
        prefix = f"{self.source}: "
        if not problem.startswith(prefix):
            return problem
        path, sep, message = problem[len(prefix) :].partition(": ")
        # The most precise origin known: databases[1].pool_size, then databases[1].
        key = path.partition(" (")[0]
        while key:
            if key in self.origins:
                return f"{self.origins[key]}: {path}{sep}{message}"
            key = key.rpartition(".")[0]
        return problem

    def toml(self) -> str:
        """The configuration as a TOML file for ``pgpool-proxy run --config``."""
        header = [
            f"Converted from {self.source} by pgpool-proxy convert.",
            "It holds the auth_file's passwords: keep it as private as the auth_file.",
        ]
        if self.notes:
            header.append("Not converted, or not exactly (also printed on stderr):")
            header.extend(f"  {note}" for note in self.notes)
        return toml_text(self.data, header)


# --- mapping ----------------------------------------------------------------------------------


class _Mapper(SettingsMapper, EntriesMapper):
    """Turns parsed ini entries into pgpool-proxy's configuration layout, noting the rest."""


def convert_pgbouncer_ini(path: str | os.PathLike[str]) -> PgBouncerConversion:
    """Read a pgbouncer.ini (with its includes and auth_file) and map it onto pgpool-proxy's
    configuration. Raises `ConfigError` listing every problem that makes the files unusable;
    what has no equivalent comes back as notes."""
    source = os.fspath(path)
    ini = read_ini(source)
    if ini.problems:
        raise ConfigError(ini.problems)
    mapper = _Mapper(ini)
    mapper.map_settings()
    mapper.map_users()
    mapper.map_databases()
    mapper.map_peers()
    if mapper.problems:
        raise ConfigError(mapper.problems)
    # Notes are made section by section; a reader wants them in the order of the files.
    rank = {path: i for i, path in enumerate(ini.files)}

    def file_order(note: PgBouncerNote) -> tuple[int, int]:
        path, _, line = note.where.rpartition(":")
        return rank.get(path, len(rank)), int(line) if line.isdigit() else 0

    notes = tuple(sorted(mapper.notes, key=file_order))
    for name, entry in mapper.settings.items():
        target = PGBOUNCER_SETTINGS.get(name, "-")
        if not target.startswith("-") and target.partition(".")[0] not in ("databases", "users"):
            mapper.origins.setdefault(target, entry.where)
            # A key the ini did not set (a missing cert_file) is named at its section's line.
            mapper.origins.setdefault(target.partition(".")[0], entry.where)
    return PgBouncerConversion(mapper.data(), notes, source, mapper.origins)


def load_pgbouncer_config(
    path: str | os.PathLike[str], env: Mapping[str, str] | None = None
) -> tuple[Config, tuple[PgBouncerNote, ...]]:
    """The `Config` a pgbouncer.ini describes, and the notes on what was not converted; raises
    `ConfigError` when the files are unusable or the result is invalid."""
    conversion = convert_pgbouncer_ini(path)
    return conversion.config(env), conversion.notes
