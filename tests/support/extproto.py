"""Extended-query protocol for tests: exact Parse/Bind/Describe/Execute/Close/Sync bytes over a
RawClient, and the replies summarised as a list of message types (errors with their SQLSTATE).

Also the helpers the issue-4 tests share: the pinned-session count of a proxy's pool and a way
to force a client onto another server connection between two of its transactions.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from pgpool_proxy.protocol import messages as m

from .proxy import ProxyThread
from .rawpg import RawClient, raw_login
from .waits import eventually

__all__ = ["raw_login"]  # the one raw_login lives in rawpg; tests reach it as x.raw_login too


def _frame(type_byte: bytes, body: bytes) -> bytes:
    return type_byte + struct.pack("!I", len(body) + 4) + body


def _cstr(s: str | bytes) -> bytes:
    return (s.encode() if isinstance(s, str) else s) + b"\x00"


def parse(name: str | bytes, query: str, oids: Sequence[int] = ()) -> bytes:
    body = _cstr(name) + _cstr(query) + struct.pack("!H", len(oids))
    body += b"".join(struct.pack("!I", oid) for oid in oids)
    return _frame(b"P", body)


def bind(stmt: str | bytes, params: Sequence[str | None] = (), portal: str = "") -> bytes:
    """Bind with text parameters and text results."""
    body = _cstr(portal) + _cstr(stmt) + struct.pack("!H", 0) + struct.pack("!H", len(params))
    for p in params:
        if p is None:
            body += struct.pack("!i", -1)
        else:
            data = p.encode()
            body += struct.pack("!i", len(data)) + data
    body += struct.pack("!H", 0)
    return _frame(b"B", body)


def describe(kind: str, name: str | bytes) -> bytes:
    assert kind in ("S", "P")
    return _frame(b"D", kind.encode() + _cstr(name))


def execute(portal: str = "", max_rows: int = 0) -> bytes:
    return _frame(b"E", _cstr(portal) + struct.pack("!I", max_rows))


def close(kind: str, name: str | bytes) -> bytes:
    assert kind in ("S", "P")
    return _frame(b"C", kind.encode() + _cstr(name))


SYNC = _frame(b"S", b"")
FLUSH = _frame(b"H", b"")


def data_row(body: bytes) -> list[str | None]:
    n = struct.unpack("!H", body[:2])[0]
    pos = 2
    row: list[str | None] = []
    for _ in range(n):
        ln = struct.unpack("!i", body[pos : pos + 4])[0]
        pos += 4
        if ln < 0:
            row.append(None)
        else:
            row.append(body[pos : pos + ln].decode())
            pos += ln
    return row


class Reply:
    """The messages a client received up to and including ReadyForQuery."""

    def __init__(self, messages: list[tuple[bytes, bytes]]) -> None:
        self.messages = messages

    @property
    def kinds(self) -> list[str]:
        """Message types in order; an ErrorResponse shows as "E:<SQLSTATE>", ReadyForQuery as
        "Z:<status>"."""
        out = []
        for t, body in self.messages:
            if t == b"E":
                out.append("E:" + m.parse_error_fields(body).get("C", "?"))
            elif t == b"Z":
                out.append("Z:" + chr(body[0]))
            elif t == b"N":
                continue  # notices (e.g. from SET) are not part of what a test checks
            else:
                out.append(t.decode())
        return out

    @property
    def rows(self) -> list[list[str | None]]:
        return [data_row(body) for t, body in self.messages if t == b"D"]

    @property
    def errors(self) -> list[dict[str, str]]:
        return [m.parse_error_fields(body) for t, body in self.messages if t == b"E"]


async def roundtrip(client: RawClient, *msgs: bytes, timeout: float = 10) -> Reply:
    """Send the messages in one write (end them with SYNC) and read up to ReadyForQuery."""
    client.send(b"".join(msgs))
    got: list[tuple[bytes, bytes]] = []
    while True:
        t, body = await client.read_message(timeout)
        got.append((t, body))
        if t == b"Z":
            return Reply(got)


class Shuffler:
    """Makes the next transaction of a client run on a different server connection.

    With a pool of 2 and last-in-first-out reuse, a second client that opens a transaction takes
    the server connection the test client released last, so the test client's next transaction
    gets the other one. `hold()` opens that transaction, `release()` commits it.
    """

    def __init__(self, other: RawClient) -> None:
        self.other = other

    async def hold(self) -> None:
        await self.other.simple_query("BEGIN; SELECT 1")

    async def release(self) -> None:
        await self.other.simple_query("COMMIT")


# ASSUMED API (issue 4; the lead exposes it): `Pool.stats()` -- read here through
# `proxy.pool_stats()`, i.e. `proxy.server.pools[(db, user)].stats()` -- has a key "pinned", the
# number of clients of that pool pinned to their server connection right now.
PINNED_KEY = "pinned"


def pinned(proxy: ProxyThread, db: str = "app", user: str = "alice") -> int:
    stats = proxy.pool_stats(db, user)
    assert PINNED_KEY in stats, f"pool stats have no {PINNED_KEY!r} key (assumed API): {stats}"
    return int(stats[PINNED_KEY])


async def wait_pinned(proxy: ProxyThread, want: int, timeout: float = 3) -> int:
    """Poll the pinned count until it equals `want` (or the timeout passes); return it."""

    async def probe() -> int:
        return pinned(proxy)

    n, _ = await eventually(probe, lambda n: n == want, timeout)
    return n
