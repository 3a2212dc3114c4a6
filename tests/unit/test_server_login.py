"""The proxy's login to a server (auth.server_login), without sockets.

The server side is the proxy's own ScramServer and hand-built messages: each test drives the
state machine message by message and checks what it would send. The same machine logs pooled
server connections in and checks IAM tokens by passthrough; both are tested against real
PostgreSQL in the integration and AWS suites.
"""

from __future__ import annotations

import struct

import pytest

from pgpool_proxy.auth.md5 import md5_response
from pgpool_proxy.auth.scram import ScramServer, ScramVerifier
from pgpool_proxy.auth.server_login import (
    MAX_LOGIN_MESSAGES,
    MAX_SERVER_PARAMS,
    BackendLoginError,
    ServerLogin,
    Step,
)
from pgpool_proxy.protocol import messages as m
from pgpool_proxy.protocol.constants import TX_IDLE


def split(data: bytes) -> tuple[int, bytes]:
    """(type, body) of one whole message."""
    (length,) = struct.unpack_from("!I", data, 1)
    assert len(data) == length + 1
    return data[0], data[5:]


def feed(login: ServerLogin, data: bytes) -> Step:
    return login.feed(*split(data))


def welcome(login: ServerLogin) -> None:
    assert feed(login, m.auth_ok()).authenticated
    feed(login, m.parameter_status("server_version", "15.4"))
    feed(login, m.parameter_status("session_authorization", "app"))
    feed(login, m.backend_key_data(4242, 77))
    assert feed(login, m.ready_for_query()).ready


def test_startup_names_user_and_database() -> None:
    login = ServerLogin("app", "appdb", "pw", max_iterations=10_000)
    t, body = login.startup()[4:8], login.startup()[8:]
    assert t == b"\x00\x03\x00\x00"
    assert b"user\0app\0" in body and b"database\0appdb\0" in body


def test_cleartext_then_parameters_and_key() -> None:
    login = ServerLogin("app", "appdb", "s3cret", max_iterations=10_000)
    step = feed(login, m.frame(b"R", struct.pack("!I", 3)))
    assert m.parse_password(split(step.send)[1]) == "s3cret"
    welcome(login)
    assert login.params == {"server_version": "15.4", "session_authorization": "app"}
    assert (login.pid, login.cancel_secret, login.tx_status) == (4242, 77, TX_IDLE)


def test_md5_answers_with_the_salted_hash() -> None:
    login = ServerLogin("app", "appdb", "s3cret", max_iterations=10_000)
    step = feed(login, m.auth_md5(b"abcd"))
    assert m.parse_password(split(step.send)[1]) == md5_response("s3cret", "app", b"abcd")


async def test_scram_with_a_password_against_the_proxys_own_server() -> None:
    verifier = ScramVerifier.from_password("s3cret", iterations=4096)
    server = ScramServer(verifier)
    login = ServerLogin("app", "appdb", "s3cret", max_iterations=10_000)
    step = feed(login, m.auth_sasl(["SCRAM-SHA-256"]))
    mechanism, first = m.parse_sasl_initial_response(split(step.send)[1])
    assert mechanism == "SCRAM-SHA-256"
    step = feed(login, m.auth_sasl_continue(server.handle_client_first(first)))
    assert step.challenge is not None and not step.send
    proof = await login.prove(step.challenge)
    final = server.handle_client_final(split(proof)[1])
    assert server.is_complete
    assert feed(login, m.auth_sasl_final(final)) == Step()
    welcome(login)


async def test_scram_with_a_recovered_client_key() -> None:
    verifier = ScramVerifier.from_password("s3cret", iterations=4096)
    # What a client's SCRAM login to the proxy recovers (ScramServer.client_key).
    first_login = ScramServer(verifier)
    login = ServerLogin("app", "appdb", "s3cret", max_iterations=10_000)
    step = feed(login, m.auth_sasl(["SCRAM-SHA-256"]))
    _, first = m.parse_sasl_initial_response(split(step.send)[1])
    step = feed(login, m.auth_sasl_continue(first_login.handle_client_first(first)))
    first_login.handle_client_final(split(await login.prove(step.challenge or b""))[1])
    keyed = ServerLogin(
        "app",
        "appdb",
        verifier.to_text(),  # only the stored verifier: no password
        max_iterations=10_000,
        client_key=first_login.client_key,
        server_key=verifier.server_key,
    )
    server = ScramServer(verifier)
    step = feed(keyed, m.auth_sasl(["SCRAM-SHA-256"]))
    _, first = m.parse_sasl_initial_response(split(step.send)[1])
    step = feed(keyed, m.auth_sasl_continue(server.handle_client_first(first)))
    final = server.handle_client_final(split(await keyed.prove(step.challenge or b""))[1])
    feed(keyed, m.auth_sasl_final(final))
    welcome(keyed)


@pytest.mark.parametrize(
    ("secret", "request_msg", "what"),
    [
        (None, m.frame(b"R", struct.pack("!I", 3)), "cleartext"),
        ("md5" + "0" * 32, m.frame(b"R", struct.pack("!I", 3)), "cleartext"),
        ("SCRAM-SHA-256$4096:abc", m.auth_md5(b"abcd"), "md5"),
        ("md5" + "0" * 32, m.auth_sasl(["SCRAM-SHA-256"]), "SCRAM"),
    ],
)
def test_a_stored_verifier_is_never_sent_as_a_password(
    secret: str | None, request_msg: bytes, what: str
) -> None:
    login = ServerLogin("app", "appdb", secret, max_iterations=10_000)
    with pytest.raises(BackendLoginError, match=what) as info:
        feed(login, request_msg)
    assert info.value.sqlstate == "28P01"


def test_server_refusal_keeps_its_sqlstate_and_says_whose_login_failed() -> None:
    login = ServerLogin("app", "appdb", "pw", max_iterations=10_000)
    refusal = m.error_response("FATAL", "28P01", 'password authentication failed for user "app"')
    with pytest.raises(BackendLoginError) as info:
        feed(login, refusal)
    err = info.value
    assert err.sqlstate == "28P01" and err.server_message.startswith("password authentication")
    assert err.detail is not None and "proxy's own login" in err.detail


@pytest.mark.parametrize(
    ("message", "sqlstate", "words"),
    [
        (m.frame(b"R", struct.pack("!I", 7)), "0A000", "GSSAPI"),
        (m.frame(b"R", struct.pack("!I", 99)), "08P01", "invalid authentication request"),
        (m.auth_sasl(["SCRAM-SHA-1"]), "0A000", "no SASL mechanism"),
        (m.auth_sasl_continue(b"r=x"), "08P01", "before the SASL exchange"),
        (m.frame(b"R", b"\0\0"), "08P01", "malformed"),
        (m.frame(b"K", b"\0\0\0\1"), "08P01", "BackendKeyData"),
        (m.frame(b"Z", b"II"), "08P01", "ReadyForQuery"),
        (m.frame(b"D", b"\0\0"), "08P01", "unexpected message"),
        (m.auth_md5(b"ab"), "08P01", "salt"),
    ],
)
def test_protocol_breaks_are_08p01_or_0a000(message: bytes, sqlstate: str, words: str) -> None:
    login = ServerLogin("app", "appdb", "pw", max_iterations=10_000)
    with pytest.raises(BackendLoginError, match=words) as info:
        feed(login, message)
    assert info.value.sqlstate == sqlstate


def test_a_server_that_keeps_talking_is_refused() -> None:
    login = ServerLogin("app", "appdb", "pw", max_iterations=10_000)
    notice = m.frame(b"N", b"SNOTICE\0Mhello\0\0")
    for _ in range(MAX_LOGIN_MESSAGES):
        assert feed(login, notice) == Step()
    with pytest.raises(BackendLoginError, match="more than"):
        feed(login, notice)


def test_too_many_parameters_are_refused() -> None:
    login = ServerLogin("app", "appdb", "pw", max_iterations=10_000)
    for i in range(MAX_SERVER_PARAMS):
        feed(login, m.parameter_status(f"p{i}", "v"))
    with pytest.raises(BackendLoginError, match="distinct parameters"):
        feed(login, m.parameter_status("one_more", "v"))


async def test_scram_iteration_cap_is_a_protocol_error() -> None:
    verifier = ScramVerifier.from_password("s3cret", iterations=20_000)
    server = ScramServer(verifier)
    login = ServerLogin("app", "appdb", "s3cret", max_iterations=10_000)
    step = feed(login, m.auth_sasl(["SCRAM-SHA-256"]))
    _, first = m.parse_sasl_initial_response(split(step.send)[1])
    step = feed(login, m.auth_sasl_continue(server.handle_client_first(first)))
    with pytest.raises(BackendLoginError) as info:
        await login.prove(step.challenge or b"")
    assert info.value.sqlstate == "08P01"
