"""Owns the `passthrough` IAM verifier: a token is good if an IAM-enabled server accepts it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import struct

from ..auth.iam import IamError, IamIdentity, TokenClaims, TokenKind
from ..auth.md5 import md5_response
from ..auth.scram import MECHANISM, ScramClient, ScramError
from ..config import Config
from ..errors import ProxyError, SqlState
from ..net.connect import ServerTls, open_server_transport
from ..protocol import messages as m

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
        try:
            writer.write(m.startup_message({"user": user, "database": dbname}))
            scram: ScramClient | None = None
            while True:
                head = await reader.readexactly(5)
                t, length = head[0], struct.unpack("!I", head[1:])[0]
                if length < 4 or length > _MAX_REPLY:
                    raise m.ProtocolViolation("invalid message length from server")
                body = await reader.readexactly(length - 4)
                if t == ord("E"):
                    fields = m.parse_error_fields(body)
                    if fields.get("C", "").startswith("28"):
                        raise IamError(
                            SqlState.INVALID_PASSWORD,
                            f"the database refused the IAM token: {fields.get('M', '')}",
                        )
                    raise ProxyError(fields.get("C", "08006"), fields.get("M", "login failed"))
                if t != ord("R"):
                    continue
                code = struct.unpack("!I", body[:4])[0]
                if code == 0:
                    return  # AuthenticationOk: the token is good
                if code == 3:
                    writer.write(m.password_message(token))
                elif code == 5:
                    writer.write(m.password_message(md5_response(token, user, body[4:8])))
                elif code == 10:
                    scram = ScramClient(
                        token, max_iterations=self.config.pool.server_max_scram_iterations
                    )
                    writer.write(m.sasl_initial_response(MECHANISM, scram.client_first()))
                elif code == 11 and scram is not None:
                    writer.write(m.sasl_response(await scram.handle_server_first_async(body[4:])))
                elif code == 12 and scram is not None:
                    scram.handle_server_final(body[4:])
                else:
                    raise ProxyError(
                        SqlState.FEATURE_NOT_SUPPORTED, f"unsupported server auth method {code}"
                    )
        finally:
            with contextlib.suppress(Exception):
                writer.write(m.TERMINATE)
            writer.close()
            with contextlib.suppress(Exception, ssl.SSLError):
                await writer.wait_closed()
