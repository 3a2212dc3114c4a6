"""Re-exports for tests that run against a real, throwaway PostgreSQL (pgpool_devkit.pgserver)."""

from __future__ import annotations

from pgpool_devkit.pgserver import (
    HOST,
    LocalPostgres,
    PgServerError,
    embedded_pg_bindir,
    find_pg_bindir,
    quote_ident,
    quote_literal,
    shared_install_copy,
)

__all__ = [
    "HOST",
    "LocalPostgres",
    "PgServerError",
    "embedded_pg_bindir",
    "find_pg_bindir",
    "pg_available",
    "quote_ident",
    "quote_literal",
    "shared_install_copy",
]


def pg_available() -> bool:
    """Whether find_pg_bindir() finds server binaries on this machine."""
    try:
        find_pg_bindir()
    except PgServerError:
        return False
    return True
