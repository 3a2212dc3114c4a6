"""Owns IAM logins end to end: local checks, the verified-token cache, one verification per token.

A burst of connections presenting the same token (a Lambda fleet warming up) costs one verifier
call: later ones wait for the first, and verified tokens are remembered by hash until expiry.
With `workers = N` the same holds across the instance: a worker that does not know a token asks
the instance's record (`TokenBoard`, kept by the AWS caller worker) first, which answers with a
sibling's verified identity, waits for a sibling's verification under way, or hands this worker
the claim to verify it. Only token hashes, identities and expiries cross processes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Protocol

from ..auth.iam import IamError, IamIdentity, TokenVerifier, parse_token, precheck, token_hash
from ..config import IamSettings
from ..errors import SqlState


class Claim(Protocol):
    """The right (and duty) to verify one token for the whole instance: settle it once."""

    def settle(self, identity: IamIdentity | None, error: IamError | None) -> None: ...


class TokenBoard(Protocol):
    """The instance's record of verified tokens, by hash (see runtime.awscaller)."""

    async def claim(self, key: str, user: str) -> IamIdentity | Claim:
        """A sibling's verified identity for `key`, or a Claim: verify it here. Raises IamError
        when a sibling's verification of the same token was just refused."""
        ...


class VerificationAbandoned(IamError):
    """Whoever held the claim on a token went away before settling it: claim it again."""

    def __init__(self) -> None:
        super().__init__(SqlState.INVALID_AUTHORIZATION, "IAM token verification interrupted")


class _LocalClaim:
    def settle(self, identity: IamIdentity | None, error: IamError | None) -> None:
        pass


class _BoardClaim:
    """A claim this process hands out on its own record (the AWS caller's side)."""

    def __init__(self, owner: IamAuthenticator, key: str, user: str) -> None:
        self.owner = owner
        self.key = key
        self.user = user
        self.fut: asyncio.Future[IamIdentity] = asyncio.get_running_loop().create_future()
        self.fut.add_done_callback(_consume)

    def settle(self, identity: IamIdentity | None, error: IamError | None) -> None:
        if self.owner._inflight.get(self.key) is self.fut:
            del self.owner._inflight[self.key]
        if self.fut.done():
            return
        if identity is not None:
            self.owner._remember(self.key, self.user, identity)
            self.fut.set_result(identity)
        else:
            self.fut.set_exception(error or VerificationAbandoned())


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
        # Set on workers other than the AWS caller: the instance-wide record to ask first.
        self.board: TokenBoard | None = None
        self.cache_hits = 0
        self.verifications = 0
        self.shared_hits = 0  # tokens a sibling worker verified (no verifier call here)

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
        known = await self._known(key, user)
        if known is not None:
            return known[0]
        fut: asyncio.Future[IamIdentity] = asyncio.get_running_loop().create_future()
        fut.add_done_callback(_consume)
        self._inflight[key] = fut
        claim: Claim = _LocalClaim()
        try:
            if self.board is not None:
                got = await self.board.claim(key, user)
                if isinstance(got, IamIdentity):
                    self.shared_hits += 1
                    self._remember(key, user, got)
                    fut.set_result(got)
                    return got
                claim = got
            self.verifications += 1
            try:
                identity = await self.verifier.verify(claims, token, database)
            except IamError as exc:
                claim.settle(None, IamError(exc.sqlstate, exc.message))
                raise
            claim.settle(identity, None)
            self._remember(key, user, identity)
            fut.set_result(identity)
            return identity
        except IamError as exc:
            fut.set_exception(IamError(exc.sqlstate, exc.message))
            raise
        finally:
            if not fut.done():
                claim.settle(None, None)
                fut.set_exception(VerificationAbandoned())
            if self._inflight.get(key) is fut:
                del self._inflight[key]

    async def _known(self, key: str, user: str) -> tuple[IamIdentity, bool] | None:
        """The identity of a token cached (paired with False) or being verified now (True,
        once that verification ends; its IamError is raised here too); None when neither."""
        while True:
            hit = self._cached(key, user)
            if hit is not None:
                self.cache_hits += 1
                return hit, False
            pending = self._inflight.get(key)
            if pending is None:
                return None
            try:
                return await asyncio.shield(pending), True
            except VerificationAbandoned:
                continue  # a sibling's claim on it lapsed: look again, or verify it ourselves

    def _cached(self, key: str, user: str) -> IamIdentity | None:
        hit = self._cache.get(key)
        skew = self.settings.max_clock_skew_s
        if hit is not None and hit[0] == user and self.clock() <= hit[1].expires_at + skew:
            return hit[1]
        return None

    async def claim(self, key: str, user: str) -> IamIdentity | Claim:
        """The TokenBoard of the AWS caller worker: siblings' questions, answered from this
        process's cache and verifications (its own logins' included)."""
        known = await self._known(key, user)
        if known is not None:
            identity, waited = known
            if not waited or self._cached(key, user) is identity:
                return identity
            # Verified for another user: a token names its user, so the asker's precheck
            # refuses it; let the asker's own verifier say so.
            return _LocalClaim()
        claim = _BoardClaim(self, key, user)
        self._inflight[key] = claim.fut
        return claim

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
