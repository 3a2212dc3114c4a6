"""The runtime package stands alone: pgpool_proxy imports nothing from pgpool_devkit (demo and
test helpers) and needs no cryptography, so a wheel without the `embedded` extra runs."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RUNTIME = REPO / "pgpool_proxy"

# Every runtime module imported with the devkit and cryptography made unimportable.
_IMPORT_ALL = """
import importlib, pkgutil, sys
for name in ("pgpool_devkit", "cryptography"):
    sys.modules[name] = None  # import raises ModuleNotFoundError
import pgpool_proxy
names = [m.name for m in pkgutil.walk_packages(pgpool_proxy.__path__, "pgpool_proxy.")]
for name in names:
    if name != "pgpool_proxy.__main__":
        importlib.import_module(name)
print(len(names))
"""


def test_every_runtime_module_imports_without_the_devkit_or_cryptography() -> None:
    out = subprocess.run(
        [sys.executable, "-c", _IMPORT_ALL],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) > 50


def _devkit_imports(path: Path) -> list[tuple[str, str]]:
    """(enclosing function or "<module>", imported module) for each import of the devkit."""
    found: list[tuple[str, str]] = []

    def visit(node: ast.AST, where: str) -> None:
        for child in ast.iter_child_nodes(node):
            inner = where
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                inner = child.name
            if isinstance(child, ast.Import):
                found.extend((where, a.name) for a in child.names if _is_devkit(a.name))
            elif isinstance(child, ast.ImportFrom) and _is_devkit(child.module or ""):
                found.append((where, child.module or ""))
            visit(child, inner)

    visit(ast.parse(path.read_text(encoding="utf-8")), "<module>")
    return found


def _is_devkit(module: str) -> bool:
    return module == "pgpool_devkit" or module.startswith("pgpool_devkit.")


def test_only_the_demo_command_reaches_into_the_devkit() -> None:
    uses = {
        (str(path.relative_to(REPO)), where, module)
        for path in sorted(RUNTIME.rglob("*.py"))
        for where, module in _devkit_imports(path)
    }
    # cmd_demo imports it when the demo runs, and says which extra to install when it cannot.
    assert uses == {
        ("pgpool_proxy/cli.py", "cmd_demo", "pgpool_devkit.pgserver"),
        ("pgpool_proxy/cli.py", "cmd_demo", "pgpool_devkit.tls_material"),
    }


def test_demo_without_the_devkit_says_which_extra_to_install() -> None:
    code = (
        "import sys; sys.modules['pgpool_devkit'] = None\n"
        "from pgpool_proxy.cli import main\n"
        "sys.exit(main(['demo', '--port', '0']))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO
    )
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert "pgpool_devkit" in lines[0] and "pip install 'pgpool-proxy[embedded]'" in lines[0]


def test_the_cli_names_the_devkit_bindir_variable() -> None:
    from pgpool_devkit.pgserver import BINDIR_ENV
    from pgpool_proxy.cli import PG_BINDIR_ENV

    assert PG_BINDIR_ENV == BINDIR_ENV
