"""Startup packet decoding on its own: the length word checked as login reads it, then
parse_startup_packet, then the `options` string as parse_options reads it.

Contract: ProtocolViolation, or a ProxyError with 08P01 (malformed) or 0A000 (an option the
proxy does not support); nothing else.
"""

from __future__ import annotations

from tests.fuzz._common import instrumented, main

with instrumented("pgpool_proxy.protocol.messages", "pgpool_proxy.session.login"):
    from pgpool_proxy.errors import ProxyError, SqlState
    from pgpool_proxy.protocol import messages as m
    from pgpool_proxy.protocol.constants import INT32, MAX_STARTUP_PACKET
    from pgpool_proxy.session.login import parse_options

EXPECTED = (m.ProtocolViolation, ProxyError)
_ALLOWED_STATES = {SqlState.PROTOCOL_VIOLATION, SqlState.FEATURE_NOT_SUPPORTED}


def _one(data: bytes) -> None:
    if len(data) < 4:
        return
    length = INT32.unpack_from(data, 0)[0]
    if length < 8 or length > MAX_STARTUP_PACKET:
        return  # refused by its length before any decoding (read_startup_packet)
    packet = m.parse_startup_packet(data[4:length])
    if isinstance(packet, m.StartupMessage):
        for k, v in packet.params.items():
            assert "\0" not in k and "\0" not in v
        options = packet.params.get("options")
        if options is not None:
            for k, v in parse_options(options).items():
                assert isinstance(k, str) and isinstance(v, str)


def TestOneInput(data: bytes) -> None:
    for variant in (data, INT32.pack(len(data) + 4) + data):  # as sent, and with a true length
        try:
            _one(variant)
        except ProxyError as exc:
            assert exc.sqlstate in _ALLOWED_STATES, (exc.sqlstate, exc.message)
        except m.ProtocolViolation:
            pass


if __name__ == "__main__":
    main(TestOneInput)
