"""What every harness shares: instrumented imports when run under atheris, and the entry point.

A harness module defines `TestOneInput(data: bytes)`, which calls its target and lets through
only the target's documented error types; anything else escaping is a finding. Run one with
`python -m tests.fuzz.<module> [libFuzzer flags] [corpus dirs]` (see docs/fuzzing.md).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

CORPUS_ROOT = Path(__file__).parent / "corpus"


def _fuzzing() -> bool:
    # Only the process started as a harness instruments: under pytest the modules are imported
    # plain (instrumenting there would slow every other test in the session).
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    return spec is not None and spec.name.startswith("tests.fuzz.")


def instrumented(*modules: str) -> AbstractContextManager[object]:
    """Wrap the target's imports: atheris records coverage of the code imported inside.

    `modules` names the target's modules; atheris 2.3 instruments everything of their top-level
    package imported in the block, so a harness pulling in the whole session layer (fuzz_login)
    spends about two seconds starting. Do not name stdlib modules: instrumenting tomllib makes
    libFuzzer die at start."""
    if _fuzzing():
        try:
            import atheris
        except ImportError:
            return contextlib.nullcontext()
        return atheris.instrument_imports(include=list(modules))  # type: ignore[no-any-return]
    return contextlib.nullcontext()


def main(test_one_input: Callable[[bytes], None]) -> None:
    import atheris

    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
