"""pg8000's own test suite (from its sdist), directly and through the proxy (transaction mode,
pool of 3 shared with background load): every test that passes directly passes through the
proxy, except those in expected_differences.toml."""

from __future__ import annotations

from pathlib import Path

import pytest

from .harness import FULL, SUPERUSER_PASSWORD, OutsideServer, run_both

VERSION = "1.31.6"

# The default run: the query tests of its API layers (parameters, prepared statements, portals,
# errors, transactions, two-phase commit). PGPOOL_OUTSIDE_FULL=1 runs everything.
FAST = [
    "test/native/test_query.py",
    "test/dbapi/test_query.py",
    "test/legacy/test_error_recovery.py",
]

# Benchmarks time themselves and are no check of behaviour.
IGNORE = [
    "--ignore=test/native/test_benchmarks.py",
    "--ignore=test/dbapi/test_benchmarks.py",
    "--ignore=test/legacy/test_benchmarks.py",
]
# 60000 parameters in one IN list: about 50 s of server time here, directly; full runs only.
SLOW = ["--deselect=test/native/test_query.py::test_max_parameters"]


@pytest.mark.outside
@pytest.mark.timeout(7200 if FULL else 900)
def test_pg8000_suite(outside_server: OutsideServer, tmp_path: Path) -> None:
    def env(host: str, port: int) -> dict[str, str]:
        return {
            "PGHOST": host,
            "PGPORT": str(port),
            "PGPASSWORD": SUPERUSER_PASSWORD,
            "PYTHONPATH": "src",  # the sdist's pg8000, not an installed one
        }

    def setup() -> None:
        outside_server.pg.psql("CREATE EXTENSION IF NOT EXISTS hstore")

    run_both(
        suite="pg8000",
        sdist=("pg8000", VERSION),
        server=outside_server,
        # pg8000_scram_sha_256 is created by the suite's auth tests (on the direct run first).
        databases=["postgres", "pg8000_scram_sha_256"],
        load_database="postgres",
        paths=["test"] if FULL else FAST,
        options=IGNORE if FULL else IGNORE + SLOW,
        test_timeout_s=180 if FULL else 60,
        env=env,
        tmp_path=tmp_path,
        setup=setup,
    )
