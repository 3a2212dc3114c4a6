"""Owns writing a configuration mapping (the layout `build_config` takes) back out as TOML text,
so that a converted configuration can be saved, read by a person and loaded again unchanged.

Only what a configuration holds is supported: tables of strings, integers, floats, booleans,
enum members and lists of strings, plus arrays of such tables (``[[databases]]``).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = ["toml_text", "toml_value"]


def _escape_char(code: int) -> str:
    return {
        0x08: "\\b",
        0x09: "\\t",
        0x0A: "\\n",
        0x0C: "\\f",
        0x0D: "\\r",
        0x22: '\\"',
        0x5C: "\\\\",
    }.get(code, f"\\u{code:04x}")


# TOML basic strings may not hold control characters; str.translate is one linear pass.
_STRING_ESCAPES = {c: _escape_char(c) for c in (*range(0x20), 0x22, 0x5C, 0x7F)}
_COMMENT_ESCAPES = {c: _escape_char(c) for c in (*range(0x20), 0x7F)}


def toml_value(value: Any) -> str:
    """``value`` as a TOML value (raises TypeError or ValueError for what TOML cannot hold)."""
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"a configuration value must be finite, got {value}")
        return repr(value)
    if isinstance(value, str):
        return '"' + value.translate(_STRING_ESCAPES) + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    raise TypeError(f"cannot write a {type(value).__name__} as a TOML value")


def _key(name: str) -> str:
    bare = name and all(c.isascii() and (c.isalnum() or c in "_-") for c in name)
    return name if bare else toml_value(name)


def _table_lines(values: Mapping[str, Any]) -> Iterable[str]:
    for key, value in values.items():
        if value is not None:
            yield f"{_key(key)} = {toml_value(value)}"


def toml_text(data: Mapping[str, Any], header: Sequence[str] = ()) -> str:
    """``data`` as a TOML document: each table as ``[name]``, each list of tables as
    ``[[name]]`` entries; ``header`` lines are written first as comments."""
    # A header line with a newline in it must not end the comment and start a key.
    lines = [f"# {line.translate(_COMMENT_ESCAPES)}".rstrip() for line in header]
    for name, value in data.items():
        if isinstance(value, Mapping):
            if lines:
                lines.append("")
            lines.append(f"[{_key(name)}]")
            lines.extend(_table_lines(value))
        elif isinstance(value, list | tuple):
            for entry in value:
                if lines:
                    lines.append("")
                lines.append(f"[[{_key(name)}]]")
                lines.extend(_table_lines(entry))
        else:
            raise TypeError(f"top-level {name!r} must be a table or an array of tables")
    return "\n".join(lines) + "\n"
