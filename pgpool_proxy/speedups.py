"""Which implementation of the hot path runs: the compiled twin or the pure-Python reference.

The modules in COMPILED are plain Python, and the reference. When the package is installed on
a machine with a C compiler, setup.py also compiles each of them with Cython (pure-Python mode,
annotations not used as C types) into an extension module of the same name, which Python's
import system prefers to the ``.py``. Both are built from one source, so they cannot
drift apart; the test suite runs the sans-IO tests against both (tests/unit/test_speedups.py).

A finder first on ``sys.meta_path`` (installed by the package's ``__init__`` before any other
module is imported; this module imports nothing from the package) loads a module's ``.py``
instead of its compiled twin when ``PGPOOL_PURE_PYTHON=1`` is set (this process and the
workers it forks), and when the twin is stale: setup.py records the SHA-256 of the source each
extension was built from (``<module>.py.sha256`` beside it), and a source edited since, as in
an editable install under development, runs as written rather than as last compiled; so do the
modules whose twins cimport its extension types (see cimported).
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Final

# Everything a transaction passes through once per read: the connection base class (uvloop
# asks it for a buffer per read), the receive buffer, frame headers, both frame scanners and
# the tables they index, the SQL classifier (every Query), reply-unit matching, the two pumps
# that drive them, and taking and giving back a server connection.
COMPILED: Final = (
    "pgpool_proxy.protocol.units",
    "pgpool_proxy.protocol.framing",
    "pgpool_proxy.protocol.sqlscan",
    "pgpool_proxy.protocol.buffer",
    "pgpool_proxy.protocol.server_scan",
    "pgpool_proxy.protocol.client_scan",
    "pgpool_proxy.net.endpoint",
    "pgpool_proxy.link.ends",
    "pgpool_proxy.link.replies",
    "pgpool_proxy.session.statements",
    "pgpool_proxy.pool.pool",
    "pgpool_proxy.pool.backend",
    "pgpool_proxy.session.client",
)

PURE_ENV: Final = "PGPOOL_PURE_PYTHON"

_PACKAGE_DIR: Final = Path(__file__).resolve().parent


def pure_requested() -> bool:
    """Whether the environment asks for the pure-Python implementation."""
    return os.environ.get(PURE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def _extension_of(fullname: str) -> Path | None:
    base = _PACKAGE_DIR.joinpath(*fullname.split(".")[1:])
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        candidate = base.with_name(base.name + suffix)
        if candidate.is_file():
            return candidate
    return None


def _source_of(fullname: str) -> Path:
    return _PACKAGE_DIR.joinpath(*fullname.split(".")[1:]).with_suffix(".py")


def source_digest(source: Path) -> str:
    """What setup.py records beside an extension: the SHA-256 of the source it compiled, and of
    the augmenting ``.pxd`` beside it (the C types of the twin) when there is one."""
    digest = hashlib.sha256(source.read_bytes())
    pxd = source.with_suffix(".pxd")
    if pxd.is_file():
        digest.update(b"\0pxd\0" + pxd.read_bytes())
    return digest.hexdigest()


def _built_from(source: Path) -> Path:
    return source.with_name(source.name + ".sha256")


def cimported(fullname: str) -> tuple[str, ...]:
    """The modules of COMPILED whose extension types the module's twin was built against (its
    augmenting ``.pxd`` cimports them). The twin is usable only with theirs: against the pure
    class of the same name its import fails."""
    try:
        text = _source_of(fullname).with_suffix(".pxd").read_text()
    except OSError:
        return ()
    found = re.findall(r"^from\s+([\w.]+)\s+cimport\b", text, re.MULTILINE)
    return tuple(name for name in found if name in COMPILED)


def is_current(fullname: str, _seen: frozenset[str] = frozenset()) -> bool:
    """Whether the module's compiled twin exists and was built from its source as it is now, and
    so were those of the modules it cimports."""
    source = _source_of(fullname)
    if _extension_of(fullname) is None or not source.is_file():
        return False
    try:
        recorded = _built_from(source).read_text().strip()
    except OSError:
        return False
    if recorded != source_digest(source):
        return False
    seen = _seen | {fullname}
    return all(dep not in seen and is_current(dep, seen) for dep in cimported(fullname))


_pure = False


class _SourceFirst(importlib.machinery.PathFinder):
    """Finds a module of COMPILED as its ``.py`` source when the pure implementation was asked
    for or its compiled twin is stale; otherwise leaves it to the usual finders."""

    @classmethod
    def find_spec(  # type: ignore[override]
        cls,
        fullname: str,
        path: Sequence[str] | None = None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in COMPILED:
            return None
        source = _source_of(fullname)
        if not source.is_file() or (not _pure and is_current(fullname)):
            return None
        return importlib.util.spec_from_file_location(fullname, source)


def install(pure: bool) -> None:
    """Put the finder in place (idempotent); ``pure`` loads every module of COMPILED from its
    source from now on in this process."""
    global _pure
    _pure = _pure or pure
    if not any(f is _SourceFirst for f in sys.meta_path):
        sys.meta_path.insert(0, _SourceFirst)


def compiled_modules() -> list[str]:
    """The modules of COMPILED that this process loads (or has loaded) compiled."""
    out = []
    for name in COMPILED:
        module = sys.modules.get(name)
        if module is not None:
            origin = getattr(module, "__file__", None) or ""
            if origin.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)):
                out.append(name)
        elif not _pure and is_current(name):
            out.append(name)
    return out


def implementation() -> str:
    """``compiled``, ``pure-python``, or ``partly compiled (n of m)`` (a build where some
    module failed to compile, or was edited since): for the startup log, SHOW VERSION and the
    build-info metric."""
    n = len(compiled_modules())
    if n == len(COMPILED):
        return "compiled"
    if n == 0:
        return "pure-python"
    return f"partly compiled ({n} of {len(COMPILED)})"
