"""A client probing which users exist learns nothing from the proxy's SCRAM challenge.

PostgreSQL answers an unknown user with a mock salt derived from the name (scram_mock_salt): the
same name always gets the same salt, different names different salts, and the iteration count
is the one real users have. The proxy does the same, so neither a fixed shared salt nor a fresh
random one per attempt gives unknown users away.
"""

from __future__ import annotations

import asyncio
import base64
import struct

import pytest

from pgpool_proxy.auth.scram_client import ScramClient
from pgpool_proxy.protocol import messages as m
from tests.support.proxy import ProxyThread, StartProxy
from tests.support.rawpg import RawClient
from tests.support.waits import wait_for


async def challenge(proxy: ProxyThread, user: str) -> tuple[bytes, int, int, dict[str, str]]:
    """(salt, iterations, server nonce length, the error for a wrong password) for `user`."""
    client = await RawClient.connect(proxy.host, proxy.port)
    try:
        client.send(m.startup_message({"user": user, "database": "app"}))
        t, body = await client.read_message(5)
        assert t == b"R" and struct.unpack("!I", body[:4])[0] == 10, (t, body)
        scram = ScramClient("not the password")
        client.send(m.sasl_initial_response("SCRAM-SHA-256", scram.client_first()))
        t, body = await client.read_message(5)
        assert t == b"R" and struct.unpack("!I", body[:4])[0] == 11, (t, body)
        attrs = dict(a.split("=", 1) for a in body[4:].decode().split(","))
        assert list(attrs) == ["r", "s", "i"]
        client.send(m.sasl_response(scram.handle_server_first(body[4:])))
        err = await client.read_error(5)
        return base64.b64decode(attrs["s"]), int(attrs["i"]), len(attrs["r"]), err
    finally:
        await client.close()


async def test_unknown_users_get_a_stable_salt_of_their_own(start_proxy: StartProxy) -> None:
    proxy = start_proxy()
    real = await challenge(proxy, "alice")
    ghost = await challenge(proxy, "ghost")
    ghost_again = await challenge(proxy, "ghost")
    other = await challenge(proxy, "phantom")
    # Stable per name (as a real user's salt is), distinct across names.
    assert ghost[0] == ghost_again[0]
    assert len({real[0], ghost[0], other[0]}) == 3
    assert (await challenge(proxy, "alice"))[0] == real[0]
    # Same shapes: salt length, iteration count, nonce length, error.
    for probe in (ghost, other):
        assert len(probe[0]) == len(real[0]) == 16
        assert probe[1] == real[1]
        assert probe[2] == real[2]
        assert probe[3]["C"] == real[3]["C"] == "28P01"
    assert real[3]["M"] == 'password authentication failed for user "alice"'
    assert ghost[3]["M"] == 'password authentication failed for user "ghost"'


async def test_mock_salts_differ_between_proxy_processes(start_proxy: StartProxy) -> None:
    """The key is per process: salts of unknown users cannot be precomputed from outside."""
    a = await challenge(start_proxy(), "ghost")
    b = await challenge(start_proxy(), "ghost")
    assert a[0] != b[0]


@pytest.mark.parametrize("iterations", [4096, 10000])
async def test_mock_iterations_follow_the_configured_verifiers(
    start_proxy: StartProxy, iterations: int
) -> None:
    from pgpool_proxy.auth.scram import ScramVerifier

    users = [
        {"name": n, "password": ScramVerifier.from_password("pw", iterations=iterations).to_text()}
        for n in ("u1", "u2")
    ]
    proxy = start_proxy(users=users)
    real = await challenge(proxy, "u1")
    ghost = await challenge(proxy, "ghost")
    assert real[1] == ghost[1] == iterations


async def test_real_verifiers_are_ready_before_the_first_login(start_proxy: StartProxy) -> None:
    """A real user's first exchange must not be the one that pays for PBKDF2 (an unknown user's
    never does): the proxy derives the verifiers of plaintext passwords when it starts."""
    proxy = start_proxy()

    def cached() -> int:
        assert proxy.server is not None
        return len(proxy.server.verifiers.cached)

    # alice, bob and carol have plaintext passwords.
    await wait_for(lambda: cached() >= 3, timeout=5, what="three verifiers derived")
    await challenge(proxy, "alice")
    assert cached() == 3


async def test_first_logins_at_startup_share_one_salt(start_proxy: StartProxy) -> None:
    """Logins racing the startup warm-up for the same user are all challenged with one salt:
    the verifier is derived once and shared (two derivations gave the user two salts, and the
    second challenge then differed from the first, as no real PostgreSQL user's does)."""
    proxy = start_proxy()
    salts = {c[0] for c in await asyncio.gather(*(challenge(proxy, "bob") for _ in range(8)))}
    salts.add((await challenge(proxy, "bob"))[0])
    assert len(salts) == 1, salts
