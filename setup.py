"""Build the compiled twin of the hot path (pgpool_proxy/speedups.py) when it can be built.

Everything else is in pyproject.toml. The compiled modules are optional: without Cython, without
a C compiler, or with PGPOOL_PURE_PYTHON=1 set at install time, the install goes on with the
pure-Python modules alone, and says so on stderr.
"""

from __future__ import annotations

import ast
import hashlib
import os
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


def _compiled_names() -> list[str]:
    """speedups.COMPILED, read without importing the package (it is not installed yet)."""
    tree = ast.parse((ROOT / "pgpool_proxy" / "speedups.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", "") == "COMPILED":
            assert node.value is not None
            return [str(v) for v in ast.literal_eval(node.value)]
    raise RuntimeError("pgpool_proxy/speedups.py defines no COMPILED")


def _pure_requested() -> bool:
    return os.environ.get("PGPOOL_PURE_PYTHON", "").strip().lower() in ("1", "true", "yes", "on")


def _source_digest(source: Path) -> str:
    """pgpool_proxy.speedups.source_digest (not importable before the install): the source's
    SHA-256, and its augmenting .pxd's when it has one."""
    digest = hashlib.sha256(source.read_bytes())
    pxd = source.with_suffix(".pxd")
    if pxd.is_file():
        digest.update(b"\0pxd\0" + pxd.read_bytes())
    return digest.hexdigest()


def _say(message: str) -> None:
    print(f"pgpool-proxy: {message}", file=sys.stderr)


class OptionalBuildExt(build_ext):
    """A build_ext whose failure (no compiler, no Python headers) leaves the pure modules."""

    _digests: dict[str, str]

    def initialize_options(self) -> None:
        super().initialize_options()
        self._digests = {}

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:
            _say(f"compiled hot path not built ({exc}); the pure-Python one will run")
            _forget_old_twins()

    def build_extension(self, ext) -> None:  # type: ignore[no-untyped-def]
        try:
            super().build_extension(ext)
        except Exception as exc:
            _say(f"{ext.name} not compiled ({exc}); its pure-Python module will run")
            _forget_twin(ext.name)
            return
        # What pgpool_proxy.speedups checks before it loads the extension: the source's hash,
        # so that a module edited after the build runs from its source, not stale.
        source = ROOT.joinpath(*ext.name.split(".")).with_suffix(".py")
        self._digests[ext.name] = _source_digest(source) + "\n"
        built = Path(self.get_ext_fullpath(ext.name)).parent / (source.name + ".sha256")
        built.write_text(self._digests[ext.name])

    def copy_extensions_to_source(self) -> None:
        # In-place and editable builds copy the extensions beside their sources: the records
        # of what they were built from go with them. Only those that built: setuptools stops
        # at the first one missing, which would leave none of the others in place.
        everything = self.extensions
        self.extensions = [ext for ext in everything if ext.name in self._digests]
        try:
            super().copy_extensions_to_source()
        finally:
            self.extensions = everything
        for name, digest in self._digests.items():
            source = ROOT.joinpath(*name.split(".")).with_suffix(".py")
            source.with_name(source.name + ".sha256").write_text(digest)


def _forget_twin(name: str) -> None:
    """Remove the compiled module a previous in-place build left beside the source, so that an
    install that does not compile it (PGPOOL_PURE_PYTHON, no Cython, no compiler) runs the
    source, not an old build (one made by another environment sharing this checkout)."""
    source = ROOT.joinpath(*name.split(".")).with_suffix(".py")
    for old in source.parent.glob(source.stem + ".*.so"):
        old.unlink()
    source.with_name(source.name + ".sha256").unlink(missing_ok=True)


def _forget_old_twins() -> None:
    for name in _compiled_names():
        _forget_twin(name)


def _extensions() -> list[object]:
    if _pure_requested():
        _forget_old_twins()
        _say("PGPOOL_PURE_PYTHON is set: the hot path is not compiled")
        return []
    try:
        from Cython.Build import cythonize
        from setuptools import Extension
    except ImportError:
        _say("Cython is not available: the hot path is not compiled")
        _forget_old_twins()
        return []
    extensions = [
        Extension(name, [str(Path(*name.split(".")).with_suffix(".py"))])
        for name in _compiled_names()
    ]
    try:
        return list(
            cythonize(
                extensions,
                compiler_directives={
                    "language_level": "3",
                    # The .py files are the reference: annotations stay hints, never C types or
                    # runtime checks. The only C types are those an augmenting .pxd beside a
                    # module declares (its extension types, typed locals, C constants).
                    "annotation_typing": False,
                    "binding": False,
                    "embedsignature": False,
                },
                quiet=True,
                # The .pxd files cimport one another by package path (client.pxd cimports
                # pgpool_proxy.net.endpoint): resolve those from the checkout whatever the cwd.
                include_path=[str(ROOT)],
            )
        )
    except Exception as exc:
        _say(f"Cython could not translate the hot path ({exc}); the pure-Python one will run")
        return []


setup(ext_modules=_extensions(), cmdclass={"build_ext": OptionalBuildExt})
