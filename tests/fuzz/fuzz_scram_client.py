"""The proxy as SCRAM client: server-first and server-final messages from a server.

The input is server-first, a NUL, then server-final. The client nonce is fixed and the client
works from a ClientKey and ServerKey (pass-through mode), so no input makes it run PBKDF2 and a
mutated exchange can reach the signature check.

Contract: ScramError, nothing else; the server is verified only with the right signature.
"""

from __future__ import annotations

import hashlib
import hmac

from tests.fuzz._common import instrumented, main

with instrumented("pgpool_proxy.auth.scram", "pgpool_proxy.auth.scram_client"):
    from pgpool_proxy.auth.scram import ScramError
    from pgpool_proxy.auth.scram_client import ScramClient

EXPECTED = (ScramError,)
CLIENT_NONCE = "CLINONCE"
_SALTED = hashlib.pbkdf2_hmac("sha256", b"secret", b"0123456789abcdef", 4096)
CLIENT_KEY = hmac.new(_SALTED, b"Client Key", hashlib.sha256).digest()
SERVER_KEY = hmac.new(_SALTED, b"Server Key", hashlib.sha256).digest()


def TestOneInput(data: bytes) -> None:
    first, _, final = data.partition(b"\0")
    client = ScramClient(client_key=CLIENT_KEY, server_key=SERVER_KEY, nonce=CLIENT_NONCE)
    client.client_first()
    try:
        answer = client.handle_server_first(first)
        assert answer.startswith(b"c=biws,r=" + CLIENT_NONCE.encode())
        client.handle_server_final(final)
        assert client.server_verified
    except EXPECTED:
        assert not client.server_verified


if __name__ == "__main__":
    main(TestOneInput)
