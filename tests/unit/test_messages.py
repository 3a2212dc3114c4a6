"""Sans-IO tests of message codecs and startup parsing."""

from __future__ import annotations

import struct

import pytest

from pgpool_proxy.protocol import messages as m
from pgpool_proxy.protocol.constants import PROTOCOL_3_0
from pgpool_proxy.session.login import parse_options


def body_of(packet: bytes) -> bytes:
    return packet[4:]


def test_startup_roundtrip() -> None:
    pkt = m.startup_message({"user": "alice", "database": "app", "application_name": "x"})
    parsed = m.parse_startup_packet(body_of(pkt))
    assert isinstance(parsed, m.StartupMessage)
    assert parsed.protocol == PROTOCOL_3_0
    assert parsed.params == {"user": "alice", "database": "app", "application_name": "x"}


def test_special_requests() -> None:
    assert isinstance(m.parse_startup_packet(struct.pack("!I", 80877103)), m.SSLRequest)
    assert isinstance(m.parse_startup_packet(struct.pack("!I", 80877104)), m.GSSENCRequest)
    cancel = m.parse_startup_packet(body_of(m.cancel_request(42, 7)))
    assert cancel == m.CancelRequest(42, 7)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\x00\x03",
        struct.pack("!I", PROTOCOL_3_0) + b"user\0alice",  # no terminator
        struct.pack("!I", PROTOCOL_3_0) + b"user\0",  # key without value
        struct.pack("!I", PROTOCOL_3_0) + b"\xff\xfe\0x\0\0",  # not UTF-8
        struct.pack("!I", 80877102) + b"\0\0",  # short cancel
    ],
)
def test_bad_startup_packets_raise_protocol_violation(body: bytes) -> None:
    with pytest.raises(m.ProtocolViolation):
        m.parse_startup_packet(body)


def test_error_response_fields() -> None:
    frame = m.error_response("FATAL", "28P01", "bad password", detail="d", hint="h")
    assert frame[:1] == b"E"
    assert struct.unpack("!I", frame[1:5])[0] == len(frame) - 1
    fields = m.parse_error_fields(frame[5:])
    assert fields == {
        "S": "FATAL",
        "V": "FATAL",
        "C": "28P01",
        "M": "bad password",
        "D": "d",
        "H": "h",
    }


def test_sasl_initial_response_roundtrip() -> None:
    frame = m.sasl_initial_response("SCRAM-SHA-256", b"n,,n=,r=abc")
    assert m.parse_sasl_initial_response(frame[5:]) == ("SCRAM-SHA-256", b"n,,n=,r=abc")
    with pytest.raises(m.ProtocolViolation):
        m.parse_sasl_initial_response(frame[5:-1])


def test_parameter_status_roundtrip() -> None:
    frame = m.parameter_status("TimeZone", "Europe/Paris")
    assert m.parse_parameter_status(frame[5:]) == ("TimeZone", "Europe/Paris")


def test_quoting() -> None:
    assert m.quote_literal("it's") == "'it''s'"
    assert m.quote_literal("a\\b") == "E'a\\\\b'"
    assert m.quote_ident('we"ird') == '"we""ird"'


def test_parse_options() -> None:
    assert parse_options("-c statement_timeout=5s -cwork_mem=4MB --search-path=a") == {
        "statement_timeout": "5s",
        "work_mem": "4MB",
        "search_path": "a",
    }
    assert parse_options(r"-c application_name=with\ space") == {"application_name": "with space"}
