"""The config loader: TOML text through parse_config (tomllib, then build_config's checks).

Contract: ConfigError (naming every problem), nothing else; the environment is empty so no
input reads it.
"""

from __future__ import annotations

from tests.fuzz._common import instrumented, main

with instrumented("pgpool_proxy.config"):  # the package: every module of the loader
    from pgpool_proxy.config import ConfigError, parse_config

EXPECTED = (ConfigError,)


def TestOneInput(data: bytes) -> None:
    try:
        text = data.decode("utf-8")  # load_config refuses other bytes with a ConfigError
    except UnicodeDecodeError:
        return
    try:
        parse_config(text, source="fuzz.toml", env={})
    except EXPECTED as exc:
        assert exc.problems and all(isinstance(p, str) for p in exc.problems)


if __name__ == "__main__":
    main(TestOneInput)
