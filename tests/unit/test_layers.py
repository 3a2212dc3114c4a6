"""The package imports one way: each layer may import only the layers below it.

Every import counts: at module level, inside a function, and under TYPE_CHECKING (a type-only
upward import is still a dependency a reader has to hold in mind, and the first step of a
cycle). docs/architecture.md draws the same diagram.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import pgpool_proxy

PACKAGE = Path(pgpool_proxy.__file__).parent

# Bottom to top. A module belongs to the entry naming its first component below pgpool_proxy;
# entries in one tuple are one layer and must not import each other.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("errors",),
    ("config", "protocol", "counters"),
    ("auth",),
    ("net", "aws"),
    ("link",),
    ("pool",),
    ("session",),
    ("runtime",),
    ("admin",),
    ("healthcheck",),
    ("cli",),
    ("__main__",),
)
# The package's own __init__ (version string) and speedups (which hot-path build is loaded,
# imported by __init__) are below everything.
BASE = ("__init__", "speedups")


def layer_of(module: str) -> tuple[int, str]:
    """(layer index, unit) of a dotted module name inside pgpool_proxy."""
    parts = module.split(".")
    unit = parts[1] if len(parts) > 1 else "__init__"
    if unit in BASE:
        return -1, unit
    for i, names in enumerate(LAYERS):
        if unit in names:
            return i, unit
    raise LookupError(f"{module}: not in any layer (add it to LAYERS and docs/architecture.md)")


def imports_of(module: str, is_package: bool, source: str) -> list[tuple[int, str]]:
    """(line, imported module) for every import of a pgpool_proxy module in source."""
    found: list[tuple[int, str]] = []
    here = module.split(".") if is_package else module.split(".")[:-1]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target == "pgpool_proxy" or target.startswith("pgpool_proxy."):
                # `from .. import lifecycle` imports a module; `from .. import __version__`, a
                # name of the package's __init__.
                for a in node.names:
                    sub = PACKAGE.parent.joinpath(*target.split("."), a.name)
                    is_module = sub.is_dir() or sub.with_suffix(".py").exists()
                    found.append((node.lineno, f"{target}.{a.name}" if is_module else target))
        elif isinstance(node, ast.Import):
            found += [
                (node.lineno, a.name) for a in node.names if a.name.startswith("pgpool_proxy.")
            ]
    return found


def violations(module: str, is_package: bool, source: str) -> list[str]:
    own, own_unit = layer_of(module)
    out = []
    for line, target in imports_of(module, is_package, source):
        layer, unit = layer_of(target)
        if unit == own_unit:
            continue
        if layer >= own:
            out.append(f"{module}:{line} imports {target} ({unit} is not below {own_unit})")
    return out


def package_modules() -> list[tuple[str, bool, Path]]:
    mods = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package and len(parts) > 2:
            parts = parts[:-1]
        mods.append((".".join(parts), is_package, path))
    return mods


def test_every_import_points_down() -> None:
    problems = []
    for module, is_package, path in package_modules():
        problems += violations(module, is_package, path.read_text())
    assert not problems, "upward imports:\n" + "\n".join(problems)


def test_every_module_has_a_layer() -> None:
    for module, _, _ in package_modules():
        layer_of(module)  # raises for a module outside every layer


@pytest.mark.parametrize(
    ("module", "source"),
    [
        # The cycles issue 16 removed, written back in: each must be caught.
        ("pgpool_proxy.pool.backend", "from ..session.client import ClientConnection\n"),
        (
            "pgpool_proxy.session.login",
            "def f():\n    from ..admin.console import start_console\n",
        ),
        (
            "pgpool_proxy.session.client",
            "from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n    from pgpool_proxy.runtime.server import ProxyServer\n",
        ),
        ("pgpool_proxy.runtime.server", "import pgpool_proxy.admin.http\n"),
        ("pgpool_proxy.net.tls", "from ..aws import secrets\n"),  # a sibling in its layer
        ("pgpool_proxy.protocol.framing", "from .. import config, link\n"),
    ],
)
def test_an_upward_import_is_caught(module: str, source: str) -> None:
    assert violations(module, False, source)


def test_downward_imports_pass() -> None:
    source = "from ..link.prepared import Stmt\nfrom ..net.endpoint import Endpoint\n"
    assert violations("pgpool_proxy.pool.backend", False, source) == []
    assert violations("pgpool_proxy.admin", True, "from .console import start_console\n") == []
