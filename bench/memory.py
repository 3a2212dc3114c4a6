"""Memory per idle client: RSS of a pooler before and after N authenticated idle clients.

The clients are opened by helper processes (bench/idle_clients.py), each holding at most
`per_helper` sockets so that no process needs more than `ulimit -n` allows. The pooler itself
must hold all N sockets, so N is capped by its own RLIMIT_NOFILE (reported as clients_used).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from .targets import Target, child_env, preexec_child, raise_nofile_limit, rss_bytes

_FD_SLACK = 300  # descriptors a process needs besides its client sockets


def _spawn_helper(target: Target, count: int) -> subprocess.Popen[str]:
    env = child_env()
    env["BENCH_IDLE_PASSWORD"] = target.db.password
    cmd = [sys.executable, "-m", "bench.idle_clients", "--host", target.host]
    cmd += ["--port", str(target.port), "--user", target.db.user, "--db", target.db.name]
    cmd += ["--count", str(count)]
    return subprocess.Popen(
        cmd,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
        preexec_fn=preexec_child,
    )


def _close_helpers(helpers: list[subprocess.Popen[str]]) -> None:
    for h in helpers:
        if h.stdin is not None:
            with contextlib.suppress(OSError):
                h.stdin.close()
    for h in helpers:
        try:
            h.wait(30)
        except subprocess.TimeoutExpired:
            h.kill()
            h.wait(10)
        if h.stdout is not None:
            h.stdout.close()


def _open(target: Target, counts: list[int]) -> tuple[list[subprocess.Popen[str]], int, int, str]:
    helpers: list[subprocess.Popen[str]] = []
    ok = failed = 0
    error = ""
    try:
        helpers = [_spawn_helper(target, c) for c in counts if c > 0]
        for h in helpers:
            assert h.stdout is not None
            line = h.stdout.readline()
            try:
                report = json.loads(line)
            except ValueError:
                failed += 1
                error = error or f"helper exited without a report (exit {h.poll()})"
                continue
            ok += int(report["ok"])
            failed += int(report["failed"])
            error = error or str(report["error"])
    except BaseException:
        _close_helpers(helpers)
        raise
    return helpers, ok, failed, error


def measure_idle_memory(
    target: Target,
    clients: int,
    per_helper: int = 5000,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """RSS of target's process with `clients` idle authenticated connections, per connection."""
    pid = target.pid
    if pid is None:
        return {"target": target.name, "skipped": "no pooler process to measure"}
    limit = raise_nofile_limit()
    used = min(clients, limit - _FD_SLACK)
    per_helper = max(1, min(per_helper, limit - _FD_SLACK))
    # Warm up: the first login makes the pooler open a server connection and learn its settings.
    warm, _, _, _ = _open(target, [5])
    _close_helpers(warm)
    time.sleep(0.5)
    rss_before = rss_bytes(pid)
    counts = [per_helper] * (used // per_helper)
    if used % per_helper:
        counts.append(used % per_helper)
    started = time.monotonic()
    helpers, ok, failed, error = _open(target, counts)
    try:
        open_s = time.monotonic() - started
        time.sleep(1.0)
        rss_after = rss_bytes(pid)
        alive = target.alive()
    finally:
        _close_helpers(helpers)
    result: dict[str, Any] = {
        "target": target.name,
        "clients_requested": clients,
        "clients_used": used,
        "clients_open": ok,
        "clients_failed": failed,
        "helpers": len(counts),
        "error": error,
        "open_s": round(open_s, 2),
        "rss_before_bytes": rss_before,
        "rss_after_bytes": rss_after,
        "bytes_per_client": round((rss_after - rss_before) / ok) if ok else None,
        "target_alive_after": alive,
    }
    per = result["bytes_per_client"]
    log(
        f"  {target.label:<18} {ok} idle clients ({failed} failed): RSS "
        f"{rss_before / 2**20:.1f} -> {rss_after / 2**20:.1f} MiB"
        + (f", {per / 1024:.1f} KiB/client" if per is not None else "")
        + (f"  ERROR: {error}" if error else "")
    )
    return result
