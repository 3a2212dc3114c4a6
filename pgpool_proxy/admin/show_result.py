"""What every SHOW result shares: the `Result` set, a row, the column type OIDs, and how a value
becomes a cell (PgBouncer's spelling: booleans as 0/1, NULL for unknown).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from ..protocol.messages import OID_INT4, OID_INT8, OID_NUMERIC, OID_TEXT

__all__ = ["ADMIN_POOL_MODE", "I4", "I8", "NUM", "Result", "Row", "T", "cell"]

T, I4, I8, NUM = OID_TEXT, OID_INT4, OID_INT8, OID_NUMERIC
Row = list[str | None]


# PgBouncer's admin database is served by a pool of its own, in statement mode, whose user is
# the admin database's name; its rows in SHOW POOLS/STATS/DATABASES/USERS describe the console.
ADMIN_POOL_MODE: Final = "statement"


@dataclass(slots=True)
class Result:
    """One SHOW result set."""

    columns: tuple[tuple[str, int], ...]
    rows: list[Row] = field(default_factory=list)


def cell(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)
