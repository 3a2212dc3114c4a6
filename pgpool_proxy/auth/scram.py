"""SCRAM-SHA-256 as PostgreSQL speaks it: SASLprep, stored verifiers, both sides of the exchange.

Sans-IO: the classes here only turn message payloads (the bytes inside SASLInitialResponse,
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

__all__ = [
    "DEFAULT_ITERATIONS",
    "DEFAULT_MAX_SERVER_ITERATIONS",
    "MAX_ITERATIONS",
    "MAX_MESSAGE_SIZE",
    "MECHANISM",
    "ScramClient",
    "ScramError",
    "ScramProtocolError",
    "ScramServer",
    "ScramVerifier",
    "derive_verifier",
    "pg_normalize_password",
    "saslprep",
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

_KEY_LEN = 32  # SHA-256 digest size; StoredKey, ServerKey, ClientKey and proofs all have it.
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
    if not _encodable(password):
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


def _hmac(key: bytes, msg: bytes) -> bytes:
    return hmac.new(key, msg, hashlib.sha256).digest()


def _h(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _b64decode(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise ScramProtocolError(f"malformed SCRAM message: invalid base64 in {what}") from None


def _salted_password(password: str, salt: bytes, iterations: int) -> bytes:
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


async def _salted_password_off_loop(password: str, salt: bytes, iterations: int) -> bytes:
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(
        _pbkdf2_executor(), _salted_password, password, salt, iterations
    )


def _is_printable_nonce(nonce: str) -> bool:
    # RFC 5802 "printable": %x21-2B / %x2D-7E, i.e. visible ASCII except ",".
    return bool(nonce) and all(0x21 <= ord(c) <= 0x7E and c != "," for c in nonce)


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _new_nonce() -> str:
    return _b64(secrets.token_bytes(_RAW_NONCE_LEN))


def _decode_message(data: bytes, what: str) -> str:
    if len(data) > MAX_MESSAGE_SIZE:
        raise ScramProtocolError(f"malformed SCRAM message: {what} is too long")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ScramProtocolError(f"malformed SCRAM message: {what} is not valid UTF-8") from None
    if "\x00" in text:
        raise ScramProtocolError(f"malformed SCRAM message: {what} contains a NUL byte")
    return text


def _split_attrs(text: str, what: str) -> list[tuple[str, str]]:
    """Split ``a=v,b=w`` into pairs; values never contain commas in SCRAM."""
    pairs: list[tuple[str, str]] = []
    for part in text.split(","):
        if not _ATTR_RE.fullmatch(part):
            raise ScramProtocolError(f"malformed SCRAM message: bad attribute in {what}")
        pairs.append((part[0], part[2:]))
    return pairs


def _expect(pairs: list[tuple[str, str]], index: int, name: str, what: str) -> str:
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
        if len(self.stored_key) != _KEY_LEN or len(self.server_key) != _KEY_LEN:
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
        salted = _salted_password(password, salt, iterations)
        client_key = _hmac(salted, b"Client Key")
        return cls(
            iterations=iterations,
            salt=salt,
            stored_key=_h(client_key),
            server_key=_hmac(salted, b"Server Key"),
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
            salt=_hmac(secret, b"salt\0" + name)[:_SALT_LEN],
            stored_key=_hmac(secret, b"stored\0" + name),
            server_key=_hmac(secret, b"server\0" + name),
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
            f"{MECHANISM}${self.iterations}:{_b64(self.salt)}"
            f"${_b64(self.stored_key)}:{_b64(self.server_key)}"
        )


async def derive_verifier(password: str, *, iterations: int = DEFAULT_ITERATIONS) -> ScramVerifier:
    """ScramVerifier.from_password with the PBKDF2 run off the event loop."""
    if iterations < 1:
        raise ValueError("iterations must be at least 1")
    salt = secrets.token_bytes(_SALT_LEN)
    salted = await _salted_password_off_loop(password, salt, iterations)
    return ScramVerifier(
        iterations=iterations,
        salt=salt,
        stored_key=_h(_hmac(salted, b"Client Key")),
        server_key=_hmac(salted, b"Server Key"),
    )


# --------------------------------------------------------------------------------------------
# Server side
# --------------------------------------------------------------------------------------------


class _State(enum.Enum):
    INITIAL = "initial"
    CONTINUE = "continue"
    DONE = "done"
    FAILED = "failed"


class ScramServer:
    """The server side of one SCRAM-SHA-256 exchange (the proxy authenticating a client).

    Channel binding is never offered (no SCRAM-SHA-256-PLUS), so ``p=`` is refused and
    ``y`` is accepted, as PostgreSQL does on a non-TLS connection.  Any ScramError leaves the
    object failed; a new exchange needs a new instance.
    """

    def __init__(self, verifier: ScramVerifier, *, nonce: str | None = None) -> None:
        if nonce is not None and not _is_printable_nonce(nonce):
            raise ValueError("nonce must be non-empty printable ASCII without commas")
        self._verifier = verifier
        self._server_nonce = nonce if nonce is not None else _new_nonce()
        self._state = _State.INITIAL
        self._gs2_header = ""
        self._client_first_bare = ""
        self._server_first = ""
        self._combined_nonce = ""
        self._client_key: bytes | None = None

    @property
    def is_complete(self) -> bool:
        """True once the client's proof has been verified."""
        return self._state is _State.DONE

    @property
    def client_key(self) -> bytes:
        """The client's ClientKey, recovered from its proof; only after a successful exchange.

        Knowing it lets the proxy authenticate to a backend holding the same verifier.
        """
        if self._client_key is None:
            raise ScramError("SCRAM exchange has not completed")
        return self._client_key

    def _fail(self, message: str) -> ScramError:
        self._state = _State.FAILED
        return ScramError(message)

    def handle_client_first(self, data: bytes) -> bytes:
        """Take the client-first-message and return the server-first-message."""
        if self._state is not _State.INITIAL:
            raise self._fail("unexpected SCRAM client-first-message")
        try:
            return self._client_first(data)
        except ScramError:
            self._state = _State.FAILED
            raise

    def _client_first(self, data: bytes) -> bytes:
        text = _decode_message(data, "client-first-message")
        parts = text.split(",", 2)
        if len(parts) != 3:
            raise ScramProtocolError("malformed SCRAM message: missing GS2 header")
        cbind_flag, authzid, bare = parts
        if cbind_flag.startswith("p="):
            raise ScramError("client requires SCRAM channel binding, which is not supported")
        if cbind_flag not in ("n", "y"):
            raise ScramProtocolError("malformed SCRAM message: bad channel-binding flag")
        if authzid:
            raise ScramError("SCRAM authorization identity is not supported")

        pairs = _split_attrs(bare, "client-first-message")
        if pairs[0][0] == "m":
            raise ScramError("client requires an unsupported SCRAM extension")
        # The user name is deliberately ignored: the startup packet already named the role and
        # libpq sends it empty.  Only its presence is required.
        _expect(pairs, 0, "n", "client-first-message")
        client_nonce = _expect(pairs, 1, "r", "client-first-message")
        if not _is_printable_nonce(client_nonce):
            raise ScramProtocolError("malformed SCRAM message: bad client nonce")

        self._gs2_header = f"{cbind_flag},,"
        self._client_first_bare = bare
        self._combined_nonce = client_nonce + self._server_nonce
        self._server_first = (
            f"r={self._combined_nonce},s={_b64(self._verifier.salt)},i={self._verifier.iterations}"
        )
        self._state = _State.CONTINUE
        return self._server_first.encode("ascii")

    def handle_client_final(self, data: bytes) -> bytes:
        """Verify the client-final-message and return the server-final-message (``v=...``)."""
        if self._state is not _State.CONTINUE:
            raise self._fail("unexpected SCRAM client-final-message")
        try:
            return self._client_final(data)
        except ScramError:
            self._state = _State.FAILED
            raise

    def _client_final(self, data: bytes) -> bytes:
        text = _decode_message(data, "client-final-message")
        pairs = _split_attrs(text, "client-final-message")
        cbind = _expect(pairs, 0, "c", "client-final-message")
        nonce = _expect(pairs, 1, "r", "client-final-message")
        # Extensions may sit between r= and p=, but the proof must come last and only once.
        proof_b64 = _expect(pairs, len(pairs) - 1, "p", "client-final-message")
        if len(pairs) < 3 or any(name == "p" for name, _ in pairs[2:-1]):
            raise ScramProtocolError(
                "malformed SCRAM message: misplaced proof in client-final-message"
            )

        if _b64decode(cbind, "channel binding") != self._gs2_header.encode("ascii"):
            raise ScramError("SCRAM channel binding check failed")
        if not hmac.compare_digest(nonce.encode("utf-8"), self._combined_nonce.encode("ascii")):
            raise ScramError("SCRAM nonce mismatch")
        proof = _b64decode(proof_b64, "proof")
        if len(proof) != _KEY_LEN:
            raise ScramProtocolError("malformed SCRAM message: proof has the wrong length")

        without_proof = text[: text.rindex(",p=")]
        auth_message = ",".join((self._client_first_bare, self._server_first, without_proof))
        auth_bytes = auth_message.encode("utf-8")
        client_signature = _hmac(self._verifier.stored_key, auth_bytes)
        client_key = _xor(proof, client_signature)
        if not hmac.compare_digest(_h(client_key), self._verifier.stored_key):
            raise ScramError("password authentication failed")

        self._client_key = client_key
        self._state = _State.DONE
        server_signature = _hmac(self._verifier.server_key, auth_bytes)
        return f"v={_b64(server_signature)}".encode("ascii")


# --------------------------------------------------------------------------------------------
# Client side
# --------------------------------------------------------------------------------------------


class ScramClient:
    """The client side of one SCRAM-SHA-256 exchange (the proxy logging into PostgreSQL).

    Built either from a password, or from a ClientKey recovered by ScramServer (pass-through).
    In the latter case the server's signature can be checked only if ``server_key`` is known;
    without it the server is not authenticated (``server_verified`` stays False).
    ``username`` goes into ``n=``; leave it empty as libpq does.
    """

    def __init__(
        self,
        password: str | None = None,
        *,
        client_key: bytes | None = None,
        server_key: bytes | None = None,
        nonce: str | None = None,
        username: str = "",
        max_iterations: int = DEFAULT_MAX_SERVER_ITERATIONS,
    ) -> None:
        if not 1 <= max_iterations <= MAX_ITERATIONS:
            raise ValueError(f"max_iterations must be between 1 and {MAX_ITERATIONS}")
        if (password is None) == (client_key is None):
            raise ValueError("exactly one of password and client_key must be given")
        if client_key is not None and len(client_key) != _KEY_LEN:
            raise ValueError("client_key must be 32 bytes")
        if server_key is not None and (password is not None or len(server_key) != _KEY_LEN):
            raise ValueError("server_key must be 32 bytes and is only used with client_key")
        if nonce is not None and not _is_printable_nonce(nonce):
            raise ValueError("nonce must be non-empty printable ASCII without commas")
        if not (username.isprintable() and _encodable(username)):
            raise ValueError("username must be printable UTF-8")
        self._password = password
        self._client_key = client_key
        self._server_key = server_key
        self._nonce = nonce if nonce is not None else _new_nonce()
        self._state = _State.INITIAL
        # PostgreSQL ignores this name (the startup packet decides), so libpq sends it empty;
        # it is settable only so the RFC test vectors, which use "user", can be reproduced.
        saslname = username.replace("=", "=3D").replace(",", "=2C")
        self._client_first_bare = f"n={saslname},r={self._nonce}"
        self._expected_server_signature: bytes | None = None
        self._max_iterations = max_iterations
        self.server_verified = False

    def _fail(self, message: str) -> ScramError:
        self._state = _State.FAILED
        return ScramError(message)

    def client_first(self) -> bytes:
        """Return the client-first-message (the SASLInitialResponse payload)."""
        if self._state is not _State.INITIAL:
            raise self._fail("SCRAM client-first-message already sent")
        self._state = _State.CONTINUE
        return f"n,,{self._client_first_bare}".encode()

    def handle_server_first(self, data: bytes) -> bytes:
        """Take the server-first-message and return the client-final-message.

        Runs PBKDF2 in the calling thread when built from a password; on an event loop use
        handle_server_first_async.
        """
        parsed = self._begin_server_first(data)
        salted = None
        if self._password is not None:
            try:
                salted = _salted_password(self._password, parsed[1], parsed[2])
            except ScramError:
                self._state = _State.FAILED
                raise
        return self._end_server_first(parsed, salted)

    async def handle_server_first_async(self, data: bytes) -> bytes:
        """handle_server_first with PBKDF2 (if any) run off the event loop."""
        parsed = self._begin_server_first(data)
        salted = None
        if self._password is not None:
            try:
                salted = await _salted_password_off_loop(self._password, parsed[1], parsed[2])
            except ScramError:
                self._state = _State.FAILED
                raise
        return self._end_server_first(parsed, salted)

    def _begin_server_first(self, data: bytes) -> tuple[str, bytes, int, str]:
        if self._state is not _State.CONTINUE or self._expected_server_signature is not None:
            raise self._fail("unexpected SCRAM server-first-message")
        try:
            return self._parse_server_first(data)
        except ScramError:
            self._state = _State.FAILED
            raise

    def _parse_server_first(self, data: bytes) -> tuple[str, bytes, int, str]:
        """(text, salt, iterations, combined nonce) of a server-first-message, all checked."""
        text = _decode_message(data, "server-first-message")
        pairs = _split_attrs(text, "server-first-message")
        if pairs[0][0] == "m":
            raise ScramError("server requires an unsupported SCRAM extension")
        nonce = _expect(pairs, 0, "r", "server-first-message")
        salt_b64 = _expect(pairs, 1, "s", "server-first-message")
        iter_text = _expect(pairs, 2, "i", "server-first-message")

        if (
            not _is_printable_nonce(nonce)
            or len(nonce) <= len(self._nonce)
            or not nonce.startswith(self._nonce)
        ):
            raise ScramProtocolError(
                "SCRAM nonce mismatch: the server's nonce does not extend the client's"
            )
        if len(nonce) > len(self._nonce) + MAX_SERVER_NONCE_PART:
            raise ScramProtocolError(
                f"SCRAM server nonce is too long ({len(nonce) - len(self._nonce)} characters, "
                f"at most {MAX_SERVER_NONCE_PART} allowed)"
            )
        salt = _b64decode(salt_b64, "salt")
        if not salt:
            raise ScramProtocolError("malformed SCRAM message: empty salt")
        if len(salt) > MAX_SALT_LEN:
            raise ScramProtocolError(
                f"SCRAM salt is too long ({len(salt)} bytes, at most {MAX_SALT_LEN} allowed)"
            )
        if not (iter_text.isascii() and iter_text.isdigit() and len(iter_text) <= 10):
            raise ScramProtocolError("malformed SCRAM message: bad iteration count")
        iterations = int(iter_text)
        if iterations < 1:
            raise ScramProtocolError("SCRAM iteration count out of range")
        if iterations > self._max_iterations:
            raise ScramProtocolError(
                f"SCRAM iteration count {iterations} from the server exceeds the proxy's limit "
                f"of {self._max_iterations} (pool.server_max_scram_iterations)"
            )
        return text, salt, iterations, nonce

    def _end_server_first(self, parsed: tuple[str, bytes, int, str], salted: bytes | None) -> bytes:
        text, _salt, _iterations, nonce = parsed
        server_key: bytes | None
        if salted is None:
            assert self._client_key is not None
            client_key = self._client_key
            server_key = self._server_key
        else:
            client_key = _hmac(salted, b"Client Key")
            server_key = _hmac(salted, b"Server Key")

        without_proof = f"c=biws,r={nonce}"
        auth_bytes = ",".join((self._client_first_bare, text, without_proof)).encode("utf-8")
        proof = _xor(client_key, _hmac(_h(client_key), auth_bytes))
        # An empty marker means "signature cannot be checked", distinct from "not yet received".
        self._expected_server_signature = (
            _hmac(server_key, auth_bytes) if server_key is not None else b""
        )
        return f"{without_proof},p={_b64(proof)}".encode("ascii")

    def handle_server_final(self, data: bytes) -> None:
        """Check the server-final-message; raise ScramError on ``e=`` or a bad signature."""
        if self._state is not _State.CONTINUE or self._expected_server_signature is None:
            raise self._fail("unexpected SCRAM server-final-message")
        try:
            self._server_final(data, self._expected_server_signature)
        except ScramError:
            self._state = _State.FAILED
            raise
        self._state = _State.DONE

    def _server_final(self, data: bytes, expected: bytes) -> None:
        text = _decode_message(data, "server-final-message")
        pairs = _split_attrs(text, "server-final-message")
        if pairs[0][0] == "e":
            # server-error-value is a fixed token set; clip anything else to keep logs sane.
            reason = pairs[0][1]
            if not re.fullmatch(r"[a-z0-9-]{1,64}", reason):
                reason = "unknown"
            raise ScramError(f"SCRAM authentication rejected by server: {reason}")
        signature = _b64decode(_expect(pairs, 0, "v", "server-final-message"), "server signature")
        if expected and not hmac.compare_digest(signature, expected):
            raise ScramError("SCRAM server signature mismatch")
        self.server_verified = bool(expected)
