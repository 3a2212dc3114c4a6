"""Owns IAM logins end to end: local checks, the verified-token cache, one verification per token.

A burst of connections presenting the same token (a Lambda fleet warming up) costs one verifier
call: later ones wait for the first, and verified tokens are remembered by hash until expiry.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from ..auth.iam import IamError, IamIdentity, TokenVerifier, parse_token, precheck, token_hash
from ..config import IamSettings
from ..errors import SqlState


class IamAuthenticator:
    def __init__(
        self,
        settings: IamSettings,
        verifier: TokenVerifier,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.verifier = verifier
        self.clock = clock
        self._cache: dict[str, tuple[str, IamIdentity]] = {}  # hash -> (user, identity)
        self._inflight: dict[str, asyncio.Future[IamIdentity]] = {}
        self.cache_hits = 0
        self.verifications = 0

    async def authenticate(self, token: str, user: str, database: str) -> IamIdentity:
        """The verified identity behind `token` for `user`; raises IamError to refuse."""
        s = self.settings
        claims = parse_token(token)
        now = self.clock()
        precheck(
            claims,
            kind=self.verifier.token_kind,
            user=user,
            endpoint=s.endpoint,
            region=s.region,
            max_skew_s=s.max_clock_skew_s,
            now=now,
        )
        key = token_hash(token)
        hit = self._cache.get(key)
        if hit is not None and hit[0] == user and now <= hit[1].expires_at + s.max_clock_skew_s:
            self.cache_hits += 1
            return hit[1]
        pending = self._inflight.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        fut: asyncio.Future[IamIdentity] = asyncio.get_running_loop().create_future()
        fut.add_done_callback(_consume)
        self._inflight[key] = fut
        try:
            self.verifications += 1
            identity = await self.verifier.verify(claims, token, database)
            self._remember(key, user, identity)
            fut.set_result(identity)
            return identity
        except IamError as exc:
            fut.set_exception(IamError(exc.sqlstate, exc.message))
            raise
        finally:
            if not fut.done():
                fut.set_exception(
                    IamError(SqlState.INVALID_AUTHORIZATION, "IAM token verification interrupted")
                )
            del self._inflight[key]

    def _remember(self, key: str, user: str, identity: IamIdentity) -> None:
        limit = self.settings.cache_size
        if limit <= 0:
            return
        cache = self._cache
        if len(cache) >= limit:
            now = self.clock()
            for k in [k for k, (_, ident) in cache.items() if ident.expires_at < now]:
                del cache[k]
            while len(cache) >= limit:
                del cache[next(iter(cache))]  # the oldest entry
        cache[key] = (user, identity)


def _consume(fut: asyncio.Future[IamIdentity]) -> None:
    # Nobody else may be waiting: mark the exception retrieved so asyncio does not warn.
    if not fut.cancelled():
        fut.exception()
