"""A pytest plugin loaded into an outside suite's own run (`-p pgpool_outside_plugin`).

It writes each test's outcome to a JSON-lines file as soon as it is known, so a suite killed
half-way still tells what ran, and it bounds every test: a client blocked on a proxy that never
answers must cost seconds, not the whole run.

- Sockets made with socket.create_connection and no timeout get PGPOOL_OUTSIDE_IO_TIMEOUT_S
  (pure-Python drivers then fail the test with their own network error).
- A test still running (setup, call or teardown) after PGPOOL_OUTSIDE_TEST_TIMEOUT_S is recorded
  as "hung" and the process exits at once: a thread blocked in C (libpq) cannot be interrupted.
  The harness then runs the tests not yet recorded in a new process: the same command, with
  the ids already recorded listed in PGPOOL_OUTSIDE_DONE (a JSON file) and deselected here, as
  not every suite's ids can be given on the command line (SQLAlchemy names classes at collection).
"""

from __future__ import annotations

import json
import os
import socket
import threading
from typing import Any

import pytest

_OUT = os.environ["PGPOOL_OUTSIDE_RESULTS"]
_IO_TIMEOUT = float(os.environ.get("PGPOOL_OUTSIDE_IO_TIMEOUT_S", "20"))
_TEST_TIMEOUT = float(os.environ.get("PGPOOL_OUTSIDE_TEST_TIMEOUT_S", "60"))

# The exit status that tells the harness a hung test ended the process.
HUNG_EXIT = 97

_lock = threading.Lock()
_file = open(_OUT, "a", encoding="utf-8")  # noqa: SIM115 - lives as long as the process


def _write(record: dict[str, Any]) -> None:
    with _lock:
        _file.write(json.dumps(record) + "\n")
        _file.flush()


_create_connection = socket.create_connection


def _create_connection_bounded(address: Any, timeout: Any = None, *args: Any, **kw: Any) -> Any:
    if timeout is None or timeout is socket._GLOBAL_DEFAULT_TIMEOUT:  # type: ignore[attr-defined]
        timeout = _IO_TIMEOUT
    return _create_connection(address, timeout, *args, **kw)


socket.create_connection = _create_connection_bounded


@pytest.hookimpl(trylast=True)  # after the suite's own plugins have chosen their tests
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    done_file = os.environ.get("PGPOOL_OUTSIDE_DONE")
    if not done_file:
        return
    with open(done_file, encoding="utf-8") as f:
        done = set(json.load(f))
    left = [item for item in items if item.nodeid not in done]
    if len(left) < len(items):
        config.hook.pytest_deselected(items=[item for item in items if item.nodeid in done])
        items[:] = left


def pytest_collection_finish(session: pytest.Session) -> None:
    _write({"collected": [item.nodeid for item in session.items]})


_outcome: dict[str, str] = {}
_message: dict[str, str] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    nodeid = report.nodeid
    if report.failed:
        _outcome[nodeid] = "failed"
        _message.setdefault(nodeid, f"{report.when}: {report.longreprtext[-6000:]}")
    elif report.skipped and _outcome.get(nodeid) != "failed":
        _outcome[nodeid] = "skipped"
    elif report.when == "call" and nodeid not in _outcome:
        _outcome[nodeid] = "passed"
    if report.when == "teardown":
        outcome = _outcome.pop(nodeid, "passed")
        _write({"id": nodeid, "outcome": outcome, "message": _message.pop(nodeid, "")})


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Any:
    def hung() -> None:
        _write({"id": item.nodeid, "outcome": "hung", "message": f"no end in {_TEST_TIMEOUT}s"})
        os._exit(HUNG_EXIT)

    timer = threading.Timer(_TEST_TIMEOUT, hung)
    timer.daemon = True
    timer.start()
    try:
        return (yield)
    finally:
        timer.cancel()
