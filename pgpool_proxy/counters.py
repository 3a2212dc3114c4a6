"""Owns the proxy's plain-int counters that metrics and the admin console read at scrape time.

The hot path never looks up a label: each event bumps an int (or a dict slot made once, for the
close and login paths, which are not per message); the metrics collector turns them into
labelled series only when someone asks.
"""

from __future__ import annotations

from typing import Final

from .errors import DisconnectReason

# Upper bounds (seconds) of the pool wait ("borrow latency") histogram buckets; one more slot
# counts the waits above the last bound.
WAIT_BOUNDS_S: Final = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)


def wait_buckets() -> list[int]:
    """A fresh, non-cumulative bucket array for WAIT_BOUNDS_S (+Inf last)."""
    return [0] * (len(WAIT_BOUNDS_S) + 1)


# Why a client login was refused (the `reason` label of pgpool_proxy_auth_failures_total).
AUTH_PASSWORD: Final = "password"  # wrong password (SCRAM proof or md5 response)
AUTH_UNKNOWN_USER: Final = "unknown_user"  # no such [[users]] entry
AUTH_IAM: Final = "iam"  # the IAM token was refused
AUTH_TLS_REQUIRED: Final = "tls_required"  # TLS required by client_tls.mode or by IAM
AUTH_PROTOCOL: Final = "protocol"  # malformed exchange, wrong SASL mechanism, no user name
AUTH_CLIENT_RULES: Final = "client_rules"  # refused by [[client_rules]] (pg_hba.conf's 28000)
AUTH_FAILURE_REASONS: Final = (
    AUTH_PASSWORD,
    AUTH_UNKNOWN_USER,
    AUTH_IAM,
    AUTH_TLS_REQUIRED,
    AUTH_PROTOCOL,
    AUTH_CLIENT_RULES,
)


# What became of a cancel request (the `result` label of pgpool_proxy_cancel_requests_total).
CANCEL_SENT: Final = "sent"  # the key's client was running a query: passed to its server
CANCEL_IDLE: Final = "idle"  # a valid key, but its client had nothing running
CANCEL_UNKNOWN: Final = "unknown_key"  # no such key, or the wrong secret
CANCEL_RELAYED: Final = "relayed"  # the key belongs to another worker: passed on to it
CANCEL_FORWARDED: Final = "forwarded"  # the key belongs to another instance: passed to that peer
CANCEL_RESULTS: Final = (CANCEL_SENT, CANCEL_IDLE, CANCEL_UNKNOWN, CANCEL_RELAYED, CANCEL_FORWARDED)


# What an auth_query look-up sent to PostgreSQL found (pgpool_proxy_auth_query_lookups_total).
LOOKUP_FOUND: Final = "found"  # a stored password
LOOKUP_NOT_FOUND: Final = "not_found"  # no row, or no password
LOOKUP_FAILED: Final = "failed"  # refused, timed out, or no server connection (logged)
LOOKUP_RESULTS: Final = (LOOKUP_FOUND, LOOKUP_NOT_FOUND, LOOKUP_FAILED)


def disconnect_counts() -> dict[DisconnectReason, int]:
    """One slot per DisconnectReason, all present so a scrape shows zeros too."""
    return dict.fromkeys(DisconnectReason, 0)


class ProxyCounters:
    """Counters of one proxy process that belong to no pool (clients not logged in yet)."""

    __slots__ = (
        "accepted",
        "admin_commands",
        "admin_logins",
        "auth_failures",
        "auth_lookups",
        "cancel_requests",
        "client_disconnects",
        "logins",
    )

    def __init__(self) -> None:
        self.accepted = 0  # client TCP connections accepted (cancel requests included)
        self.logins = 0  # clients that completed login to a pool
        self.admin_logins = 0  # clients that completed login to the admin console
        # Commands the admin console ran (its database's query and transaction counts, as
        # PgBouncer shows them in SHOW STATS).
        self.admin_commands = 0
        self.auth_failures: dict[str, int] = dict.fromkeys(AUTH_FAILURE_REASONS, 0)
        # auth_query look-ups sent to PostgreSQL, by result (cache hits are not counted).
        self.auth_lookups: dict[str, int] = dict.fromkeys(LOOKUP_RESULTS, 0)
        self.client_disconnects = disconnect_counts()
        # Cancel requests by outcome. Counted, not logged one by one: anyone can send them
        # without logging in, so a log line each would let a flood fill the disk.
        self.cancel_requests: dict[str, int] = dict.fromkeys(CANCEL_RESULTS, 0)
