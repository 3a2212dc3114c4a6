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
    what: str | Callable[[], str],
    interval: float = INTERVAL_S,
) -> T:
    """Poll ``cond()`` (a plain or async callable) until it returns something truthy and return
    that; after ``timeout`` seconds fail with an AssertionError naming ``what`` never happened
    (a callable ``what`` is called then, to describe the state at that moment) and the last
    value seen."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value  # type: ignore[return-value]
        if time.monotonic() > deadline:
            raise AssertionError(_timed_out(timeout, what, value))
        await asyncio.sleep(interval)


def wait_for_sync(
    cond: Callable[[], T],
    *,
    timeout: float = 10.0,
    what: str | Callable[[], str],
    interval: float = INTERVAL_S,
) -> T:
    """`wait_for` for code that runs outside an event loop (threads, subprocesses)."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(_timed_out(timeout, what, value))
        time.sleep(interval)


def _timed_out(timeout: float, what: str | Callable[[], str], value: object) -> str:
    said = what() if callable(what) else what
    return f"timed out after {timeout}s waiting for {said} (last: {value!r})"


async def eventually(
    probe: Callable[[], Awaitable[T]], ok: Callable[[T], bool], timeout: float
) -> tuple[T, float]:
    """Poll ``probe()`` until ``ok(value)`` or ``timeout``; return the last value and the time
    it took, without failing: for a test that asserts on the value itself."""
    t0 = time.monotonic()
    while True:
        value = await probe()
        elapsed = time.monotonic() - t0
        if ok(value) or elapsed > timeout:
            return value, elapsed
        await asyncio.sleep(INTERVAL_S)
