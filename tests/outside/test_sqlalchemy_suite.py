"""SQLAlchemy's own test suite (test/ of its sdist, with the sdist's own pure-Python library on
PYTHONPATH, so nothing is compiled and the installed SQLAlchemy does not matter), run through its
pytest plugin against a database given with --dburi, once per driver: directly and through the
proxy (transaction mode, pool of 3 shared with background load). Every test that passes directly
passes through the proxy, except those in expected_differences.toml (sections
sqlalchemy-DRIVER)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from .harness import FULL, SUPERUSER, SUPERUSER_PASSWORD, OutsideServer, run_both

VERSION = "2.0.54"
DATABASE = "sqla_test"

# The dialects run by default: asyncpg (prepared statements for everything, binary codecs) and
# psycopg 3 (server-side binding, statements prepared after 5 runs, pipelined executemany).
# psycopg2 (parameters interpolated client-side, simple queries; it has its own suite here) only
# in full runs. Each runs with the installed driver, skipped when it is not installed.
DRIVERS = {
    "asyncpg": "postgresql+asyncpg",
    "psycopg": "postgresql+psycopg",
    "psycopg2": "postgresql+psycopg2",
}
RUN = ["asyncpg", "psycopg", "psycopg2"] if FULL else ["asyncpg", "psycopg"]

# The default run: the PostgreSQL dialect's round trips (queries, types, JSONB/HSTORE/ENUM
# arrays/domains created and dropped by DDL, RETURNING, two-phase commit, the asyncpg dialect's
# statement cache, psycopg's pipelines, executemany and insertmanyvalues), and of the dialect
# compliance suite (test/dialect/test_suite.py: what every third-party dialect runs) the classes
# about execution rather than reflection: server-side cursors, RETURNING, rowcount, isolation
# levels, autocommit, errors, expanding IN. About 40 s per driver and direction here.
# PGPOOL_OUTSIDE_FULL=1 runs all of test/dialect, test/sql and test/engine (not test/orm: the ORM
# reaches the driver only through the Core tested there).
FAST = [
    "test/dialect/postgresql/test_query.py",
    "test/dialect/postgresql/test_dialect.py",
    "test/dialect/postgresql/test_async_pg.py",
    "test/dialect/postgresql/test_types.py",
    "test/sql/test_insert_exec.py",
    "test/dialect/test_suite.py",
]
FULL_PATHS = ["test/dialect", "test/sql", "test/engine"]

# In the three big modules, only these classes (pytest -k: a substring of the class name).
FAST_CLASSES = [
    # test_types.py: not the range round trips (7,000 tests) nor the array ones (600).
    "JSONBRoundTripTest",
    "HStoreRoundTripTest",
    "ArrayEnum",
    "DomainTest",
    "InetRoundTripTests",
    "UUIDTest",
    "PGInsertManyValuesTest",
    # test_insert_exec.py: not IMVSentinelTest (700 tests of sentinel column variants).
    "InsertManyValuesTest",
    # test/dialect/test_suite.py
    "ServerSideCursorsTest",
    "ReturningTest",
    "RowCountTest",
    "IsolationLevelTest",
    "AutocommitIsolationTest",
    "ExceptionTest",
    "ExpandingBoundInTest",
    "DateTimeTZTest",
    "IntervalTest",
]
FAST_SELECT = [
    "-k",
    "not (test_types.py or test_insert_exec.py or test_suite.py) or " + " or ".join(FAST_CLASSES),
]

# Test classes that run against the database are named after its configuration, server version
# included (CoreArrayRoundTripTest_postgresql+asyncpg_async_15_18): compared and listed without it.
# Driver segments start with a letter, version segments with a digit: no two ways to split a
# name, so no backtracking between them.
_VERSION_SUFFIX = re.compile(
    r"(_postgresql\+[A-Za-z0-9]+(?:_[A-Za-z][A-Za-z0-9]*)*)(?:_[0-9]+)+(?=::)"
)


def normalize_id(test_id: str) -> str:
    return _VERSION_SUFFIX.sub(r"\1", test_id)


@pytest.mark.outside
@pytest.mark.timeout(7200 if FULL else 900)
@pytest.mark.parametrize("driver", RUN)
def test_sqlalchemy_suite(outside_server: OutsideServer, tmp_path: Path, driver: str) -> None:
    if importlib.util.find_spec(driver) is None:
        pytest.skip(f"sqlalchemy-{driver}: {driver} is not installed")

    def setup() -> None:
        # An empty database of its own for each run (the suite expects one: it creates and
        # drops tables by fixed names), with what README.unittests.rst asks of PostgreSQL.
        pg = outside_server.pg
        pg.psql(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
        pg.psql(f"CREATE DATABASE {DATABASE} ENCODING 'UTF8' TEMPLATE template0")
        pg.psql(
            "CREATE SCHEMA test_schema; CREATE SCHEMA test_schema_2;"
            " CREATE EXTENSION hstore; CREATE EXTENSION citext;"
            f" ALTER DATABASE {DATABASE} SET default_text_search_config = 'pg_catalog.english'",
            dbname=DATABASE,
        )

    def options(host: str, port: int) -> list[str]:
        dburi = f"{DRIVERS[driver]}://{SUPERUSER}:{SUPERUSER_PASSWORD}@{host}:{port}/{DATABASE}"
        # Its pyproject.toml stops a run at 250 failures.
        return ["--dburi", dburi, "--maxfail=1000000", *([] if FULL else FAST_SELECT)]

    run_both(
        suite=f"sqlalchemy-{driver}",
        sdist=("sqlalchemy", VERSION),
        server=outside_server,
        databases=[DATABASE],
        load_database=DATABASE,
        paths=FULL_PATHS if FULL else FAST,
        options=options,
        # The sdist's SQLAlchemy, not the installed one (its conftest puts lib/ first too).
        env=lambda host, port: {"PYTHONPATH": "lib"},
        tmp_path=tmp_path,
        setup=setup,
        normalize_id=normalize_id,
    )
