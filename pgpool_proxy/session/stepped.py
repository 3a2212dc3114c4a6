"""A client's login without an asyncio Task: its coroutine is stepped by the connection's own
callbacks.

A Task costs a loop round per wake-up (its step is scheduled with call_soon), a Future per
wait for bytes, and `asyncio.timeout` a timer, a current-task look-up and a cancellation per
login; under connection churn (the Lambda pattern) that is paid by every new client. Here the
login stays a readable coroutine, but nothing schedules it: `Stepper` sends into it directly
from `buffer_updated` when bytes arrive (`more_bytes` yields the `NEED_BYTES` marker), from a
future's done callback for the rare external wait (TLS handshake, auth_query, IAM, PBKDF2, the
first server connection of a pool), and from one `call_later` timer for the login timeout.

Rules for what a stepped coroutine may await: the `NEED_BYTES` marker, asyncio futures
(including Tasks, made with `external` for any coroutine that needs a current task, such as
`asyncio.timeout` or 3.12's `wait_for`), and coroutines that await only those.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Generator
from typing import Any, TypeVar

from ..net.endpoint import Endpoint, EndpointClosed

T = TypeVar("T")


class LoginTimeout(Exception):
    """Thrown into a stepped coroutine when its time is up (not TimeoutError, which code inside
    may catch for timeouts of its own)."""


class _NeedBytes:
    """Awaited by a stepped coroutine to wait until its connection receives more bytes."""

    __slots__ = ()

    def __await__(self) -> Generator[Any, None, None]:
        yield self


NEED_BYTES = _NeedBytes()


class Stepper:
    """Steps one coroutine: to its first wait at once, then on each event it waits for."""

    __slots__ = ("_coro", "_on_done", "_timer", "_waiting")

    def __init__(
        self,
        coro: Coroutine[Any, Any, None],
        timeout_s: float,
        on_done: Callable[[], None] | None = None,
    ) -> None:
        self._coro: Coroutine[Any, Any, None] | None = coro
        self._on_done = on_done
        # What the coroutine waits for: NEED_BYTES, a future, or None while it runs or is done.
        self._waiting: object = None
        self._timer = (
            asyncio.get_running_loop().call_later(timeout_s, self._timed_out)
            if timeout_s > 0
            else None
        )

    def start(self) -> None:
        self._step(None)

    def wants_bytes(self) -> bool:
        return self._waiting is NEED_BYTES

    def poke(self) -> None:
        """Bytes arrived or the connection ended: resume a coroutine waiting for bytes (it
        reads the buffer and the connection's state itself)."""
        if self._waiting is NEED_BYTES:
            self._step(None)

    def cancel(self) -> asyncio.Future[Any] | None:
        """The proxy is closing: cancel the future the coroutine waits on, as cancelling a
        Task would (its done callback resumes the coroutine with CancelledError). Returns that
        future, for the caller to await; None when the coroutine waits for no future."""
        waiting = self._waiting
        if not isinstance(waiting, asyncio.Future):
            return None
        waiting.cancel()
        return waiting

    def disarm(self) -> None:
        """No timeout from here on (what remains is bounded by its own timer)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _future_done(self, fut: asyncio.Future[Any]) -> None:
        if self._waiting is fut:
            self._step(None)

    def _timed_out(self) -> None:
        self._timer = None
        waiting = self._waiting
        if waiting is None:
            return  # done (a running coroutine cannot be interrupted by a timer callback)
        if isinstance(waiting, asyncio.Future):
            # As a Task's cancellation would: what it awaited is cancelled too.
            waiting.remove_done_callback(self._future_done)
            waiting.cancel()
        self._step(LoginTimeout())

    def _step(self, exc: BaseException | None) -> None:
        coro = self._coro
        if coro is None:
            return
        self._waiting = None
        try:
            yielded = coro.send(None) if exc is None else coro.throw(exc)
        except StopIteration:
            self._finish()
            return
        except BaseException:
            # What the coroutine did not handle (the login handles every Exception) goes to
            # the caller, after clean-up.
            self._finish()
            raise
        if yielded is NEED_BYTES:
            self._waiting = yielded
        elif asyncio.isfuture(yielded):
            # What Task.__step does with a future a coroutine yields.
            yielded._asyncio_future_blocking = False
            self._waiting = yielded
            yielded.add_done_callback(self._future_done)
        else:
            self._step(RuntimeError(f"a stepped coroutine awaited {yielded!r}"))

    def _finish(self) -> None:
        self._coro = None
        self.disarm()
        on_done = self._on_done
        self._on_done = None
        if on_done is not None:
            on_done()


async def more_bytes(endpoint: Endpoint) -> None:
    """Wait until `endpoint` has received more bytes; EndpointClosed once it cannot."""
    if endpoint.transport is None or endpoint.eof or endpoint.is_closed():
        raise EndpointClosed
    endpoint.resume_reading()
    await NEED_BYTES
    if endpoint.transport is None or endpoint.is_closed():
        raise EndpointClosed


async def read_message(endpoint: Endpoint, max_len: int, what: str) -> tuple[int, bytes]:
    """The next whole typed message (type byte, body); lengths above max_len are refused."""
    while True:
        frame = endpoint.take_frame(max_len, what)
        if frame is not None:
            return frame
        await more_bytes(endpoint)


async def external(aw: Coroutine[Any, Any, T]) -> T:
    """Await a coroutine that may need a current task (asyncio.timeout, wait_for): as a Task
    of its own, whose completion resumes the stepped coroutine."""
    return await asyncio.ensure_future(aw)
