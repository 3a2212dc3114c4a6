"""The config package's shape: its modules import one way, nobody imports a private name from
it, and code outside it uses only the public API (``pgpool_proxy.config``).

Read off the source with ast, so a new upward import fails here rather than as a cycle later.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

import pgpool_proxy.config

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "pgpool_proxy" / "config"

# Bottom first: a module may import only from those before it.
LAYERS = (
    "schema",
    "envrefs",
    "tables",
    "core",
    "users",
    "topology",
    "databases",
    "security",
    "admin",
    "metrics",
    "client_rules",
    "peers",
    "model",
    "keys",
    "build",
    "check",
    "tomlwrite",
    "ini",
    "pgbouncer_tables",
    "pgbouncer_mapper",
    "pgbouncer_settings",
    "pgbouncer_entries",
    "pgbouncer",
)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> Iterator[tuple[str, list[str], int]]:
    """(absolute module, imported names, line) for every import in ``path``."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            yield module, [alias.name for alias in node.names], node.lineno
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, [], node.lineno


def test_every_module_of_the_package_has_a_layer() -> None:
    modules = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}
    assert modules == set(LAYERS)


@pytest.mark.parametrize("module", LAYERS)
def test_package_modules_import_downward_only(module: str) -> None:
    for imported, names, line in _imports(PACKAGE / f"{module}.py"):
        if not imported.startswith("pgpool_proxy."):
            continue
        assert imported.startswith("pgpool_proxy.config."), (
            f"{module}.py:{line} imports {imported}: the config package depends on nothing of "
            "the proxy"
        )
        target = imported.removeprefix("pgpool_proxy.config.")
        assert LAYERS.index(target) < LAYERS.index(module), (
            f"{module}.py:{line} imports {target}, which is not below it"
        )
        private = [n for n in names if n.startswith("_")]
        assert not private, f"{module}.py:{line} imports private names {private} from {target}"


def _outside_files() -> Iterator[Path]:
    for top in ("pgpool_proxy", "tests", "bench"):
        for path in (REPO / top).rglob("*.py"):
            if PACKAGE not in path.parents:
                yield path


def test_outside_code_uses_only_the_public_api() -> None:
    public = set(pgpool_proxy.config.__all__)
    problems = []
    for path in _outside_files():
        for imported, names, line in _imports(path):
            where = f"{path.relative_to(REPO)}:{line}"
            if imported.startswith("pgpool_proxy.config."):
                problems.append(f"{where} imports {imported}; use pgpool_proxy.config")
            elif imported == "pgpool_proxy.config":
                problems += [f"{where} imports {n}" for n in names if n not in public]
    assert not problems, "\n".join(problems)
