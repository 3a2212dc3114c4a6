"""The client side of SCRAM-SHA-256: the proxy logging into PostgreSQL (sans-IO).

Bounded against a hostile server: nonce, salt, message size and iteration count are capped
before any PBKDF2 runs. References: RFC 5802 and RFC 7677, as libpq's fe-auth-scram.c applies
them.
"""

from __future__ import annotations

import hmac
import re

from .scram import (
    DEFAULT_MAX_SERVER_ITERATIONS,
    KEY_LEN,
    MAX_ITERATIONS,
    MAX_SALT_LEN,
    MAX_SERVER_NONCE_PART,
    ExchangeState,
    ScramError,
    ScramProtocolError,
    b64,
    b64decode,
    decode_message,
    encodable,
    expect_attr,
    hmac_sha256,
    is_printable_nonce,
    new_nonce,
    salted_password,
    salted_password_off_loop,
    sha256_digest,
    split_attrs,
    xor_bytes,
)

__all__ = ["ScramClient"]


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
        if client_key is not None and len(client_key) != KEY_LEN:
            raise ValueError("client_key must be 32 bytes")
        if server_key is not None and (password is not None or len(server_key) != KEY_LEN):
            raise ValueError("server_key must be 32 bytes and is only used with client_key")
        if nonce is not None and not is_printable_nonce(nonce):
            raise ValueError("nonce must be non-empty printable ASCII without commas")
        if not (username.isprintable() and encodable(username)):
            raise ValueError("username must be printable UTF-8")
        self._password = password
        self._client_key = client_key
        self._server_key = server_key
        self._nonce = nonce if nonce is not None else new_nonce()
        self._state = ExchangeState.INITIAL
        # PostgreSQL ignores this name (the startup packet decides), so libpq sends it empty;
        # it is settable only so the RFC test vectors, which use "user", can be reproduced.
        saslname = username.replace("=", "=3D").replace(",", "=2C")
        self._client_first_bare = f"n={saslname},r={self._nonce}"
        self._expected_server_signature: bytes | None = None
        self._max_iterations = max_iterations
        self.server_verified = False

    def _fail(self, message: str) -> ScramError:
        self._state = ExchangeState.FAILED
        return ScramError(message)

    def client_first(self) -> bytes:
        """Return the client-first-message (the SASLInitialResponse payload)."""
        if self._state is not ExchangeState.INITIAL:
            raise self._fail("SCRAM client-first-message already sent")
        self._state = ExchangeState.CONTINUE
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
                salted = salted_password(self._password, parsed[1], parsed[2])
            except ScramError:
                self._state = ExchangeState.FAILED
                raise
        return self._end_server_first(parsed, salted)

    async def handle_server_first_async(self, data: bytes) -> bytes:
        """handle_server_first with PBKDF2 (if any) run off the event loop."""
        parsed = self._begin_server_first(data)
        salted = None
        if self._password is not None:
            try:
                salted = await salted_password_off_loop(self._password, parsed[1], parsed[2])
            except ScramError:
                self._state = ExchangeState.FAILED
                raise
        return self._end_server_first(parsed, salted)

    def _begin_server_first(self, data: bytes) -> tuple[str, bytes, int, str]:
        if self._state is not ExchangeState.CONTINUE or self._expected_server_signature is not None:
            raise self._fail("unexpected SCRAM server-first-message")
        try:
            return self._parse_server_first(data)
        except ScramError:
            self._state = ExchangeState.FAILED
            raise

    def _parse_server_first(self, data: bytes) -> tuple[str, bytes, int, str]:
        """(text, salt, iterations, combined nonce) of a server-first-message, all checked."""
        text = decode_message(data, "server-first-message")
        pairs = split_attrs(text, "server-first-message")
        if pairs[0][0] == "m":
            raise ScramError("server requires an unsupported SCRAM extension")
        nonce = expect_attr(pairs, 0, "r", "server-first-message")
        salt_b64 = expect_attr(pairs, 1, "s", "server-first-message")
        iter_text = expect_attr(pairs, 2, "i", "server-first-message")

        if (
            not is_printable_nonce(nonce)
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
        salt = b64decode(salt_b64, "salt")
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
            client_key = hmac_sha256(salted, b"Client Key")
            server_key = hmac_sha256(salted, b"Server Key")

        without_proof = f"c=biws,r={nonce}"
        auth_bytes = ",".join((self._client_first_bare, text, without_proof)).encode("utf-8")
        proof = xor_bytes(client_key, hmac_sha256(sha256_digest(client_key), auth_bytes))
        # An empty marker means "signature cannot be checked", distinct from "not yet received".
        self._expected_server_signature = (
            hmac_sha256(server_key, auth_bytes) if server_key is not None else b""
        )
        return f"{without_proof},p={b64(proof)}".encode("ascii")

    def handle_server_final(self, data: bytes) -> None:
        """Check the server-final-message; raise ScramError on ``e=`` or a bad signature."""
        if self._state is not ExchangeState.CONTINUE or self._expected_server_signature is None:
            raise self._fail("unexpected SCRAM server-final-message")
        try:
            self._server_final(data, self._expected_server_signature)
        except ScramError:
            self._state = ExchangeState.FAILED
            raise
        self._state = ExchangeState.DONE

    def _server_final(self, data: bytes, expected: bytes) -> None:
        text = decode_message(data, "server-final-message")
        pairs = split_attrs(text, "server-final-message")
        if pairs[0][0] == "e":
            # server-error-value is a fixed token set; clip anything else to keep logs sane.
            reason = pairs[0][1]
            if not re.fullmatch(r"[a-z0-9-]{1,64}", reason):
                reason = "unknown"
            raise ScramError(f"SCRAM authentication rejected by server: {reason}")
        signature = b64decode(
            expect_attr(pairs, 0, "v", "server-final-message"), "server signature"
        )
        if expected and not hmac.compare_digest(signature, expected):
            raise ScramError("SCRAM server signature mismatch")
        self.server_verified = bool(expected)
