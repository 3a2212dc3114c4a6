"""psycopg2's own test suite (tests/ of its sdist, run with the psycopg2-binary wheel of the same
version, so nothing is compiled), directly and through the proxy (transaction mode, pool of 3
shared with background load): every test that passes directly passes through the proxy, except
those in expected_differences.toml."""

from __future__ import annotations

from pathlib import Path

import pytest

from .harness import (
    FULL,
    SUPERUSER,
    SUPERUSER_PASSWORD,
    FetchError,
    OutsideServer,
    fetch_wheel,
    run_both,
)

VERSION = "2.9.13"
DATABASE = "psycopg2_test"

# The default run: queries, cursors, transactions, COPY, types and errors. PGPOOL_OUTSIDE_FULL=1
# runs everything (its slow tests too).
FAST = [
    "tests/test_connection.py",
    "tests/test_cursor.py",
    "tests/test_transaction.py",
    "tests/test_copy.py",
    "tests/test_types_basic.py",
    "tests/test_errors.py",
    "tests/test_extras_dictcursor.py",
    "tests/test_sql.py",
    "tests/test_with.py",
    "tests/test_notify.py",
]

# Each module's `test_suite()` (unittest's loader hook) is collected as a test; it checks nothing.
DESELECT = ["-k", "not test_suite"]


@pytest.mark.outside
@pytest.mark.timeout(7200 if FULL else 900)
def test_psycopg2_suite(outside_server: OutsideServer, tmp_path: Path) -> None:
    try:
        wheel = fetch_wheel("psycopg2-binary", VERSION)
    except FetchError as exc:
        pytest.skip(f"psycopg2: cannot fetch its wheel ({exc})")

    def setup() -> None:
        # The suite creates its tables itself but expects its database to exist.
        pg = outside_server.pg
        pg.psql(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
        pg.create_database(DATABASE)
        pg.psql("CREATE EXTENSION IF NOT EXISTS hstore", dbname=DATABASE)

    def env(host: str, port: int) -> dict[str, str]:
        return {
            "PSYCOPG2_TESTDB": DATABASE,
            "PSYCOPG2_TESTDB_HOST": host,
            "PSYCOPG2_TESTDB_PORT": str(port),
            "PSYCOPG2_TESTDB_USER": SUPERUSER,
            "PSYCOPG2_TESTDB_PASSWORD": SUPERUSER_PASSWORD,
            "PSYCOPG2_TEST_FAST": "0" if FULL else "1",
            "PYTHONPATH": str(wheel),  # psycopg2 of exactly this version
        }

    run_both(
        suite="psycopg2",
        sdist=("psycopg2", VERSION),
        server=outside_server,
        databases=[DATABASE],
        load_database=DATABASE,
        paths=["tests"] if FULL else FAST,
        options=DESELECT,
        env=env,
        tmp_path=tmp_path,
        setup=setup,
    )
