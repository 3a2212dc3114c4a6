"""auth_query: the stored passwords of users not in [[users]], looked up in PostgreSQL.

PgBouncer's semantics: the query (default `SELECT usename, passwd FROM pg_shadow WHERE
usename=$1`) runs as auth_user, a [[users]] entry, on a server connection of auth_user's own pool
in auth_dbname (default: the database the client asked for), with the client's name bound as $1
(never spliced into SQL). Its answer, an md5 hash or a SCRAM verifier (or no row, or NULL), is
what the client's login is checked against, exactly as a listed user's stored password.

Answers are cached: a verifier for `auth_cache_s`, "no such user" (and a failed look-up) for
`auth_negative_cache_s`, so a flood of logins under one name costs PostgreSQL one look-up per
period, and concurrent logins of one name share one look-up. A failed login refreshes a cached
verifier in the background, at most once per `auth_refresh_s` per user, so a password changed in
PostgreSQL is seen by the next login without making refusals slower than for unknown users.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..auth.scram import ScramVerifier
from ..config import DatabaseConfig
from ..counters import LOOKUP_FAILED, LOOKUP_FOUND, LOOKUP_NOT_FOUND
from ..errors import ProxyError

if TYPE_CHECKING:
    from .server import ProxyServer

log = logging.getLogger("pgpool_proxy.auth_query")

# Cached answers kept at most (oldest dropped first): a flood of made-up names cannot grow it.
MAX_CACHED = 10_000

# (auth_user, database the query runs in, query, client user)
LookupKey = tuple[str, str, str, str]


@dataclass(slots=True)
class _Entry:
    secret: str | None
    expires: float
    fetched: float


class AuthLookups:
    """The cache and the in-flight look-ups of one process (owned by ProxyServer)."""

    def __init__(
        self, server: ProxyServer, spawn: Callable[[Coroutine[Any, Any, None], str], None]
    ) -> None:
        self._server = server
        self._spawn = spawn
        self._cache: dict[LookupKey, _Entry] = {}
        self._inflight: dict[LookupKey, asyncio.Future[str | None]] = {}
        self._results = server.counters.auth_lookups  # by result, for the metrics
        # Iteration counts of the SCRAM verifiers found, by count: unknown names' mock
        # challenges use the most common (ProxyServer.mock_scram_iterations).
        self.iterations: dict[int, int] = {}

    @property
    def queries(self) -> int:
        """Look-ups sent to PostgreSQL so far."""
        return sum(self._results.values())

    def pending(self) -> list[asyncio.Future[str | None]]:
        """Look-ups under way (ProxyServer.close cancels them)."""
        return list(self._inflight.values())

    def key_for(self, db: DatabaseConfig | None, user: str) -> LookupKey | None:
        """Where `user` logging into `db` (None: a database the proxy does not have) is looked
        up; None when it is not."""
        found = self._server.config.auth_lookup_for(db)
        if found is None:
            return None
        auth_user, query, dbname = found
        if dbname is None:
            if db is None:
                # No auth_dbname, so the look-up would run in the client's own database, which
                # does not exist here: nowhere to look.
                return None
            dbname = db.name
        return (auth_user, dbname, query, user)

    async def secret(self, key: LookupKey) -> str | None:
        """The stored password for the key's user; None for no such user (or a failed
        look-up, which is logged for the operator)."""
        loop = asyncio.get_running_loop()
        entry = self._cache.get(key)
        if entry is not None and entry.expires > loop.time():
            return entry.secret
        return await self._lookup(key)

    def refresh_after_failure(self, key: LookupKey) -> None:
        """A login with a cached verifier failed: maybe the password changed in PostgreSQL.
        Look again in the background, at most once per auth_refresh_s per user."""
        entry = self._cache.get(key)
        if entry is None or entry.secret is None or key in self._inflight:
            return
        now = asyncio.get_running_loop().time()
        if now - entry.fetched < self._server.config.auth.auth_refresh_s:
            return
        entry.fetched = now  # one refresh per period even if this one fails
        self._spawn(self._refresh(key), "auth-query-refresh")

    async def _refresh(self, key: LookupKey) -> None:
        await self._lookup(key)

    async def _lookup(self, key: LookupKey) -> str | None:
        pending = self._inflight.get(key)
        if pending is None:
            pending = asyncio.ensure_future(self._query(key))
            self._inflight[key] = pending
            pending.add_done_callback(lambda f: self._done(key, f))
        # Shared: a login that leaves must not cancel the look-up others wait for.
        return await asyncio.shield(pending)

    def _done(self, key: LookupKey, f: asyncio.Future[str | None]) -> None:
        if self._inflight.get(key) is f:
            del self._inflight[key]

    async def _query(self, key: LookupKey) -> str | None:
        auth_user, dbname, query, user = key
        server = self._server
        cfg = server.config
        loop = asyncio.get_running_loop()
        started = loop.time()
        secret: str | None = None
        ttl = cfg.auth.auth_negative_cache_s
        result = LOOKUP_FAILED
        try:
            db = cfg.database(dbname)
            if db is None:
                raise ProxyError("3D000", f'auth_dbname "{dbname}" is not a [[databases]] entry')
            pool = server.get_pool(db, cfg.user(auth_user), auth_user, as_user=True)
            rows = await pool.own_query(query, [user], cfg.auth.auth_query_timeout_s)
        except TimeoutError:
            log.error(
                "auth_query for user %r as %r in %r did not answer within %gs "
                "(auth.auth_query_timeout_s); the login is refused",
                user,
                auth_user,
                dbname,
                cfg.auth.auth_query_timeout_s,
            )
        except ProxyError as exc:
            log.error(
                "auth_query for user %r as %r in %r failed: %s %s; the login is refused "
                "(check auth_user's password and its right to run auth_query)",
                user,
                auth_user,
                dbname,
                exc.sqlstate,
                exc.message,
            )
        except Exception:
            # A bug refuses this login cleanly (and is cached briefly), never the process.
            log.exception("auth_query for user %r as %r in %r failed", user, auth_user, dbname)
        else:
            if len(rows) > 1:
                log.error(
                    "auth_query for user %r returned %d rows (at most one expected); the "
                    "login is refused",
                    user,
                    len(rows),
                )
            else:
                result = LOOKUP_NOT_FOUND
                row = rows[0] if rows else []
                if len(row) >= 2 and row[1]:
                    secret = row[1]
                    ttl = cfg.auth.auth_cache_s
                    result = LOOKUP_FOUND
                    verifier = ScramVerifier.parse(secret)
                    if verifier is not None and (
                        verifier.iterations in self.iterations or len(self.iterations) < 16
                    ):
                        n = verifier.iterations
                        self.iterations[n] = self.iterations.get(n, 0) + 1
        self._results[result] += 1
        cache = self._cache
        cache.pop(key, None)
        while len(cache) >= MAX_CACHED:
            del cache[next(iter(cache))]
        cache[key] = _Entry(secret, started + ttl, started)
        return secret
