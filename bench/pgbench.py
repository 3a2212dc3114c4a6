"""Running real pgbench against a target and parsing what it prints."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .targets import Database, preexec_child


class PgbenchError(Exception):
    """pgbench -i failed."""


@dataclass
class PgbenchResult:
    tps: float
    transactions: int
    failed: int
    latency_avg_ms: float | None
    connection_time_ms: float | None
    p50_ms: float | None
    p99_ms: float | None
    exit_code: int
    error: str
    wall_s: float
    command: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _env(db: Database) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["PGPASSWORD"] = db.password
    env["PGCONNECT_TIMEOUT"] = "60"
    return env


def threads_for(clients: int) -> int:
    """pgbench -j: at least 2 threads (the CPUs' worth), never more than clients."""
    return max(1, min(clients, max(2, os.cpu_count() or 2)))


def init_tables(pgbench: str, db: Database, scale: int) -> None:
    """pgbench -i at `scale`, then VACUUM ANALYZE once (runs use -n, since through a pooler the
    per-run vacuum would only measure the server)."""
    cmd = [pgbench, "-i", "-q", "-s", str(scale), "-h", db.host, "-p", str(db.port)]
    cmd += ["-U", db.user, db.name]
    proc = subprocess.run(
        cmd, env=_env(db), capture_output=True, text=True, timeout=900, check=False
    )
    if proc.returncode != 0:
        raise PgbenchError(f"pgbench -i failed (exit {proc.returncode}):\n{proc.stderr}")


_PATTERNS = {
    "transactions": re.compile(r"number of transactions actually processed: (\d+)"),
    "failed": re.compile(r"number of failed transactions: (\d+)"),
    "latency_avg_ms": re.compile(r"latency average = ([\d.]+) ms"),
    "connection_time_ms": re.compile(r"(?:initial|average) connection time = ([\d.]+) ms"),
    "tps": re.compile(r"^tps = ([\d.]+)", re.MULTILINE),
}


def parse_output(text: str) -> dict[str, float | None]:
    """The summary figures of pgbench's report (None where absent)."""
    out: dict[str, float | None] = {}
    for key, pattern in _PATTERNS.items():
        m = pattern.search(text)
        out[key] = float(m.group(1)) if m else None
    return out


def _error_lines(stderr: str, limit: int = 6) -> str:
    """The distinct error lines of pgbench's stderr (it repeats one per client)."""
    seen: list[str] = []
    for line in stderr.splitlines():
        line = line.strip()
        if not line or not re.search(r"error|abort|fatal|could not|fail", line, re.I):
            continue
        # Drop the per-client prefix so 5,000 copies of one error collapse into one line.
        key = re.sub(r"client \d+", "client N", line)
        if key not in seen:
            seen.append(key)
    more = f" (+{len(seen) - limit} more kinds)" if len(seen) > limit else ""
    return "; ".join(seen[:limit]) + more


def latency_log_percentiles(log_dir: Path, prefix: str) -> tuple[float | None, float | None]:
    """p50 and p99 (ms) from pgbench --log per-transaction files `<prefix>.<pid>[.<thread>]`.

    Each line: client_id transaction_no time_us script_no epoch epoch_us ...; time is
    "failed"/"skipped" for transactions that did not complete.
    """
    samples: list[int] = []
    for path in log_dir.glob(f"{prefix}.*"):
        with open(path, encoding="ascii", errors="replace") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and parts[2].isdigit():
                    samples.append(int(parts[2]))
    if not samples:
        return None, None
    samples.sort()
    n = len(samples)
    p50 = samples[(n - 1) // 2] if n % 2 else (samples[n // 2 - 1] + samples[n // 2]) / 2
    p99 = samples[min(n - 1, int(n * 0.99))]
    return p50 / 1000.0, p99 / 1000.0


def run_pgbench(
    pgbench: str,
    host: str,
    port: int,
    db: Database,
    *,
    clients: int,
    duration_s: float,
    builtin: str = "select-only",
    protocol: str = "simple",
    connect_each: bool = False,
    latency_log: bool = False,
    threads: int | None = None,
) -> PgbenchResult:
    """One pgbench run; never raises for a failed run (the result carries the error)."""
    jobs = threads if threads is not None else threads_for(clients)
    cmd = [pgbench, "-h", host, "-p", str(port), "-U", db.user, "-n"]
    cmd += ["-c", str(clients), "-j", str(jobs), "-T", str(max(1, round(duration_s)))]
    cmd += ["-b", builtin, "-M", protocol]
    if connect_each:
        cmd.append("-C")
    shown = " ".join([os.path.basename(pgbench), *cmd[1:], db.name])
    with tempfile.TemporaryDirectory(prefix="pgpool-bench-log-") as tmp:
        log_dir = Path(tmp)
        prefix = "txlog"
        if latency_log:
            cmd += ["--log", f"--log-prefix={log_dir / prefix}"]
        cmd.append(db.name)
        # Connecting thousands of clients takes a while before -T starts counting.
        timeout = duration_s + 120 + clients * 0.05
        started = time.monotonic()
        try:
            proc = subprocess.run(
                cmd,
                env=_env(db),
                cwd=log_dir,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
                preexec_fn=preexec_child,
            )
            stdout, stderr, code = proc.stdout, proc.stderr, proc.returncode
        except subprocess.TimeoutExpired as exc:
            stdout = _text(exc.stdout)
            stderr = _text(exc.stderr) + f"\npgbench timed out after {timeout:.0f} s (killed)"
            code = -9
        wall = time.monotonic() - started
        p50 = p99 = None
        if latency_log:
            with contextlib.suppress(OSError, ValueError):
                p50, p99 = latency_log_percentiles(log_dir, prefix)
    figures = parse_output(stdout)
    error = _error_lines(stderr) if code != 0 or figures["tps"] is None else ""
    if code != 0 and not error:
        error = f"pgbench exit {code}: " + " ".join(stderr.strip().splitlines()[-2:])
    failed = figures["failed"]
    return PgbenchResult(
        tps=figures["tps"] or 0.0,
        transactions=int(figures["transactions"] or 0),
        failed=int(failed) if failed is not None else 0,
        latency_avg_ms=figures["latency_avg_ms"],
        connection_time_ms=figures["connection_time_ms"],
        p50_ms=p50,
        p99_ms=p99,
        exit_code=code,
        error=error,
        wall_s=round(wall, 3),
        command=shown,
    )


def _text(data: bytes | str | None) -> str:
    if data is None:
        return ""
    return data if isinstance(data, str) else data.decode(errors="replace")
