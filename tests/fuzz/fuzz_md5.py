"""md5 authentication, both sides: a client's response checked against a salt (server side),
and the response the proxy computes for a server's salt (client side).

The input is a 4-byte salt then the client's PasswordMessage text (decoded as login decodes
it); a shorter input is a short salt. Contract: ValueError for a salt that is not 4 bytes,
nothing else; a response verifies exactly when it equals the computed one.
"""

from __future__ import annotations

from tests.fuzz._common import instrumented, main

with instrumented("pgpool_proxy.auth.md5"):
    from pgpool_proxy.auth.md5 import is_md5_hash, md5_hash, md5_response, verify_md5_response

EXPECTED = (ValueError,)


def TestOneInput(data: bytes) -> None:
    salt, raw = data[:4], data[4:]
    # The wire decodes strictly (parse_password); a userlist entry may hold anything.
    text = raw.decode("utf-8", "surrogateescape")
    try:
        expected = md5_response("secret", "alice", salt)
        ok = verify_md5_response(text, "secret", "alice", salt)
        assert ok == (text == expected)
        for secret in (text, md5_hash(text, "alice")):
            md5_response(secret, text, salt)
    except EXPECTED:
        assert len(salt) != 4
    assert is_md5_hash(md5_hash(text, text))
    is_md5_hash(text)


if __name__ == "__main__":
    main(TestOneInput)
