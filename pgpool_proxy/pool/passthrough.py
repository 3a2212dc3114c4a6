"""Owns the `passthrough` IAM verifier: a token is good if an IAM-enabled server accepts it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import struct

from ..auth.iam import IamError, IamIdentity, TokenClaims, TokenKind
from ..auth.scram import ScramError
from ..auth.server_login import BackendLoginError, ServerLogin
from ..config import Config
from ..errors import ProxyError, SqlState
from ..net.connect import ServerTls, open_server_transport
from ..protocol import messages as m
from ..protocol.constants import INT32

log = logging.getLogger("pgpool_proxy.iam")

_MAX_REPLY = 64 * 1024


class PassthroughVerifier:
    """Logs into the database's server as the token's user with the token as password (how RDS
    checks IAM tokens); success is cached by the caller until the token expires."""

    token_kind: TokenKind = "rds"
    name = "passthrough"

    def __init__(self, config: Config, tls: ServerTls, timeout_s: float) -> None:
        self.config = config
        self.tls = tls
        self.timeout_s = timeout_s

    async def verify(self, claims: TokenClaims, token: str, database: str) -> IamIdentity:
        db = self.config.database(database)
        if db is None:
            raise IamError(
                SqlState.INVALID_PASSWORD,
                f'cannot check the IAM token: database "{database}" is not configured',
            )
        try:
            async with asyncio.timeout(self.timeout_s):
                await self._login(db.host, db.port, db.dbname or db.name, claims.db_user, token)
        except (
            OSError,
            TimeoutError,
            ProxyError,
            ScramError,
            m.ProtocolViolation,
            struct.error,  # a message too short for its type
            ValueError,  # the md5 salt check
            IndexError,
        ) as exc:
            log.warning("passthrough IAM check against %s:%s failed: %s", db.host, db.port, exc)
            raise IamError(
                SqlState.INVALID_AUTHORIZATION,
                "could not verify the IAM token: the database server is unreachable",
            ) from None
        return IamIdentity(principal=claims.access_key_id, expires_at=claims.expires_at)

    async def _login(self, host: str, port: int, dbname: str, user: str, token: str) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=_MAX_REPLY)
        proto = asyncio.StreamReaderProtocol(reader)
        transport = await open_server_transport(lambda: proto, host, port, self.tls)
        writer = asyncio.StreamWriter(transport, proto, reader, loop)  # type: ignore[arg-type]
        login = ServerLogin(
            user, dbname, token, max_iterations=self.config.pool.server_max_scram_iterations
        )
        try:
            writer.write(login.startup())
            while True:
                head = await reader.readexactly(5)
                t, length = head[0], INT32.unpack_from(head, 1)[0]
                if length < 4 or length > _MAX_REPLY:
                    raise m.ProtocolViolation("invalid message length from server")
                body = await reader.readexactly(length - 4)
                try:
                    step = login.feed(t, body)
                    if step.authenticated:
                        return  # AuthenticationOk: the token is good
                    out = step.send
                    if step.challenge is not None:
                        out = await login.prove(step.challenge)
                except BackendLoginError as exc:
                    if exc.sqlstate.startswith("28"):
                        raise IamError(
                            SqlState.INVALID_PASSWORD,
                            f"the database refused the IAM token: {exc.server_message}",
                        ) from None
                    raise ProxyError(exc.sqlstate, exc.server_message) from None
                writer.write(out)
        finally:
            with contextlib.suppress(Exception):
                writer.write(m.TERMINATE)
            writer.close()
            with contextlib.suppress(Exception, ssl.SSLError):
                await writer.wait_closed()
