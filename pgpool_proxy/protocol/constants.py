"""Wire-protocol constants as ints, so the hot path compares bytes without decoding them."""

from __future__ import annotations

import struct

# Frame header: one type byte, then a big-endian int32 length that counts itself but not the type.
HEADER = struct.Struct("!cI")
INT32 = struct.Struct("!I")
INT16 = struct.Struct("!H")
HEADER_LEN = 5

PROTOCOL_3_0 = 196608  # 3 << 16
SSL_REQUEST_CODE = 80877103
GSSENC_REQUEST_CODE = 80877104
CANCEL_REQUEST_CODE = 80877102
# The proxy's own request code (1234.5699, beside PostgreSQL's 1234.5678-5680): "which peer_id
# are you?", asked by peers that found this instance in DNS (runtime.peers).
PEER_ID_REQUEST_CODE = 80877123
# The ParameterStatus name of the answer.
PEER_ID_PARAM = "pgpool_proxy.peer_id"
# PostgreSQL's own bound for a startup packet (MAX_STARTUP_PACKET_LENGTH).
MAX_STARTUP_PACKET = 10000

# Frontend message types.
F_BIND = ord("B")
F_CLOSE = ord("C")
F_COPY_DATA = ord("d")
F_COPY_DONE = ord("c")
F_COPY_FAIL = ord("f")
F_DESCRIBE = ord("D")
F_EXECUTE = ord("E")
F_FLUSH = ord("H")
F_FUNCTION_CALL = ord("F")
F_PARSE = ord("P")
F_PASSWORD = ord("p")  # also SASLInitialResponse / SASLResponse
F_QUERY = ord("Q")
F_SYNC = ord("S")
F_TERMINATE = ord("X")

# Backend message types.
B_AUTH = ord("R")
B_BACKEND_KEY_DATA = ord("K")
B_BIND_COMPLETE = ord("2")
B_CLOSE_COMPLETE = ord("3")
B_COMMAND_COMPLETE = ord("C")
B_COPY_BOTH = ord("W")
B_COPY_DATA = ord("d")
B_COPY_DONE = ord("c")
B_COPY_IN = ord("G")
B_COPY_OUT = ord("H")
B_DATA_ROW = ord("D")
B_EMPTY_QUERY = ord("I")
B_ERROR = ord("E")
B_NEGOTIATE_PROTOCOL = ord("v")
B_NOTICE = ord("N")
B_NOTIFICATION = ord("A")
B_PARAMETER_DESCRIPTION = ord("t")
B_PARAMETER_STATUS = ord("S")
B_PARSE_COMPLETE = ord("1")
B_READY_FOR_QUERY = ord("Z")
B_ROW_DESCRIPTION = ord("T")

# ReadyForQuery transaction status bytes.
TX_IDLE = ord("I")
TX_IN_BLOCK = ord("T")
TX_FAILED = ord("E")

# Authentication request codes (body of 'R').
AUTH_OK = 0
AUTH_CLEARTEXT = 3
AUTH_MD5 = 5
AUTH_SASL = 10
AUTH_SASL_CONTINUE = 11
AUTH_SASL_FINAL = 12

# Parameters a client may set at startup that PostgreSQL reports back (GUC_REPORT); the proxy
# replays them on whichever backend serves the client.
TRACKED_PARAMS = (
    "application_name",
    "client_encoding",
    "DateStyle",
    "TimeZone",
    "IntervalStyle",
    "standard_conforming_strings",
)
