"""The pure-Python hot path end to end, where this process runs the compiled twin.

The suite runs on whichever implementation the install loads (the compiled twin where it was
built). This runs the integration tests that drive the hot path hardest once more with
PGPOOL_PURE_PYTHON=1: real clients (psql, pgbench, asyncpg, psycopg), both pool modes, the
extended protocol, prepared statements, differential checks against PostgreSQL and hostile
input; so both implementations pass the same tests in every run of the test command.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pgpool_proxy import speedups

ROOT = Path(__file__).resolve().parents[2]

SLICE = [
    "tests/integration/test_basic.py",
    "tests/integration/test_differential_protocol.py",
    "tests/integration/test_prepared.py",
    "tests/integration/test_fidelity_unnamed.py",
    "tests/integration/test_fidelity_types.py",
    "tests/integration/test_session_state.py",
    "tests/integration/test_asyncpg.py",
    "tests/integration/test_psycopg.py",
    "tests/integration/test_psql_pgbench.py",
    "tests/integration/test_hostile.py",
    "tests/integration/test_asyncio_loop.py",
]


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.skipif(
    speedups.implementation() == "pure-python", reason="this run is the pure-Python one already"
)
def test_hot_path_integration_on_the_pure_modules() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *SLICE],
        env={**os.environ, speedups.PURE_ENV: "1"},
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=840,
    )
    assert proc.returncode == 0, proc.stdout[-8000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and " failed" not in proc.stdout
