"""Owns the bottom of the configuration schema: how a key is described (`Key`), and the
`Checker` that converts raw TOML/environment values against it while collecting every problem.

Nothing here knows a section: the key tables live with the settings they describe (`core`,
`databases`, `security`, ...), reading whole tables is `tables`, and `build` drives it all.
"""

from __future__ import annotations

import enum
import ipaddress
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, time
from typing import Any, Final

__all__ = [
    "BAD",
    "Add",
    "Checker",
    "ConfigError",
    "Key",
    "Kind",
    "all_valid",
    "check_unique_name",
    "env_name",
    "only_valid",
    "quote",
    "type_name",
]

# Records one problem: (key path, message). Cross-key checks take this rather than a Checker
# so the admin console can run them on a single SET.
Add = Callable[[str, str], None]


class ConfigError(Exception):
    """Invalid configuration; ``problems`` holds every problem, each ``"FILE: key: message"``."""

    def __init__(self, problems: Iterable[str]) -> None:
        self.problems: list[str] = list(problems)
        super().__init__("\n".join(self.problems))

    def __str__(self) -> str:
        return "\n".join(self.problems)


class Kind(enum.Enum):
    INT = "int"
    FLOAT = "float"
    STR = "str"
    CHOICE = "choice"
    ENUM = "enum"
    LISTEN = "listen"
    BOOL = "bool"
    STRLIST = "strlist"


@dataclass(frozen=True, slots=True)
class Key:
    """One key of a section or array: its kind and the range or choices it accepts."""

    kind: Kind
    lo: float | None = None
    hi: float | None = None
    # True where zero would be meaningless (a zero login timeout would reject every client).
    lo_open: bool = False
    choices: tuple[str, ...] = ()
    enum_type: type[enum.Enum] | None = None
    nonempty: bool = False


_HOSTNAME_RE: Final = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_])?")

# Marks a value that failed validation; the problem has already been recorded.
BAD: Final = object()


def type_name(value: object) -> str:
    """How a TOML reader would name the type of ``value``."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, Mapping):
        return "table"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, datetime | date | time):
        return "date/time"
    return type(value).__name__


def check_unique_name(
    checker: Checker, seen: dict[str, str], path: str, name: object, what: str
) -> None:
    """Report `name` at `path` when an earlier entry (recorded in `seen`) has it already."""
    if name is BAD or not isinstance(name, str):
        return
    if name in seen:
        checker.add(
            f"{path}.name", f"duplicate {what} {quote(name)} (first defined at {seen[name]})"
        )
    else:
        seen[name] = path


def quote(value: str) -> str:
    """``value`` in double quotes, escaped as TOML would write it."""
    # Double quotes match how the value is written in TOML, which is what the reader typed.
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def _format_number(value: float) -> str:
    if isinstance(value, int):  # float() overflows on a TOML integer of 309+ digits
        return str(value)
    return str(int(value)) if value.is_integer() else str(value)


def env_name(section: str, key: str) -> str:
    """The environment variable that overrides ``section.key``."""
    return f"PGPOOL_{section.upper()}_{key.upper()}"


def only_valid(values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` without the keys that failed validation (their dataclass defaults apply)."""
    return {key: value for key, value in values.items() if value is not BAD}


def all_valid(values: Mapping[str, Any]) -> bool:
    """Whether no value failed validation (cross-key checks only run then)."""
    return all(value is not BAD for value in values.values())


class Checker:
    """Collects problems while converting raw values; never raises until `finish`."""

    def __init__(self, source: str, env: Mapping[str, str]) -> None:
        self.source = source
        self.env = env
        self.problems: list[str] = []

    def add(self, path: str, message: str) -> None:
        self.problems.append(f"{self.source}: {path}: {message}")

    def convert(self, spec: Key, value: object, path: str) -> Any:
        """Validate one value against ``spec``; returns the typed value or `BAD`."""
        if spec.kind is Kind.INT:
            return self._int(spec, value, path)
        if spec.kind is Kind.FLOAT:
            return self._float(spec, value, path)
        if spec.kind is Kind.ENUM:
            return self._enum(spec, value, path)
        if spec.kind is Kind.BOOL:
            if not isinstance(value, bool):
                self.add(path, f"expected true or false, got {type_name(value)}")
                return BAD
            return value
        if spec.kind is Kind.STRLIST:
            return self._strlist(spec, value, path)
        if not isinstance(value, str):
            self.add(path, f"expected a string, got {type_name(value)}")
            return BAD
        if "\x00" in value:
            # The wire protocol NUL-terminates strings, so such a value could never be sent.
            self.add(path, "must not contain a NUL character")
            return BAD
        if spec.kind is Kind.LISTEN:
            return self.listen(value, path)
        if spec.kind is Kind.CHOICE:
            lowered = value.lower()
            if lowered not in spec.choices:
                self._bad_choice(path, value, spec.choices)
                return BAD
            return lowered
        if spec.nonempty and not value:
            self.add(path, "must not be empty")
            return BAD
        return value

    def _strlist(self, spec: Key, value: object, path: str) -> Any:
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            self.add(path, f"expected an array of strings, got {type_name(value)}")
            return BAD
        if spec.nonempty and (not value or not all(value)):
            self.add(path, "must be a non-empty array of non-empty strings")
            return BAD
        return tuple(value)

    def _int(self, spec: Key, value: object, path: str) -> Any:
        # bool is an int subclass in Python, but `port = true` is never what anyone meant.
        if isinstance(value, bool) or not isinstance(value, int):
            self.add(path, f"expected an integer, got {type_name(value)}")
            return BAD
        return value if self._in_range(spec, value, path) else BAD

    def _float(self, spec: Key, value: object, path: str) -> Any:
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.add(path, f"expected a number, got {type_name(value)}")
            return BAD
        try:
            number = float(value)
        except OverflowError:  # a TOML integer of 309+ digits
            number = math.inf
        if not math.isfinite(number):
            self.add(path, f"must be a finite number, got {number}")
            return BAD
        return number if self._in_range(spec, number, path) else BAD

    def _in_range(self, spec: Key, value: float, path: str) -> bool:
        lo, hi = spec.lo, spec.hi
        below = lo is not None and (value <= lo if spec.lo_open else value < lo)
        above = hi is not None and value > hi
        if not (below or above):
            return True
        got = _format_number(value)
        if lo is not None and hi is not None:
            self.add(
                path, f"must be between {_format_number(lo)} and {_format_number(hi)}, got {got}"
            )
        elif lo is not None:
            op = ">" if spec.lo_open else ">="
            self.add(path, f"must be {op} {_format_number(lo)}, got {got}")
        else:
            assert hi is not None
            self.add(path, f"must be <= {_format_number(hi)}, got {got}")
        return False

    def _enum(self, spec: Key, value: object, path: str) -> Any:
        enum_type = spec.enum_type
        assert enum_type is not None
        # Programmatic configs (tests, the demo) may pass the enum member itself.
        if isinstance(value, enum_type):
            return value
        allowed = tuple(str(member.value) for member in enum_type)
        if not isinstance(value, str):
            self.add(path, f"expected a string, got {type_name(value)}")
            return BAD
        lowered = value.lower()
        for member in enum_type:
            if member.value == lowered:
                return member
        self._bad_choice(path, value, allowed)
        return BAD

    def _bad_choice(self, path: str, value: str, allowed: tuple[str, ...]) -> None:
        options = ", ".join(quote(choice) for choice in allowed)
        self.add(path, f"must be one of {options}; got {quote(value)}")

    def listen(self, value: str, path: str) -> Any:
        """Parse a ``"host:port"`` listen address into (host, port), or `BAD`."""
        example = 'expected "host:port", e.g. "127.0.0.1:6432" or "[::1]:6432"'
        if value.startswith("["):
            host, sep, port_text = value[1:].partition("]:")
            if not sep:
                self.add(path, f"{example}; got {quote(value)}")
                return BAD
            try:
                ipaddress.IPv6Address(host)
            except ValueError:
                self.add(path, f"{quote(host)} in brackets is not an IPv6 address")
                return BAD
        else:
            host, sep, port_text = value.rpartition(":")
            if not sep:
                self.add(path, f"{example}; got {quote(value)}")
                return BAD
            if ":" in host:
                self.add(
                    path,
                    f'IPv6 addresses must be bracketed, e.g. "[::1]:6432"; got {quote(value)}',
                )
                return BAD
            if not host:
                self.add(
                    path,
                    f'host is empty (use "0.0.0.0:PORT" for all interfaces); got {quote(value)}',
                )
                return BAD
            if not self._valid_host(host):
                self.add(path, f"{quote(host)} is not a valid IP address or host name")
                return BAD
        if not port_text.isascii() or not port_text.isdigit() or len(port_text) > 5:
            self.add(path, f"port must be a number; got {quote(value)}")
            return BAD
        port = int(port_text)
        if port > 65535:
            self.add(path, f"port must be between 0 and 65535, got {port}")
            return BAD
        return (host, port)

    @staticmethod
    def _valid_host(host: str) -> bool:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            pass
        else:
            return True
        # "300.1.1.1" would otherwise pass as a host name and fail much later, at bind time.
        if re.fullmatch(r"[0-9.]+", host):
            return False
        return _HOSTNAME_RE.fullmatch(host) is not None

    def env_value(self, spec: Key, raw: str, path: str) -> Any:
        """Turn an environment string into the type the TOML would have had."""
        if spec.kind is Kind.INT:
            try:
                return int(raw.strip(), 10)
            except ValueError:
                self.add(path, f"expected an integer, got {quote(raw)}")
                return BAD
        if spec.kind is Kind.FLOAT:
            try:
                return float(raw.strip())
            except ValueError:
                self.add(path, f"expected a number, got {quote(raw)}")
                return BAD
        if spec.kind is Kind.BOOL:
            word = raw.strip().lower()
            if word not in ("true", "false"):
                self.add(path, f"expected true or false, got {quote(raw)}")
                return BAD
            return word == "true"
        if spec.kind is Kind.STRLIST:
            return [item.strip() for item in raw.split(",") if item.strip()]
        return raw

    def table(self, value: object, path: str, form: str) -> Mapping[str, Any] | None:
        """``value`` when it is a table; otherwise records that it is not and returns None."""
        if isinstance(value, Mapping):
            return value
        self.add(path, f"expected a table ({form}), got {type_name(value)}")
        return None

    def finish(self) -> None:
        """Raise `ConfigError` with every problem recorded, if any."""
        if self.problems:
            raise ConfigError(self.problems)
