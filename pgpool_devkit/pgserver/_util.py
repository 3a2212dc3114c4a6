"""Owns what every pgserver module shares: PgServerError, the loopback HOST and quoting."""

from __future__ import annotations

HOST = "127.0.0.1"


class PgServerError(Exception):
    """A local PostgreSQL server could not be found, started, stopped or queried."""


# SQL and config quoting


def quote_ident(name: str) -> str:
    if "\0" in name:
        raise ValueError("identifier contains NUL")
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    # Relies on standard_conforming_strings=on, the default since 9.1, which we never change.
    if "\0" in value:
        raise ValueError("literal contains NUL")
    return "'" + value.replace("'", "''") + "'"


def _conf_value(value: str) -> str:
    # Every GUC accepts a quoted value, whatever its type.
    if "\n" in value or "\r" in value:
        raise ValueError(f"setting value contains a newline: {value!r}")
    return "'" + value.replace("'", "''") + "'"


def _hba_word(word: str) -> str:
    # Quoting makes "all", "replication" etc. a literal role name rather than a keyword.
    return '"' + word.replace('"', '""') + '"'
