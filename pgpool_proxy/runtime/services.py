"""Owns what login and pools need beyond the config: TLS contexts, IAM, Secrets Manager.

Built once per proxy process from the config; anything unusable (a certificate that does not
load, a malformed keyring, a secret of the wrong shape) is a `StartupError` naming its key.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from ..config import ClientTlsMode, Config, DatabaseConfig, IamVerifierKind
from ..net.connect import ServerTls
from ..net.tls import TlsSetupError, client_side_context, server_side_context

if TYPE_CHECKING:
    from ..aws.iam_cache import IamAuthenticator
    from ..aws.secrets import SecretStore
    from ..pool.spec import CredentialSource

Spawn = Callable[[Coroutine[Any, Any, None], str], None]


class StartupError(Exception):
    """The proxy cannot start with this configuration; the message says why."""


class Services:
    def __init__(self, config: Config, spawn: Spawn) -> None:
        self.config = config
        try:
            self.client_tls: ssl.SSLContext | None = client_side_context(config.client_tls)
            self.server_tls = ServerTls(
                config.server_tls.mode, server_side_context(config.server_tls)
            )
        except TlsSetupError as exc:
            raise StartupError(str(exc)) from None
        self.tls_required = config.client_tls.mode is ClientTlsMode.REQUIRE
        self.iam: IamAuthenticator | None = None
        if any(u.iam for u in config.users):
            self.iam = self._build_iam()
        self.secrets: SecretStore | None = None
        if any(db.secret_arn for db in config.databases):
            from ..aws.secrets import SecretStore

            self.secrets = SecretStore(config.secrets, config.databases, spawn)

    def _build_iam(self) -> IamAuthenticator:
        from ..auth.iam import TokenVerifier
        from ..aws.iam_cache import IamAuthenticator

        cfg = self.config
        iam = cfg.iam
        verifier: TokenVerifier
        if iam.verifier is IamVerifierKind.STS:
            from ..aws.sts_verifier import StsVerifier

            verifier = StsVerifier(iam.sts_endpoint_urls(), cfg.iam_rules, iam.sts_timeout_s)
        elif iam.verifier is IamVerifierKind.KEYRING:
            from ..aws.keyring import KeyringError, KeyringVerifier, load_keyring

            try:
                verifier = KeyringVerifier(load_keyring(iam.keyring_file))
            except KeyringError as exc:
                raise StartupError(str(exc)) from None
        else:
            from ..pool.passthrough import PassthroughVerifier

            verifier = PassthroughVerifier(cfg, self.server_tls, cfg.pool.server_connect_timeout_s)
        return IamAuthenticator(iam, verifier)

    async def start(self) -> None:
        if self.secrets is not None:
            from ..aws.secrets import SecretError

            try:
                await self.secrets.start()
            except SecretError as exc:
                raise StartupError(str(exc)) from None

    def credentials_for(self, db: DatabaseConfig) -> CredentialSource | None:
        return self.secrets.for_database(db) if self.secrets is not None else None

    def server_user(self, db: DatabaseConfig, client_user: str) -> str:
        """The server user a client's pool logs in as (a secret's user when it has one)."""
        if self.secrets is not None:
            secret = self.secrets.for_database(db)
            if secret is not None:
                return secret.value.username if secret.value is not None else "<secret>"
        return db.user or client_user
