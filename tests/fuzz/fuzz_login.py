"""A client's whole login as the proxy runs it (session.login.start_login), fed raw bytes.

The input is everything a client sends before it stops (startup packet, maybe an SSLRequest
first, password or SASL messages). The input's length picks the proxy's configuration: auth
trust, md5, SCRAM, or an IAM user on a TLS connection, whose token goes through parse_token and
precheck as IamCache runs them. The real ClientConnection and login code run against a stub
server on a private event loop; the proxy's writes are collected and parsed.

Contract: the proxy answers only with well-formed messages, never XX000 (an internal error),
and a malformed startup packet gets 08P01. Startup parsing (parse_startup_packet,
parse_options) is covered here too.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable
from typing import Any

from tests.fuzz._common import instrumented, main

with instrumented(
    "pgpool_proxy.session.login",
    "pgpool_proxy.session.authenticate",
    "pgpool_proxy.protocol.messages",
    "pgpool_proxy.auth",
    "pgpool_proxy.net.endpoint",
):
    from pgpool_proxy.auth.iam import IamError, IamIdentity, parse_token, precheck
    from pgpool_proxy.auth.scram import ScramVerifier
    from pgpool_proxy.config import parse_config
    from pgpool_proxy.net.endpoint import EndpointClosed
    from pgpool_proxy.protocol import messages as m
    from pgpool_proxy.session.client import ClientConnection
    from pgpool_proxy.session.login import start_login

EXPECTED: tuple[type[BaseException], ...] = ()

_CONFIG = """
[proxy]
listen = "127.0.0.1:0"
client_login_timeout_s = 5
[auth]
type = "{auth}"
[admin]
database = "console-db-the-fuzzer-will-not-guess-0123456789"
[[databases]]
name = "app"
host = "127.0.0.1"
port = 5432
[[users]]
name = "alice"
password = "secret"
"""
_CONFIGS = [parse_config(_CONFIG.format(auth=a), env={}) for a in ("trust", "md5", "scram-sha-256")]
_IAM_CONFIG = dataclasses.replace(
    _CONFIGS[2], users=tuple(dataclasses.replace(u, iam=True) for u in _CONFIGS[2].users)
)
_CONFIGS.append(_IAM_CONFIG)
_VERIFIER = ScramVerifier.from_password("secret", salt=b"0123456789abcdef")


class _Counters:
    def __init__(self) -> None:
        self.auth_failures: dict[str, int] = {}
        self.logins = 0


class _Iam:
    """The local half of IamCache.authenticate; the signature check always refuses."""

    async def authenticate(self, token: str, user: str, database: str) -> IamIdentity:
        claims = parse_token(token)
        precheck(
            claims,
            kind=claims.kind,
            user=user,
            endpoint=claims.endpoint,
            region=claims.region,
            max_skew_s=60,
            now=claims.signed_at,
        )
        raise IamError("28P01", "signature does not match")


class _Services:
    client_tls = None
    tls_required = False

    def __init__(self, iam: bool) -> None:
        self.iam = _Iam() if iam else None


class _NoLookups:
    """auth_query as configured here: off (no [auth] auth_user), so no user is looked up."""

    def key_for(self, db: object, user: str) -> None:
        return None

    async def secret(self, key: object) -> None:
        return None

    def refresh_after_failure(self, key: object) -> None:
        pass


class _Server:
    """What login touches of ProxyServer (session.host.SessionHost); reaching a pool ends the
    run as a departure would."""

    def __init__(self, config: Any) -> None:
        self.config = config
        self.services = _Services(config is _IAM_CONFIG)
        self.counters = _Counters()
        self.client_count = 1
        self.draining = False
        self.auth_lookups = _NoLookups()

    async def scram_verifier(self, user: str, secret: str | None) -> ScramVerifier:
        return _VERIFIER

    def remember_client_key(self, *args: object) -> None:
        pass

    def cancel_request(
        self, pid: int, secret: int, *, relayed: bool = False, done: Callable[[], None] = print
    ) -> None:
        done()

    def client_closed(self, client: object, prev: object) -> None:
        pass

    def get_pool(self, *args: object) -> None:
        raise EndpointClosed


class _Transport:
    def __init__(self, tls: bool) -> None:
        self.out = bytearray()
        self.closed = False
        self.tls = tls
        self.protocol: object = None

    def write(self, data: bytes) -> None:
        assert not self.closed, "write after close"
        self.out += data

    def close(self) -> None:
        self.closed = True

    def get_protocol(self) -> object:
        return self.protocol

    def can_write_eof(self) -> bool:
        # As over TLS: a closing endpoint closes at once instead of lingering on a timer.
        return False

    def get_extra_info(self, name: str, default: object = None) -> object:
        return object() if self.tls and name == "ssl_object" else default

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def _answers(out: bytes) -> list[tuple[int, bytes]]:
    """The proxy's messages; single-byte SSL/GSS answers ('N') come before any typed one."""
    msgs = []
    pos = 0
    while pos < len(out):
        if out[pos] == ord("N") and (pos + 5 > len(out) or out[pos + 1] != 0):
            msgs.append((ord("N"), b""))
            pos += 1
            continue
        assert pos + 5 <= len(out), out
        length = int.from_bytes(out[pos + 1 : pos + 5], "big")
        assert length >= 4 and pos + 1 + length <= len(out), out
        msgs.append((out[pos], out[pos + 5 : pos + 1 + length]))
        pos += 1 + length
    return msgs


async def _run(data: bytes, config: Any) -> bytes:
    client = ClientConnection(_Server(config))  # type: ignore[arg-type]
    transport = _Transport(tls=config is _IAM_CONFIG)
    client.transport = transport  # type: ignore[assignment]
    transport.protocol = client
    client.addr = "fuzz"
    view = client.rbuf.get_buffer()
    pos = 0
    while pos < len(data):  # what the proxy would have read by the time the client stopped
        view = client.rbuf.get_buffer()
        n = min(len(view), len(data) - pos)
        view[:n] = data[pos : pos + n]
        client.rbuf.end += n
        pos += n
    client.eof = True
    ended = asyncio.get_running_loop().create_future()
    start_login(client, lambda: ended.set_result(None))
    await ended
    assert client.is_closed(), "login neither finished nor closed the client"
    return bytes(transport.out)


class _FailOnException(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info:
            raise AssertionError(f"unexpected exception logged: {record.getMessage()}")


_loop = asyncio.new_event_loop()


def TestOneInput(data: bytes) -> None:
    out = _loop.run_until_complete(_run(data, _CONFIGS[len(data) % len(_CONFIGS)]))
    for t, body in _answers(out):
        if t == ord("E"):
            fields = m.parse_error_fields(body)
            code = fields.get("C", "")
            assert code != "XX000", (data, fields)
            assert len(code) == 5 and fields.get("M"), fields


if __name__ == "__main__":
    # Only in the fuzzing process: quiet, and any logged traceback is a finding. (Under pytest
    # the XX000 check above catches the same bugs; the logging setup stays the suite's.)
    _log = logging.getLogger("pgpool_proxy")
    _log.addHandler(_FailOnException())
    _log.setLevel(logging.ERROR)
    _log.propagate = False
    main(TestOneInput)
