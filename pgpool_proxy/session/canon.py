"""Startup settings as the server spells them: what a client is told at login and afterwards.

PostgreSQL answers a login with ParameterStatus messages carrying its own spelling of what the
client asked for (`UTF8` for `utf-8`, `ISO, MDY` for `iso,mdy`, `UTC` for `utc`), and refuses
the login when a value is invalid. The proxy answers logins itself, so it learns the server's
answer once per pool and distinct (name, value), from an idle server connection, and keeps it.
Values that are already canonical, and ones learned before, cost no round trip.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from ..auth.server_login import server_sqlstate
from ..errors import DisconnectReason, ProxyError, SqlState
from ..pool.connecting import OwnAnswer, answered_then_returned
from ..protocol.constants import TRACKED_PARAMS
from .state import check_sql
from .stepped import external

if TYPE_CHECKING:
    from ..pool.pool import Pool

log = logging.getLogger("pgpool_proxy.login")

_REPORTED = {p.lower(): p for p in TRACKED_PARAMS}

# (lower-case name, value as given) -> the server's spelling, per pool. Bounded: a client that
# sends a unique value per login (application_name=<uuid> is the common case, and needs no
# entry) must not grow it forever.
MAX_LEARNED = 1000
# Settings asked of the server in one login at most; more are replayed without a check (the
# server then refuses them at the client's first statement, as before).
MAX_ASKED = 32


class SettingRefused(ProxyError):
    """The server refused a startup setting: the login is refused with the server's error."""

    reason = DisconnectReason.SETTINGS_REJECTED


def _encoding_key(value: str) -> str:
    # PostgreSQL's clean_encoding_name(): only letters and digits count, case-insensitively, so
    # asyncpg's "'utf-8'" is UTF8 too.
    return "".join(c for c in value.lower() if c.isalnum())


def obvious(name: str, value: str, server_params: dict[str, str]) -> str | None:
    """The server's spelling of name=value when it is known without asking (name lower-case)."""
    if name == "application_name":
        # The server replaces what is not printable ASCII and truncates to NAMEDATALEN - 1.
        ok = len(value) <= 63 and value.isascii() and value.isprintable()
        return value if ok else None
    if name == "client_encoding" and _encoding_key(value) in ("utf8", "unicode"):
        return "UTF8"
    reported = _REPORTED.get(name)
    if reported is not None and server_params.get(reported) == value:
        return value
    return None


def learn(pool: Pool, name: str, value: str, shown: str) -> None:
    cache = pool.learned_settings
    if len(cache) >= MAX_LEARNED:
        cache.clear()
    cache[(name.lower(), value)] = shown


async def canonical(
    pool: Pool, settings: dict[str, str], server_params: dict[str, str]
) -> dict[str, str]:
    """The server's spelling of each startup setting (a value the server could not be asked
    about is returned as given). Raises SettingRefused for a value the server refuses."""
    out: dict[str, str] = {}
    unknown: list[tuple[str, str]] = []
    cache = pool.learned_settings
    for k, v in settings.items():
        kl = k.lower()
        shown = cache.get((kl, v))
        if shown is None:
            shown = obvious(kl, v, server_params)
        if shown is None:
            if len(unknown) < MAX_ASKED:
                unknown.append((k, v))
            shown = v
        # Only reported settings are shown to the client; the others are replayed as given.
        out[k] = shown if kl in _REPORTED else v
    if unknown:
        # A Task of its own: the login is stepped without one (session.stepped), and the
        # wait below has a timeout of its own.
        for (k, v), shown in (await external(_ask(pool, unknown))).items():
            learn(pool, k, v, shown)
            if k.lower() in _REPORTED:
                out[k] = shown
    return out


async def _ask(pool: Pool, items: list[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """Ask an idle server connection; {} when none is idle or it does not answer in time (the
    client's first transaction then tells, see session.sync.replay_done)."""
    if not pool.idle:
        return {}
    backend = pool.idle.pop()
    fut: asyncio.Future[OwnAnswer] = pool.loop.create_future()
    # A server connection that ends without answering (a FATAL, a reset) leaves the value
    # unknown, as when it does not answer in time.
    backend.run_own([check_sql(k, v) for k, v in items], answered_then_returned(pool, fut))
    try:
        answer = await asyncio.wait_for(fut, pool.spec.check_timeout_s or None)
    except TimeoutError:
        return {}  # the janitor closes a server connection silent on the proxy's statement
    if answer is None:
        return {}
    errors, rows = answer
    if errors:
        fields = errors[0]
        raise SettingRefused(
            server_sqlstate(fields, SqlState.PROTOCOL_VIOLATION),
            fields.get("M") or "the server rejected a startup setting",
            detail=fields.get("D"),
            hint=fields.get("H"),
        )
    if len(rows) != len(items):
        log.warning("pool %s: unexpected answer to a settings check; not learned", pool.name)
        return {}
    learned: dict[tuple[str, str], str] = {}
    for item, row in zip(items, rows, strict=True):
        if row and row[0] is not None:
            learned[item] = bytes.fromhex(row[0]).decode("utf-8", "surrogateescape")
    return learned
