"""PostgreSQL md5 password authentication: stored hashes and salted challenge responses.

Sans-IO helpers only.  The stored form is ``"md5" + md5(password || user)``; on the wire the
client answers AuthenticationMD5Password(salt) with ``"md5" + md5(hex_inner || salt)``, where
hex_inner is the stored hash without its prefix.  Knowing the stored hash is therefore enough
to answer a challenge, which is what lets the proxy log into a backend from a userlist hash.
"""

from __future__ import annotations

import hashlib
import hmac
import re

__all__ = ["is_md5_hash", "md5_hash", "md5_response", "verify_md5_response"]

_MD5_HASH_RE = re.compile(r"md5[0-9a-f]{32}", re.ASCII)
_SALT_LEN = 4

# (secret, user) -> the stored hash's hex digits as bytes: each login under churn otherwise
# hashes the same password and matches the same pattern again. Only names with a stored secret
# (configured, or found by auth_query) reach it, and it is bounded all the same.
_inner_cache: dict[tuple[str, str], bytes] = {}
_INNER_CACHE_MAX = 4096


def _to_bytes(text: str) -> bytes:
    # PostgreSQL hashes the raw bytes; surrogateescape restores non-UTF-8 wire input verbatim.
    # Other lone surrogates cannot come from the wire; surrogatepass just keeps this total.
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass")


def md5_hash(password: str, user: str) -> str:
    """Return the stored form PostgreSQL keeps for ``password`` under role ``user``."""
    return "md5" + hashlib.md5(_to_bytes(password) + _to_bytes(user)).hexdigest()


def is_md5_hash(text: str) -> bool:
    """True if ``text`` is a stored md5 hash (``"md5"`` followed by 32 lowercase hex digits)."""
    return _MD5_HASH_RE.fullmatch(text) is not None


def md5_response(secret: str, user: str, salt: bytes) -> str:
    """Compute the PasswordMessage payload libpq sends for an md5 challenge.

    ``secret`` is either the plaintext password or its stored md5 hash; like PostgreSQL, a
    plaintext password that happens to look like an md5 hash is treated as the hash.
    """
    if len(salt) != _SALT_LEN:
        raise ValueError("md5 salt must be 4 bytes")
    key = (secret, user)
    inner = _inner_cache.get(key)
    if inner is None:
        stored = secret if is_md5_hash(secret) else md5_hash(secret, user)
        inner = stored[3:].encode("ascii")
        if len(_inner_cache) >= _INNER_CACHE_MAX:
            _inner_cache.clear()
        _inner_cache[key] = inner
    return "md5" + hashlib.md5(inner + salt).hexdigest()


def verify_md5_response(response: str, secret: str, user: str, salt: bytes) -> bool:
    """Check a client's md5 response against ``secret`` (plaintext or stored hash).

    Constant-time in the response contents, so timing does not reveal how much of it matched.
    """
    expected = md5_response(secret, user, salt)
    # compare_digest refuses non-ASCII str, so compare bytes; surrogatepass never raises here.
    return hmac.compare_digest(response.encode("utf-8", "surrogatepass"), expected.encode("ascii"))
