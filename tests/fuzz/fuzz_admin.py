"""The admin console's command language: split_statements, then parse_command on each, and
SET's value checked as the console checks it (admin.settings.set_setting).

Contract: CommandError, nothing else; every Command has an upper-case verb it knows.
"""

from __future__ import annotations

import contextlib

from tests.fuzz._common import instrumented, main

with instrumented(
    "pgpool_proxy.admin.commands",
    "pgpool_proxy.admin.settings",
    "pgpool_proxy.config",
):
    from pgpool_proxy.admin.commands import CommandError, parse_command, split_statements
    from pgpool_proxy.admin.settings import set_setting
    from pgpool_proxy.config import parse_config

EXPECTED = (CommandError,)
_CONFIG = parse_config(
    '[[databases]]\nname = "app"\nhost = "127.0.0.1"\n'
    '[[users]]\nname = "alice"\npassword = "secret"\n'
    '[admin]\nadmin_users = ["alice"]\n',
    env={},
)


class _Server:
    config = _CONFIG


_VERBS = {"SHOW", "SET", "PAUSE", "RESUME", "RELOAD", "RECONNECT", "KILL", "SHUTDOWN"}


def TestOneInput(data: bytes) -> None:
    text = data.decode("utf-8", "replace")  # the console decodes the Query text the same way
    for stmt in split_statements(text):
        try:
            cmd = parse_command(stmt)
        except EXPECTED as exc:
            assert exc.sqlstate and exc.message
            continue
        assert cmd.verb in _VERBS, cmd
        if cmd.verb == "SET":
            assert cmd.arg is not None and cmd.value is not None
            with contextlib.suppress(*EXPECTED):
                set_setting(_Server(), cmd.arg, cmd.value)  # type: ignore[arg-type]


if __name__ == "__main__":
    main(TestOneInput)
