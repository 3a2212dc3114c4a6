"""Owns database credentials from AWS Secrets Manager: fetch, shape check, cache and rotation.

Each secret is cached (AWSCURRENT) and refreshed in the background after a jittered interval,
one refresh per secret at a time. boto3 runs in worker threads, never on the event loop. When
Secrets Manager is unreachable the last good credentials keep being served. When the server
refuses them (28P01) the pool asks for a forced refresh and tries AWSCURRENT, then AWSPENDING:
between a rotation's password change and its label move only AWSPENDING works.

With `workers = N` only the AWS caller worker talks to Secrets Manager: the others' secrets get
a `remote` (runtime.awscaller) and ask it instead, forced refreshes included; they call AWS
themselves only while it does not answer.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..config import DatabaseConfig, SecretsSettings, region_of_secret_arn
from ..errors import ProxyError, SqlState
from .clients import boto_client

log = logging.getLogger("pgpool_proxy.secrets")

Spawn = Callable[[Coroutine[Any, Any, None], str], None]

# How long a forced refresh (after a refused login) answers later refusals of the same password
# (a stale AWSPENDING is handed out no longer than this).
FORCED_REUSE_S = 10.0


class SecretError(Exception):
    """A secret could not be fetched or does not have the RDS secret shape."""


@dataclass(frozen=True, slots=True)
class DbCredentials:
    """The parts of a standard RDS secret the proxy uses (host/port/dbname are informative)."""

    username: str
    password: str = field(repr=False)
    host: str | None = None
    port: int | None = None
    dbname: str | None = None
    version_id: str = ""


def parse_db_secret(text: str, arn: str, version_id: str = "") -> DbCredentials:
    """Validate a secret string of the RDS shape {username, password, host, port, ...}."""
    try:
        doc = json.loads(text)
    except ValueError:
        raise SecretError(f"secret {arn} is not JSON (expected the RDS secret format)") from None
    if not isinstance(doc, dict):
        raise SecretError(f"secret {arn} must be a JSON object with username and password")
    username, password = doc.get("username"), doc.get("password")
    if not isinstance(username, str) or not username:
        raise SecretError(f'secret {arn} has no "username" string')
    if not isinstance(password, str) or not password:
        raise SecretError(f'secret {arn} has no "password" string')
    port = doc.get("port")
    if isinstance(port, str) and port.strip().isdigit():
        port = int(port)
    if port is not None and (isinstance(port, bool) or not isinstance(port, int)):
        raise SecretError(f'secret {arn}: "port" must be a number or a numeric string')
    host, dbname = doc.get("host"), doc.get("dbname")
    if host is not None and not isinstance(host, str):
        raise SecretError(f'secret {arn}: "host" must be a string')
    if dbname is not None and not isinstance(dbname, str):
        raise SecretError(f'secret {arn}: "dbname" must be a string')
    return DbCredentials(username, password, host, port, dbname, version_id)


class SharedSecrets(Protocol):
    """The AWS caller worker's copy of the secrets, as a sibling worker reaches it."""

    async def fetch_shared(
        self, arn: str, with_pending: bool, failed_password: str | None, asked: float
    ) -> tuple[DbCredentials, DbCredentials | None, float] | None:
        """(AWSCURRENT, AWSPENDING when asked for, seconds until the caller's next refresh) as
        the caller has them, refreshed when due or, with `with_pending`, after a refused login
        unless it already has newer ones; None when the caller does not answer. Raises
        SecretError when it has no value either."""
        ...


class SecretsClient:
    """A boto3 Secrets Manager client for one (region, endpoint); every call blocks (threads)."""

    def __init__(self, region: str, endpoint_url: str | None, timeout_s: float) -> None:
        self.region = region
        self.endpoint_url = endpoint_url
        self.timeout_s = timeout_s
        self._client: Any = None

    def _get_client(self) -> Any:
        if self._client is None:
            self._client = boto_client(
                "secretsmanager", self.region, self.endpoint_url, self.timeout_s
            )
        return self._client

    def fetch(self, arn: str, stage: str) -> tuple[str, str] | None:
        """(version id, secret string) of `stage`, None if no version has it; raises
        SecretError for anything else."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            # moto (and some endpoints) need the stage spelled out explicitly.
            resp = self._get_client().get_secret_value(SecretId=arn, VersionStage=stage)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code == "ResourceNotFoundException" and stage != "AWSCURRENT":
                return None
            raise SecretError(f"Secrets Manager refused {arn} ({stage}): {code}") from None
        except BotoCoreError as exc:
            raise SecretError(f"Secrets Manager unreachable for {arn}: {exc}") from None
        text = resp.get("SecretString")
        if not isinstance(text, str):
            raise SecretError(f"secret {arn} has no SecretString (binary secrets are not used)")
        return str(resp.get("VersionId", "")), text


class CachedSecret:
    """One secret's credentials for the pools of one database (a CredentialSource)."""

    def __init__(
        self, arn: str, client: SecretsClient, settings: SecretsSettings, spawn: Spawn
    ) -> None:
        self.arn = arn
        self.client = client
        self.settings = settings
        self.spawn = spawn
        self.value: DbCredentials | None = None
        self.pending: DbCredentials | None = None
        # AWSPENDING proven to work while AWSCURRENT does not (mid-rotation), used until the
        # labels move.
        self.preferred: DbCredentials | None = None
        self.fetched_at = 0.0
        self.next_refresh = 0.0
        self.fetches = 0  # calls to Secrets Manager (through `remote`: none)
        self.shared_fetches = 0  # values taken from the AWS caller worker
        self.remote: SharedSecrets | None = None
        self._failed_password: str | None = None
        self.failures = 0  # fetches that failed (the last good value was kept, if any)
        self._refreshing: asyncio.Future[None] | None = None
        self._last_attempt = (-1.0, False)  # (when, with AWSPENDING) of the latest fetch
        self.last_error = "not fetched yet"

    # --- CredentialSource ----------------------------------------------------------------

    async def current(self) -> tuple[str, str]:
        refreshing = self._refreshing
        if refreshing is not None and self._last_attempt[1]:
            # A server refused the cached password and the refresh it forced is under way: a
            # login with the cached copy now would only be refused too (and cost another
            # forced refresh).
            await asyncio.shield(refreshing)
        value = self.preferred or self.value
        if value is None:
            await self.refresh()
            value = self.value
            if value is None:
                raise self._unavailable()
        elif time.monotonic() >= self.next_refresh and self._refreshing is None:
            self.spawn(self._background_refresh(), f"secret-refresh {self.arn}")
        return value.username, value.password

    async def after_auth_failure(self, failed_password: str) -> list[tuple[str, str]]:
        await self.forced_refresh(failed_password)
        out: list[tuple[str, str]] = []
        for cred in (self.value, self.pending):
            if cred is not None and cred.password != failed_password:
                pair = (cred.username, cred.password)
                if pair not in out:
                    out.append(pair)
        return out

    def note_success(self, user: str, password: str) -> None:
        pending = self.pending
        if pending is not None and (pending.username, pending.password) == (user, password):
            if self.preferred is None:
                log.info(
                    "secret %s: AWSPENDING works and AWSCURRENT does not (rotation in "
                    "progress); using AWSPENDING",
                    self.arn,
                )
            self.preferred = pending
        else:
            self.preferred = None

    # --- refresh -------------------------------------------------------------------------

    async def refresh(self, with_pending: bool = False, asked: float | None = None) -> None:
        """Fetch now, or join a fetch already running that started after this call (or
        `asked`, a sibling worker's monotonic time: one clock per host); one fetch per secret
        at a time; keeps the old value when Secrets Manager fails."""
        if asked is None:
            asked = time.monotonic()
        while self._refreshing is not None:
            await asyncio.shield(self._refreshing)
            started, had_pending = self._last_attempt
            if started >= asked and (had_pending or not with_pending):
                if self.value is None:
                    raise self._unavailable()
                return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._refreshing = fut
        self._last_attempt = (time.monotonic(), with_pending)
        try:
            await self._fetch(with_pending)
        except SecretError as exc:
            self.failures += 1
            self.last_error = str(exc)
            self.next_refresh = time.monotonic() + self.settings.retry_interval_s
            if self.value is None:
                raise self._unavailable() from None
            log.warning("keeping the last good credentials of %s: %s", self.arn, exc)
        finally:
            self._refreshing = None
            fut.set_result(None)

    async def forced_refresh(self, failed_password: str | None, asked: float | None = None) -> None:
        """A server refused `failed_password`: fetch AWSCURRENT and AWSPENDING, unless a forced
        fetch of the last FORCED_REUSE_S already brought other credentials to try. Refusals
        come from many logins (and, with workers, many processes) at once: the first fetches,
        the others look at its result (nothing awaits between settled() and refresh()
        starting, so two cannot both start one)."""
        await self.settled()
        if self._fresh_alternative(failed_password):
            return
        self._failed_password = failed_password
        await self.refresh(with_pending=True, asked=asked)

    def _fresh_alternative(self, failed: str | None) -> bool:
        started, with_pending = self._last_attempt
        if failed is None or not with_pending or time.monotonic() - started > FORCED_REUSE_S:
            return False
        return any(c is not None and c.password != failed for c in (self.value, self.pending))

    async def settled(self) -> None:
        """Once no fetch of this secret is under way (the startup fetch included)."""
        while self._refreshing is not None:
            await asyncio.shield(self._refreshing)

    @property
    def last_attempt(self) -> tuple[float, bool]:
        """(monotonic start, with AWSPENDING) of the latest fetch."""
        return self._last_attempt

    async def prime(self) -> None:
        """The startup fetch: raises SecretError; a refresh asked for meanwhile joins it."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._refreshing = fut
        self._last_attempt = (time.monotonic(), False)
        try:
            await self._fetch(with_pending=False)
        finally:
            self._refreshing = None
            fut.set_result(None)

    def _unavailable(self) -> ProxyError:
        return ProxyError(
            SqlState.SQLCLIENT_UNABLE_TO_ESTABLISH,
            f"cannot get server credentials: {self.last_error}",
        )

    async def _background_refresh(self) -> None:
        try:
            await self.refresh()
        except ProxyError as exc:
            log.warning("%s", exc.message)

    async def _fetch(self, with_pending: bool) -> None:
        failed = None
        if with_pending:
            failed, self._failed_password = self._failed_password, None
        if self.remote is not None:
            shared = await self.remote.fetch_shared(
                self.arn, with_pending, failed, time.monotonic()
            )
            if shared is not None:
                self.shared_fetches += 1
                self._apply(shared[0], shared[1], with_pending)
                # Ask again soon after the caller's own refresh, not a whole interval later.
                self.next_refresh = min(self.next_refresh, time.monotonic() + shared[2] + 1.0)
                return
        self.fetches += 1
        got = await asyncio.to_thread(self.client.fetch, self.arn, "AWSCURRENT")
        assert got is not None
        value = parse_db_secret(got[1], self.arn, got[0])
        pending: DbCredentials | None = None
        if with_pending:
            p = await asyncio.to_thread(self.client.fetch, self.arn, "AWSPENDING")
            if p is not None and p[0] != got[0]:
                try:
                    pending = parse_db_secret(p[1], self.arn, p[0])
                except SecretError as exc:
                    log.warning("ignoring AWSPENDING of %s: %s", self.arn, exc)
        self._apply(value, pending, with_pending)

    def _apply(
        self, value: DbCredentials, pending: DbCredentials | None, with_pending: bool
    ) -> None:
        if self.value is not None and self.value.version_id != value.version_id:
            log.info("secret %s: new AWSCURRENT version %s", self.arn, value.version_id)
        preferred = self.preferred
        if preferred is not None and (
            value.version_id == preferred.version_id  # the labels moved: rotation finished
            or (with_pending and (pending is None or pending.version_id != preferred.version_id))
        ):
            self.preferred = None
        self.value = value
        if with_pending:
            self.pending = pending
        self.fetched_at = time.monotonic()
        s = self.settings
        jitter = 1.0 - s.refresh_jitter * random.random()
        self.next_refresh = self.fetched_at + s.refresh_interval_s * jitter


class SecretStore:
    """The secrets of every database that names one; primed at startup."""

    def __init__(
        self, settings: SecretsSettings, databases: tuple[DatabaseConfig, ...], spawn: Spawn
    ) -> None:
        self.secrets: dict[str, CachedSecret] = {}
        clients: dict[tuple[str, str | None], SecretsClient] = {}
        for db in databases:
            arn = db.secret_arn
            if arn is None or arn in self.secrets:
                continue
            region = db.secret_region or region_of_secret_arn(arn) or ""
            key = (region, db.secret_endpoint_url)
            client = clients.get(key)
            if client is None:
                client = SecretsClient(region, db.secret_endpoint_url, settings.request_timeout_s)
                clients[key] = client
            self.secrets[arn] = CachedSecret(arn, client, settings, spawn)

    def for_database(self, db: DatabaseConfig) -> CachedSecret | None:
        return self.secrets.get(db.secret_arn) if db.secret_arn else None

    async def start(self) -> None:
        """Fetch every secret once; a missing or malformed secret stops the startup."""
        for secret in self.secrets.values():
            try:
                await secret.prime()
            except SecretError as exc:
                raise SecretError(f"databases: {exc}") from None
