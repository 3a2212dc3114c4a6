"""asyncpg's own test suite (tests/ of its sdist, run with the installed asyncpg of the same
version, so nothing is compiled), directly and through the proxy (transaction mode, pool of 3
shared with background load): every test that passes directly passes through the proxy, except
those in expected_differences.toml."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import pytest

from .harness import FULL, SUPERUSER, SUPERUSER_PASSWORD, OutsideServer, run_both

VERSION = "0.32.0"

# asyncpg._testbase uses a running server (its RunningCluster, connection settings from libpq's
# PG* variables) when PGHOST is set, instead of initdb-ing one of its own.
# The default run: prepared statements, execute/executemany, cursors, transactions, COPY,
# LISTEN/NOTIFY, type introspection and codecs, and statement-cache invalidation: what a pooler
# can get wrong. PGPOOL_OUTSIDE_FULL=1 runs all of tests/.
FAST = [
    "test_prepare.py",
    "test_execute.py",
    "test_cursor.py",
    "test_transaction.py",
    "test_copy.py",
    "test_listeners.py",
    "test_introspection.py",
    "test_cache_invalidation.py",
    "test_codecs.py",
    "test_exceptions.py",
]

# The databases the suite connects to: its default, and two it creates itself at run time
# (test_introspection: asyncpg_intro_test; test_cache_invalidation: testdb).
DATABASES = ["postgres", "asyncpg_intro_test", "testdb"]


@pytest.mark.outside
@pytest.mark.timeout(7200 if FULL else 900)
def test_asyncpg_suite(outside_server: OutsideServer, tmp_path: Path) -> None:
    if asyncpg.__version__ != VERSION:
        pytest.skip(f"asyncpg: installed {asyncpg.__version__}, its suite is pinned at {VERSION}")

    def env(host: str, port: int) -> dict[str, str]:
        return {
            "PGHOST": host,
            "PGPORT": str(port),
            "PGUSER": SUPERUSER,
            "PGPASSWORD": SUPERUSER_PASSWORD,
            "PGDATABASE": "postgres",
        }

    def setup() -> None:
        pg = outside_server.pg
        pg.psql("CREATE EXTENSION IF NOT EXISTS hstore")
        for db in DATABASES[1:]:
            pg.psql(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")

    run_both(
        suite="asyncpg",
        sdist=("asyncpg", VERSION),
        server=outside_server,
        databases=DATABASES,
        load_database="postgres",
        paths=["."] if FULL else FAST,
        # Test ids relative to tests/, so that the harness can rerun what is left after a hung test.
        # test_connect.py imports `distro` (one of asyncpg's test requirements), which may not
        # be installed: the full run goes on without that module rather than not at all.
        options=["--rootdir=.", "--continue-on-collection-errors"] if FULL else ["--rootdir=."],
        env=env,
        tmp_path=tmp_path,
        setup=setup,
        # Run from tests/: the sdist's top directory holds asyncpg's uncompiled sources, which
        # must not shadow the installed package (`python -m` puts the working dir on sys.path).
        suite_dir=lambda root: root / "tests",
    )
