"""Reply units: which backend message completes the reply to each kind of client request.

See `link.prepared` for why the proxy keeps a queue of them.
"""

from __future__ import annotations

from .constants import (
    B_BIND_COMPLETE,
    B_CLOSE_COMPLETE,
    B_COMMAND_COMPLETE,
    B_EMPTY_QUERY,
    B_ERROR,
    B_PARAMETER_DESCRIPTION,
    B_PARSE_COMPLETE,
    B_ROW_DESCRIPTION,
)

# Plain unit codes (ints in the queue).
U_Z = 0  # Query, Sync, FunctionCall: ends with ReadyForQuery
# Units that end with ReadyForQuery are the ones <= 0. While units are queued, a Query gets its
# own code: PostgreSQL drops the session's unnamed statement when it runs it (link.replies
# applies that in reply order). Inside an extended-protocol batch (after Parse/Bind/... and
# before their Sync) a Query or FunctionCall is skipped, ReadyForQuery included, once an error
# in the batch has made the server wait for the Sync.
U_QZ = -1  # a Query inside a batch
U_QUERY = -2  # a Query outside a batch
U_FZ = -3  # a FunctionCall inside a batch
U_PARSE = 1
U_BIND = 2
U_DESCRIBE = 3
U_EXECUTE = 4
U_CLOSE = 5
U_UPARSE = 6  # the client's unnamed Parse (transaction mode: see ClientScanner.unnamed_fifo)
U_PARAMS = 7  # the ParameterDescription of the proxy's own Describe of a statement

_NO_DATA = ord("n")
_PORTAL_SUSPENDED = ord("s")

# TERMINATES[u][t] is 1 when backend message type t completes a unit of kind u (an
# ErrorResponse completes every extended-protocol unit and is handled in Python).
TERMINATES: tuple[bytes, ...] = tuple(
    bytes(1 if t in ends else 0 for t in range(256))
    for ends in (
        (),  # U_Z: only ReadyForQuery, which the scanner treats separately
        (B_PARSE_COMPLETE,),
        (B_BIND_COMPLETE,),
        (B_ROW_DESCRIPTION, _NO_DATA),
        (B_COMMAND_COMPLETE, B_EMPTY_QUERY, _PORTAL_SUSPENDED),
        (B_CLOSE_COMPLETE,),
        (B_PARSE_COMPLETE,),
        (B_PARAMETER_DESCRIPTION,),
    )
)
# Backend message types that may complete some unit (a quick filter before TERMINATES).
UNIT_STOP = bytes(
    1
    if t
    in (
        B_PARSE_COMPLETE,
        B_BIND_COMPLETE,
        B_CLOSE_COMPLETE,
        B_ROW_DESCRIPTION,
        _NO_DATA,
        B_COMMAND_COMPLETE,
        B_EMPTY_QUERY,
        _PORTAL_SUSPENDED,
        B_ERROR,
        B_PARAMETER_DESCRIPTION,
    )
    else 0
    for t in range(256)
)
