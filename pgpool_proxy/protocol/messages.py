"""Encoders and decoders for the messages the proxy itself must build or read (the slow path)."""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from .constants import (
    AUTH_MD5,
    AUTH_OK,
    AUTH_SASL,
    AUTH_SASL_CONTINUE,
    AUTH_SASL_FINAL,
    CANCEL_REQUEST_CODE,
    GSSENC_REQUEST_CODE,
    INT16,
    INT32,
    PEER_ID_PARAM,
    PEER_ID_REQUEST_CODE,
    PROTOCOL_3_0,
    SSL_REQUEST_CODE,
    TX_IDLE,
)


class ProtocolViolation(Exception):
    """A peer sent bytes that do not form a valid message."""


def frame(type_byte: bytes, body: bytes = b"") -> bytes:
    return type_byte + INT32.pack(len(body) + 4) + body


def cstr(s: str) -> bytes:
    return s.encode() + b"\0"


# --- startup ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StartupMessage:
    protocol: int
    params: dict[str, str]


@dataclass(frozen=True, slots=True)
class CancelRequest:
    pid: int
    secret: int


@dataclass(frozen=True, slots=True)
class SSLRequest:
    pass


@dataclass(frozen=True, slots=True)
class GSSENCRequest:
    pass


@dataclass(frozen=True, slots=True)
class PeerIdRequest:
    pass


StartupPacket = StartupMessage | CancelRequest | SSLRequest | GSSENCRequest | PeerIdRequest


def parse_startup_packet(body: bytes | memoryview) -> StartupPacket:
    """Decode the body of an untyped startup packet (everything after the int32 length)."""
    if len(body) < 4:
        raise ProtocolViolation("invalid length of startup packet")
    code = INT32.unpack_from(body, 0)[0]
    if code == SSL_REQUEST_CODE:
        return SSLRequest()
    if code == GSSENC_REQUEST_CODE:
        return GSSENCRequest()
    if code == PEER_ID_REQUEST_CODE and len(body) == 4:
        return PeerIdRequest()
    if code == CANCEL_REQUEST_CODE:
        if len(body) != 12:
            raise ProtocolViolation("invalid length of cancel request packet")
        pid, secret = struct.unpack_from("!II", body, 4)
        return CancelRequest(pid, secret)
    raw = bytes(body[4:])
    if not raw.endswith(b"\0"):
        raise ProtocolViolation("invalid startup packet layout: expected terminator as last byte")
    parts = raw[:-1].split(b"\0")
    if parts and parts[-1] == b"":
        parts.pop()
    if len(parts) % 2:
        raise ProtocolViolation("invalid startup packet layout: parameter without a value")
    params: dict[str, str] = {}
    try:
        for i in range(0, len(parts), 2):
            params[parts[i].decode()] = parts[i + 1].decode()
    except UnicodeDecodeError as exc:
        raise ProtocolViolation("startup packet is not valid UTF-8") from exc
    return StartupMessage(code, params)


def startup_message(params: Mapping[str, str]) -> bytes:
    body = INT32.pack(PROTOCOL_3_0) + b"".join(cstr(k) + cstr(v) for k, v in params.items()) + b"\0"
    return INT32.pack(len(body) + 4) + body


def cancel_request(pid: int, secret: int) -> bytes:
    return struct.pack("!IIII", 16, CANCEL_REQUEST_CODE, pid, secret)


def peer_id_request() -> bytes:
    return struct.pack("!II", 8, PEER_ID_REQUEST_CODE)


def peer_id_reply(peer_id: int) -> bytes:
    return parameter_status(PEER_ID_PARAM, str(peer_id))


def parse_peer_id_reply(data: bytes) -> int | None:
    """The peer id in a peer's answer to peer_id_request, None for anything else (PostgreSQL
    answers with an error, an old proxy with nothing)."""
    if len(data) < 5 or data[:1] != b"S" or INT32.unpack_from(data, 1)[0] != len(data) - 1:
        return None
    try:
        name, value = parse_parameter_status(memoryview(data)[5:])
    except (ProtocolViolation, UnicodeDecodeError):
        return None
    if name != PEER_ID_PARAM or not value.isdigit() or len(value) > 6:
        return None
    return int(value)


def negotiate_protocol_version(newest_minor: int, unsupported: Iterable[str]) -> bytes:
    names = list(unsupported)
    body = INT32.pack(newest_minor) + INT32.pack(len(names)) + b"".join(cstr(n) for n in names)
    return frame(b"v", body)


# --- server -> client messages the proxy originates ------------------------------------------


def error_response(
    severity: str,
    sqlstate: str,
    message: str,
    *,
    detail: str | None = None,
    hint: str | None = None,
) -> bytes:
    fields = [b"S" + cstr(severity), b"V" + cstr(severity), b"C" + cstr(sqlstate)]
    fields.append(b"M" + cstr(message))
    if detail:
        fields.append(b"D" + cstr(detail))
    if hint:
        fields.append(b"H" + cstr(hint))
    return frame(b"E", b"".join(fields) + b"\0")


def auth_ok() -> bytes:
    return frame(b"R", INT32.pack(AUTH_OK))


def auth_md5(salt: bytes) -> bytes:
    return frame(b"R", INT32.pack(AUTH_MD5) + salt)


def auth_sasl(mechanisms: Iterable[str]) -> bytes:
    return frame(b"R", INT32.pack(AUTH_SASL) + b"".join(cstr(m) for m in mechanisms) + b"\0")


def auth_sasl_continue(data: bytes) -> bytes:
    return frame(b"R", INT32.pack(AUTH_SASL_CONTINUE) + data)


def auth_sasl_final(data: bytes) -> bytes:
    return frame(b"R", INT32.pack(AUTH_SASL_FINAL) + data)


def parameter_status(name: str, value: str) -> bytes:
    return frame(b"S", cstr(name) + cstr(value))


def backend_key_data(pid: int, secret: int) -> bytes:
    return frame(b"K", struct.pack("!II", pid, secret))


def ready_for_query(status: int = TX_IDLE) -> bytes:
    return frame(b"Z", bytes((status,)))


# --- client -> server messages the proxy originates ------------------------------------------


def query(sql: str) -> bytes:
    return frame(b"Q", cstr(sql))


# The name of the proxy's own prepared statement (see internal_batch), one no driver makes up.
INTERNAL_STATEMENT = b"pgpool-proxy: own statement"
_CLOSE_INTERNAL = frame(b"C", b"S" + INTERNAL_STATEMENT + b"\0")
# The unnamed portal, no parameters, every column as text.
_BIND_INTERNAL = frame(b"B", b"\0" + INTERNAL_STATEMENT + b"\0" + b"\0\0" * 3)
_EXECUTE_ALL = frame(b"E", b"\0" + INT32.pack(0))
_SYNC = frame(b"S")


def _bind_internal(params: Sequence[str | None]) -> bytes:
    """Bind of the proxy's own statement to the unnamed portal with text parameters: values
    travel apart from the SQL text, never spliced into it."""
    body = [b"\0" + INTERNAL_STATEMENT + b"\0" + b"\0\0" + INT16.pack(len(params))]
    for value in params:
        if value is None:
            body.append(b"\xff\xff\xff\xff")  # NULL
        else:
            data = value.encode("utf-8", "surrogateescape")
            body.append(INT32.pack(len(data)) + data)
    body.append(b"\0\0")
    return frame(b"B", b"".join(body))


def internal_batch(statements: Iterable[str | tuple[str, Sequence[str | None]]]) -> bytes:
    """The statements as one extended-protocol batch that leaves the session's unnamed
    statement alone (any simple Query drops it): each is parsed as the proxy's own named
    statement, run in the unnamed portal and closed. Until the Sync they run in one implicit
    transaction, as a simple Query's list does, and an error skips the rest; the first Close
    removes what a failed batch left. A statement given as (sql, params) has its $n bound to
    params as text."""
    parts = [_CLOSE_INTERNAL]
    for item in statements:
        sql, params = (item, ()) if isinstance(item, str) else item
        parts.append(frame(b"P", INTERNAL_STATEMENT + b"\0" + cstr(sql) + b"\0\0"))
        parts.append(_bind_internal(params) if params else _BIND_INTERNAL)
        parts.append(_EXECUTE_ALL)
        parts.append(_CLOSE_INTERNAL)
    parts.append(_SYNC)
    return b"".join(parts)


def password_message(password: str) -> bytes:
    return frame(b"p", cstr(password))


def sasl_initial_response(mechanism: str, data: bytes) -> bytes:
    return frame(b"p", cstr(mechanism) + INT32.pack(len(data)) + data)


def sasl_response(data: bytes) -> bytes:
    return frame(b"p", data)


TERMINATE = frame(b"X")


# --- decoders --------------------------------------------------------------------------------


def read_cstr(body: bytes | memoryview, pos: int) -> tuple[str, int]:
    """Return the NUL-terminated string at pos and the offset after its terminator."""
    data = bytes(body) if isinstance(body, memoryview) else body
    end = data.find(b"\0", pos)
    if end < 0:
        raise ProtocolViolation("missing string terminator")
    try:
        return data[pos:end].decode(), end + 1
    except UnicodeDecodeError as exc:
        raise ProtocolViolation("string is not valid UTF-8") from exc


def parse_parameter_status(body: bytes | memoryview) -> tuple[str, str]:
    name, pos = read_cstr(body, 0)
    value, _ = read_cstr(body, pos)
    return name, value


def parse_error_fields(body: bytes | memoryview) -> dict[str, str]:
    """Fields of an ErrorResponse/NoticeResponse body keyed by their one-letter code."""
    data = bytes(body)
    fields: dict[str, str] = {}
    pos = 0
    while pos < len(data) and data[pos] != 0:
        code = chr(data[pos])
        end = data.find(b"\0", pos + 1)
        if end < 0:
            raise ProtocolViolation("unterminated error field")
        fields[code] = data[pos + 1 : end].decode(errors="replace")
        pos = end + 1
    return fields


def parse_sasl_initial_response(body: bytes | memoryview) -> tuple[str, bytes]:
    mechanism, pos = read_cstr(body, 0)
    if len(body) < pos + 4:
        raise ProtocolViolation("SASLInitialResponse too short")
    n = INT32.unpack_from(body, pos)[0]
    pos += 4
    if n == 0xFFFFFFFF:
        return mechanism, b""
    if pos + n != len(body):
        raise ProtocolViolation("SASLInitialResponse length mismatch")
    return mechanism, bytes(body[pos : pos + n])


def parse_sasl_mechanisms(body: bytes | memoryview) -> list[str]:
    """Mechanism list of AuthenticationSASL (body after the int32 code)."""
    data = bytes(body)  # once: read_cstr would copy a memoryview per name
    names: list[str] = []
    pos = 0
    while pos < len(data) and data[pos] != 0:
        name, pos = read_cstr(data, pos)
        names.append(name)
    return names


def parse_password(body: bytes | memoryview) -> str:
    value, pos = read_cstr(body, 0)
    if pos != len(body):
        raise ProtocolViolation("trailing bytes after password")
    return value


def quote_literal(value: str) -> str:
    """A SQL string literal; E'' form only when a backslash forces it."""
    escaped = value.replace("'", "''")
    if "\\" in escaped:
        return "E'" + escaped.replace("\\", "\\\\") + "'"
    return "'" + escaped + "'"


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def parse_data_row(body: bytes | memoryview) -> list[str | None]:
    """Columns of a DataRow (text format) as strings; None for SQL NULL."""
    data = bytes(body)
    size_total = len(data)
    if size_total < 2:
        raise ProtocolViolation("DataRow too short")
    ncols = INT16.unpack_from(data, 0)[0]
    pos = 2
    row: list[str | None] = []
    for _ in range(ncols):
        if pos + 4 > size_total:
            raise ProtocolViolation("DataRow shorter than its column count")
        size = _INT32_SIGNED.unpack_from(data, pos)[0]
        pos += 4
        if size == -1:
            row.append(None)
        elif size < 0 or pos + size > size_total:
            raise ProtocolViolation(f"invalid column length {size} in DataRow")
        else:
            row.append(data[pos : pos + size].decode("utf-8", "replace"))
            pos += size
    if pos != size_total:
        raise ProtocolViolation("trailing bytes after the last column of DataRow")
    return row


_INT32_SIGNED = struct.Struct("!i")


def parse_auth_request(body: bytes | memoryview) -> tuple[int, bytes]:
    """An Authentication request: its int32 code and the bytes after it."""
    if len(body) < 4:
        raise ProtocolViolation("authentication request too short")
    return INT32.unpack_from(body, 0)[0], bytes(body[4:])


def parse_md5_salt(rest: bytes | memoryview) -> bytes:
    """The salt of AuthenticationMD5Password (the bytes after the code)."""
    if len(rest) != 4:
        raise ProtocolViolation("AuthenticationMD5Password must carry a 4-byte salt")
    return bytes(rest)


def parse_backend_key_data(body: bytes | memoryview) -> tuple[int, int]:
    """Process id and secret key of BackendKeyData (protocol 3.0: exactly 8 bytes)."""
    if len(body) != 8:
        raise ProtocolViolation("invalid BackendKeyData length")
    pid, secret = struct.unpack_from("!II", body, 0)
    return pid, secret


# --- query results the proxy answers itself (admin console) ----------------------------------

# Type OIDs for RowDescription; text format only.
OID_INT8 = 20
OID_INT4 = 23
OID_TEXT = 25
OID_NUMERIC = 1700


def row_description(columns: Iterable[tuple[str, int]]) -> bytes:
    """RowDescription for (name, type oid) columns, all in text format."""
    cols = list(columns)
    body = [INT16.pack(len(cols))]
    for name, oid in cols:
        size = 8 if oid == OID_INT8 else 4 if oid == OID_INT4 else -1
        # table oid, column number, type oid, type size, type modifier, format code
        body.append(cstr(name) + struct.pack("!IhIhih", 0, 0, oid, size, -1, 0))
    return frame(b"T", b"".join(body))


def data_row(values: Iterable[str | None]) -> bytes:
    """DataRow of text values; None is SQL NULL."""
    vals = list(values)
    body = [INT16.pack(len(vals))]
    for v in vals:
        if v is None:
            body.append(b"\xff\xff\xff\xff")
        else:
            raw = v.encode()
            body.append(INT32.pack(len(raw)) + raw)
    return frame(b"D", b"".join(body))


def command_complete(tag: str) -> bytes:
    return frame(b"C", cstr(tag))


def empty_query_response() -> bytes:
    return frame(b"I")


def notice_response(message: str, *, detail: str | None = None) -> bytes:
    fields = [b"SNOTICE\0", b"VNOTICE\0", b"C00000\0", b"M" + cstr(message)]
    if detail:
        fields.append(b"D" + cstr(detail))
    return frame(b"N", b"".join(fields) + b"\0")
