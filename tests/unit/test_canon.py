"""session.canon: which startup values are known to be in the server's spelling without asking."""

from __future__ import annotations

import pytest

from pgpool_proxy.session.canon import obvious

SERVER = {
    "client_encoding": "UTF8",
    "DateStyle": "ISO, MDY",
    "TimeZone": "UTC",
    "server_version": "15",
}


@pytest.mark.parametrize(
    ("name", "value", "shown"),
    [
        ("client_encoding", "UTF8", "UTF8"),
        ("client_encoding", "utf-8", "UTF8"),
        ("client_encoding", "'utf-8'", "UTF8"),  # asyncpg's default, quotes included
        ("client_encoding", "Unicode", "UTF8"),
        ("client_encoding", "latin1", None),
        ("datestyle", "ISO, MDY", "ISO, MDY"),
        ("datestyle", "iso,mdy", None),
        ("timezone", "UTC", "UTC"),
        ("timezone", "utc", None),
        ("application_name", "myapp-1", "myapp-1"),
        ("application_name", "x" * 63, "x" * 63),
        ("application_name", "x" * 64, None),  # the server truncates
        ("application_name", "caf\u00e9", None),
        ("application_name", "tab\there", None),
        # Not a setting a client may give: the server must be asked (and refuses it).
        ("server_version", "15", None),
        ("work_mem", "4MB", None),
    ],
)
def test_obvious(name: str, value: str, shown: str | None) -> None:
    assert obvious(name, value, SERVER) == shown
