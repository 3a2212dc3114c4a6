"""Waiting on a condition instead of sleeping: a test that sleeps guesses how long the proxy needs
and is flaky on a loaded machine (or slow on an idle one); one that polls the condition is neither.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

# Short enough that a test does not wait noticeably longer than the condition needs, long enough
# not to steal the proxy's (same-process) event loop.
INTERVAL_S = 0.02


async def wait_for(
    cond: Callable[[], T | Awaitable[T]],
    *,
    timeout: float = 10.0,
    what: str,
    interval: float = INTERVAL_S,
) -> T:
    """Poll ``cond()`` (a plain or async callable) until it returns something truthy and return
    that; after ``timeout`` seconds fail with an AssertionError naming ``what`` never happened
    and the last value seen."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value  # type: ignore[return-value]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {value!r})")
        await asyncio.sleep(interval)


def wait_for_sync(
    cond: Callable[[], T],
    *,
    timeout: float = 10.0,
    what: str,
    interval: float = INTERVAL_S,
) -> T:
    """`wait_for` for code that runs outside an event loop (threads, subprocesses)."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {value!r})")
        time.sleep(interval)
