"""The service's SSE parser with what tests check recorded, and a streaming client for tests.

`SSEParser` is `service.client.sse_parser.SSEParser` (the WHATWG event-stream interpretation,
so what the tests see is what a browser's `EventSource` would see) that also keeps every
comment and how many events came before the first `retry` field.

`SSEStream` wraps an `httpx.AsyncClient` streaming GET and reads it in the background,
so comment (heartbeat) arrival times are real and waiting is always bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from service.client import sse_parser
from service.client.sse_parser import Event

__all__ = ["Comment", "Event", "Following", "SSEParser", "SSEStream", "parse"]

DEFAULT_TIMEOUT = 10.0
"""Seconds a single wait on a stream may take unless a test says otherwise."""


@dataclass(frozen=True)
class Comment:
    text: str
    """The comment line without its `:` and at most one following space."""
    at: float
    """`time.monotonic()` when the bytes holding it were read."""


class SSEParser(sse_parser.SSEParser):
    """The service's parser, also recording comments and when `retry` first came.

    The service's own keeps neither: a `herald tail` running for days would pile up heartbeats.
    """

    def __init__(self) -> None:
        super().__init__()
        self.comments: list[str] = []
        self.events_before_retry: int | None = None
        """How many events had been dispatched when a `retry` field was first seen."""

    def on_comment(self, text: str) -> None:
        self.comments.append(text)

    def on_retry(self, ms: int) -> None:
        if self.events_before_retry is None:
            self.events_before_retry = self.dispatched


def parse(chunks: Iterable[bytes]) -> list[Event]:
    """Every event a whole stream delivered in `chunks` dispatches."""
    parser = SSEParser()
    events: list[Event] = []
    for chunk in chunks:
        events.extend(parser.feed(chunk))
    parser.close()
    return events


class SSEStream:
    """A streaming `GET` read in the background by an `SSEParser`.

        async with SSEStream(client, f"{base}/events", params={"topic": "a"}) as stream:
            assert stream.response.status_code == 200
            event = await stream.next_event(timeout=5)

    Every wait is bounded; a timeout raises `AssertionError` saying what was seen.
    """

    def __init__(
        self,
        client: httpx.AsyncClient,
        url: str,
        *,
        params: Any = None,
        headers: Mapping[str, str] | None = None,
        connect_timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self._client = client
        self._url = url
        self._params = params
        self._headers = dict(headers or {})
        # No read timeout on the socket: the stream may legitimately idle. Waits are
        # bounded by `next_event`/`wait_closed` instead.
        self._timeout = httpx.Timeout(connect_timeout, read=None)
        self.parser = SSEParser()
        self.events: list[Event] = []
        """Every event dispatched so far, consumed or not."""
        self.comments: list[Comment] = []
        self.error: BaseException | None = None
        """What ended the stream other than a clean EOF (e.g. a dropped connection)."""
        self.opened_at = 0.0
        self._queue: asyncio.Queue[Event] = asyncio.Queue()
        self._closed = asyncio.Event()
        self._exit_stack = contextlib.AsyncExitStack()
        self._reader: asyncio.Task[None] | None = None
        self.response: httpx.Response

    async def __aenter__(self) -> SSEStream:
        request = self._client.stream(
            "GET", self._url, params=self._params, headers=self._headers, timeout=self._timeout
        )
        try:
            self.response = await asyncio.wait_for(
                self._exit_stack.enter_async_context(request), DEFAULT_TIMEOUT * 2
            )
        except BaseException:
            await self._exit_stack.aclose()
            raise
        self.opened_at = time.monotonic()
        if self.response.status_code == 200:
            self._reader = asyncio.create_task(self._read())
        else:
            await self.response.aread()
            self._closed.set()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Disconnect (idempotent)."""
        if self._reader is not None and not self._reader.done():
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        await self._exit_stack.aclose()
        self._closed.set()

    async def _read(self) -> None:
        try:
            async for chunk in self.response.aiter_raw():
                now = time.monotonic()
                seen_comments = len(self.parser.comments)
                for event in self.parser.feed(chunk):
                    self.events.append(event)
                    self._queue.put_nowait(event)
                self.comments.extend(
                    Comment(text, now) for text in self.parser.comments[seen_comments:]
                )
            self.parser.close()
        except (httpx.HTTPError, OSError) as exc:
            self.error = exc
        finally:
            self._closed.set()

    @property
    def closed(self) -> bool:
        """The stream ended (EOF, error or `aclose`)."""
        return self._closed.is_set()

    @property
    def last_id(self) -> str | None:
        """What a reconnecting `EventSource` would send as `Last-Event-ID`."""
        return self.parser.last_event_id

    @property
    def pending(self) -> int:
        """Events received but not yet taken with `next_event`/`collect`."""
        return self._queue.qsize()

    def _describe(self) -> str:
        state = "closed" if self.closed else "open"
        last = self.events[-1] if self.events else None
        return (
            f"stream {self._url} params={self._params!r} is {state}, "
            f"{len(self.events)} events received (last: {last!r}), "
            f"{len(self.comments)} comments, error: {self.error!r}"
        )

    async def next_event(self, timeout: float = DEFAULT_TIMEOUT) -> Event:  # noqa: ASYNC109
        """The next event not yet taken; `AssertionError` after `timeout` s or at stream end."""
        if not self._queue.empty():
            return self._queue.get_nowait()
        getter = asyncio.ensure_future(self._queue.get())
        closed = asyncio.ensure_future(self._closed.wait())
        try:
            await asyncio.wait(
                {getter, closed}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for waiter in (getter, closed):
                if not waiter.done():
                    waiter.cancel()
            await asyncio.gather(getter, closed, return_exceptions=True)
        if getter.done() and not getter.cancelled():
            return getter.result()
        if not self._queue.empty():
            return self._queue.get_nowait()
        if self.closed:
            raise AssertionError(f"stream ended while waiting for an event: {self._describe()}")
        raise AssertionError(f"no event within {timeout} s: {self._describe()}")

    def take_pending(self) -> list[Event]:
        """Every event received but not yet taken, without waiting."""
        return [self._queue.get_nowait() for _ in range(self._queue.qsize())]

    async def collect(self, n: int, timeout: float = DEFAULT_TIMEOUT) -> list[Event]:  # noqa: ASYNC109
        """The next `n` events, all within `timeout` seconds in total."""
        deadline = time.monotonic() + timeout
        events: list[Event] = []
        for _ in range(n):
            remaining = max(deadline - time.monotonic(), 0.0)
            try:
                events.append(await self.next_event(remaining))
            except AssertionError as exc:
                raise AssertionError(f"got {len(events)} of {n} events: {exc}") from None
        return events

    async def expect_silence(self, seconds: float) -> None:
        """Assert that no event arrives for `seconds`."""
        await asyncio.sleep(seconds)
        extra = self.take_pending()
        if extra:
            raise AssertionError(f"unexpected events: {extra!r}")

    async def wait_closed(self, timeout: float = DEFAULT_TIMEOUT) -> None:  # noqa: ASYNC109
        """Wait for the server to end the stream; `AssertionError` if it does not in time."""
        try:
            await asyncio.wait_for(self._closed.wait(), timeout)
        except TimeoutError:
            raise AssertionError(
                f"stream not ended within {timeout} s: {self._describe()}"
            ) from None


class Following:
    """A subscription followed as `EventSource` follows it: whenever the stream ends or
    cannot be opened, it opens again with `Last-Event-ID`, the last id the stream gave.

        following = Following(client, f"{base}/events", {"topic": "a"})
        await following.until_positioned()
        ...
        await following.until_received(ids)
        await following.aclose()
    """

    def __init__(self, client: httpx.AsyncClient, url: str, params: Any) -> None:
        self._client = client
        self._url = url
        self._params = params
        self._ended: list[Event] = []
        self._stream: SSEStream | None = None
        self.last_id: str | None = None
        self.resumes = 0
        """Streams opened again after one ended."""
        self._task = asyncio.create_task(self._follow())

    @property
    def events(self) -> list[Event]:
        """Every event received, over all the streams so far."""
        return self._ended + (self._stream.events if self._stream else [])

    async def _follow(self) -> None:
        while True:
            headers = {"Last-Event-ID": self.last_id} if self.last_id else {}
            stream = SSEStream(self._client, self._url, params=self._params, headers=headers)
            try:
                async with stream:
                    self._stream = stream
                    while not stream.closed:
                        self.last_id = stream.last_id or self.last_id
                        await asyncio.sleep(0.02)
            except (httpx.HTTPError, OSError):
                pass
            finally:
                self._ended.extend(stream.events)
                self._stream = None
                self.last_id = stream.last_id or self.last_id
            self.resumes += 1
            await asyncio.sleep(0.1)

    async def until_positioned(self, within: float = DEFAULT_TIMEOUT) -> None:
        """Wait for the stream's first id (a live start sends its position): from then
        on, every event published reaches it."""
        deadline = time.monotonic() + within
        while self.last_id is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"no position within {within} s from {self._url}")
            await asyncio.sleep(0.02)

    async def until_received(self, ids: set[str], within: float = DEFAULT_TIMEOUT) -> None:
        """Wait until every event id in `ids` has arrived."""
        deadline = time.monotonic() + within
        while missing := ids - {event.id for event in self.events}:
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(missing)} events missing after {within} s")
            await asyncio.sleep(0.05)

    async def aclose(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        if self._stream is not None:
            await self._stream.aclose()
