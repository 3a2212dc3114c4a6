"""Reads the repository's Dockerfile the way the tests need it: the final stage's instructions.

Only what the deployment tests check is understood: continuation lines, comments, stages, and
the JSON (exec) form of ENTRYPOINT / CMD / HEALTHCHECK CMD.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case
    args: str


def instructions(path: Path = DOCKERFILE) -> list[list[Instruction]]:
    """Instructions grouped by stage (the first group holds anything before the first FROM)."""
    stages: list[list[Instruction]] = [[]]
    logical = ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("#") or not stripped:
            continue
        if stripped.endswith("\\"):
            logical += stripped[:-1] + " "
            continue
        logical += stripped
        keyword, _, args = logical.partition(" ")
        logical = ""
        if keyword.upper() == "FROM":
            stages.append([])
        stages[-1].append(Instruction(keyword.upper(), args.strip()))
    return stages


def final_stage(path: Path = DOCKERFILE) -> list[Instruction]:
    return instructions(path)[-1]


def last(stage: list[Instruction], keyword: str) -> Instruction | None:
    found = [i for i in stage if i.keyword == keyword]
    return found[-1] if found else None


def exec_form(args: str, keyword: str) -> list[str]:
    """The JSON array of an exec-form instruction; fails the test on the shell form, which
    would put /bin/sh at PID 1 and keep SIGTERM from the proxy."""
    try:
        value = json.loads(args)
    except ValueError:
        raise AssertionError(f"{keyword} must use the exec (JSON array) form: {args}") from None
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def entry_command(path: Path = DOCKERFILE) -> list[str]:
    """ENTRYPOINT + CMD of the final stage: the command the container runs as PID 1."""
    stage = final_stage(path)
    entrypoint, cmd = last(stage, "ENTRYPOINT"), last(stage, "CMD")
    command: list[str] = []
    if entrypoint is not None:
        command += exec_form(entrypoint.args, "ENTRYPOINT")
    if cmd is not None:
        command += exec_form(cmd.args, "CMD")
    assert command, "the Dockerfile has neither ENTRYPOINT nor CMD"
    return command


def healthcheck_command(path: Path = DOCKERFILE) -> list[str]:
    hc = last(final_stage(path), "HEALTHCHECK")
    assert hc is not None, "the Dockerfile has no HEALTHCHECK"
    match = re.search(r"\bCMD\s+(\[.*\])\s*$", hc.args)
    assert match is not None, f"HEALTHCHECK must use CMD in exec form: {hc.args}"
    return exec_form(match.group(1), "HEALTHCHECK CMD")


def copied_files(path: Path = DOCKERFILE) -> dict[str, str]:
    """Destination in the image -> source in the build context, for the final stage's plain
    COPY instructions of one file."""
    out: dict[str, str] = {}
    for i in final_stage(path):
        if i.keyword != "COPY" or i.args.startswith("--from"):
            continue
        parts = i.args.split()
        if len(parts) == 2:
            out[parts[1]] = parts[0]
    return out
