"""The process a client connection lives in, as the session layer sees it.

A Protocol, so session/ never imports the runtime above it: runtime.server.ProxyServer
satisfies it (mypy checks that where the server creates its clients). The admin console is
reached through `open_console`, so the session does not import the admin package either.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Protocol

from ..auth.scram import ScramVerifier
from ..config import Config, DatabaseConfig, UserConfig
from ..counters import ProxyCounters
from ..pool.pool import Pool

if TYPE_CHECKING:
    from ..aws.iam_cache import IamAuthenticator
    from .client import ClientConnection
    from .client_state import ClientState


class SessionServices(Protocol):
    """Client-side TLS and IAM, as login needs them."""

    @property
    def client_tls(self) -> ssl.SSLContext | None: ...

    @property
    def tls_required(self) -> bool: ...

    @property
    def iam(self) -> IamAuthenticator | None: ...


# Where a user not in [[users]] is looked up: (auth_user, database, query, user).
LookupKey = tuple[str, str, str, str]


class AuthLookupService(Protocol):
    """auth_query, as login uses it (runtime.authquery.AuthLookups)."""

    def key_for(self, db: DatabaseConfig | None, user: str) -> LookupKey | None: ...

    async def secret(self, key: LookupKey) -> str | None: ...

    def refresh_after_failure(self, key: LookupKey) -> None: ...


class SessionHost(Protocol):
    """What a client connection and its login read and call on the process serving them."""

    @property
    def config(self) -> Config: ...

    @property
    def services(self) -> SessionServices: ...

    @property
    def counters(self) -> ProxyCounters: ...

    @property
    def auth_lookups(self) -> AuthLookupService: ...

    @property
    def pools(self) -> Mapping[tuple[str, str], Pool]: ...

    @property
    def tracked_params(self) -> tuple[str, ...]: ...

    @property
    def tracked_lower(self) -> Mapping[str, str]: ...

    @property
    def settings_sigs(self) -> dict[tuple[object, ...], tuple[object, ...]]: ...

    @property
    def client_count(self) -> int: ...

    @property
    def draining(self) -> bool: ...

    def client_connected(self, client: ClientConnection) -> None: ...

    def client_closed(self, client: ClientConnection, prev: ClientState) -> None: ...

    def register_cancel_key(self, client: ClientConnection) -> tuple[int, int]: ...

    @property
    def peer_id(self) -> int: ...

    def cancel_request(
        self, pid: int, secret: int, *, relayed: bool = False, done: Callable[[], None] = ...
    ) -> None: ...

    def get_pool(
        self,
        db: DatabaseConfig,
        user_cfg: UserConfig | None,
        user: str,
        looked_up: str | None = None,
    ) -> Pool: ...

    async def scram_verifier(self, user: str, secret: str | None) -> ScramVerifier: ...

    def remember_client_key(
        self,
        user: str,
        verifier: ScramVerifier,
        client_key: bytes,
        looked_up: str | None = None,
    ) -> None: ...

    def open_console(self, client: ClientConnection, params: Mapping[str, str]) -> None:
        """Hand a login to the admin database over to the admin console."""
