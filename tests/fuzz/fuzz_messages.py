"""The slow-path message decoders: a message type byte, then a body as a peer would send it.

Server messages: DataRow, ErrorResponse/NoticeResponse, ParameterStatus, Authentication
requests (code, SASL mechanisms, md5 salt), BackendKeyData. Client messages: PasswordMessage
and SASLInitialResponse. An unknown type byte feeds the body to every decoder.

Contract: ProtocolViolation, nothing else; what decodes re-encodes to the same body where the
proxy has an encoder for it.
"""

from __future__ import annotations

import contextlib

from tests.fuzz._common import instrumented, main

with instrumented("pgpool_proxy.protocol.messages"):
    from pgpool_proxy.protocol import messages as m

EXPECTED = (m.ProtocolViolation,)


def _data_row(body: bytes | memoryview) -> None:
    row = m.parse_data_row(body)
    assert all(v is None or isinstance(v, str) for v in row)


def _error(body: bytes | memoryview) -> None:
    fields = m.parse_error_fields(body)
    assert all(len(k) == 1 and isinstance(v, str) for k, v in fields.items())


def _param(body: bytes | memoryview) -> None:
    name, value = m.parse_parameter_status(body)
    raw = bytes(body)
    if raw.count(b"\0") == 2 and raw.endswith(b"\0"):
        assert m.parameter_status(name, value)[5:] == raw


def _auth(body: bytes | memoryview) -> None:
    code, rest = m.parse_auth_request(body)
    if code == 10:
        m.parse_sasl_mechanisms(rest)
    elif code == 5:
        m.parse_md5_salt(rest)


def _key(body: bytes | memoryview) -> None:
    pid, secret = m.parse_backend_key_data(body)
    assert m.backend_key_data(pid, secret)[5:] == bytes(body)


def _password(body: bytes | memoryview) -> None:
    with contextlib.suppress(m.ProtocolViolation):
        m.parse_password(body)
    mechanism, data = m.parse_sasl_initial_response(body)
    assert isinstance(mechanism, str) and isinstance(data, bytes)


_DECODERS = {
    ord("D"): _data_row,
    ord("E"): _error,
    ord("N"): _error,
    ord("S"): _param,
    ord("R"): _auth,
    ord("K"): _key,
    ord("p"): _password,
}


def TestOneInput(data: bytes) -> None:
    if not data:
        return
    body = data[1:]
    decoder = _DECODERS.get(data[0])
    for fn in (decoder,) if decoder is not None else _DECODERS.values():
        with contextlib.suppress(*EXPECTED):
            fn(body)
        with contextlib.suppress(*EXPECTED):
            fn(memoryview(bytearray(body)))  # the hot path hands decoders memoryviews


if __name__ == "__main__":
    main(TestOneInput)
