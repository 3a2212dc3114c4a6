"""The compiled twin of the hot path against its pure-Python reference (pgpool_proxy.speedups).

The twin is compiled from the same source, so the checks here are about what compiling can
change: the two scanners must agree on every generated stream, cut anywhere; the selection
(PGPOOL_PURE_PYTHON, a stale build) must load what it says; and the whole sans-IO suite runs
once more on the pure modules where this process runs the compiled ones.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import os
import subprocess
import sys
from collections import deque
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pgpool_proxy import speedups
from pgpool_proxy.protocol import client_scan, server_scan, units
from pgpool_proxy.protocol import messages as m
from pgpool_proxy.protocol.framing import FrameError

ROOT = Path(__file__).resolve().parents[2]
COMPILED = speedups.implementation() == "compiled"
needs_twin = pytest.mark.skipif(
    not COMPILED, reason=f"the hot path is {speedups.implementation()} in this install"
)


def _pure(name: str) -> ModuleType:
    """The pure-Python module of `name`, loaded beside the compiled one under another name."""
    source = ROOT.joinpath(*name.split(".")).with_suffix(".py")
    package, _, leaf = name.rpartition(".")
    spec = importlib.util.spec_from_file_location(f"{package}._pure_{leaf}", source)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _loaded_from_extension(module: ModuleType) -> bool:
    return str(module.__file__).endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))


# --- selection -------------------------------------------------------------------------------


def test_implementation_names_what_is_loaded() -> None:
    loaded = [sys.modules[name] for name in speedups.COMPILED if name in sys.modules]
    assert loaded, "the hot-path modules are imported by the package's own tests"
    compiled = [_loaded_from_extension(mod) for mod in loaded]
    if COMPILED:
        assert all(compiled)
    elif speedups.implementation() == "pure-python":
        assert not any(compiled)


def _probe(env: dict[str, str]) -> list[str]:
    code = (
        "import pgpool_proxy.speedups as s, importlib\n"
        "mods = [importlib.import_module(n) for n in s.COMPILED]\n"
        "print(s.implementation()); print(*[m.__file__ for m in mods], sep='\\n')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    return out.stdout.splitlines()


def test_pure_python_env_loads_the_sources() -> None:
    impl, *files = _probe({speedups.PURE_ENV: "1"})
    assert impl == "pure-python"
    assert files and all(f.endswith(".py") for f in files)


def test_a_twin_built_against_a_stale_twin_is_not_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A twin that cimports another module's extension types cannot load beside that module's
    source (its import fails): when that one is stale, it runs from its source too."""
    monkeypatch.setattr(speedups, "_PACKAGE_DIR", tmp_path)
    mods = {
        "pgpool_proxy.protocol.buffer": ("protocol", "buffer", ""),
        "pgpool_proxy.net.endpoint": (
            "net",
            "endpoint",
            "from pgpool_proxy.protocol.buffer cimport RecvBuffer as _R\ncdef class Endpoint:\n",
        ),
    }
    for package, leaf, pxd in mods.values():
        src = tmp_path / package / f"{leaf}.py"
        src.parent.mkdir(exist_ok=True)
        src.write_text(f"X = '{leaf}'\n")
        if pxd:
            src.with_suffix(".pxd").write_text(pxd)
        src.with_name(leaf + importlib.machinery.EXTENSION_SUFFIXES[0]).write_bytes(b"")
        src.with_name(f"{leaf}.py.sha256").write_text(speedups.source_digest(src) + "\n")
    assert speedups.cimported("pgpool_proxy.net.endpoint") == ("pgpool_proxy.protocol.buffer",)
    assert speedups.is_current("pgpool_proxy.net.endpoint")
    (tmp_path / "protocol" / "buffer.py").write_text("X = 'edited'\n")
    assert not speedups.is_current("pgpool_proxy.protocol.buffer")
    assert not speedups.is_current("pgpool_proxy.net.endpoint")
    spec = speedups._SourceFirst.find_spec("pgpool_proxy.net.endpoint")
    assert spec is not None and spec.origin == str(tmp_path / "net" / "endpoint.py")


def test_every_cimport_is_of_a_compiled_module() -> None:
    """What the twins cimport from the package is itself compiled, so staleness can follow it."""
    for name in speedups.COMPILED:
        pxd = ROOT.joinpath(*name.split(".")).with_suffix(".pxd")
        if pxd.is_file():
            for line in pxd.read_text().splitlines():
                if line.startswith("from pgpool_proxy.") and " cimport " in line:
                    assert line.split()[1] in speedups.cimported(name), (name, line)


@needs_twin
def test_without_the_env_the_twin_is_loaded() -> None:
    env = {k: v for k, v in os.environ.items() if k != speedups.PURE_ENV}
    impl, *files = _probe({**env, speedups.PURE_ENV: ""})
    assert impl == "compiled"
    assert all(f.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)) for f in files)


def test_a_twin_older_than_its_source_is_not_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An editable install whose source was edited after the build runs the source."""
    name = "pgpool_proxy.protocol.units"
    src = tmp_path / "protocol" / "units.py"
    src.parent.mkdir()
    src.write_text("X = 1\n")
    ext = src.with_name("units" + importlib.machinery.EXTENSION_SUFFIXES[0])
    ext.write_bytes(b"")
    monkeypatch.setattr(speedups, "_PACKAGE_DIR", tmp_path)
    assert not speedups.is_current(name)  # no record of what it was built from
    record = src.with_name("units.py.sha256")
    record.write_text(hashlib.sha256(src.read_bytes()).hexdigest() + "\n")
    assert speedups.is_current(name)
    src.write_text("X = 2\n")
    assert not speedups.is_current(name)
    # The finder then serves the source, as it does for every module when pure is asked for.
    spec = speedups._SourceFirst.find_spec(name)
    assert spec is not None and spec.origin == str(src)
    ext.unlink()
    assert not speedups.is_current(name)


@needs_twin
def test_the_sans_io_suite_passes_on_the_pure_modules() -> None:
    """Both implementations pass the same tests: this process runs the unit tests on the
    compiled modules; here they run again with PGPOOL_PURE_PYTHON=1."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/unit",
            "--deselect",
            "tests/unit/test_speedups.py",
        ],
        env={**os.environ, speedups.PURE_ENV: "1"},
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout


# --- the scanners, twin against reference, on generated streams ----------------------------

_BACKEND_TYPES = b"RSKZTDCEN" + b"An123sIGHdct"
_FRONTEND_TYPES = b"QPBDESHCXFdcf"


def _error_body(severity: bytes) -> bytes:
    return b"S" + severity + b"\0V" + severity + b"\0C42000\0Mx\0\0"


@st.composite
def backend_frames(draw: st.DrawFn) -> bytes:
    out = bytearray()
    for _ in range(draw(st.integers(0, 12))):
        t = draw(st.sampled_from(_BACKEND_TYPES))
        if t == ord("Z"):
            body = draw(st.sampled_from([b"I", b"T", b"E", b"", b"II"]))
        elif t == ord("E"):
            body = _error_body(draw(st.sampled_from([b"ERROR", b"FATAL", b"PANIC"])))
            body = draw(st.sampled_from([body, body[: len(body) // 2]]))
        else:
            body = draw(st.binary(max_size=40))
        out += m.frame(bytes([t]), body)
    if draw(st.booleans()):
        out += draw(st.binary(max_size=12))  # a torn or corrupt tail
    return bytes(out)


@st.composite
def frontend_frames(draw: st.DrawFn) -> bytes:
    out = bytearray()
    for _ in range(draw(st.integers(0, 10))):
        t = draw(st.sampled_from(_FRONTEND_TYPES))
        if t == ord("Q"):
            body = draw(st.sampled_from([b"select 1", b"  SET x = 1", b"begin", b"deallocate a"]))
            body += b"\0"
        elif t == ord("P"):
            name = draw(st.sampled_from([b"", b"s1", b"__asyncpg_stmt_1__"]))
            body = name + b"\0select $1\0\0\0"
        elif t == ord("B"):
            stmt = draw(st.sampled_from([b"", b"s1"]))
            body = b"\0" + stmt + b"\0\0\0\0\0\0\0"
        elif t in (ord("D"), ord("C")):
            body = draw(st.sampled_from([b"S", b"P"])) + draw(st.sampled_from([b"", b"s1"])) + b"\0"
        else:
            body = draw(st.binary(max_size=24))
        out += m.frame(bytes([t]), body)
    if draw(st.booleans()):
        out += draw(st.binary(max_size=12))
    return bytes(out)


def _cuts(draw_sizes: list[int], total: int) -> list[int]:
    cuts, at = [], 0
    for size in draw_sizes:
        at += size
        if at >= total:
            break
        cuts.append(at)
    return [*cuts, total]


_BACKEND_STATE = ("copy_in", "event", "need", "skip", "status")


def _drive_backend(
    mod: ModuleType, data: bytes, cuts: list[int], internal: bool, unit_codes: list[int]
) -> list[Any]:
    sc = mod.BackendScanner()
    sc.internal = internal
    sc.units = deque(unit_codes) if unit_codes else None
    buf = bytearray(data)
    seen: list[Any] = []
    pos = 0
    for end in cuts:
        for _ in range(64):  # a stop that does not move is a caller's job; do not spin on it
            try:
                new = sc.scan(buf, pos, end)
            except FrameError as exc:
                seen.append(("frame-error", str(exc)))
                return seen
            seen.append((new, *(getattr(sc, a) for a in _BACKEND_STATE), list(sc.units or ())))
            if new == pos or new >= end:
                pos = max(pos, new)
                break
            pos = new
    return seen


@needs_twin
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=backend_frames(),
    sizes=st.lists(st.integers(1, 64), max_size=20),
    internal=st.booleans(),
    unit_codes=st.lists(
        st.sampled_from([units.U_Z, units.U_PARSE, units.U_BIND, units.U_EXECUTE]), max_size=4
    ),
)
def test_backend_scanner_twins_agree(
    data: bytes, sizes: list[int], internal: bool, unit_codes: list[int]
) -> None:
    cuts = _cuts(sizes, len(data))
    pure = _pure("pgpool_proxy.protocol.server_scan")
    assert _loaded_from_extension(server_scan)
    want = _drive_backend(pure, data, cuts, internal, unit_codes)
    got = _drive_backend(server_scan, data, cuts, internal, unit_codes)
    assert got == want


_CLIENT_STATE = ("event", "need", "skip", "pending", "unsynced", "terminated", "dirty", "syncs")


def _drive_client(mod: ModuleType, data: bytes, cuts: list[int], rename: bool) -> list[Any]:
    sc = mod.ClientScanner(1 << 16)
    sc.rename = rename
    buf = bytearray(data)
    seen: list[Any] = []
    pos = 0
    for end in cuts:
        for _ in range(64):
            try:
                new = sc.scan(buf, pos, end)
            except Exception as exc:  # the reference decides what is raised; the twin matches
                seen.append((type(exc).__name__, str(exc)))
                return seen
            seen.append((new, *(getattr(sc, a) for a in _CLIENT_STATE), list(sc.units)))
            if new == pos or new >= end or sc.terminated:
                pos = max(pos, new)
                break
            pos = new
        if sc.terminated:
            break
    return seen


@needs_twin
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=frontend_frames(), sizes=st.lists(st.integers(1, 64), max_size=20), rename=st.booleans()
)
def test_client_scanner_twins_agree(data: bytes, sizes: list[int], rename: bool) -> None:
    cuts = _cuts(sizes, len(data))
    pure = _pure("pgpool_proxy.protocol.client_scan")
    assert _loaded_from_extension(client_scan)
    assert _drive_client(client_scan, data, cuts, rename) == _drive_client(pure, data, cuts, rename)
