"""Owns running PostgreSQL programs as subprocesses and probing ports and pids."""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ._util import HOST, PgServerError
from .binaries import _Account

_COMMAND_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class _Result:
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return "\n".join(s for s in (self.stdout.strip(), self.stderr.strip()) if s)


def _clean_env() -> dict[str, str]:
    # Inherited PGHOST/PGPORT/PGDATA/PGOPTIONS/... would silently retarget or alter every command.
    return {k: v for k, v in os.environ.items() if not k.startswith("PG")}


def _run(
    cmd: Sequence[str],
    *,
    env: Mapping[str, str],
    account: _Account | None = None,
    cwd: Path | None = None,
    stdin_text: str | None = None,
    new_session: bool = False,
    timeout: float = _COMMAND_TIMEOUT_S,
) -> _Result:
    switch = account is not None and account.switch
    # Output goes to files, not pipes: pg_ctl's postmaster can inherit a pipe and keep it open
    # forever, so reading it to EOF would hang.
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        try:
            proc = subprocess.run(
                list(cmd),
                input=None if stdin_text is None else stdin_text.encode(),
                stdin=subprocess.DEVNULL if stdin_text is None else None,
                stdout=out,
                stderr=err,
                env=dict(env),
                cwd=cwd,
                user=account.uid if switch and account is not None else None,
                group=account.gid if switch and account is not None else None,
                extra_groups=[] if switch else None,
                start_new_session=new_session,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise PgServerError(f"{Path(cmd[0]).name} timed out after {timeout:g} s") from exc
        except OSError as exc:
            raise PgServerError(f"could not run {cmd[0]}: {exc}") from exc
        out.seek(0)
        err.seek(0)
        return _Result(
            proc.returncode,
            out.read().decode("utf-8", "replace"),
            err.read().decode("utf-8", "replace"),
        )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); an init that does not reap would leave it forever.
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except (OSError, IndexError):
        return True
