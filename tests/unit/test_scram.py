"""Tests for the sans-IO SCRAM-SHA-256 core: RFC 7677 vectors, real PostgreSQL verifiers, abuse."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import random

import pytest

from pgpool_proxy.auth.scram import (
    MAX_MESSAGE_SIZE,
    MECHANISM,
    ScramError,
    ScramVerifier,
    pg_normalize_password,
    saslprep,
)
from pgpool_proxy.auth.scram_client import ScramClient
from pgpool_proxy.auth.scram_server import ScramServer

# --- RFC 7677 section 3 -----------------------------------------------------------------------
RFC_CLIENT_NONCE = "rOprNGfwEbeRWgbNEkqO"
RFC_SERVER_NONCE = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
RFC_FULL_NONCE = RFC_CLIENT_NONCE + RFC_SERVER_NONCE
RFC_SALT = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
RFC_CLIENT_FIRST = b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
RFC_SERVER_FIRST = (
    b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
)
RFC_CLIENT_FINAL = (
    b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
    b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
)
RFC_SERVER_FINAL = b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="

# The exact text the proxy relays to users on a bad password.
AUTH_FAILED = r"^password authentication failed$"

# --- Verifiers taken from pg_authid.rolpassword of a real PostgreSQL 15 ------------------------
# (password_encryption = 'scram-sha-256'; CREATE ROLE ... PASSWORD as in PG15_VERIFIERS).
PG15_ASCII = (
    "SCRAM-SHA-256$4096:G2g9cdD94Z1fgozcd/aHvw==$xE5AxzS+B/4KkiOXTZKC0tb4iYedxCqenGCE46X7UVQ="
    ":n44bZMH4uJL8oEcwVrghg8QNkp0pfovHdb9K4QlFexE="
)
# E'I\u00ADX': the soft hyphen is mapped to nothing by SASLprep.
PG15_SOFT_HYPHEN = (
    "SCRAM-SHA-256$4096:9O3pbCHOBvA2LVGC5kg2iw==$r4o6JEK3TF6JVQqpUWJLN7mQr5WwyC715u4YuXIBN7g="
    ":NqucRjm2GiBxCtrDyhaknLgIOwVsChFdxpYudE9SOQE="
)
# E'\u2168pass\u00A0word': ROMAN NUMERAL NINE (NFKC to "IX") and a NO-BREAK SPACE (to " ").
PG15_NFKC = (
    "SCRAM-SHA-256$4096:Sd+0pI+OghMhZddK4CWBmQ==$M19+b2GmlLaR1iAlSZF4R/5sfSPF27zKzMGJRDKJSlY="
    ":knFR7cNLO9fALkiEDogDjUv+ZSdA+xOaZH7po6bbO64="
)
PG15_VERIFIERS = [
    pytest.param("correct horse", PG15_ASCII, id="ascii"),
    pytest.param("I\u00adX", PG15_SOFT_HYPHEN, id="soft-hyphen"),
    pytest.param("\u2168pass\u00a0word", PG15_NFKC, id="nfkc-and-nbsp"),
]


def _exchange(client: ScramClient, server: ScramServer) -> None:
    server_first = server.handle_client_first(client.client_first())
    client_final = client.handle_server_first(server_first)
    client.handle_server_final(server.handle_client_final(client_final))


def _started(
    password: str = "pencil", verifier_password: str = "pencil"
) -> tuple[ScramServer, bytes]:
    """A server that has answered client-first, and the honest client-final for it."""
    verifier = ScramVerifier.from_password(verifier_password)
    server = ScramServer(verifier)
    client = ScramClient(password)
    client_final = client.handle_server_first(server.handle_client_first(client.client_first()))
    return server, client_final


def _independent_proof(password: bytes, salt: bytes, iterations: int, auth_message: bytes) -> bytes:
    """RFC 5802 proof computed without the module under test, for cross-checking."""
    salted = hashlib.pbkdf2_hmac("sha256", password, salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    signature = hmac.new(stored_key, auth_message, hashlib.sha256).digest()
    return bytes(a ^ b for a, b in zip(client_key, signature, strict=True))


# --- RFC vector ---------------------------------------------------------------------------------


def test_mechanism_name() -> None:
    assert MECHANISM == "SCRAM-SHA-256"


def test_rfc7677_server_side() -> None:
    verifier = ScramVerifier.from_password("pencil", salt=RFC_SALT, iterations=4096)
    server = ScramServer(verifier, nonce=RFC_SERVER_NONCE)
    assert server.handle_client_first(RFC_CLIENT_FIRST) == RFC_SERVER_FIRST
    assert not server.is_complete
    assert server.handle_client_final(RFC_CLIENT_FINAL) == RFC_SERVER_FINAL
    assert server.is_complete
    assert hashlib.sha256(server.client_key).digest() == verifier.stored_key


def test_rfc7677_client_side() -> None:
    client = ScramClient("pencil", nonce=RFC_CLIENT_NONCE, username="user")
    assert client.client_first() == RFC_CLIENT_FIRST
    assert client.handle_server_first(RFC_SERVER_FIRST) == RFC_CLIENT_FINAL
    client.handle_server_final(RFC_SERVER_FINAL)
    assert client.server_verified


def test_rfc7677_client_rejects_wrong_server_signature() -> None:
    client = ScramClient("pencil", nonce=RFC_CLIENT_NONCE, username="user")
    client.client_first()
    client.handle_server_first(RFC_SERVER_FIRST)
    bad = base64.b64encode(bytes(32)).decode()
    with pytest.raises(ScramError, match="signature"):
        client.handle_server_final(f"v={bad}".encode())
    assert not client.server_verified


def test_libpq_style_client_first_has_empty_username() -> None:
    assert ScramClient("x", nonce="abc").client_first() == b"n,,n=,r=abc"


def test_client_username_is_escaped() -> None:
    assert ScramClient("x", nonce="abc", username="a=b,c").client_first() == (
        b"n,,n=a=3Db=2Cc,r=abc"
    )


# --- Real PostgreSQL verifiers -------------------------------------------------------------------


@pytest.mark.parametrize(("password", "stored"), PG15_VERIFIERS)
def test_postgres15_verifier_accepts_right_password(password: str, stored: str) -> None:
    verifier = ScramVerifier.parse(stored)
    assert verifier is not None
    client = ScramClient(password)
    _exchange(client, ScramServer(verifier))
    assert client.server_verified


@pytest.mark.parametrize(("password", "stored"), PG15_VERIFIERS)
def test_postgres15_verifier_rejects_wrong_password(password: str, stored: str) -> None:
    verifier = ScramVerifier.parse(stored)
    assert verifier is not None
    server = ScramServer(verifier)
    client = ScramClient(password + "!")
    client_final = client.handle_server_first(server.handle_client_first(client.client_first()))
    with pytest.raises(ScramError, match=AUTH_FAILED):
        server.handle_client_final(client_final)


@pytest.mark.parametrize(("password", "stored"), PG15_VERIFIERS)
def test_from_password_reproduces_postgres15(password: str, stored: str) -> None:
    parsed = ScramVerifier.parse(stored)
    assert parsed is not None
    ours = ScramVerifier.from_password(password, salt=parsed.salt, iterations=parsed.iterations)
    assert ours == parsed
    assert ours.to_text() == stored


def test_postgres15_normalised_forms_are_equivalent() -> None:
    soft_hyphen = ScramVerifier.parse(PG15_SOFT_HYPHEN)
    assert soft_hyphen is not None
    _exchange(ScramClient("IX"), ScramServer(soft_hyphen))
    nfkc = ScramVerifier.parse(PG15_NFKC)
    assert nfkc is not None
    _exchange(ScramClient("IXpass word"), ScramServer(nfkc))


# --- Round trips ------------------------------------------------------------------------------


def test_round_trip_random_nonces() -> None:
    verifier = ScramVerifier.from_password("s3cr3t \u00e9t\u00e9")
    server = ScramServer(verifier)
    client = ScramClient("s3cr3t \u00e9t\u00e9")
    first = client.client_first()
    assert first.startswith(b"n,,n=,r=")
    server_first = server.handle_client_first(first)
    client_nonce = first.split(b"r=", 1)[1]
    assert server_first.startswith(b"r=" + client_nonce)
    assert len(server_first.split(b",")[0]) > len(client_nonce) + 2
    client.handle_server_final(server.handle_client_final(client.handle_server_first(server_first)))
    assert server.is_complete
    assert client.server_verified
    assert hashlib.sha256(server.client_key).digest() == verifier.stored_key


def test_nonces_differ_between_exchanges() -> None:
    assert ScramClient("a").client_first() != ScramClient("a").client_first()
    verifier = ScramVerifier.from_password("a")
    a = ScramServer(verifier).handle_client_first(b"n,,n=,r=x")
    b = ScramServer(verifier).handle_client_first(b"n,,n=,r=x")
    assert a != b


def test_server_accepts_y_flag_with_matching_channel_binding() -> None:
    verifier = ScramVerifier.from_password("pencil", salt=b"saltsalt", iterations=4096)
    server = ScramServer(verifier, nonce="SRV")
    client_first_bare = b"n=,r=CLI"
    server_first = server.handle_client_first(b"y,," + client_first_bare)
    assert server_first == b"r=CLISRV,s=c2FsdHNhbHQ=,i=4096"
    without_proof = b"c=" + base64.b64encode(b"y,,") + b",r=CLISRV"
    auth = client_first_bare + b"," + server_first + b"," + without_proof
    proof = _independent_proof(b"pencil", b"saltsalt", 4096, auth)
    final = without_proof + b",p=" + base64.b64encode(proof)
    assert server.handle_client_final(final).startswith(b"v=")


def test_server_ignores_extensions_in_client_final() -> None:
    verifier = ScramVerifier.from_password("pencil", salt=b"saltsalt", iterations=4096)
    server = ScramServer(verifier, nonce="SRV")
    server_first = server.handle_client_first(b"n,,n=someone,r=CLI,x=ext")
    without_proof = b"c=biws,r=CLISRV,z=whatever"
    auth = b"n=someone,r=CLI,x=ext," + server_first + b"," + without_proof
    proof = _independent_proof(b"pencil", b"saltsalt", 4096, auth)
    server.handle_client_final(without_proof + b",p=" + base64.b64encode(proof))
    assert server.is_complete


# --- Failures on the server side ----------------------------------------------------------------


def test_wrong_password() -> None:
    server, client_final = _started(password="pencil", verifier_password="crayon")
    with pytest.raises(ScramError, match=AUTH_FAILED):
        server.handle_client_final(client_final)
    assert not server.is_complete
    with pytest.raises(ScramError):
        _ = server.client_key


def test_tampered_proof() -> None:
    server, client_final = _started()
    head, proof_b64 = client_final.rsplit(b",p=", 1)
    proof = bytearray(base64.b64decode(proof_b64))
    proof[5] ^= 0x01
    with pytest.raises(ScramError, match=AUTH_FAILED):
        server.handle_client_final(head + b",p=" + base64.b64encode(bytes(proof)))


def test_tampered_nonce() -> None:
    server, client_final = _started()
    tampered = client_final.replace(b",r=", b",r=X", 1)
    with pytest.raises(ScramError, match="nonce"):
        server.handle_client_final(tampered)


def test_truncated_nonce() -> None:
    server, client_final = _started()
    head, rest = client_final.split(b",r=", 1)
    nonce, tail = rest.split(b",", 1)
    with pytest.raises(ScramError, match="nonce"):
        server.handle_client_final(head + b",r=" + nonce[:-1] + b"," + tail)


@pytest.mark.parametrize("cbind", [b"eSws", b"", b"bixm", b"cD10bHMtdW5pcXVlLCw=", b"b!ws"])
def test_wrong_channel_binding(cbind: bytes) -> None:
    server, client_final = _started()
    assert client_final.startswith(b"c=biws,")
    with pytest.raises(ScramError):
        server.handle_client_final(b"c=" + cbind + client_final[len(b"c=biws") :])


def test_channel_binding_must_echo_y_header() -> None:
    verifier = ScramVerifier.from_password("pencil")
    server = ScramServer(verifier)
    client = ScramClient("pencil")
    # The client says "n,," but we hand the server a "y,," header: c=biws no longer matches.
    first = client.client_first().replace(b"n,,", b"y,,", 1)
    client_final = client.handle_server_first(server.handle_client_first(first))
    with pytest.raises(ScramError, match="channel binding"):
        server.handle_client_final(client_final)


def test_server_rejects_channel_binding_request() -> None:
    server = ScramServer(ScramVerifier.from_password("pencil"))
    with pytest.raises(ScramError, match="channel binding"):
        server.handle_client_first(b"p=tls-server-end-point,,n=,r=abc")


def test_server_rejects_authzid() -> None:
    server = ScramServer(ScramVerifier.from_password("pencil"))
    with pytest.raises(ScramError, match="authorization identity"):
        server.handle_client_first(b"n,a=x,n=,r=abc")


def test_server_rejects_mandatory_extension() -> None:
    server = ScramServer(ScramVerifier.from_password("pencil"))
    with pytest.raises(ScramError, match="extension"):
        server.handle_client_first(b"n,,m=ext,n=,r=abc")


def test_server_out_of_order() -> None:
    verifier = ScramVerifier.from_password("pencil")
    server = ScramServer(verifier)
    with pytest.raises(ScramError):
        server.handle_client_final(b"c=biws,r=abc,p=AAAA")
    # A refused call poisons the exchange: no second chance with the same object.
    with pytest.raises(ScramError):
        server.handle_client_first(b"n,,n=,r=abc")

    server = ScramServer(verifier)
    server.handle_client_first(b"n,,n=,r=abc")
    with pytest.raises(ScramError):
        server.handle_client_first(b"n,,n=,r=abc")


def test_server_done_refuses_further_messages() -> None:
    verifier = ScramVerifier.from_password("pencil")
    server = ScramServer(verifier)
    client = ScramClient("pencil")
    client_final = client.handle_server_first(server.handle_client_first(client.client_first()))
    server.handle_client_final(client_final)
    with pytest.raises(ScramError):
        server.handle_client_final(client_final)


def test_server_failure_is_final() -> None:
    server, client_final = _started(password="wrong")
    with pytest.raises(ScramError):
        server.handle_client_final(client_final)
    with pytest.raises(ScramError):
        server.handle_client_final(client_final)


def test_client_key_unavailable_before_success() -> None:
    server = ScramServer(ScramVerifier.from_password("pencil"))
    with pytest.raises(ScramError):
        _ = server.client_key


GARBAGE_CLIENT_FIRST = [
    b"",
    b",",
    b",,",
    b"n",
    b"n,",
    b"n,,",
    b"n,,n=",
    b"n,,n=,",
    b"n,,n=,r=",
    b"n,,r=abc",
    b"n,,n=,x=abc",
    b"n,,n=,r=a,b",
    b"n,,n=,r=ab c",
    b"n,,n=,r=ab\x00c",
    b"n,,n=\x00,r=abc",
    b"x,,n=,r=abc",
    b"nn,,n=,r=abc",
    b"n,,n=,r=\xff\xfe",
    b"\xff,,n=,r=abc",
    b"n,,n=,r=caf\xc3\xa9",
    b"n,,==,r=abc",
    b"n,,1=,r=abc",
    b"n,,n=,r=abc,",
    b"n,,n=,r=abc,=x",
    b"n,,n=a" + b"a" * MAX_MESSAGE_SIZE + b",r=abc",
    b"n,,n=,r=" + b"a" * MAX_MESSAGE_SIZE,
]


@pytest.mark.parametrize("data", GARBAGE_CLIENT_FIRST)
def test_server_garbage_client_first(data: bytes) -> None:
    server = ScramServer(ScramVerifier.from_password("pencil"))
    with pytest.raises(ScramError):
        server.handle_client_first(data)


GARBAGE_CLIENT_FINAL = [
    b"",
    b",",
    b"c=biws",
    b"c=biws,r=CLISRV",
    b"c=biws,r=CLISRV,p=",
    b"c=biws,r=CLISRV,p=!!!!",
    b"c=biws,r=CLISRV,p=AAAA",
    b"c=biws,r=CLISRV,p=" + base64.b64encode(bytes(31)),
    b"c=biws,r=CLISRV,p=" + base64.b64encode(bytes(33)),
    b"c=biws,r=CLISRV,p=" + base64.b64encode(bytes(32))[:-1],
    b"c=biws,r=CLISRV,p=" + base64.b64encode(bytes(32)) + b",x=1",
    b"c=biws,r=CLISRV,p=" + base64.b64encode(bytes(32)) + b",p=" + base64.b64encode(bytes(32)),
    b"c=biws,p=" + base64.b64encode(bytes(32)),
    b"r=CLISRV,c=biws,p=" + base64.b64encode(bytes(32)),
    b"p=" + base64.b64encode(bytes(32)),
    b"c=biws,r=CLISRV,,p=" + base64.b64encode(bytes(32)),
    b"c=biw\xff,r=CLISRV,p=" + base64.b64encode(bytes(32)),
    b"c=biws,r=CLISRV,p=" + base64.b64encode(bytes(32)) + b"\x00",
    b"c=biws,r=CLISRV,p=\xd9\xa4" + base64.b64encode(bytes(32)),
    b"c=biws,r=CLISRV,x=" + b"a" * MAX_MESSAGE_SIZE + b",p=" + base64.b64encode(bytes(32)),
]


@pytest.mark.parametrize("data", GARBAGE_CLIENT_FINAL)
def test_server_garbage_client_final(data: bytes) -> None:
    verifier = ScramVerifier.from_password("pencil", salt=b"saltsalt", iterations=4096)
    server = ScramServer(verifier, nonce="SRV")
    server.handle_client_first(b"n,,n=,r=CLI")
    with pytest.raises(ScramError):
        server.handle_client_final(data)


def test_server_fuzz_raises_only_scram_error() -> None:
    rng = random.Random(5802)
    verifier = ScramVerifier.from_password("pencil", iterations=1)
    alphabet = b"nyp=,abcrsiv09+/\x00\xff "
    for _ in range(2000):
        length = rng.randrange(0, 64)
        data = bytes(rng.choice(alphabet) for _ in range(length))
        server = ScramServer(verifier, nonce="SRV")
        try:
            server.handle_client_first(data)
        except ScramError:
            continue
        with contextlib.suppress(ScramError):
            server.handle_client_final(data)


# --- Failures on the client side ----------------------------------------------------------------


def _client_after_first(nonce: str = "CLI") -> ScramClient:
    client = ScramClient("pencil", nonce=nonce)
    client.client_first()
    return client


GARBAGE_SERVER_FIRST = [
    b"",
    b"r=CLISRV",
    b"r=CLISRV,s=c2FsdA==",
    b"r=CLISRV,s=c2FsdA==,i=",
    b"r=CLISRV,s=c2FsdA==,i=0",
    b"r=CLISRV,s=c2FsdA==,i=-1",
    b"r=CLISRV,s=c2FsdA==,i=+5",
    b"r=CLISRV,s=c2FsdA==,i=1e3",
    b"r=CLISRV,s=c2FsdA==,i=abc",
    b"r=CLISRV,s=c2FsdA==,i=10000001",
    b"r=CLISRV,s=c2FsdA==,i=99999999999999999999999",
    b"r=CLISRV,s=c2FsdA==,i=\xd9\xa4",
    b"r=CLISRV,s=,i=4096",
    b"r=CLISRV,s=!!!,i=4096",
    b"r=CLISRV,s=c2FsdA=,i=4096",
    b"r=CLI,s=c2FsdA==,i=4096",
    b"r=XLISRV,s=c2FsdA==,i=4096",
    b"r=CL,s=c2FsdA==,i=4096",
    b"r=CLI SRV,s=c2FsdA==,i=4096",
    b"s=c2FsdA==,r=CLISRV,i=4096",
    b"m=x,r=CLISRV,s=c2FsdA==,i=4096",
    b"r=CLISRV,s=c2FsdA==,i=4096,",
    b"e=other-error",
    b"\xff\xfe",
    b"r=CLISRV,s=c2FsdA==,i=4096,x=" + b"a" * MAX_MESSAGE_SIZE,
]


@pytest.mark.parametrize("data", GARBAGE_SERVER_FIRST)
def test_client_garbage_server_first(data: bytes) -> None:
    client = _client_after_first()
    with pytest.raises(ScramError):
        client.handle_server_first(data)


def test_client_accepts_iteration_bounds() -> None:
    for iterations in (1, 4096):
        client = _client_after_first()
        assert client.handle_server_first(b"r=CLISRV,s=c2FsdA==,i=%d" % iterations).startswith(
            b"c=biws,r=CLISRV,p="
        )


GARBAGE_SERVER_FINAL = [
    b"",
    b"v=",
    b"v=!!!",
    b"v=" + base64.b64encode(bytes(32)),
    b"x=1",
    b"e=invalid-proof",
    b"e=" + b"\xc3\xa9" * 10,
    b"e=",
    b"\xff",
    b"v=" + b"A" * MAX_MESSAGE_SIZE,
]


@pytest.mark.parametrize("data", GARBAGE_SERVER_FINAL)
def test_client_garbage_server_final(data: bytes) -> None:
    client = _client_after_first()
    client.handle_server_first(b"r=CLISRV,s=c2FsdA==,i=1")
    with pytest.raises(ScramError):
        client.handle_server_final(data)


def test_client_server_error_is_reported_safely() -> None:
    client = _client_after_first()
    client.handle_server_first(b"r=CLISRV,s=c2FsdA==,i=1")
    with pytest.raises(ScramError, match="invalid-proof"):
        client.handle_server_final(b"e=invalid-proof")

    client = _client_after_first()
    client.handle_server_first(b"r=CLISRV,s=c2FsdA==,i=1")
    with pytest.raises(ScramError) as info:
        client.handle_server_final(b"e=<script>" + b"x" * 100)
    assert "<script>" not in str(info.value)


def test_client_out_of_order() -> None:
    client = ScramClient("pencil", nonce="CLI")
    with pytest.raises(ScramError):
        client.handle_server_first(b"r=CLISRV,s=c2FsdA==,i=1")

    client = ScramClient("pencil", nonce="CLI")
    with pytest.raises(ScramError):
        client.handle_server_final(b"v=AAAA")

    client = ScramClient("pencil", nonce="CLI")
    client.client_first()
    with pytest.raises(ScramError):
        client.client_first()

    client = _client_after_first()
    with pytest.raises(ScramError):
        client.handle_server_final(b"v=AAAA")

    client = _client_after_first()
    client.handle_server_first(b"r=CLISRV,s=c2FsdA==,i=1")
    with pytest.raises(ScramError):
        client.handle_server_first(b"r=CLISRV,s=c2FsdA==,i=1")


def test_client_done_refuses_further_messages() -> None:
    verifier = ScramVerifier.from_password("pencil")
    client = ScramClient("pencil")
    server = ScramServer(verifier)
    client_final = client.handle_server_first(server.handle_client_first(client.client_first()))
    server_final = server.handle_client_final(client_final)
    client.handle_server_final(server_final)
    with pytest.raises(ScramError):
        client.handle_server_final(server_final)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"password": "x", "client_key": bytes(32)},
        {"client_key": bytes(31)},
        {"client_key": bytes(32), "server_key": bytes(31)},
        {"password": "x", "server_key": bytes(32)},
        {"password": "x", "nonce": "a,b"},
        {"password": "x", "nonce": ""},
        {"password": "x", "username": "a\x00"},
    ],
)
def test_client_constructor_misuse(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        ScramClient(**kwargs)  # type: ignore[arg-type]


# --- Pass-through with the recovered ClientKey -------------------------------------------------


def test_client_key_pass_through_with_server_key() -> None:
    verifier = ScramVerifier.from_password("hunter2")
    front = ScramServer(verifier)
    _exchange(ScramClient("hunter2"), front)

    relay = ScramClient(client_key=front.client_key, server_key=verifier.server_key)
    backend = ScramServer(verifier)
    _exchange(relay, backend)
    assert backend.is_complete
    assert relay.server_verified
    assert backend.client_key == front.client_key


def test_client_key_pass_through_without_server_key() -> None:
    verifier = ScramVerifier.from_password("hunter2")
    front = ScramServer(verifier)
    _exchange(ScramClient("hunter2"), front)

    relay = ScramClient(client_key=front.client_key)
    backend = ScramServer(verifier)
    _exchange(relay, backend)
    assert backend.is_complete
    # Without ServerKey the backend's signature cannot be checked.
    assert not relay.server_verified


def test_client_key_pass_through_detects_bad_server_signature() -> None:
    verifier = ScramVerifier.from_password("hunter2")
    front = ScramServer(verifier)
    _exchange(ScramClient("hunter2"), front)

    relay = ScramClient(client_key=front.client_key, server_key=verifier.server_key)
    impostor = ScramServer(verifier)
    client_final = relay.handle_server_first(impostor.handle_client_first(relay.client_first()))
    impostor.handle_client_final(client_final)
    with pytest.raises(ScramError, match="signature"):
        relay.handle_server_final(b"v=" + base64.b64encode(bytes(32)))


def test_client_key_against_postgres15_verifier() -> None:
    verifier = ScramVerifier.parse(PG15_ASCII)
    assert verifier is not None
    front = ScramServer(verifier)
    _exchange(ScramClient("correct horse"), front)
    _exchange(ScramClient(client_key=front.client_key), ScramServer(verifier))


def test_wrong_client_key_fails() -> None:
    verifier = ScramVerifier.from_password("hunter2")
    relay = ScramClient(client_key=bytes(32))
    server = ScramServer(verifier)
    client_final = relay.handle_server_first(server.handle_client_first(relay.client_first()))
    with pytest.raises(ScramError, match=AUTH_FAILED):
        server.handle_client_final(client_final)


# --- SASLprep ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "prepared"),
    [
        ("I\u00adX", "IX"),  # RFC 4013 example: soft hyphen mapped to nothing
        ("user", "user"),
        ("USER", "USER"),
        ("\u00aa", "a"),  # NFKC
        ("\u2168", "IX"),  # NFKC
        ("x\u00a0y", "x y"),  # non-ASCII space mapped to SPACE
        ("x\u3000y", "x y"),
        ("a\u200bb", "ab"),  # zero-width space mapped to nothing
        ("\u00ad", ""),
        ("", ""),
        ("\u0627\u0031\u0628", "\u0627\u0031\u0628"),  # RTL string that starts and ends RandAL
        ("caf\u0065\u0301", "caf\u00e9"),
    ],
)
def test_saslprep_maps_and_normalises(raw: str, prepared: str) -> None:
    assert saslprep(raw) == prepared


@pytest.mark.parametrize(
    "raw",
    [
        "a\u0007",  # RFC 4013 example: ASCII control character
        "\u0000",
        "a\u0085b",  # non-ASCII control
        "\ue000",  # private use
        "\ufffe",  # non-character
        "\ud800",  # surrogate code point
        "\u202e",  # change display direction
        "\u0627\u0031",  # RFC 4013 example: RandAL string not ending in RandAL
        "\u0627a\u0628",  # RandAL mixed with LCat
        "\u0221",  # unassigned in Unicode 3.2
    ],
)
def test_saslprep_rejects(raw: str) -> None:
    with pytest.raises(ScramError) as info:
        saslprep(raw)
    assert raw not in str(info.value)


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("I\u00adX", "IX"),
        ("x\u00a0y", "x y"),
        ("pencil", "pencil"),
        ("a\u0007", "a\u0007"),  # prohibited: PostgreSQL falls back to the raw string
        ("a\u0007\u00a0", "a\u0007\u00a0"),  # even though the NBSP alone would be mapped
        ("\u0627\u0031", "\u0627\u0031"),  # bidi failure: raw
        ("\udcff\udcfe", "\udcff\udcfe"),  # undecodable wire bytes: raw
    ],
)
def test_pg_normalize_password(raw: str, normalised: str) -> None:
    assert pg_normalize_password(raw) == normalised


def test_prohibited_password_still_authenticates() -> None:
    password = "bell\u0007\u00a0"
    verifier = ScramVerifier.from_password(password)
    _exchange(ScramClient(password), ScramServer(verifier))
    with pytest.raises(ScramError):
        _exchange(ScramClient("bell\u0007 "), ScramServer(verifier))


def test_raw_byte_password_uses_original_bytes() -> None:
    # A Latin-1 password decoded from the wire with surrogateescape hashes its original bytes.
    password = b"caf\xe9".decode("utf-8", "surrogateescape")
    ours = ScramVerifier.from_password(password, salt=b"saltsalt", iterations=16)
    salted = hashlib.pbkdf2_hmac("sha256", b"caf\xe9", b"saltsalt", 16)
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    assert ours.server_key == server_key


# --- Verifier text format ---------------------------------------------------------------------


def test_verifier_round_trip() -> None:
    verifier = ScramVerifier.from_password("pencil", iterations=1234)
    text = verifier.to_text()
    assert text.startswith("SCRAM-SHA-256$1234:")
    assert ScramVerifier.parse(text) == verifier
    assert len(verifier.salt) == 16


def test_verifier_salts_are_random() -> None:
    assert ScramVerifier.from_password("a").salt != ScramVerifier.from_password("a").salt


def test_verifier_repr_hides_keys() -> None:
    verifier = ScramVerifier.from_password("pencil")
    text = repr(verifier)
    assert repr(verifier.stored_key) not in text
    assert repr(verifier.server_key) not in text


@pytest.mark.parametrize(
    "text",
    [
        "",
        "pencil",
        "md520c46e3762c864548e296b33c3406aa9",
        "SCRAM-SHA-1$4096:c2FsdA==$" + "A" * 43 + "=:" + "A" * 43 + "=",
        "SCRAM-SHA-256$0:c2FsdA==$" + "A" * 43 + "=:" + "A" * 43 + "=",
        "SCRAM-SHA-256$-1:c2FsdA==$" + "A" * 43 + "=:" + "A" * 43 + "=",
        "SCRAM-SHA-256$\u0664\u0660\u0669\u0666:c2FsdA==$" + "A" * 43 + "=:" + "A" * 43 + "=",
        "SCRAM-SHA-256$4096:$" + "A" * 43 + "=:" + "A" * 43 + "=",
        "SCRAM-SHA-256$4096:c2FsdA=$" + "A" * 43 + "=:" + "A" * 43 + "=",
        "SCRAM-SHA-256$4096:c2FsdA==$" + "A" * 42 + "==:" + "A" * 43 + "=",
        "SCRAM-SHA-256$4096:c2FsdA==$" + "A" * 43 + "=:" + "A" * 44 + "AAAA",
        "SCRAM-SHA-256$4096:c2FsdA==$" + "A" * 43 + "=:" + "A" * 43 + "=\n",
        "SCRAM-SHA-256$4096:c2FsdA==$" + "A" * 43 + "=",
        "SCRAM-SHA-256$4096$" + "A" * 43 + "=:" + "A" * 43 + "=",
        "SCRAM-SHA-256$99999999999:c2FsdA==$" + "A" * 43 + "=:" + "A" * 43 + "=",
        " SCRAM-SHA-256$4096:c2FsdA==$" + "A" * 43 + "=:" + "A" * 43 + "=",
    ],
)
def test_verifier_parse_rejects_junk(text: str) -> None:
    assert ScramVerifier.parse(text) is None


def test_verifier_parse_accepts_minimal() -> None:
    text = "SCRAM-SHA-256$1:c2FsdA==$" + "A" * 43 + "=:" + "B" * 42 + "A="
    verifier = ScramVerifier.parse(text)
    assert verifier is not None
    assert verifier.iterations == 1
    assert verifier.salt == b"salt"
    assert verifier.to_text() == text


def test_verifier_construction_validates() -> None:
    with pytest.raises(ValueError):
        ScramVerifier(iterations=0, salt=b"s", stored_key=bytes(32), server_key=bytes(32))
    with pytest.raises(ValueError):
        ScramVerifier(iterations=1, salt=b"", stored_key=bytes(32), server_key=bytes(32))
    with pytest.raises(ValueError):
        ScramVerifier(iterations=1, salt=b"s", stored_key=bytes(31), server_key=bytes(32))
    with pytest.raises(ValueError):
        ScramVerifier.from_password("x", iterations=0)
