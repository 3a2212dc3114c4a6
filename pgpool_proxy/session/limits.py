"""Bounds on what the proxy keeps for one client: the settings it changed (replayed on every
server connection it uses). Statement texts are bounded in link.prepared."""

from __future__ import annotations

from collections.abc import Mapping

from ..errors import ProxyError, SqlState

SETTINGS_KEY = "proxy.max_client_settings_bytes"


def _size(text: str) -> int:
    # str.isascii is O(1); only non-ASCII text pays for an encoded copy.
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def settings_size(settings: Mapping[str, str]) -> int:
    """Bytes of names and values, as the proxy holds and replays them."""
    return sum(_size(k) + _size(v) for k, v in settings.items())


def settings_limit_error(settings: Mapping[str, str], limit: int) -> ProxyError | None:
    """The error ending a session whose changed settings are over the limit, else None.

    The caller must not hand the server connection that holds those settings to anyone: close
    it (it also holds whatever else the session did)."""
    size = settings_size(settings)
    if size <= limit:
        return None
    largest = max(settings, key=lambda k: _size(settings[k]))
    return ProxyError(
        SqlState.PROGRAM_LIMIT_EXCEEDED,
        f"settings changed in this session take {size} bytes, over {SETTINGS_KEY} ({limit}); "
        f'the largest is "{largest[:64]}" ({_size(settings[largest])} bytes)',
        hint=f"The proxy replays changed settings on each server connection it uses. Keep them "
        f"smaller (SET LOCAL lasts one transaction and is not kept), or raise {SETTINGS_KEY}.",
    )
