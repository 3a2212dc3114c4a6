"""The server side of SCRAM-SHA-256: the proxy authenticating a client (sans-IO).

References: RFC 5802 and RFC 7677, as PostgreSQL's auth-scram.c applies them.
"""

from __future__ import annotations

import hmac

from .scram import (
    KEY_LEN,
    ExchangeState,
    ScramError,
    ScramProtocolError,
    ScramVerifier,
    b64,
    b64decode,
    decode_message,
    expect_attr,
    hmac_sha256,
    is_printable_nonce,
    new_nonce,
    sha256_digest,
    split_attrs,
    xor_bytes,
)

__all__ = ["ScramServer"]


class ScramServer:
    """The server side of one SCRAM-SHA-256 exchange (the proxy authenticating a client).

    Channel binding is never offered (no SCRAM-SHA-256-PLUS), so ``p=`` is refused and
    ``y`` is accepted, as PostgreSQL does on a non-TLS connection.  Any ScramError leaves the
    object failed; a new exchange needs a new instance.
    """

    def __init__(self, verifier: ScramVerifier, *, nonce: str | None = None) -> None:
        if nonce is not None and not is_printable_nonce(nonce):
            raise ValueError("nonce must be non-empty printable ASCII without commas")
        self._verifier = verifier
        self._server_nonce = nonce if nonce is not None else new_nonce()
        self._state = ExchangeState.INITIAL
        self._gs2_header = ""
        self._client_first_bare = ""
        self._server_first = ""
        self._combined_nonce = ""
        self._client_key: bytes | None = None

    @property
    def is_complete(self) -> bool:
        """True once the client's proof has been verified."""
        return self._state is ExchangeState.DONE

    @property
    def client_key(self) -> bytes:
        """The client's ClientKey, recovered from its proof; only after a successful exchange.

        Knowing it lets the proxy authenticate to a backend holding the same verifier.
        """
        if self._client_key is None:
            raise ScramError("SCRAM exchange has not completed")
        return self._client_key

    def _fail(self, message: str) -> ScramError:
        self._state = ExchangeState.FAILED
        return ScramError(message)

    def handle_client_first(self, data: bytes) -> bytes:
        """Take the client-first-message and return the server-first-message."""
        if self._state is not ExchangeState.INITIAL:
            raise self._fail("unexpected SCRAM client-first-message")
        try:
            return self._client_first(data)
        except ScramError:
            self._state = ExchangeState.FAILED
            raise

    def _client_first(self, data: bytes) -> bytes:
        text = decode_message(data, "client-first-message")
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

        pairs = split_attrs(bare, "client-first-message")
        if pairs[0][0] == "m":
            raise ScramError("client requires an unsupported SCRAM extension")
        # The user name is deliberately ignored: the startup packet already named the role and
        # libpq sends it empty.  Only its presence is required.
        expect_attr(pairs, 0, "n", "client-first-message")
        client_nonce = expect_attr(pairs, 1, "r", "client-first-message")
        if not is_printable_nonce(client_nonce):
            raise ScramProtocolError("malformed SCRAM message: bad client nonce")

        self._gs2_header = f"{cbind_flag},,"
        self._client_first_bare = bare
        self._combined_nonce = client_nonce + self._server_nonce
        self._server_first = (
            f"r={self._combined_nonce},s={b64(self._verifier.salt)},i={self._verifier.iterations}"
        )
        self._state = ExchangeState.CONTINUE
        return self._server_first.encode("ascii")

    def handle_client_final(self, data: bytes) -> bytes:
        """Verify the client-final-message and return the server-final-message (``v=...``)."""
        if self._state is not ExchangeState.CONTINUE:
            raise self._fail("unexpected SCRAM client-final-message")
        try:
            return self._client_final(data)
        except ScramError:
            self._state = ExchangeState.FAILED
            raise

    def _client_final(self, data: bytes) -> bytes:
        text = decode_message(data, "client-final-message")
        pairs = split_attrs(text, "client-final-message")
        cbind = expect_attr(pairs, 0, "c", "client-final-message")
        nonce = expect_attr(pairs, 1, "r", "client-final-message")
        # Extensions may sit between r= and p=, but the proof must come last and only once.
        proof_b64 = expect_attr(pairs, len(pairs) - 1, "p", "client-final-message")
        if len(pairs) < 3 or any(name == "p" for name, _ in pairs[2:-1]):
            raise ScramProtocolError(
                "malformed SCRAM message: misplaced proof in client-final-message"
            )

        if b64decode(cbind, "channel binding") != self._gs2_header.encode("ascii"):
            raise ScramError("SCRAM channel binding check failed")
        if not hmac.compare_digest(nonce.encode("utf-8"), self._combined_nonce.encode("ascii")):
            raise ScramError("SCRAM nonce mismatch")
        proof = b64decode(proof_b64, "proof")
        if len(proof) != KEY_LEN:
            raise ScramProtocolError("malformed SCRAM message: proof has the wrong length")

        without_proof = text[: text.rindex(",p=")]
        auth_message = ",".join((self._client_first_bare, self._server_first, without_proof))
        auth_bytes = auth_message.encode("utf-8")
        client_signature = hmac_sha256(self._verifier.stored_key, auth_bytes)
        client_key = xor_bytes(proof, client_signature)
        if not hmac.compare_digest(sha256_digest(client_key), self._verifier.stored_key):
            raise ScramError("password authentication failed")

        self._client_key = client_key
        self._state = ExchangeState.DONE
        server_signature = hmac_sha256(self._verifier.server_key, auth_bytes)
        return f"v={b64(server_signature)}".encode("ascii")
