"""Owns reading PgBouncer's files: pgbouncer.ini (sections, comments, ``%include``), the
libpq-style connection strings of its ``[databases]``, ``[users]`` and ``[peers]`` entries, and
the ``auth_file`` (userlist.txt). What the settings mean is `pgbouncer`'s business.

Everything is read line by line with string methods, in time linear in the input: no regular
expression ever runs over file text. Each problem is one ``FILE:LINE: ...`` line.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Final

__all__ = [
    "INI_SECTIONS",
    "MAX_INCLUDE_DEPTH",
    "IniEntry",
    "IniFiles",
    "PgBouncerNote",
    "cut",
    "looks_like_pgbouncer_ini",
    "parse_params",
    "read_auth_file",
    "read_ini",
    "shown",
]

# PgBouncer's own include depth is small too; the bound also stops an include cycle.
MAX_INCLUDE_DEPTH: Final = 10
INI_SECTIONS: Final = ("databases", "users", "pgbouncer", "peers")


def shown(text: str, limit: int = 60) -> str:
    """``text`` quoted for a message, cut at ``limit`` characters: one line per problem even
    when a file holds a megabyte on one line."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + "..."


def cut(text: str, limit: int = 120) -> str:
    """``text`` cut at ``limit`` characters (for names inside a message)."""
    return text if len(text) <= limit else text[:limit] + "..."


@dataclass(frozen=True, slots=True)
class PgBouncerNote:
    """A PgBouncer setting that was not converted (or not exactly), and why.

    ``severity`` is ``"warning"`` when behaviour differs from PgBouncer's, ``"info"`` when the
    setting's value means what pgpool-proxy does anyway."""

    where: str
    setting: str
    message: str
    severity: str = "warning"

    def __str__(self) -> str:
        return f"{self.where}: {self.setting}: {self.message}"


@dataclass(slots=True)
class IniEntry:
    section: str
    key: str
    value: str
    where: str
    base: str  # directory of the file the entry is in (relative paths are taken from it)


@dataclass(slots=True)
class IniFiles:
    entries: list[IniEntry] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[PgBouncerNote] = field(default_factory=list)
    files: list[str] = field(default_factory=list)  # in the order they were read


def read_text(path: str) -> str:
    """The file's text; OSError or UnicodeDecodeError as PgBouncer users would want them."""
    with open(path, "rb") as handle:
        raw = handle.read()
    return raw.decode("utf-8").removeprefix("\ufeff")


def _read_ini(path: str, ini: IniFiles, depth: int, section: str | None) -> str | None:
    """Adds the entries of ``path`` (and of what it includes) to ``ini``; returns the section
    in effect at its end, since an include continues the including file's section."""
    try:
        text = read_text(path)
    except OSError as exc:
        ini.problems.append(f"{path}: cannot read file: {exc.strerror or exc}")
        return section
    except UnicodeDecodeError as exc:
        ini.problems.append(f"{path}: file is not valid UTF-8 (byte offset {exc.start})")
        return section
    base = os.path.dirname(os.path.abspath(path))
    ini.files.append(path)
    for number, raw_line in enumerate(text.splitlines(), 1):
        where = f"{path}:{number}"
        line = raw_line.strip()
        if not line or line[0] in ";#":
            continue
        if line.startswith("%include"):
            target = line.removeprefix("%include").strip()
            if not target or line[len("%include")] not in " \t":
                ini.problems.append(f"{where}: expected %include FILENAME")
                continue
            if depth >= MAX_INCLUDE_DEPTH:
                ini.problems.append(
                    f"{where}: %include nested more than {MAX_INCLUDE_DEPTH} deep "
                    "(an include cycle?)"
                )
                continue
            section = _read_ini(os.path.join(base, target), ini, depth + 1, section)
            continue
        if line[0] == "[":
            if line[-1] != "]" or len(line) < 3:
                ini.problems.append(f"{where}: expected a section header such as [pgbouncer]")
                continue
            section = line[1:-1].strip().lower()
            if section not in INI_SECTIONS:
                ini.notes.append(
                    PgBouncerNote(where, f"[{section}]", "not a PgBouncer section; ignored")
                )
            continue
        key, value, problem = _split_key_value(line)
        if problem:
            ini.problems.append(f"{where}: {problem}")
        elif section is None:
            ini.problems.append(f"{where}: {shown(key)} is outside any section; put it under one")
        elif section in INI_SECTIONS:
            ini.entries.append(IniEntry(section, key, value, where, base))
    return section


def _split_key_value(line: str) -> tuple[str, str, str]:
    """(key, value, problem) of a ``key = value`` line; a key may be double-quoted as an SQL
    identifier (``"my db" = ...``, with ``""`` for a quote)."""
    if line[0] == '"':
        key, end = _quoted(line, 0, '"')
        if end < 0:
            return "", "", "unterminated quoted name"
        rest = line[end:].lstrip()
        if not rest.startswith("="):
            return "", "", "expected = after the quoted name"
        return key, rest[1:].strip(), ""
    key, sep, value = line.partition("=")
    key = key.strip()
    if not sep or not key:
        return "", "", "expected key = value, a [section] header or %include FILENAME"
    return key, value.strip(), ""


def _quoted(text: str, start: int, quote: str) -> tuple[str, int]:
    """The quoted string opening at ``text[start]`` (a doubled quote stands for one, and a
    backslash escapes the next character when ``quote`` is ``'``), and the index after it;
    the index is -1 when the string never ends."""
    out: list[str] = []
    i = start + 1
    n = len(text)
    while i < n:
        c = text[i]
        if c == quote:
            if i + 1 < n and text[i + 1] == quote:
                out.append(quote)
                i += 2
                continue
            return "".join(out), i + 1
        if c == "\\" and quote == "'" and i + 1 < n:
            out.append(text[i + 1])
            i += 2
            continue
        out.append(c)
        i += 1
    return "".join(out), -1


def parse_params(text: str) -> tuple[list[tuple[str, str]], str]:
    """The ``key=value`` pairs of a libpq-style connection string (values may be single-quoted),
    in order, and a problem ("" when none)."""
    pairs: list[tuple[str, str]] = []
    i, n = 0, len(text)
    while True:
        while i < n and text[i].isspace():
            i += 1
        if i >= n:
            return pairs, ""
        start = i
        while i < n and text[i] != "=" and not text[i].isspace():
            i += 1
        key = text[start:i].lower()
        while i < n and text[i].isspace():
            i += 1
        if i >= n or text[i] != "=" or not key:
            return pairs, f"expected key=value at {shown(text[start:], 20)}"
        i += 1
        while i < n and text[i].isspace():
            i += 1
        if i < n and text[i] == "'":
            value, end = _quoted(text, i, "'")
            if end < 0:
                return pairs, f"unterminated quoted value of {key}"
            i = end
        else:
            start = i
            while i < n and not text[i].isspace():
                i += 1
            value = text[start:i]
        pairs.append((key, value))


def read_auth_file(path: str, problems: list[str]) -> dict[str, tuple[str, str]]:
    """user -> (password, "file:line") from an auth_file: lines of ``"user" "password" ...``."""
    users: dict[str, tuple[str, str]] = {}
    try:
        text = read_text(path)
    except OSError as exc:
        problems.append(f"{path}: cannot read auth_file: {exc.strerror or exc}")
        return users
    except UnicodeDecodeError as exc:
        problems.append(f"{path}: auth_file is not valid UTF-8 (byte offset {exc.start})")
        return users
    for number, raw_line in enumerate(text.splitlines(), 1):
        line = raw_line.strip()
        if not line or line[0] in ";#":
            continue
        where = f"{path}:{number}"
        fields: list[str] = []
        i = 0
        while len(fields) < 2 and i < len(line) and line[i] == '"':
            value, end = _quoted(line, i, '"')
            if end < 0:
                break
            fields.append(value)
            i = end
            while i < len(line) and line[i].isspace():
                i += 1
        if len(fields) < 2 or not fields[0]:
            problems.append(f'{where}: expected "user" "password" (each in double quotes)')
            continue
        users[fields[0]] = (fields[1], where)
    return users


def looks_like_pgbouncer_ini(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a PgBouncer ini file rather than a TOML configuration: it has a
    ``[pgbouncer]`` or ``[databases]`` section header (TOML uses ``[[databases]]``)."""
    try:
        text = read_text(os.fspath(path))
    except (OSError, UnicodeDecodeError):
        return False
    return any(_is_ini_header(line) for line in text.splitlines())


def _is_ini_header(line: str) -> bool:
    stripped = line.strip().lower()
    return stripped in ("[pgbouncer]", "[databases]", "[users]", "[peers]") or stripped.startswith(
        "%include"
    )


def read_ini(path: str) -> IniFiles:
    """The entries of ``path`` and of the files it includes, in order, with the problems and
    notes met on the way (an include continues the including file's section, and a relative
    include is taken from the including file's directory)."""
    ini = IniFiles()
    _read_ini(path, ini, 0, None)
    return ini
