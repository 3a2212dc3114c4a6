"""Tests for PostgreSQL md5 password hashing and challenge responses."""

from __future__ import annotations

import hashlib

import pytest

from pgpool_proxy.auth.md5 import is_md5_hash, md5_hash, md5_response, verify_md5_response

# md5("pencil" || "user"), computed independently with `printf penciluser | md5sum`.
PENCIL_USER_HASH = "md520c46e3762c864548e296b33c3406aa9"
SALT = bytes([0x93, 0x0A, 0xFF, 0x01])


def test_md5_hash_known_vector() -> None:
    assert md5_hash("pencil", "user") == PENCIL_USER_HASH


def test_md5_hash_non_ascii_uses_utf8() -> None:
    expected = "md5" + hashlib.md5("pässwörd".encode() + b"j\xc3\xbcrgen").hexdigest()
    assert md5_hash("pässwörd", "jürgen") == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (PENCIL_USER_HASH, True),
        ("md5" + "0" * 32, True),
        (PENCIL_USER_HASH.upper(), False),
        ("md5" + "A" * 32, False),
        ("md5" + "0" * 31, False),
        ("md5" + "0" * 33, False),
        ("md5" + "0" * 32 + "\n", False),
        ("MD5" + "0" * 32, False),
        ("pencil", False),
        ("", False),
        ("SCRAM-SHA-256$4096:abc$def:ghi", False),
    ],
)
def test_is_md5_hash(text: str, expected: bool) -> None:
    assert is_md5_hash(text) is expected


def test_md5_response_matches_libpq_formula() -> None:
    inner = PENCIL_USER_HASH[3:].encode("ascii")
    expected = "md5" + hashlib.md5(inner + SALT).hexdigest()
    assert md5_response("pencil", "user", SALT) == expected
    # A stored hash is usable directly, so the proxy never needs the plaintext.
    assert md5_response(PENCIL_USER_HASH, "user", SALT) == expected


def test_md5_response_depends_on_salt_and_user() -> None:
    base = md5_response("pencil", "user", SALT)
    assert md5_response("pencil", "user", b"\x00\x00\x00\x00") != base
    assert md5_response("pencil", "other", SALT) != base


def test_md5_response_rejects_bad_salt_length() -> None:
    with pytest.raises(ValueError):
        md5_response("pencil", "user", b"abc")


def test_verify_md5_response() -> None:
    response = md5_response("pencil", "user", SALT)
    assert verify_md5_response(response, "pencil", "user", SALT)
    assert verify_md5_response(response, PENCIL_USER_HASH, "user", SALT)
    assert not verify_md5_response(response, "pencil2", "user", SALT)
    assert not verify_md5_response(response, "pencil", "user", b"\x00\x00\x00\x00")
    assert not verify_md5_response(response.upper(), "pencil", "user", SALT)
    assert not verify_md5_response("", "pencil", "user", SALT)


def test_verify_md5_response_tolerates_arbitrary_client_input() -> None:
    # Client-supplied text may be non-ASCII or contain lone surrogates; must just be False.
    for junk in ("md5ü" + "0" * 31, "\udcff" * 35, "\x00" * 35, "md5" + "0" * 1000):
        assert not verify_md5_response(junk, "pencil", "user", SALT)
