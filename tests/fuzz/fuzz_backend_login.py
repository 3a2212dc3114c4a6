"""The proxy logging into a server (pool.server_connect.login), fed a server's raw bytes.

The input is everything a server sends before it stops: Authentication requests (cleartext,
md5, SASL and its continue/final messages), ParameterStatus, BackendKeyData, ErrorResponse,
NoticeResponse, ReadyForQuery. The proxy's credentials are picked from the input's length: an
md5 hash, a SCRAM ClientKey and ServerKey (pass-through, so no input makes it run PBKDF2), or
none.

Contract: ProxyError (BackendLoginError included), nothing else; a login that returns left the
backend idle.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
from typing import Any

from tests.fuzz._common import instrumented, main

with instrumented(
    "pgpool_proxy.pool.backend",
    "pgpool_proxy.pool.server_connect",
    "pgpool_proxy.protocol",
    "pgpool_proxy.auth",
):
    from pgpool_proxy.auth.md5 import md5_hash
    from pgpool_proxy.errors import ProxyError
    from pgpool_proxy.pool import server_connect
    from pgpool_proxy.pool.backend import BackendConnection
    from pgpool_proxy.pool.backend_state import BackendState

EXPECTED = (ProxyError,)
_SALTED = hashlib.pbkdf2_hmac("sha256", b"secret", b"0123456789abcdef", 4096)
CLIENT_KEY = hmac.new(_SALTED, b"Client Key", hashlib.sha256).digest()
SERVER_KEY = hmac.new(_SALTED, b"Server Key", hashlib.sha256).digest()
_CREDENTIALS: list[dict[str, Any]] = [
    {"secret": md5_hash("secret", "u")},
    {"secret": None, "client_key": CLIENT_KEY, "server_key": SERVER_KEY},
    {"secret": None},
]


class _Spec:
    max_prepared_statements = 0
    max_scram_iterations = 4096


class _Pool:
    backend_address = ("127.0.0.1", 5432)
    spec = _Spec()
    name = "fuzz"

    def backend_closed(self, backend: object, prev: object) -> None:
        pass


class _Transport:
    def write(self, data: bytes) -> None:
        pass

    def close(self) -> None:
        pass

    def get_extra_info(self, name: str, default: object = None) -> object:
        return default


async def _run(data: bytes) -> None:
    backend = BackendConnection(_Pool(), 0)  # type: ignore[arg-type]
    backend.transport = _Transport()  # type: ignore[assignment]
    rb = backend.rbuf
    pos = 0
    while pos < len(data):
        view = rb.get_buffer()
        n = min(len(view), len(data) - pos)
        view[:n] = data[pos : pos + n]
        rb.end += n
        pos += n
    backend.eof = True
    try:
        await server_connect.login(
            backend, "u", "app", **_CREDENTIALS[len(data) % len(_CREDENTIALS)]
        )
    except EXPECTED:
        return
    assert backend.state == BackendState.IDLE


_loop = asyncio.new_event_loop()


def TestOneInput(data: bytes) -> None:
    _loop.run_until_complete(_run(data))


if __name__ == "__main__":
    logging.getLogger("pgpool_proxy").setLevel(logging.CRITICAL)  # one warning per bad input
    main(TestOneInput)
