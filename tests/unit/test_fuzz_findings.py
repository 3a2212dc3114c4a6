"""Regression tests for what fuzzing found in the parsers of outside bytes (issue 17, finding
11; the harnesses are in tests/fuzz). Each parser raises only its documented error type."""

from __future__ import annotations

import struct

import pytest

from pgpool_proxy.auth.iam import IamError, parse_token
from pgpool_proxy.config import ConfigError, parse_config
from pgpool_proxy.protocol import messages as m
from pgpool_proxy.protocol.framing import FrameError
from pgpool_proxy.protocol.server_scan import BackendScanner
from tests.fuzz.make_corpus import iam_tokens

# --- DataRow (the proxy's own queries: state probe, settings replay, monitor) ----------------


def _row(*cols: bytes | None, ncols: int | None = None) -> bytes:
    out = struct.pack("!H", len(cols) if ncols is None else ncols)
    for c in cols:
        out += struct.pack("!i", -1) if c is None else struct.pack("!i", len(c)) + c
    return out


@pytest.mark.parametrize(
    "body",
    [
        b"",  # no column count (was struct.error)
        b"\x00",
        _row(b"a", ncols=2),  # fewer columns than announced (was struct.error)
        _row(b"abc")[:-1],  # a column longer than the message (was silently truncated)
        struct.pack("!Hi", 1, -2),  # a negative length other than -1 (was read as NULL)
        struct.pack("!Hi", 1, 0x7FFFFFFF),
        _row(b"a") + b"junk",  # bytes after the last column
    ],
)
def test_malformed_data_row_is_a_protocol_violation(body: bytes) -> None:
    with pytest.raises(m.ProtocolViolation):
        m.parse_data_row(body)
    with pytest.raises(m.ProtocolViolation):
        m.parse_data_row(memoryview(bytearray(body)))


def test_data_row_still_decodes() -> None:
    assert m.parse_data_row(m.data_row(["1", None, "", "é"])[5:]) == ["1", None, "", "é"]
    assert m.parse_data_row(_row()) == []
    assert m.parse_data_row(_row(b"\xff")) == ["\ufffd"]  # text is decoded leniently


# --- ReadyForQuery of the wrong length -------------------------------------------------------


@pytest.mark.parametrize("tail", [b"", m.ready_for_query(), b"\x00" * 64])
@pytest.mark.parametrize("length", [4, 6, 100])
def test_ready_for_query_must_carry_exactly_one_status_byte(length: int, tail: bytes) -> None:
    frame = b"Z" + struct.pack("!I", length) + b"I" * max(length - 4, 0)
    data = bytearray(m.command_complete("SELECT 1") + frame + tail)
    sc = BackendScanner()
    # Before: a 4-byte ReadyForQuery at the end of the buffer raised IndexError reading its
    # status; in the middle, the next frame's type byte was taken for the status.
    with pytest.raises(FrameError):
        sc.scan(data, 0, len(data))


# --- server login messages -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("decoder", "body"),
    [
        (m.parse_auth_request, b"\0\0\0"),  # was struct.error in BackendConnection.login
        (m.parse_md5_salt, b"ab"),  # was ValueError from md5_response
        (m.parse_backend_key_data, b"\0\0\0\1"),  # was struct.error
        (m.parse_backend_key_data, b"\0" * 9),
    ],
)
def test_short_server_login_messages_are_protocol_violations(decoder: object, body: bytes) -> None:
    with pytest.raises(m.ProtocolViolation):
        decoder(body)  # type: ignore[operator]


def test_server_login_decoders() -> None:
    assert m.parse_auth_request(m.auth_md5(b"salt")[5:]) == (5, b"salt")
    assert m.parse_md5_salt(b"salt") == b"salt"
    assert m.parse_backend_key_data(m.backend_key_data(7, 9)[5:]) == (7, 9)


# --- IAM tokens: int() refusals escaped as ValueError (XX000 at login) -----------------------


def _token(**replace: str) -> str:
    token = iam_tokens()[0].decode()
    for old, new in replace.items():
        token = token.replace(old, new)
    return token


@pytest.mark.parametrize(
    "expires",
    [
        "%C2%B2",  # "²": str.isdigit() says yes, int() says no
        "1" * 5000,  # over int()'s 4300-digit limit
        "%D9%A1",  # an Arabic-Indic digit: int() takes it, the format does not
    ],
    ids=["superscript", "5000-digits", "arabic-indic"],
)
def test_iam_expires_that_int_refuses_is_an_iam_error(expires: str) -> None:
    with pytest.raises(IamError, match="X-Amz-Expires"):
        parse_token(_token(**{"X-Amz-Expires=900": f"X-Amz-Expires={expires}"}))


def test_iam_date_with_non_ascii_digits_is_refused() -> None:
    with pytest.raises(IamError, match="X-Amz-Date"):
        parse_token(_token(**{"X-Amz-Date=20260101": "X-Amz-Date=2026010%D9%A1"}))


def test_iam_seed_token_parses() -> None:
    assert parse_token(_token()).expires_s == 900


# --- config loader: Python's int/float limits escaped as ValueError/OverflowError ------------

_DB = '\n[[databases]]\nname = "app"\nhost = "127.0.0.1"\n'


@pytest.mark.parametrize(
    ("toml", "problem"),
    [
        ("[pool]\ndefault_pool_size = " + "9" * 5000, "invalid TOML"),
        ("[pool]\nquery_wait_timeout_s = " + "9" * 400, "finite number"),
        ('[proxy]\nlisten = "127.0.0.1:' + "1" * 5000 + '"', "port must be a number"),
        (
            '[[users]]\nname = "u"\npassword = "SCRAM-SHA-256$' + "9" * 5000 + ':c2FsdA==$AA:AA"',
            "SCRAM verifier",
        ),
    ],
    ids=["int-5000-digits", "float-overflow", "port-5000-digits", "scram-iterations"],
)
def test_config_numbers_past_python_limits_are_config_errors(toml: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        parse_config(toml + _DB, env={})
