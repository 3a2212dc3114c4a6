"""No string a client supplies can forge a log line, in the text or the JSON format.

The client claims a user, database and application_name with newlines, carriage returns, an
ANSI escape and a Unicode line separator before it has authenticated; every record the proxy
logs about it must stay one line, and the JSON format must still carry the exact strings.
"""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Iterator

import pytest

from pgpool_proxy.cli import JsonFormatter, TextFormatter, escape_log_text
from tests.support.proxy import StartProxy
from tests.support.rawpg import RawClient, RawError
from tests.support.waits import wait_for

# Names stay within PostgreSQL's 63 bytes: longer ones are refused (42622) before any lookup.
FORGED = "2026-12-02 12:00:00,000 INFO pgpool_proxy: FORGED"
USER = f"mallory\n{FORGED}"
DATABASE = f"app\r\n{FORGED}\x1b[2J\u2028"
APP = f"psql\n{FORGED}"


@pytest.fixture
def logs() -> Iterator[tuple[io.StringIO, io.StringIO]]:
    text, js = io.StringIO(), io.StringIO()
    handlers = [logging.StreamHandler(text), logging.StreamHandler(js)]
    handlers[0].setFormatter(TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handlers[1].setFormatter(JsonFormatter())
    logger = logging.getLogger("pgpool_proxy")
    old = logger.level
    logger.setLevel(logging.DEBUG)
    for h in handlers:
        logger.addHandler(h)
    try:
        yield text, js
    finally:
        for h in handlers:
            logger.removeHandler(h)
        logger.setLevel(old)


def test_escape_is_linear_and_complete() -> None:
    assert escape_log_text("a\nb\r\tc\x00\x1b\x7f\x85\u2028\u2029é") == (
        "a\\nb\\r\\tc\\x00\\x1b\\x7f\\u0085\\u2028\\u2029é"
    )
    big = "\n" * 1_000_000
    assert escape_log_text(big) == "\\n" * 1_000_000


def test_text_formatter_keeps_records_on_one_line() -> None:
    record = logging.makeLogRecord(
        {"msg": "client error: user=%s db=%s", "args": (USER, DATABASE), "levelname": "INFO"}
    )
    line = TextFormatter("%(levelname)s %(message)s").format(record)
    assert "\n" not in line and "\r" not in line and "\u2028" not in line
    assert "mallory\\n2026-12-02" in line


def test_text_formatter_ends_a_line_with_its_event() -> None:
    record = logging.makeLogRecord({"msg": "client login: x", "event": "client_connect"})
    assert TextFormatter("%(message)s").format(record) == "client login: x event=client_connect"
    # An event is the proxy's own word, but it is escaped like the rest of the line.
    record = logging.makeLogRecord({"msg": "m", "event": "a\nb"})
    assert TextFormatter("%(message)s").format(record) == "m event=a\\nb"
    plain = logging.makeLogRecord({"msg": "no event here"})
    assert TextFormatter("%(message)s").format(plain) == "no event here"


@pytest.mark.parametrize("database", [DATABASE, "app"], ids=["bad-db", "good-db"])
async def test_client_strings_cannot_forge_log_lines(
    start_proxy: StartProxy, logs: tuple[io.StringIO, io.StringIO], database: str
) -> None:
    text, js = logs
    proxy = start_proxy()
    client = await RawClient.connect(proxy.host, proxy.port)
    with pytest.raises(RawError) as err:
        await client.login(USER, "wrong", database, application_name=APP)
    assert err.value.sqlstate in ("28P01", "3D000"), err.value.fields
    await client.closed(5)
    await wait_for(lambda: "mallory" in text.getvalue(), what="the login failure logged")
    lines = text.getvalue().splitlines()
    records = [json.loads(line) for line in js.getvalue().splitlines()]
    # One text line per record, as in JSON: nothing the client sent started a line of its own.
    assert len(lines) == len(records), lines
    assert not [line for line in lines if line.startswith(FORGED)]
    assert any("mallory\\n2026" in line for line in lines), lines
    # JSON keeps the exact strings (json escapes them), so nothing is lost in that format.
    mine = [r for r in records if "mallory" in r["msg"]]
    assert mine and any(USER in r["msg"] for r in mine), mine


def test_tracebacks_are_indented_and_escaped() -> None:
    try:
        raise ValueError(f"bad user {USER}")
    except ValueError:
        record = logging.makeLogRecord({"msg": "failed", "levelname": "ERROR"})
        record.exc_info = sys.exc_info()
    out = TextFormatter("%(levelname)s %(message)s").format(record)
    first, *rest = out.split("\n")
    assert first == "ERROR failed"
    assert rest and all(line.startswith("  ") for line in rest), rest
    # The newline in the message splits it, but the client's text stays indented.
    assert f"  {FORGED}" in rest
    assert not [line for line in rest if line.startswith(FORGED)]
