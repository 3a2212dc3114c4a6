"""The proxy's own login to a PostgreSQL server, sans-IO.

Startup, authentication (cleartext, md5, SCRAM-SHA-256 with a password or with a client key
recovered from a client's login), then the server's parameters and cancel key up to
ReadyForQuery. The caller owns the socket: it sends `startup()`, feeds each message the server
sends to `feed()`, and sends what each Step says. Two callers drive it: a pooled server
connection (pool.backend) and the IAM passthrough check (pool.passthrough), which stops at
AuthenticationOk.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ..errors import ProxyError, SqlState
from ..protocol import messages as m
from ..protocol.constants import (
    AUTH_CLEARTEXT,
    AUTH_MD5,
    AUTH_OK,
    AUTH_SASL,
    AUTH_SASL_CONTINUE,
    AUTH_SASL_FINAL,
    B_AUTH,
    B_BACKEND_KEY_DATA,
    B_ERROR,
    B_NEGOTIATE_PROTOCOL,
    B_NOTICE,
    B_PARAMETER_STATUS,
    B_READY_FOR_QUERY,
    INT32,
    TX_IDLE,
)
from .md5 import md5_response
from .scram import MECHANISM, ScramError, ScramProtocolError
from .scram_client import ScramClient

# PostgreSQL sends ~20 messages during a login (a dozen ParameterStatus, a few notices at most);
# a server that keeps talking is refused instead of holding the connect slot until its timeout.
MAX_LOGIN_MESSAGES = 1000
# PostgreSQL reports ~15 parameters; a server that reports far more, or far larger values, is
# not PostgreSQL and must not make the proxy keep its memory (issue 17, finding 8).
MAX_SERVER_PARAMS = 64
MAX_SERVER_PARAMS_BYTES = 1024 * 1024
# Authentication request codes PostgreSQL defines that the proxy does not implement.
_KNOWN_AUTH_CODES = {2: "Kerberos V5", 6: "SCM credentials", 7: "GSSAPI", 8: "GSSAPI", 9: "SSPI"}
# Stored verifiers: what a configuration may hold instead of a password.
_STORED = ("md5", "SCRAM-SHA-256$")


def server_sqlstate(fields: dict[str, str], default: str) -> str:
    """The SQLSTATE of a server's ErrorResponse, or `default` when it has none or a malformed
    one (five digits or upper-case letters), so a client never gets an empty or forged code."""
    code = fields.get("C", "")
    if len(code) == 5 and all(c.isdigit() or "A" <= c <= "Z" for c in code):
        return code
    return default


def params_overflow(params: dict[str, str], name: str, value: str) -> str | None:
    """Why storing name=value in `params` would pass the bounds above, or None if it fits."""
    if name not in params and len(params) >= MAX_SERVER_PARAMS:
        return f"server reported more than {MAX_SERVER_PARAMS} distinct parameters"
    # The dict holds at most MAX_SERVER_PARAMS entries, so this sum is short.
    size = sum(len(k) + len(v) for k, v in params.items() if k != name)
    if size + len(name) + len(value) > MAX_SERVER_PARAMS_BYTES:
        return f"server reported more than {MAX_SERVER_PARAMS_BYTES} bytes of parameters"
    return None


# What the operator should look at, by the server's SQLSTATE (or its class): credentials only
# for an authentication refusal; a database the server does not have is the entry's dbname.
_ADVICE = {
    "28": " Check the credentials the proxy holds for this database.",
    SqlState.INVALID_CATALOG_NAME: (
        " Check the dbname of this database's [[databases]] entry in the proxy's configuration."
    ),
}


class BackendLoginError(ProxyError):
    """The server refused the proxy's login; carries the server's SQLSTATE and message."""

    def __init__(self, sqlstate: str, message: str, **kw: str | None) -> None:
        # The client logged into the proxy; without this, a 28P01 here reads like its own
        # wrong password.
        ours = (
            "The proxy's own login to the server was refused; the client's login to the proxy "
            "succeeded." + _ADVICE.get(sqlstate[:2], _ADVICE.get(sqlstate, ""))
        )
        server = kw.get("detail")
        kw["detail"] = f"{server} {ours}" if server else ours
        super().__init__(sqlstate, message, **kw)  # type: ignore[arg-type]
        # The server's own words, for callers that word the error themselves (passthrough).
        self.server_message = message


def scram_login_error(exc: ScramError) -> BackendLoginError:
    # A server breaking the protocol (foreign nonce, iterations over the cap) is 08P01, as libpq
    # reports it; a refused proof stays 28P01 so rotated credentials are tried.
    if isinstance(exc, ScramProtocolError):
        return BackendLoginError(SqlState.PROTOCOL_VIOLATION, f"server login: {exc}")
    return BackendLoginError(SqlState.INVALID_PASSWORD, str(exc))


@dataclass(frozen=True, slots=True)
class Step:
    """What to do after one server message."""

    send: bytes = b""  # write this to the server now
    # A SCRAM server-first-message: compute the proof off the event loop (`prove`) and send it.
    challenge: bytes | None = None
    authenticated: bool = False  # this message was AuthenticationOk
    ready: bool = False  # this message was ReadyForQuery: the login is complete


_NOTHING = Step()


class ServerLogin:
    """One login, message by message. After `ready`: params, pid, cancel_secret, tx_status."""

    def __init__(
        self,
        user: str,
        database: str,
        secret: str | None,
        *,
        max_iterations: int,
        client_key: bytes | None = None,
        server_key: bytes | None = None,
    ) -> None:
        self.user = user
        self.database = database
        self.secret = secret
        self.max_iterations = max_iterations
        self.client_key = client_key
        self.server_key = server_key
        self.scram: ScramClient | None = None
        self.params: dict[str, str] = {}
        self.pid = 0
        self.cancel_secret = 0
        self.tx_status = TX_IDLE
        self.messages = 0

    def startup(self) -> bytes:
        return m.startup_message({"user": self.user, "database": self.database})

    def feed(self, t: int, body: bytes) -> Step:
        """Take one server message (type byte, body). Raises BackendLoginError when the server
        refuses the login or breaks the protocol."""
        self.messages += 1
        if self.messages > MAX_LOGIN_MESSAGES:
            raise BackendLoginError(
                SqlState.PROTOCOL_VIOLATION,
                f"server sent more than {MAX_LOGIN_MESSAGES} messages during login",
            )
        try:
            return self._feed(t, body)
        except (struct.error, IndexError, ValueError, m.ProtocolViolation) as exc:
            # struct.error: a message too short for its type.
            raise BackendLoginError(
                SqlState.PROTOCOL_VIOLATION,
                f"server sent a malformed {chr(t)!r} message during login: {exc}",
            ) from None

    async def prove(self, challenge: bytes) -> bytes:
        """The SASLResponse to a server-first-message; PBKDF2 runs in a thread, so a server's
        iteration count never stalls the loop."""
        assert self.scram is not None
        try:
            return m.sasl_response(await self.scram.handle_server_first_async(challenge))
        except ScramError as exc:
            raise scram_login_error(exc) from exc
        except (struct.error, IndexError, ValueError) as exc:
            raise BackendLoginError(
                SqlState.PROTOCOL_VIOLATION,
                f"server sent a malformed 'R' message during login: {exc}",
            ) from None

    def _feed(self, t: int, body: bytes) -> Step:
        if t == B_AUTH:
            return self._auth(INT32.unpack_from(body, 0)[0], body)
        if t == B_PARAMETER_STATUS:
            name, value = m.parse_parameter_status(body)
            why = params_overflow(self.params, name, value)
            if why:
                raise BackendLoginError(SqlState.PROTOCOL_VIOLATION, why)
            self.params[name] = value
        elif t == B_BACKEND_KEY_DATA:
            if len(body) != 8:
                raise ValueError("BackendKeyData must be 8 bytes")
            self.pid = INT32.unpack_from(body, 0)[0]
            self.cancel_secret = INT32.unpack_from(body, 4)[0]
        elif t == B_ERROR:
            fields = m.parse_error_fields(body)
            raise BackendLoginError(
                server_sqlstate(fields, SqlState.CONNECTION_FAILURE),
                fields.get("M") or "server refused the login",
                detail=fields.get("D"),
                hint=fields.get("H"),
            )
        elif t == B_READY_FOR_QUERY:
            if len(body) != 1:
                raise ValueError("ReadyForQuery must be 1 byte")
            self.tx_status = body[0]
            return Step(ready=True)
        elif t not in (B_NOTICE, B_NEGOTIATE_PROTOCOL):
            raise BackendLoginError(
                SqlState.PROTOCOL_VIOLATION,
                f"unexpected message {chr(t)!r} from server during login",
            )
        return _NOTHING

    def _auth(self, code: int, body: bytes) -> Step:
        secret = self.secret
        if code == AUTH_OK:
            return Step(authenticated=True)
        if code == AUTH_CLEARTEXT:
            if secret is None or secret.startswith(_STORED):
                raise self._no_password("a cleartext password")
            return Step(send=m.password_message(secret))
        if code == AUTH_MD5:
            if secret is None or secret.startswith("SCRAM-SHA-256$"):
                raise self._no_password("md5 authentication")
            if len(body) != 8:
                raise ValueError("md5 salt must be 4 bytes")
            return Step(send=m.password_message(md5_response(secret, self.user, body[4:8])))
        if code == AUTH_SASL:
            if self.scram is not None:
                raise ValueError("a second SASL exchange")
            if MECHANISM not in m.parse_sasl_mechanisms(body[4:]):
                raise BackendLoginError(
                    SqlState.FEATURE_NOT_SUPPORTED,
                    "server offered no SASL mechanism the proxy supports",
                )
            limit = self.max_iterations
            if self.client_key is not None:
                self.scram = ScramClient(
                    client_key=self.client_key, server_key=self.server_key, max_iterations=limit
                )
            elif secret is not None and not secret.startswith(_STORED):
                self.scram = ScramClient(secret, max_iterations=limit)
            else:
                raise self._no_password("SCRAM-SHA-256 authentication")
            return Step(send=m.sasl_initial_response(MECHANISM, self.scram.client_first()))
        if code == AUTH_SASL_CONTINUE and self.scram is not None:
            return Step(challenge=body[4:])
        if code == AUTH_SASL_FINAL and self.scram is not None:
            try:
                self.scram.handle_server_final(body[4:])
            except ScramError as exc:
                raise scram_login_error(exc) from exc
            return _NOTHING
        if code in (AUTH_SASL_CONTINUE, AUTH_SASL_FINAL):
            raise ValueError(f"SASL message (code {code}) before the SASL exchange began")
        if code in _KNOWN_AUTH_CODES:
            raise BackendLoginError(
                SqlState.FEATURE_NOT_SUPPORTED,
                f"server requested {_KNOWN_AUTH_CODES[code]} authentication, which the "
                f"proxy does not support (code {code})",
            )
        raise BackendLoginError(
            SqlState.PROTOCOL_VIOLATION,
            f"server sent an invalid authentication request (code {code})",
        )

    def _no_password(self, what: str) -> BackendLoginError:
        return BackendLoginError(
            SqlState.INVALID_PASSWORD,
            f'the server requires {what} for user "{self.user}" and the proxy has no usable '
            "password for it",
            hint="Give the user a plaintext password in the proxy configuration, or log in once "
            "with SCRAM so the proxy can reuse the client key.",
        )
