"""SCRAM bounds against a hostile server and the mock verifiers that hide which users exist."""

from __future__ import annotations

import asyncio
import base64
import threading

import pytest

from pgpool_proxy.auth import scram, scram_client
from pgpool_proxy.auth.scram import (
    DEFAULT_ITERATIONS,
    DEFAULT_MAX_SERVER_ITERATIONS,
    MAX_SALT_LEN,
    MAX_SERVER_NONCE_PART,
    ScramError,
    ScramProtocolError,
    ScramVerifier,
    derive_verifier,
)
from pgpool_proxy.auth.scram_client import ScramClient
from pgpool_proxy.auth.scram_server import ScramServer

SALT = base64.b64encode(b"saltsalt").decode()


def _client(**kwargs: object) -> ScramClient:
    client = ScramClient("pencil", nonce="CLI", **kwargs)  # type: ignore[arg-type]
    client.client_first()
    return client


def test_default_iteration_cap() -> None:
    assert DEFAULT_MAX_SERVER_ITERATIONS == 100_000
    _client().handle_server_first(f"r=CLISRV,s={SALT},i=4096".encode())
    with pytest.raises(ScramProtocolError, match="exceeds the proxy's limit of 100000"):
        _client().handle_server_first(f"r=CLISRV,s={SALT},i=100001".encode())


def test_configured_iteration_cap_is_exact() -> None:
    _client(max_iterations=5000).handle_server_first(f"r=CLISRV,s={SALT},i=5000".encode())
    with pytest.raises(ScramProtocolError, match="5001"):
        _client(max_iterations=5000).handle_server_first(f"r=CLISRV,s={SALT},i=5001".encode())
    with pytest.raises(ValueError):
        ScramClient("pw", max_iterations=0)
    with pytest.raises(ValueError):
        ScramClient("pw", max_iterations=scram.MAX_ITERATIONS + 1)


def test_server_nonce_length_bound() -> None:
    ok = "S" * MAX_SERVER_NONCE_PART
    _client().handle_server_first(f"r=CLI{ok},s={SALT},i=1".encode())
    with pytest.raises(ScramProtocolError, match="nonce is too long"):
        _client().handle_server_first(f"r=CLI{ok}S,s={SALT},i=1".encode())


def test_foreign_nonce_is_a_protocol_error() -> None:
    with pytest.raises(ScramProtocolError, match="does not extend"):
        _client().handle_server_first(f"r=XCLISRV,s={SALT},i=1".encode())


def test_salt_length_bound() -> None:
    ok = base64.b64encode(bytes(MAX_SALT_LEN)).decode()
    _client().handle_server_first(f"r=CLISRV,s={ok},i=1".encode())
    long = base64.b64encode(bytes(MAX_SALT_LEN + 1)).decode()
    with pytest.raises(ScramProtocolError, match="salt is too long"):
        _client().handle_server_first(f"r=CLISRV,s={long},i=1".encode())


def test_wrong_proof_is_not_a_protocol_error() -> None:
    client = _client()
    client.handle_server_first(f"r=CLISRV,s={SALT},i=1".encode())
    with pytest.raises(ScramError) as err:
        client.handle_server_final(b"e=invalid-proof")
    assert not isinstance(err.value, ScramProtocolError)


async def test_async_server_first_matches_sync_and_runs_in_a_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    threads: list[str] = []
    real = scram.salted_password

    def spy(password: str, salt: bytes, iterations: int) -> bytes:
        threads.append(threading.current_thread().name)
        return real(password, salt, iterations)

    # The client hashes through its own binding of the name; the off-loop path, through
    # the executor in scram.
    monkeypatch.setattr(scram_client, "salted_password", spy)
    monkeypatch.setattr(scram, "salted_password", spy)
    first = f"r=CLISRV,s={SALT},i=4096".encode()
    sync_final = _client().handle_server_first(first)
    async_final = await _client().handle_server_first_async(first)
    assert async_final == sync_final
    assert threads[0] == threading.current_thread().name
    assert threads[1].startswith("pbkdf2"), threads


async def test_async_exchange_against_server() -> None:
    verifier = await derive_verifier("pencil")
    assert verifier.iterations == DEFAULT_ITERATIONS and len(verifier.salt) == 16
    server = ScramServer(verifier)
    client = ScramClient("pencil")
    final = await client.handle_server_first_async(
        server.handle_client_first(client.client_first())
    )
    client.handle_server_final(server.handle_client_final(final))
    assert client.server_verified


async def test_event_loop_keeps_running_during_pbkdf2() -> None:
    """While a large PBKDF2 runs, the loop still turns (it would not if it hashed inline)."""
    ticks = 0
    stop = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            await asyncio.sleep(0.001)  # the ticker is the measurement: one tick a turn

    task = asyncio.create_task(ticker())
    client = _client(max_iterations=2_000_000)
    await client.handle_server_first_async(f"r=CLISRV,s={SALT},i=2000000".encode())
    stop.set()
    await task
    assert ticks >= 20, ticks


# --- mock verifiers ---------------------------------------------------------------------------


def test_mock_verifier_is_stable_per_name_and_distinct_across_names() -> None:
    key = b"k" * 32
    a1 = ScramVerifier.mock(key, "ghost")
    a2 = ScramVerifier.mock(key, "ghost")
    b = ScramVerifier.mock(key, "ghost2")
    other_process = ScramVerifier.mock(b"j" * 32, "ghost")
    assert a1 == a2
    assert a1.salt != b.salt and a1.stored_key != b.stored_key
    assert a1.salt != other_process.salt
    assert len(a1.salt) == 16 and a1.iterations == DEFAULT_ITERATIONS
    assert ScramVerifier.mock(key, "ghost", 8192).iterations == 8192
    # Same shape as a real verifier, and it survives the stored format.
    assert ScramVerifier.parse(a1.to_text()) == a1
    ScramVerifier.mock(key, "odd\udcff\ud800name")  # surrogates from lossy decoding


@pytest.mark.parametrize("password", ["", "ghost", "k" * 32, "password"])
def test_no_password_opens_a_mock_verifier(password: str) -> None:
    server = ScramServer(ScramVerifier.mock(b"k" * 32, "ghost"))
    client = ScramClient(password)
    final = client.handle_server_first(server.handle_client_first(client.client_first()))
    with pytest.raises(ScramError, match="password authentication failed"):
        server.handle_client_final(final)
