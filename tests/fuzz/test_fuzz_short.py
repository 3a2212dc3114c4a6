"""The short fuzz run of the test suite: every harness for about a second under atheris
(coverage-guided, from the kept corpus), or, where atheris is not installed, over the corpus
and hypothesis-generated inputs. Any exception other than the target's documented error type
fails the test. The long run (>= 1M executions per target) is in docs/fuzzing.md.
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

from tests.fuzz._common import CORPUS_ROOT
from tests.fuzz.run import TARGETS, run_target

HAVE_ATHERIS = importlib.util.find_spec("atheris") is not None
# Per target: stop at whichever comes first (plus about a second of start-up, two for the
# harnesses importing the session layer); the whole file stays near 30 s.
SHORT_RUNS = 10_000
SHORT_SECONDS = 1
# An input taking this long is a hang (the statement scanner's backtracking took 9 s on 25).
INPUT_TIMEOUT_S = 5


def _harness(target: str) -> ModuleType:
    return importlib.import_module(f"tests.fuzz.fuzz_{target}")


def _corpus(target: str) -> list[Path]:
    return sorted((CORPUS_ROOT / target).iterdir())


def test_every_target_has_a_harness_and_a_corpus() -> None:
    assert len(TARGETS) >= 13, TARGETS
    for target in TARGETS:
        assert callable(_harness(target).TestOneInput)
        assert _corpus(target), f"empty corpus for {target}"


@pytest.mark.parametrize("target", TARGETS)
def test_corpus_replays_cleanly(target: str) -> None:
    """Every kept input, crashes found earlier included, passes in-process (no atheris)."""
    harness = _harness(target)
    for path in _corpus(target):
        harness.TestOneInput(path.read_bytes())


@pytest.mark.parametrize("target", TARGETS)
def test_short_fuzz_run(target: str, tmp_path: Path) -> None:
    if not HAVE_ATHERIS:
        _fallback(target)
        return
    result = run_target(
        target,
        runs=SHORT_RUNS,
        max_time=SHORT_SECONDS,
        timeout=INPUT_TIMEOUT_S,
        artifacts=tmp_path / "crashes",
        scratch=tmp_path / "new",
    )
    crashes = list((tmp_path / "crashes").iterdir())
    assert result.ok and not crashes, f"{target}: {crashes}\n{result.output[-4000:]}"
    assert result.executions > 0, result.output[-2000:]


def _fallback(target: str) -> None:
    """Without atheris: the corpus, then random inputs from hypothesis."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    harness = _harness(target)
    for path in _corpus(target):
        harness.TestOneInput(path.read_bytes())

    @settings(
        max_examples=300,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(st.binary(max_size=2048))
    def check(data: bytes) -> None:
        harness.TestOneInput(data)

    check()
