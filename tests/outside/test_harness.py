"""The outside-suite harness itself, on a tiny suite made here (no network, no PostgreSQL)."""

from __future__ import annotations

import textwrap
from pathlib import Path

from .harness import (
    EXPECTED_FILE,
    FAILED,
    MODES,
    PASSED,
    SKIPPED,
    Expected,
    SuiteRun,
    compare,
    run_pytest,
)


def test_expected_differences_file_parses_and_every_entry_has_a_reason() -> None:
    for suite in ("pg8000", "psycopg2", "asyncpg", "sqlalchemy-asyncpg", "sqlalchemy-psycopg"):
        for mode in MODES:
            expected = Expected.load(suite, EXPECTED_FILE, mode)
            assert all(r.strip() for r in expected.reasons.values())


def test_each_mode_has_its_own_expected_differences(tmp_path: Path) -> None:
    path = tmp_path / "e.toml"
    path.write_text(
        '[s]\nknown_bug = "bug"\nknown_bug_signs = ["x"]\n[s.tests]\n"t::a" = "pooling"\n'
        '[s.session.tests]\n"t::b" = "session"\n'
    )
    tx = Expected.load("s", path)
    assert tx.reasons == {"t::a": "pooling"} and tx.known_bug == "bug"
    session = Expected.load("s", path, "session")
    assert session.reasons == {"t::b": "session"} and not session.known_bug


def test_expected_entry_without_reason_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "e.toml"
    path.write_text('[s.tests]\n"t::a" = ""\n')
    try:
        Expected.load("s", path)
    except ValueError as exc:
        assert "needs a reason" in str(exc)
    else:
        raise AssertionError("an entry without a reason was accepted")


def test_known_bug_needs_signs_and_explains_only_matching_failures(tmp_path: Path) -> None:
    path = tmp_path / "e.toml"
    path.write_text('[s]\nknown_bug = "bug"\n')
    try:
        Expected.load("s", path)
    except ValueError as exc:
        assert "known_bug_signs" in str(exc)
    else:
        raise AssertionError("a known_bug without signs was accepted")
    path.write_text('[s]\nknown_bug = "bug"\nknown_bug_signs = ["26000"]\n')
    expected = Expected.load("s", path)
    assert expected.is_known_bug("ERROR 26000 unnamed")
    assert not expected.is_known_bug("ERROR 42P01")


def _run(label: str, outcomes: dict[str, str], messages: dict[str, str] | None = None) -> SuiteRun:
    return SuiteRun(label, outcomes, messages or {}, 1.0, 0, "")


def test_compare_sorts_regressions_expected_stale_and_missing() -> None:
    direct = _run("d", {"a": PASSED, "b": PASSED, "c": PASSED, "d": FAILED, "e": PASSED})
    proxied = _run("p", {"a": PASSED, "b": FAILED, "c": FAILED, "d": PASSED}, {"b": "boom"})
    result = compare(direct, proxied, Expected({"c": "why", "a": "was broken"}))
    assert result.regressions == ["b"]
    assert result.expected_hits == ["c"]
    assert result.stale == ["a"]
    assert result.missing == ["e"]
    report = result.report(direct, proxied)
    assert "DIFF b\n    boom" in report and "DIFF e" in report


def test_skipped_through_the_proxy_is_a_difference() -> None:
    direct = _run("d", {"a": PASSED})
    proxied = _run("p", {"a": SKIPPED})
    assert compare(direct, proxied, Expected()).regressions == ["a"]


def test_run_pytest_records_outcomes_and_continues_after_a_hung_test(tmp_path: Path) -> None:
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "test_tiny.py").write_text(
        textwrap.dedent(
            """
            import time
            import pytest

            def test_ok():
                pass

            def test_fails():
                assert False, "told to"

            @pytest.mark.skip(reason="told to")
            def test_skipped():
                pass

            def test_hangs():
                time.sleep(60)

            def test_after_the_hang():
                pass

            @pytest.fixture
            def broken_teardown():
                yield
                raise RuntimeError("teardown")

            def test_teardown_error(broken_teardown):
                pass
            """
        )
    )
    run = run_pytest("tiny", suite, ["test_tiny.py"], [], {}, tmp_path / "work", 120, 3)
    assert run.outcomes == {
        "test_tiny.py::test_ok": PASSED,
        "test_tiny.py::test_fails": FAILED,
        "test_tiny.py::test_skipped": SKIPPED,
        "test_tiny.py::test_hangs": FAILED,
        "test_tiny.py::test_after_the_hang": PASSED,
        "test_tiny.py::test_teardown_error": FAILED,
    }
    assert "told to" in run.messages["test_tiny.py::test_fails"]
    assert "no end in 3" in run.messages["test_tiny.py::test_hangs"]


def test_sqlalchemy_ids_are_compared_without_the_server_version() -> None:
    from .test_sqlalchemy_suite import normalize_id

    run = SuiteRun(
        "s",
        {
            "test/a.py::T_postgresql+asyncpg_async_15_18::test_x[1-2]": PASSED,
            "test/a.py::T_postgresql+psycopg_17_2::test_y": FAILED,
            "test/a.py::DialectTest::test_z_16": SKIPPED,
        },
        {"test/a.py::T_postgresql+psycopg_17_2::test_y": "boom"},
        1.0,
        0,
        "",
    ).renamed(normalize_id)
    assert run.outcomes == {
        "test/a.py::T_postgresql+asyncpg_async::test_x[1-2]": PASSED,
        "test/a.py::T_postgresql+psycopg::test_y": FAILED,
        "test/a.py::DialectTest::test_z_16": SKIPPED,
    }
    assert run.messages == {"test/a.py::T_postgresql+psycopg::test_y": "boom"}
