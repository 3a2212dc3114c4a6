"""Run other drivers' own test suites directly against PostgreSQL and through the proxy, and
compare their per-test outcomes (docs/outside-suites.md).

The suites are fetched at test time from the drivers' published packages with pip (pinned
versions, cached under the system temp dir), never committed. Each run is a `python -m pytest`
subprocess in the unpacked sdist, so a suite's own conftest, fixtures and unittest classes
behave as their authors run them; plugin/pgpool_outside_plugin.py records the outcomes.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import tomllib
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import uvloop

from pgpool_proxy.config import build_config
from tests.support.pg import LocalPostgres
from tests.support.proxy import ProxyThread
from tests.support.tlsfiles import TlsDir

HERE = Path(__file__).resolve().parent
EXPECTED_FILE = HERE / "expected_differences.toml"

# Fetched packages stay here between runs (and between CI runs on the same machine); the
# PGPOOL_OUTSIDE_CACHE variable moves it.
CACHE_DIR = Path(
    os.environ.get("PGPOOL_OUTSIDE_CACHE", Path(tempfile.gettempdir()) / "pgpool-outside-cache")
)

FULL = os.environ.get("PGPOOL_OUTSIDE_FULL", "") not in ("", "0")

# The proxy's pool mode for the proxied runs: transaction (the default) or session. Each mode
# has its own list of expected differences (see Expected.load).
MODES = ("transaction", "session")
MODE = os.environ.get("PGPOOL_OUTSIDE_MODE", "") or "transaction"
if MODE not in MODES:
    raise ValueError(f"PGPOOL_OUTSIDE_MODE={MODE!r}: expected one of {', '.join(MODES)}")
# In session mode every client holds a server connection until it leaves: the pool must hold
# the background load's clients and every connection a suite opens at once.
SESSION_POOL_SIZE = 60

PASSED, FAILED, SKIPPED = "passed", "failed", "skipped"


class FetchError(Exception):
    """The package could not be fetched (no package index reachable, or no such version)."""


# --------------------------------------------------------------------------------------------
# Fetching


def _pip_download(spec: str, dest: Path, binary: bool) -> Path:
    """`pip download` one pinned requirement into dest; the path of the file it saved."""
    dest.mkdir(parents=True, exist_ok=True)
    # `--no-binary :all:` would apply to the build dependencies pip installs to read an
    # sdist's metadata too (asyncpg's: Cython, compiled from source, many minutes).
    name = spec.split("==")[0]
    kind = ["--only-binary", ":all:"] if binary else ["--no-binary", name]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", *kind, "-d", str(dest), spec]
    cmd += ["--disable-pip-version-check", "--retries", "1", "--timeout", "20", "-q"]
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired as exc:
        raise FetchError(f"pip download {spec}: timed out") from exc
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-5:]
        raise FetchError(f"pip download {spec} failed: " + " | ".join(tail))
    name = name.replace("-", "_").lower()
    found = [p for p in dest.iterdir() if p.name.replace("-", "_").lower().startswith(name)]
    if not found:
        raise FetchError(f"pip download {spec}: no file saved in {dest}")
    return found[0]


def _extract_once(archive: Path, target: Path) -> Path:
    """Unpack into target, atomically (a half-unpacked tree from a killed run is never used)."""
    if target.is_dir():
        return target
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        if archive.name.endswith(".whl"):
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(tmp)
        else:
            with tarfile.open(archive) as tf:
                if hasattr(tarfile, "data_filter"):  # 3.11.4+: no links or paths out of tmp
                    tf.extractall(tmp, filter="data")
                else:
                    tf.extractall(tmp)  # a pinned package from the index
            (inner,) = list(tmp.iterdir())  # an sdist holds one top directory
            for child in inner.iterdir():
                child.rename(tmp / child.name)
            inner.rmdir()
        tmp.rename(target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not target.is_dir():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def fetch_sdist(name: str, version: str) -> Path:
    """The unpacked source distribution of name==version (tests included, as published)."""
    target = CACHE_DIR / f"{name}-{version}-sdist"
    if target.is_dir():
        return target
    archive = _pip_download(f"{name}=={version}", CACHE_DIR / "downloads" / name, binary=False)
    return _extract_once(archive, target)


def fetch_wheel(name: str, version: str) -> Path:
    """The unpacked wheel of name==version for this interpreter (a directory for PYTHONPATH)."""
    target = CACHE_DIR / f"{name}-{version}-wheel-py{sys.version_info[0]}{sys.version_info[1]}"
    if target.is_dir():
        return target
    dl = CACHE_DIR / "downloads" / f"{name}-py{sys.version_info[0]}{sys.version_info[1]}"
    archive = _pip_download(f"{name}=={version}", dl, binary=True)
    return _extract_once(archive, target)


# --------------------------------------------------------------------------------------------
# Running a suite


@dataclass
class SuiteRun:
    label: str
    outcomes: dict[str, str]
    messages: dict[str, str]
    seconds: float
    returncode: int
    output: str

    def count(self, outcome: str) -> int:
        return sum(1 for o in self.outcomes.values() if o == outcome)

    def renamed(self, rename: Callable[[str], str]) -> SuiteRun:
        """The same run with every test id passed through rename (ids that embed something
        other than the test, e.g. the server version, compared and listed without it)."""
        return SuiteRun(
            self.label,
            {rename(t): o for t, o in self.outcomes.items()},
            {rename(t): m for t, m in self.messages.items()},
            self.seconds,
            self.returncode,
            self.output,
        )

    def summary(self) -> str:
        return (
            f"{self.label}: {self.count(PASSED)} passed, {self.count(FAILED)} failed, "
            f"{self.count(SKIPPED)} skipped in {self.seconds:.1f}s"
        )


PLUGIN_DIR = HERE / "plugin"
HUNG = "hung"
HUNG_EXIT = 97  # pgpool_outside_plugin.HUNG_EXIT


def read_results(path: Path) -> tuple[list[str], dict[str, str], dict[str, str]]:
    """What pgpool_outside_plugin wrote: collected ids, outcome and failure text per test."""
    collected: list[str] = []
    outcomes: dict[str, str] = {}
    messages: dict[str, str] = {}
    if not path.exists():
        return collected, outcomes, messages
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by the process's exit
        if "collected" in record:
            collected.extend(t for t in record["collected"] if t not in collected)
        elif record.get("id") and record["id"] not in outcomes:
            outcomes[record["id"]] = record["outcome"]
            if record.get("message"):
                messages[record["id"]] = record["message"]
    return collected, outcomes, messages


def run_pytest(
    label: str,
    cwd: Path,
    paths: Sequence[str],
    options: Sequence[str],
    env: Mapping[str, str],
    work: Path,
    timeout_s: float,
    test_timeout_s: float = 60,
    io_timeout_s: float = 5,
) -> SuiteRun:
    """`python -m pytest OPTIONS PATHS` in cwd, env added to a clean environment, outcomes
    recorded by pgpool_outside_plugin. A run that exits on a hung test is continued in a new
    process that skips the tests already recorded (a hung test counts as failed)."""
    work.mkdir(parents=True, exist_ok=True)
    results = work / f"{label.replace(' ', '-')}.jsonl"
    results.unlink(missing_ok=True)
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "PYTEST"))}
    full_env.update(env)
    # Only the plugin's own directory: the repository's `tests` package must not shadow a
    # suite's (psycopg2's is called `tests` too).
    full_env["PYTHONPATH"] = os.pathsep.join(
        p for p in (env.get("PYTHONPATH"), str(PLUGIN_DIR)) if p
    )
    full_env["PGPOOL_OUTSIDE_RESULTS"] = str(results)
    done_file = work / f"{label.replace(' ', '-')}.done.json"
    full_env.pop("PGPOOL_OUTSIDE_DONE", None)
    full_env["PGPOOL_OUTSIDE_TEST_TIMEOUT_S"] = str(test_timeout_s)
    full_env["PGPOOL_OUTSIDE_IO_TIMEOUT_S"] = str(io_timeout_s)
    base = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:timeout"]
    base += ["-p", "pgpool_outside_plugin", "-q", "-rN", "--no-header"]
    start = time.monotonic()
    output = ""
    while True:
        remaining = timeout_s - (time.monotonic() - start)
        if remaining <= 0:
            raise AssertionError(f"{label}: suite did not finish in {timeout_s}s")
        try:
            proc = subprocess.run(
                [*base, *options, *paths],
                cwd=cwd,
                env=full_env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=remaining,
            )
        except subprocess.TimeoutExpired as exc:
            raise AssertionError(f"{label}: suite did not finish in {timeout_s}s") from exc
        output += proc.stdout[-20000:] + proc.stderr[-5000:]
        collected, outcomes, messages = read_results(results)
        left = [t for t in collected if t not in outcomes]
        if not left or proc.returncode != HUNG_EXIT:
            break
        done_file.write_text(json.dumps(sorted(outcomes)), encoding="utf-8")
        full_env["PGPOOL_OUTSIDE_DONE"] = str(done_file)
    seconds = time.monotonic() - start
    if not outcomes:
        raise AssertionError(f"{label}: no test ran (exit {proc.returncode}):\n{output[-5000:]}")
    outcomes = {t: (FAILED if o == HUNG else o) for t, o in outcomes.items()}
    return SuiteRun(label, outcomes, messages, seconds, proc.returncode, output)


# --------------------------------------------------------------------------------------------
# Comparing


@dataclass
class Expected:
    """Tests allowed to pass directly and fail through the proxy, with the reason for each; and
    optionally a known proxy bug that makes the whole suite's differences expected (xfail)."""

    reasons: dict[str, str] = field(default_factory=dict)
    known_bug: str = ""
    # Text in a failure that marks it as the known bug's; other failures still fail the run.
    known_bug_signs: list[str] = field(default_factory=list)

    def is_known_bug(self, message: str) -> bool:
        return bool(self.known_bug) and any(s in message for s in self.known_bug_signs)

    @classmethod
    def load(cls, suite: str, path: Path = EXPECTED_FILE, mode: str = "transaction") -> Expected:
        """[SUITE] for transaction mode, [SUITE.MODE] for another mode: what differs depends
        on the mode, and an entry must not hide a difference in a mode it was not seen in."""
        data = tomllib.loads(path.read_text(encoding="utf-8")).get(suite, {})
        if mode != "transaction":
            data = data.get(mode, {})
        reasons: dict[str, str] = {}
        for test_id, reason in data.get("tests", {}).items():
            if not isinstance(reason, str) or not reason.strip():
                raise ValueError(f"{path}: [{suite}.tests] {test_id!r} needs a reason")
            reasons[test_id] = reason
        known_bug = data.get("known_bug", "")
        signs = data.get("known_bug_signs", [])
        if not isinstance(known_bug, str):
            raise ValueError(f"{path}: {suite}.known_bug must be a string")
        if known_bug and not (isinstance(signs, list) and signs and all(signs)):
            raise ValueError(f"{path}: {suite}.known_bug needs known_bug_signs")
        return cls(reasons, known_bug.strip(), [str(s) for s in signs])


@dataclass
class Comparison:
    regressions: list[str]  # passed directly, not through the proxy, not expected
    expected_hits: list[str]  # listed and indeed different
    stale: list[str]  # listed but passing through the proxy (or not passing directly)
    missing: list[str]  # passed directly and absent from the proxied run

    def report(self, direct: SuiteRun, proxied: SuiteRun) -> str:
        lines = [direct.summary(), proxied.summary()]
        for test_id in self.regressions + self.missing:
            msg = proxied.messages.get(test_id, "(not run through the proxy)")
            lines.append(f"DIFF {test_id}\n    " + "\n    ".join(msg.splitlines()[:12]))
        for test_id in self.expected_hits:
            lines.append(f"expected difference: {test_id}")
        for test_id in self.stale:
            lines.append(f"listed but not different now: {test_id}")
        return "\n".join(lines)


def compare(direct: SuiteRun, proxied: SuiteRun, expected: Expected) -> Comparison:
    regressions, hits, missing = [], [], []
    for test_id, outcome in sorted(direct.outcomes.items()):
        if outcome != PASSED:
            continue
        through = proxied.outcomes.get(test_id)
        if through == PASSED:
            continue
        if test_id in expected.reasons:
            hits.append(test_id)
        elif through is None:
            missing.append(test_id)
        else:
            regressions.append(test_id)
    stale = [
        t
        for t in sorted(expected.reasons)
        if t in direct.outcomes and t not in hits and proxied.outcomes.get(t) == PASSED
    ]
    return Comparison(regressions, hits, stale, missing)


# --------------------------------------------------------------------------------------------
# Background load: other clients sharing the proxy's pool while a suite runs


def _terminated_by_server(exc: BaseException | None) -> bool:
    """The connection was ended under the client: the server's FATAL 57P01 (pg_terminate_backend)
    is in the chain of exc (asyncpg raises it, and the transaction's rollback on the closed
    connection then raises its own error), or, when the FATAL came while the client was idle in
    its transaction, asyncpg reports only the closed connection. (A proxy that dropped clients
    on its own would show here too: the count is in the report, and zero in suites that do not
    terminate backends.)"""
    while exc is not None:
        if isinstance(exc, asyncpg.AdminShutdownError | asyncpg.ConnectionDoesNotExistError):
            return True
        if isinstance(exc, asyncpg.InterfaceError) and "connection is closed" in str(exc):
            return True
        exc = exc.__context__
    return False


class BackgroundLoad:
    """A few asyncpg clients running short transactions through the proxy, in their own thread
    and event loop, so a suite's connections never get a server connection to themselves."""

    def __init__(self, dsn: str, clients: int = 3, pause_s: float = 0.05) -> None:
        self.dsn = dsn
        self.clients = clients
        self.pause_s = pause_s
        self.transactions = 0
        self.terminations = 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, name="outside-load", daemon=True)

    def __enter__(self) -> BackgroundLoad:
        self._thread.start()
        if not self._started.wait(30):
            raise AssertionError("background load did not start")
        if self.errors:
            raise AssertionError(f"background load failed to start: {self.errors}")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)

    def _run(self) -> None:
        loop = uvloop.new_event_loop()
        try:
            loop.run_until_complete(self._main())
        finally:
            loop.close()

    async def _main(self) -> None:
        conns: list[asyncpg.Connection] = []
        try:
            for _ in range(self.clients):
                conns.append(await asyncpg.connect(self.dsn, timeout=30))
        except Exception as exc:
            self.errors.append(f"connect: {exc!r}")
            self._started.set()
            for c in conns:
                await c.close()
            return
        self._started.set()
        await asyncio.gather(*(self._client(c, i) for i, c in enumerate(conns)))

    async def _client(self, conn: asyncpg.Connection, n: int) -> None:
        rng = random.Random(n)
        try:
            while not self._stop.is_set():
                try:
                    async with conn.transaction():
                        await conn.fetchval("SELECT $1::int + count(*) FROM pg_class", n)
                        await conn.execute("SELECT pg_sleep($1)", rng.uniform(0.001, 0.01))
                except Exception as exc:
                    if not _terminated_by_server(exc):
                        raise
                    # A suite's pg_terminate_backend of a pid it read in an earlier transaction
                    # ended the server connection serving this client (pooling: listed as such
                    # for the suite's own tests). The client got the server's own FATAL, as it
                    # would directly: a new connection, and go on.
                    self.terminations += 1
                    conn.terminate()
                    conn = await asyncpg.connect(self.dsn, timeout=30)
                    continue
                self.transactions += 1
                await asyncio.sleep(self.pause_s)  # the background load's pace, not a wait
        except Exception as exc:
            self.errors.append(f"client {n}: {exc!r}")
        finally:
            await conn.close()


# --------------------------------------------------------------------------------------------
# The server and proxy

SUPERUSER = "postgres"
SUPERUSER_PASSWORD = "outside-pw"


class OutsideServer:
    """The harness's PostgreSQL (TLS on, as the drivers' CI sets theirs up) and its TLS files."""

    def __init__(self, pg: LocalPostgres, tls: TlsDir) -> None:
        self.pg = pg
        self.tls = tls
        self.proxy_cert = tls.issue("proxy", ["127.0.0.1", "localhost"])

    def proxy(
        self, databases: list[str], pool_size: int = 3, mode: str = "transaction", **sections: Any
    ) -> ProxyThread:
        """A proxy in `mode` in front of the server for `databases`, user postgres, TLS offered
        to clients (the suites test their TLS paths too)."""
        data: dict[str, Any] = {
            "proxy": {
                "listen": "127.0.0.1:0",
                "pool_mode": mode,
                "client_login_timeout_s": 10,
            },
            "pool": {"default_pool_size": pool_size, "query_wait_timeout_s": 60},
            "auth": {"type": "scram-sha-256"},
            "client_tls": {
                "mode": "allow",
                "cert_file": str(self.proxy_cert.cert_file),
                "key_file": str(self.proxy_cert.key_file),
            },
            "databases": [
                {"name": d, "host": self.pg.host, "port": self.pg.port} for d in databases
            ],
            "users": [{"name": SUPERUSER, "password": SUPERUSER_PASSWORD}],
        }
        for key, value in sections.items():
            data.setdefault(key, {}).update(value)
        return ProxyThread(build_config(data, source="<outside>")).start()


# --------------------------------------------------------------------------------------------
# One suite, both ways


def run_both(
    *,
    suite: str,
    sdist: tuple[str, str],
    server: OutsideServer,
    databases: list[str],
    load_database: str,
    paths: Sequence[str],
    options: Sequence[str] | Callable[[str, int], Sequence[str]] = (),
    env: Callable[[str, int], dict[str, str]],
    tmp_path: Path,
    setup: Callable[[], None] | None = None,
    suite_dir: Callable[[Path], Path] | None = None,
    timeout_s: float = 1800,
    test_timeout_s: float = 60,
    normalize_id: Callable[[str], str] | None = None,
) -> Comparison:
    """Run the suite directly, then through a fresh proxy under background load; fail on any
    test that passed directly and not through the proxy, unless expected_differences.toml
    lists it. Skips when the package cannot be fetched. options and env may depend on the
    server's host and port (a suite that takes its database URL on the command line);
    normalize_id maps test ids before they are compared and looked up in the list."""
    try:
        root = fetch_sdist(*sdist)
    except FetchError as exc:
        pytest.skip(f"{suite}: cannot fetch its test suite ({exc})")
    cwd = suite_dir(root) if suite_dir else root
    expected = Expected.load(suite, mode=MODE)

    def options_for(host: str, port: int) -> list[str]:
        return list(options(host, port) if callable(options) else options)

    if setup is not None:
        setup()
    direct = run_pytest(
        f"{suite} direct",
        cwd,
        paths,
        options_for(server.pg.host, server.pg.port),
        env(server.pg.host, server.pg.port),
        tmp_path,
        timeout_s,
        test_timeout_s,
    )
    if direct.count(PASSED) == 0:
        raise AssertionError(f"{suite}: nothing passed directly:\n{direct.output[-5000:]}")

    if setup is not None:
        setup()
    if MODE == "session":
        proxy = server.proxy(databases, pool_size=SESSION_POOL_SIZE, mode=MODE)
    else:
        proxy = server.proxy(databases, mode=MODE)
    try:
        load_dsn = (
            f"postgresql://{SUPERUSER}:{SUPERUSER_PASSWORD}@{proxy.host}:{proxy.port}/"
            f"{load_database}"
        )
        with BackgroundLoad(load_dsn) as load:
            proxied = run_pytest(
                f"{suite} proxy",
                cwd,
                paths,
                options_for(proxy.host, proxy.port),
                env(proxy.host, proxy.port),
                tmp_path,
                timeout_s,
                test_timeout_s,
            )
    finally:
        proxy.stop()

    if normalize_id is not None:
        direct, proxied = direct.renamed(normalize_id), proxied.renamed(normalize_id)
    result = compare(direct, proxied, expected)
    report = result.report(direct, proxied)
    report += f"\nproxy in {MODE} mode"
    report += (
        f"\nbackground load: {load.transactions} transactions, "
        f"{load.terminations} ended by the suite's pg_terminate_backend, errors: {load.errors}"
    )
    print(report)
    (tmp_path / "report.txt").write_text(report)
    assert not load.errors, f"background load failed through the proxy:\n{report}"
    unexplained = [
        t for t in result.regressions if not expected.is_known_bug(proxied.messages.get(t, ""))
    ]
    assert not (unexplained or result.missing), (
        f"{suite}: tests that pass directly fail through the proxy:\n"
        + "\n".join(unexplained + result.missing)
        + f"\n\n{report}"
    )
    if result.regressions:  # all of them the known bug's
        pytest.xfail(f"{suite}: {expected.known_bug}\n{report}")
    return result
