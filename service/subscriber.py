"""One subscriber's bounded buffer between the hub and its HTTP stream."""

from __future__ import annotations

import asyncio

from service.sse import Frame

Batch = tuple[str, list[Frame]]
"""Frames of one topic, in stream order, as the hub hands them over."""


class Subscriber:
    """Holds frames the hub pushed until the stream writes them, all at once.

    The hub never waits on a subscriber: `push` is synchronous. A subscriber whose
    buffer passes its limit is marked overflowed and gets nothing more; its stream
    ends, and the client resumes from its Last-Event-ID, replaying from Redis.
    """

    __slots__ = ("_count", "_limit", "_pending", "_waiter", "ended", "overflowed")

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._pending: list[Batch] = []
        self._count = 0
        self._waiter: asyncio.Future[None] | None = None
        self.overflowed = False
        self.ended = False

    def push(self, topic: str, frames: list[Frame]) -> None:
        if self.overflowed:
            return
        self._pending.append((topic, frames))
        self._count += len(frames)
        if self._count > self._limit:
            self.overflowed = True
            self._pending = []
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def set(self) -> None:
        """End the stream (server shutdown); named so it can serve as a shutdown event."""
        self.ended = True
        self._wake()

    async def wait(self, idle_seconds: float) -> bool:
        """Wait until frames are pending, or the stream must end; False on timeout."""
        if self._pending or self.overflowed or self.ended:
            return True
        waiter = asyncio.get_running_loop().create_future()
        self._waiter = waiter
        try:
            await asyncio.wait_for(waiter, idle_seconds)
        except TimeoutError:
            return False
        finally:
            self._waiter = None
        return True

    def take(self) -> list[Batch]:
        pending, self._pending, self._count = self._pending, [], 0
        return pending
