"""SCRAM-SHA-256 as PostgreSQL speaks it: SASLprep, stored verifiers, and the primitives and
message parsing both sides of the exchange share (auth.scram_server, auth.scram_client).

Sans-IO: the exchanges only turn message payloads (the bytes inside SASLInitialResponse,
SASLResponse, AuthenticationSASLContinue and AuthenticationSASLFinal) into other payloads.
Framing, sockets and mechanism negotiation belong to the caller.

References: RFC 5802 (SCRAM), RFC 7677 (SHA-256 variant), RFC 4013 (SASLprep) and the
behaviour of PostgreSQL's auth-scram.c / fe-auth-scram.c where they deviate from the RFCs.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import concurrent.futures
import enum
import hashlib
import hmac
import os
import re
import secrets
import stringprep
import threading
import unicodedata
from dataclasses import dataclass, field

from . import entropy

__all__ = [
    "DEFAULT_ITERATIONS",
    "DEFAULT_MAX_SERVER_ITERATIONS",
    "KEY_LEN",
    "MAX_ITERATIONS",
    "MAX_MESSAGE_SIZE",
    "MAX_SALT_LEN",
    "MAX_SERVER_NONCE_PART",
    "MECHANISM",
    "ExchangeState",
    "ScramError",
    "ScramProtocolError",
    "ScramVerifier",
    "b64",
    "b64decode",
    "decode_message",
    "derive_verifier",
    "encodable",
    "expect_attr",
    "hmac_sha256",
    "is_printable_nonce",
    "new_nonce",
    "pg_normalize_password",
    "salted_password",
    "salted_password_off_loop",
    "saslprep",
    "sha256_digest",
    "split_attrs",
    "xor_bytes",
]

MECHANISM = "SCRAM-SHA-256"
DEFAULT_ITERATIONS = 4096
# The most any caller may allow; an attacker-controlled server could otherwise make the proxy
# burn minutes of CPU in PBKDF2.
MAX_ITERATIONS = 10_000_000
# What ScramClient accepts from a server unless told otherwise (pool.server_max_scram_iterations):
# 24x PostgreSQL's default of 4096, ~60 ms of one core, run off the event loop.
DEFAULT_MAX_SERVER_ITERATIONS = 100_000
# PostgreSQL's server nonce adds 24 characters to the client's; allow generous room, no more, so
# a server cannot make the proxy hash and echo kilobytes per login.
MAX_SERVER_NONCE_PART = 256
# PostgreSQL's salts are 16 bytes.
MAX_SALT_LEN = 256
# Real SCRAM messages are ~100-200 bytes; anything near this is hostile or broken.
MAX_MESSAGE_SIZE = 4096

KEY_LEN = 32  # SHA-256 digest size; StoredKey, ServerKey, ClientKey and proofs all have it.
_RAW_NONCE_LEN = 18  # Same as PostgreSQL's SCRAM_RAW_NONCE_LEN.
_SALT_LEN = 16  # Same as PostgreSQL's SCRAM_DEFAULT_SALT_LEN.

_ATTR_RE = re.compile(r"[A-Za-z]=[^\x00]*", re.ASCII)
_VERIFIER_RE = re.compile(
    r"SCRAM-SHA-256\$([0-9]{1,10}):([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+):([A-Za-z0-9+/=]+)",
    re.ASCII,
)


class ScramError(Exception):
    """A failed or malformed SCRAM exchange; the message never contains secrets or raw input."""


class ScramProtocolError(ScramError):
    """The peer broke the protocol (malformed message, foreign nonce, out-of-bounds parameter),
    as opposed to presenting a wrong password or signature; PostgreSQL's class 08P01."""


# --------------------------------------------------------------------------------------------
# SASLprep (RFC 4013)
# --------------------------------------------------------------------------------------------


def _is_prohibited(ch: str) -> bool:
    return (
        stringprep.in_table_c12(ch)
        or stringprep.in_table_c21_c22(ch)
        or stringprep.in_table_c3(ch)
        or stringprep.in_table_c4(ch)
        or stringprep.in_table_c5(ch)
        or stringprep.in_table_c6(ch)
        or stringprep.in_table_c7(ch)
        or stringprep.in_table_c8(ch)
        or stringprep.in_table_c9(ch)
        # Passwords are "stored strings" in RFC 3454 terms, so unassigned code points are
        # refused too (PostgreSQL does the same).
        or stringprep.in_table_a1(ch)
    )


def saslprep(s: str) -> str:
    """Prepare ``s`` with SASLprep (RFC 4013, stored-string profile).

    Raises ScramError if the string contains prohibited or unassigned characters or violates
    the bidirectional rules.  Use pg_normalize_password for PostgreSQL's lenient behaviour.
    """
    mapped: list[str] = []
    for ch in s:
        if stringprep.in_table_b1(ch):
            continue
        mapped.append(" " if stringprep.in_table_c12(ch) else ch)
    # The profile pins Unicode 3.2; later versions could normalise differently.
    normalized = unicodedata.ucd_3_2_0.normalize("NFKC", "".join(mapped))
    if not normalized:
        return normalized

    for ch in normalized:
        if _is_prohibited(ch):
            raise ScramError("SASLprep: prohibited character in string")

    has_rand_al = any(stringprep.in_table_d1(ch) for ch in normalized)
    if has_rand_al:
        if any(stringprep.in_table_d2(ch) for ch in normalized):
            raise ScramError("SASLprep: string mixes left-to-right and right-to-left text")
        if not (stringprep.in_table_d1(normalized[0]) and stringprep.in_table_d1(normalized[-1])):
            raise ScramError("SASLprep: right-to-left string must start and end with RandALCat")
    return normalized


def pg_normalize_password(password: str) -> str:
    """Normalise a password the way PostgreSQL does before hashing it.

    PostgreSQL applies SASLprep, but a password that SASLprep rejects (or that is not valid
    UTF-8, here: contains lone surrogates) is used unchanged rather than refused, so that
    legacy and non-UTF-8 passwords still work.
    """
    if password.isascii():
        # SASLprep leaves printable ASCII alone and would reject control characters, which
        # PostgreSQL then uses raw anyway; skipping the work changes nothing.
        return password
    if not encodable(password):
        return password
    try:
        return saslprep(password)
    except ScramError:
        return password


def _password_bytes(password: str) -> bytes:
    # surrogateescape round-trips passwords that were decoded from non-UTF-8 wire bytes.
    try:
        return pg_normalize_password(password).encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raise ScramError("password contains characters that cannot be encoded") from None


# --------------------------------------------------------------------------------------------
# Primitives
# --------------------------------------------------------------------------------------------


def hmac_sha256(key: bytes, msg: bytes) -> bytes:
    return hmac.new(key, msg, hashlib.sha256).digest()


def sha256_digest(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def xor_bytes(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def b64decode(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise ScramProtocolError(f"malformed SCRAM message: invalid base64 in {what}") from None


def salted_password(password: str, salt: bytes, iterations: int) -> bytes:
    # PBKDF2-HMAC-SHA-256 with one output block is exactly SCRAM's Hi().
    return hashlib.pbkdf2_hmac("sha256", _password_bytes(password), salt, iterations)


# PBKDF2 runs here, never on an event loop: hashlib releases the GIL while it hashes, so the loop
# keeps serving other clients. A small pool of its own, so a burst of logins cannot starve the
# threads that asyncio.to_thread users (AWS calls) rely on, and vice versa.
_pbkdf2_lock = threading.Lock()
_pbkdf2_pool: concurrent.futures.ThreadPoolExecutor | None = None


def _pbkdf2_executor() -> concurrent.futures.ThreadPoolExecutor:
    global _pbkdf2_pool
    with _pbkdf2_lock:
        if _pbkdf2_pool is None:
            _pbkdf2_pool = concurrent.futures.ThreadPoolExecutor(
                max_workers=min(4, os.cpu_count() or 1), thread_name_prefix="pbkdf2"
            )
        return _pbkdf2_pool


async def salted_password_off_loop(password: str, salt: bytes, iterations: int) -> bytes:
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(
        _pbkdf2_executor(), salted_password, password, salt, iterations
    )


def is_printable_nonce(nonce: str) -> bool:
    # RFC 5802 "printable": %x21-2B / %x2D-7E, i.e. visible ASCII except ",".
    return bool(nonce) and all(0x21 <= ord(c) <= 0x7E and c != "," for c in nonce)


def encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def new_nonce() -> str:
    return b64(entropy.token_bytes(_RAW_NONCE_LEN))


def decode_message(data: bytes, what: str) -> str:
    if len(data) > MAX_MESSAGE_SIZE:
        raise ScramProtocolError(f"malformed SCRAM message: {what} is too long")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ScramProtocolError(f"malformed SCRAM message: {what} is not valid UTF-8") from None
    if "\x00" in text:
        raise ScramProtocolError(f"malformed SCRAM message: {what} contains a NUL byte")
    return text


def split_attrs(text: str, what: str) -> list[tuple[str, str]]:
    """Split ``a=v,b=w`` into pairs; values never contain commas in SCRAM."""
    pairs: list[tuple[str, str]] = []
    for part in text.split(","):
        if not _ATTR_RE.fullmatch(part):
            raise ScramProtocolError(f"malformed SCRAM message: bad attribute in {what}")
        pairs.append((part[0], part[2:]))
    return pairs


def expect_attr(pairs: list[tuple[str, str]], index: int, name: str, what: str) -> str:
    if index >= len(pairs) or pairs[index][0] != name:
        raise ScramProtocolError(f"malformed SCRAM message: expected attribute {name!r} in {what}")
    return pairs[index][1]


# --------------------------------------------------------------------------------------------
# Stored verifier
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScramVerifier:
    """What PostgreSQL keeps in pg_authid.rolpassword for a SCRAM-SHA-256 role."""

    iterations: int
    salt: bytes
    # Together these let anyone impersonate the server, so keep them out of logs.
    stored_key: bytes = field(repr=False)
    server_key: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if self.iterations < 1:
            raise ValueError("iterations must be at least 1")
        if not self.salt:
            raise ValueError("salt must not be empty")
        if len(self.stored_key) != KEY_LEN or len(self.server_key) != KEY_LEN:
            raise ValueError("stored_key and server_key must be 32 bytes")

    @classmethod
    def from_password(
        cls,
        password: str,
        *,
        salt: bytes | None = None,
        iterations: int = DEFAULT_ITERATIONS,
    ) -> ScramVerifier:
        """Derive a verifier as PostgreSQL would (random 16-byte salt unless one is given)."""
        if iterations < 1:
            raise ValueError("iterations must be at least 1")
        if salt is None:
            salt = secrets.token_bytes(_SALT_LEN)
        salted = salted_password(password, salt, iterations)
        client_key = hmac_sha256(salted, b"Client Key")
        return cls(
            iterations=iterations,
            salt=salt,
            stored_key=sha256_digest(client_key),
            server_key=hmac_sha256(salted, b"Server Key"),
        )

    @classmethod
    def mock(cls, secret: bytes, user: str, iterations: int = DEFAULT_ITERATIONS) -> ScramVerifier:
        """A verifier for a user that does not exist, stable per name for this ``secret``.

        PostgreSQL's scram_mock_salt: the salt is a keyed hash of the name, so probing the same
        unknown name twice gives the same salt, different names give different salts, and none of
        it can be told from a real user's verifier. No password opens it (the keys are random to
        anyone without ``secret``).
        """
        name = user.encode("utf-8", "surrogatepass")
        return cls(
            iterations=iterations,
            salt=hmac_sha256(secret, b"salt\0" + name)[:_SALT_LEN],
            stored_key=hmac_sha256(secret, b"stored\0" + name),
            server_key=hmac_sha256(secret, b"server\0" + name),
        )

    @classmethod
    def parse(cls, text: str) -> ScramVerifier | None:
        """Parse PostgreSQL's stored format; None if ``text`` is not a SCRAM-SHA-256 verifier."""
        m = _VERIFIER_RE.fullmatch(text)
        if m is None:
            return None
        try:
            iterations = int(m.group(1))
            salt = base64.b64decode(m.group(2), validate=True)
            stored_key = base64.b64decode(m.group(3), validate=True)
            server_key = base64.b64decode(m.group(4), validate=True)
            return cls(
                iterations=iterations, salt=salt, stored_key=stored_key, server_key=server_key
            )
        except (binascii.Error, ValueError):
            return None

    def to_text(self) -> str:
        return (
            f"{MECHANISM}${self.iterations}:{b64(self.salt)}"
            f"${b64(self.stored_key)}:{b64(self.server_key)}"
        )


async def derive_verifier(password: str, *, iterations: int = DEFAULT_ITERATIONS) -> ScramVerifier:
    """ScramVerifier.from_password with the PBKDF2 run off the event loop."""
    if iterations < 1:
        raise ValueError("iterations must be at least 1")
    salt = secrets.token_bytes(_SALT_LEN)
    salted = await salted_password_off_loop(password, salt, iterations)
    return ScramVerifier(
        iterations=iterations,
        salt=salt,
        stored_key=sha256_digest(hmac_sha256(salted, b"Client Key")),
        server_key=hmac_sha256(salted, b"Server Key"),
    )


class ExchangeState(enum.Enum):
    """Where one exchange is, on either side; FAILED is final."""

    INITIAL = "initial"
    CONTINUE = "continue"
    DONE = "done"
    FAILED = "failed"
