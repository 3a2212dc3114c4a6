"""SCRAM verifiers the proxy checks clients against: computed once per password (PBKDF2 off the
event loop, one derivation shared by every login that asks meanwhile), mock ones for users
that do not exist, and the ClientKeys recovered from clients' logins for SCRAM pass-through.

ProxyServer owns one Verifiers and keeps the methods session.host.SessionHost names.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from typing import TYPE_CHECKING

from ..auth.scram import DEFAULT_ITERATIONS, ScramVerifier, derive_verifier
from ..config import AuthType

if TYPE_CHECKING:
    from .server import ProxyServer

# ClientKeys kept for SCRAM pass-through (see remember_client_key).
MAX_CLIENT_KEYS = 100_000


class Verifiers:
    """The verifier cache and the ClientKeys of one proxy process."""

    def __init__(self, server: ProxyServer) -> None:
        self.server = server
        self.cached: dict[tuple[str, str], ScramVerifier] = {}
        # Derivations under way; ProxyServer.close cancels them.
        self.deriving: dict[tuple[str, str], asyncio.Future[ScramVerifier]] = {}
        # Unknown users get a verifier derived from their name with this key (PostgreSQL's
        # mock_auth_nonce), so their salts differ per name and stay stable, like real users'.
        self.mock_secret = secrets.token_bytes(32)
        self.mock_iterations_seen: tuple[object, int] | None = None
        self.client_keys: dict[tuple[str, str], bytes] = {}

    def client_key_for(self, server_user: str, secret: str) -> bytes | None:
        """A ClientKey recovered from a client's SCRAM login for this server login (see
        remember_client_key)."""
        return self.client_keys.get((server_user, secret))

    async def scram_verifier(self, user: str, secret: str | None) -> ScramVerifier:
        """The verifier to check a client against; computed once per password, not per login
        (PBKDF2 off the event loop), or a per-name mock one for a user that does not exist."""
        if secret is None:
            return ScramVerifier.mock(self.mock_secret, user, self.mock_scram_iterations())
        key = (user, hashlib.sha256(secret.encode()).hexdigest())
        v = self.cached.get(key)
        if v is not None:
            return v
        parsed = ScramVerifier.parse(secret)
        if parsed is not None:
            self.cached[key] = parsed
            return parsed
        # One derivation per password, shared by every login that asks meanwhile: two would
        # give the user two salts (the second challenge would differ from the first, which
        # tells a prober this user exists) and cost PBKDF2 twice.
        pending = self.deriving.get(key)
        if pending is None:
            pending = asyncio.ensure_future(derive_verifier(secret))
            self.deriving[key] = pending
            pending.add_done_callback(lambda f: self.derived(key, f))
        v = await asyncio.shield(pending)
        return self.cached.get(key, v)

    def derived(self, key: tuple[str, str], f: asyncio.Future[ScramVerifier]) -> None:
        # Stored here, not by the login that started it: that one may have left meanwhile.
        if self.deriving.get(key) is f:
            del self.deriving[key]
        if not f.cancelled() and f.exception() is None:
            self.cached.setdefault(key, f.result())

    async def warm(self) -> None:
        if self.server.config.auth.type is not AuthType.SCRAM_SHA_256:
            return
        for u in self.server.config.users:
            if u.password is not None and not u.iam:
                await self.scram_verifier(u.name, u.password)

    def mock_scram_iterations(self) -> int:
        """The iteration count most configured users' verifiers have, so an unknown user's
        challenge does not stand out by it (plaintext passwords get DEFAULT_ITERATIONS). With
        auth_query, the count PostgreSQL's verifiers have (the most common one looked up): the
        names a prober tries are looked up, not listed."""
        seen = self.server.auth_lookups.iterations
        if seen:
            return max(seen, key=lambda n: (seen[n], n == DEFAULT_ITERATIONS))
        cached = self.mock_iterations_seen
        if cached is not None and cached[0] is self.server.config:
            return cached[1]
        counts: dict[int, int] = {}
        for u in self.server.config.users:
            if u.password is None or u.iam:
                continue
            v = ScramVerifier.parse(u.password)
            n = v.iterations if v is not None else DEFAULT_ITERATIONS
            counts[n] = counts.get(n, 0) + 1
        best = max(counts, key=lambda n: (counts[n], n == DEFAULT_ITERATIONS), default=None)
        iterations = DEFAULT_ITERATIONS if best is None else best
        self.mock_iterations_seen = (self.server.config, iterations)
        return iterations

    def remember_client_key(
        self,
        user: str,
        verifier: ScramVerifier,
        client_key: bytes,
        looked_up: str | None = None,
    ) -> None:
        """Keep a ClientKey so the proxy can log into servers that store the same verifier
        (a listed user's, or the one auth_query found: `looked_up`)."""
        cfg = self.server.config.user(user)
        stored = cfg.password if cfg is not None else looked_up
        if stored is None or ScramVerifier.parse(stored) is None:
            return
        if len(self.client_keys) >= MAX_CLIENT_KEYS and (user, stored) not in self.client_keys:
            # Looked-up users are not bounded by the config: forget the oldest.
            del self.client_keys[next(iter(self.client_keys))]
        self.client_keys[(user, stored)] = client_key
        for (_db, server_user), pool in self.server.pools.items():
            if server_user == user and pool.spec.secret == stored:
                pool.client_key = client_key
