"""Sending an ASGI message without a task switch when the server can take it at once."""

from __future__ import annotations

from collections.abc import Awaitable, Coroutine, Generator
from types import CoroutineType
from typing import Any

from starlette.types import Message, Send


def send_now(send: Send, message: Message) -> Awaitable[None] | None:
    """Run `await send(message)` here, up to its first suspension.

    An ASGI server writes to the socket inside `send` and suspends only while the
    client's transport is paused, so one step of the coroutine normally completes it:
    the hub then writes to thousands of streams without waking a task for each. When
    it does suspend, the returned awaitable finishes the send; nothing else may be
    sent on that stream until it has.
    """
    sending = send(message)
    if type(sending) is not CoroutineType:
        return sending
    try:
        suspended_on = sending.send(None)
    except StopIteration:
        return None
    return _Rest(sending, suspended_on)


class _Rest:
    """The rest of a coroutine that has already run up to `suspended_on`.

    Awaiting it hands what the coroutine yielded to the awaiting task and everything
    the task sends or throws back (results, cancellation) to the coroutine, as a
    plain `await` of the coroutine would have.
    """

    __slots__ = ("_coroutine", "_suspended_on")

    def __init__(self, coroutine: Coroutine[Any, Any, None], suspended_on: Any) -> None:
        self._coroutine = coroutine
        self._suspended_on = suspended_on

    def __await__(self) -> Generator[Any, Any, None]:
        yielded = self._suspended_on
        while True:
            try:
                sent = yield yielded
            except BaseException as exc:
                try:
                    yielded = self._coroutine.throw(exc)
                except StopIteration:
                    return
            else:
                try:
                    yielded = self._coroutine.send(sent)
                except StopIteration:
                    return
