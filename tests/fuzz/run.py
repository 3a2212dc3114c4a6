"""Runs harnesses under atheris in subprocesses: the short run of the test suite and the long run.

    python -m tests.fuzz.run [--runs N] [--max-time S] [--timeout S] [--keep] [TARGET ...]

Each target starts from its kept corpus (tests/fuzz/corpus/<target>/); inputs it finds go to a
scratch directory (or, with --keep, into the kept corpus) and crashes to --artifacts. Prints one
line per target: executions, seconds, and the crash or "ok".
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tests.fuzz._common import CORPUS_ROOT

ROOT = Path(__file__).resolve().parents[2]
TARGETS = sorted(p.name for p in CORPUS_ROOT.iterdir() if p.is_dir())
_DONE_RE = re.compile(r"Done (\d+) runs in (\d+) second")
_STAT_RE = re.compile(r"^#(\d+)\s", re.M)


@dataclass
class Result:
    target: str
    returncode: int
    executions: int
    seconds: float
    output: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def run_target(
    target: str,
    *,
    runs: int,
    max_time: int,
    timeout: int,
    artifacts: Path,
    scratch: Path | None,
    keep: bool = False,
) -> Result:
    corpus = CORPUS_ROOT / target
    dirs = [str(corpus)] if keep else [str(scratch), str(corpus)]
    if scratch is not None:
        scratch.mkdir(parents=True, exist_ok=True)
    artifacts.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        f"tests.fuzz.fuzz_{target}",
        f"-runs={runs}",
        f"-max_total_time={max_time}",
        f"-timeout={timeout}",
        f"-artifact_prefix={artifacts}/{target}-",
        "-max_len=4096",
        "-print_final_stats=1",
        *dirs,
    ]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    seconds = time.monotonic() - t0
    out = proc.stdout + proc.stderr
    done = _DONE_RE.search(out)
    if done:
        executions = int(done.group(1))
    else:
        stats = _STAT_RE.findall(out)
        executions = int(stats[-1]) if stats else 0
    return Result(target, proc.returncode, executions, seconds, out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("targets", nargs="*", default=TARGETS, help=f"default: all of {TARGETS}")
    ap.add_argument("--runs", type=int, default=1_000_000)
    ap.add_argument("--max-time", type=int, default=0, help="seconds per target (0: no bound)")
    ap.add_argument("--timeout", type=int, default=10, help="seconds one input may take")
    ap.add_argument("--artifacts", type=Path, default=ROOT / "fuzz-artifacts")
    ap.add_argument("--keep", action="store_true", help="add new inputs to the kept corpus")
    args = ap.parse_args()
    failed = 0
    with tempfile.TemporaryDirectory(prefix="fuzz-") as tmp:
        for target in args.targets:
            r = run_target(
                target,
                runs=args.runs,
                max_time=args.max_time,
                timeout=args.timeout,
                artifacts=args.artifacts,
                scratch=None if args.keep else Path(tmp) / target,
                keep=args.keep,
            )
            tail = "ok" if r.ok else "FAILED\n" + r.output[-3000:]
            print(f"{target}: {r.executions} executions in {r.seconds:.0f}s: {tail}", flush=True)
            failed += not r.ok
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
