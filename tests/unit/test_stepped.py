"""session.stepped: a login coroutine stepped by its connection's callbacks, with no Task."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import pytest

from pgpool_proxy.session.stepped import NEED_BYTES, LoginTimeout, Stepper, external


class Trace:
    def __init__(self) -> None:
        self.events: list[Any] = []
        self.done = 0

    def ended(self) -> None:
        self.done += 1


async def test_bytes_wait_resumes_on_poke_only_and_in_the_same_call() -> None:
    trace = Trace()

    async def login() -> None:
        trace.events.append("start")
        await NEED_BYTES
        trace.events.append("first bytes")
        await NEED_BYTES
        trace.events.append("second bytes")

    tasks_before = len(asyncio.all_tasks())
    stepper = Stepper(login(), 5, trace.ended)
    stepper.start()
    assert trace.events == ["start"] and stepper.wants_bytes()
    assert len(asyncio.all_tasks()) == tasks_before  # no Task stands behind it
    stepper.poke()
    assert trace.events == ["start", "first bytes"]  # synchronously, no loop round
    assert trace.done == 0
    stepper.poke()
    assert trace.events[-1] == "second bytes" and trace.done == 1
    assert not stepper.wants_bytes()
    stepper.poke()  # after the end: nothing
    assert trace.done == 1


async def test_a_future_resumes_it_with_its_result_or_its_exception() -> None:
    loop = asyncio.get_running_loop()
    first: asyncio.Future[int] = loop.create_future()
    second: asyncio.Future[int] = loop.create_future()
    trace = Trace()
    ended = loop.create_future()

    async def login() -> None:
        trace.events.append(await first)
        try:
            await second
        except ValueError as exc:
            trace.events.append(str(exc))

    stepper = Stepper(login(), 5, lambda: ended.set_result(None))
    stepper.start()
    stepper.poke()  # waiting on a future, not on bytes: a poke does nothing
    assert trace.events == [] and not stepper.wants_bytes()
    first.set_result(7)
    second.set_exception(ValueError("refused"))
    await ended
    assert trace.events == [7, "refused"]


@pytest.mark.parametrize("wait", ["bytes", "future"])
async def test_the_timeout_is_thrown_in_where_it_waits(wait: str) -> None:
    loop = asyncio.get_running_loop()
    pending: asyncio.Future[None] = loop.create_future()
    ended = loop.create_future()
    seen: list[str] = []

    async def login() -> None:
        try:
            if wait == "bytes":
                await NEED_BYTES
            else:
                await pending
        except LoginTimeout:
            seen.append("timeout")

    Stepper(login(), 0.01, lambda: ended.set_result(None)).start()
    await asyncio.wait_for(ended, 5)
    assert seen == ["timeout"]
    # What it awaited is cancelled, as a Task's cancellation would cancel it.
    assert pending.cancelled() == (wait == "future")


async def test_disarm_ends_the_timeout_and_finishing_disarms_it() -> None:
    loop = asyncio.get_running_loop()
    gate: asyncio.Future[None] = loop.create_future()
    seen: list[str] = []

    async def login() -> None:
        try:
            await gate
            seen.append("resumed")
        except LoginTimeout:
            seen.append("timeout")

    ended = loop.create_future()
    stepper = Stepper(login(), 0.01, lambda: ended.set_result(None))
    stepper.start()
    stepper.disarm()
    later = loop.create_future()
    loop.call_later(0.05, later.set_result, None)
    await later  # well past the timeout
    assert seen == [] and not gate.cancelled()
    gate.set_result(None)
    await ended
    assert seen == ["resumed"]


async def test_awaiting_anything_else_is_refused_inside_the_coroutine() -> None:
    seen: list[str] = []

    class Odd:
        def __await__(self) -> Any:
            yield "not a future"

    async def login() -> None:
        try:
            await Odd()
        except RuntimeError as exc:
            seen.append(str(exc))

    Stepper(login(), 5).start()
    assert seen and "awaited 'not a future'" in seen[0]


async def test_what_the_coroutine_does_not_handle_reaches_the_caller_after_clean_up() -> None:
    trace = Trace()

    async def login() -> None:
        await NEED_BYTES
        raise KeyError("bug")

    stepper = Stepper(login(), 5, trace.ended)
    stepper.start()
    with pytest.raises(KeyError):
        stepper.poke()
    assert trace.done == 1 and not stepper.wants_bytes()


async def test_external_gives_a_coroutine_that_needs_a_task_its_own() -> None:
    loop = asyncio.get_running_loop()
    ended = loop.create_future()
    seen: list[object] = []

    async def needs_task() -> int:
        async with asyncio.timeout(5):  # raises RuntimeError outside a task
            await asyncio.sleep(0)
            return 42

    async def login() -> None:
        seen.append(await external(needs_task()))

    Stepper(login(), 5, lambda: ended.set_result(None)).start()
    await ended
    assert seen == [42]


async def test_a_future_that_failed_as_the_timeout_fired_is_not_left_unretrieved() -> None:
    """The timer and the future's failure in one loop round: the coroutine gets LoginTimeout,
    and the future's exception, which nobody will read now, is not reported as never
    retrieved when the future is collected."""
    loop = asyncio.get_running_loop()
    complaints: list[str] = []
    loop.set_exception_handler(lambda _loop, ctx: complaints.append(ctx["message"]))
    try:
        held: list[asyncio.Future[None]] = [loop.create_future()]
        caught: list[type[BaseException]] = []

        async def login() -> None:
            try:
                await held[0]
            except BaseException as exc:
                caught.append(type(exc))

        stepper = Stepper(login(), 5, None)
        stepper.start()
        held[0].set_exception(ValueError("the look-up failed"))
        stepper._timed_out()  # before the future's callback runs
        assert caught == [LoginTimeout]
        await asyncio.sleep(0)
        held.clear()
        gc.collect()
        assert complaints == []
    finally:
        loop.set_exception_handler(None)


async def test_cancel_ends_a_wait_on_a_future_with_cancelled_error() -> None:
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()
    trace = Trace()

    async def login() -> None:
        try:
            await fut
        except asyncio.CancelledError:
            trace.events.append("cancelled")

    stepper = Stepper(login(), 5, trace.ended)
    stepper.start()
    assert stepper.cancel() is fut and fut.cancelled()
    await asyncio.sleep(0)
    assert trace.events == ["cancelled"] and trace.done == 1
    waiting = Stepper(_bytes_wait(), 5, None)
    waiting.start()
    assert waiting.cancel() is None  # a wait for bytes ends when the connection closes
    waiting.disarm()  # the loop is shared by the session's tests: no timer left behind


async def _bytes_wait() -> None:
    await NEED_BYTES
