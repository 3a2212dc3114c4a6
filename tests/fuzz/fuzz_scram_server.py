"""The proxy as SCRAM server: client-first and client-final messages from a client.

The input is client-first, a NUL, then client-final (SCRAM messages cannot hold a NUL, so the
split loses nothing). The server nonce is fixed so a mutated exchange can reach the proof check.
Also feeds the input to ScramVerifier.parse (a stored verifier from the config).

Contract: ScramError, nothing else; the exchange succeeds only with the right proof.
"""

from __future__ import annotations

from tests.fuzz._common import instrumented, main

with instrumented("pgpool_proxy.auth.scram", "pgpool_proxy.auth.scram_server"):
    from pgpool_proxy.auth.scram import ScramError, ScramVerifier
    from pgpool_proxy.auth.scram_server import ScramServer

EXPECTED = (ScramError,)
SERVER_NONCE = "SRVNONCE"
PASSWORD = "secret"
VERIFIER = ScramVerifier.from_password(PASSWORD, salt=b"0123456789abcdef", iterations=4096)


def TestOneInput(data: bytes) -> None:
    first, _, final = data.partition(b"\0")
    server = ScramServer(VERIFIER, nonce=SERVER_NONCE)
    try:
        server.handle_client_first(first)
        server.handle_client_final(final)
        assert server.is_complete and len(server.client_key) == 32
    except EXPECTED:
        assert not server.is_complete
    text = data.decode("utf-8", "replace")
    parsed = ScramVerifier.parse(text)
    if parsed is not None:
        assert ScramVerifier.parse(parsed.to_text()) == parsed


if __name__ == "__main__":
    main(TestOneInput)
