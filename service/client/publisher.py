"""Publishing to Herald from Python, with retries that never publish twice.

    with Publisher("http://127.0.0.1:8000") as herald:
        herald.publish("stocks.AAPL", {"price": 189.2}, event="tick")
        with herald.batch() as batch:
            batch.add("logs.api", "GET / 200", event="log")
            batch.add("logs.api", "GET /x 404", event="log")
        print(batch.published)

    async with AsyncPublisher("http://127.0.0.1:8000") as herald:
        async with herald.stream() as stream:
            async for token in answer:
                await stream.send("chat.42", token, event="token")
        print(stream.result)

Every request carries an `Idempotency-Key` (a fresh UUID unless given) and is retried
with that same key after a transport error, 429, 502, 503 or 504: Herald answers a key
it already took with the first ids and appends nothing. Events are validated before
anything is sent, so a bad topic raises pydantic's `ValidationError` at once.

    ClientError          a publish that did not succeed
     ├── Rejected         Herald refused it (4xx, or an error a retry would not change)
     │    └── LineRejected   it refused one line of a streaming publish
     └── Unavailable      no answer, or only busy ones, until the retries were spent
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from types import TracebackType
from typing import Self

import httpx
from pydantic import JsonValue, TypeAdapter, ValidationError

from service.models import Published, PublishEvent, StreamPublished

__all__ = [
    "AsyncPublisher",
    "Batch",
    "ClientError",
    "LineRejected",
    "Publisher",
    "Rejected",
    "Stream",
    "Unavailable",
]

MAX_BATCH = 1000
"""Most events per request (Herald's default HERALD_MAX_BATCH); bigger batches are split."""
MAX_BACKOFF = 5.0
"""Longest wait between two attempts, in seconds, unless Retry-After asks for more."""
MAX_RETRY_AFTER = 30.0
"""Longest Retry-After honoured, in seconds."""
RETRY_STATUSES = frozenset({429, 502, 503, 504})
STREAM_RETRY_STATUSES = RETRY_STATUSES | {409}
"""A streaming publish also retries 409: an earlier attempt under its key, cut off on our
side, may still be publishing on Herald's."""
NDJSON = "application/x-ndjson"

_EVENTS = TypeAdapter(list[PublishEvent])
_ONE_ANSWER = TypeAdapter(Published)
_BATCH_ANSWER = TypeAdapter(list[Published])
_STREAM_ANSWER = TypeAdapter(StreamPublished)
_TRANSPORT_ERRORS: tuple[tuple[type[httpx.TransportError], str], ...] = (
    (httpx.ConnectTimeout, "connecting timed out"),
    (httpx.ReadTimeout, "nothing received in time"),
    (httpx.TimeoutException, "timed out"),
    (httpx.ConnectError, "could not connect"),
    (httpx.RemoteProtocolError, "the server closed the connection"),
    (httpx.NetworkError, "the connection broke"),
)


class ClientError(Exception):
    """A publish that did not succeed."""


class Rejected(ClientError):
    """Herald refused the request (`status`, and the JSON `detail` of its answer)."""

    def __init__(self, status: int, detail: JsonValue) -> None:
        super().__init__(f"Herald rejected the request ({status}): {_summary(detail)}")
        self.status = status
        self.detail = detail

    @classmethod
    def of(cls, response: httpx.Response) -> Rejected:
        return cls(response.status_code, _detail(response))


class LineRejected(Rejected):
    """Herald refused line `line` of a streaming publish, the `line`-th event sent; the
    `count` events before it are published."""

    def __init__(self, status: int, detail: JsonValue, line: int, count: int) -> None:
        super().__init__(status, detail)
        self.line = line
        self.count = count

    def __str__(self) -> str:
        published = "1 event" if self.count == 1 else f"{self.count} events"
        return (
            f"Herald rejected line {self.line} ({self.status}): {_summary(self.detail)}; "
            f"{published} before it published"
        )


class Unavailable(ClientError):
    """No usable answer in `attempts` tries; `cause` says what went wrong last.

    After a transport error, that httpx exception is the `__context__`.
    """

    def __init__(self, url: str, attempts: int, cause: str) -> None:
        tries = "1 attempt" if attempts == 1 else f"{attempts} attempts"
        super().__init__(f"Herald at {url} is unavailable after {tries}: {cause}")
        self.attempts = attempts
        self.cause = cause


class Batch:
    """Events added in a `publisher.batch()` block, published together when it ends."""

    def __init__(self) -> None:
        self.events: list[PublishEvent] = []
        self._published: list[Published] | None = None

    def add(self, topic: str, data: JsonValue = "", event: str = "message") -> None:
        self.events.append(PublishEvent(topic=topic, event=event, data=data))

    @property
    def published(self) -> list[Published]:
        """Where each event was stored, in order; known once the block has ended."""
        if self._published is None:
            raise RuntimeError("a batch is published when its block ends")
        return self._published


class Publisher:
    """Publishes over one `httpx.Client`; a context manager that closes it."""

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        timeout: float = 10.0,
        retries: int = 5,
        backoff: float = 0.2,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._url = url
        self._retries = retries
        self._backoff = backoff
        self._http = httpx.Client(
            base_url=checked_url(url), headers=_auth(token), timeout=timeout, transport=transport
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def publish(
        self,
        topic: str,
        data: JsonValue = "",
        event: str = "message",
        *,
        idempotency_key: str | None = None,
    ) -> Published:
        call = _one(PublishEvent(topic=topic, event=event, data=data), idempotency_key)
        (published,) = self._post(call)
        return published

    def publish_batch(
        self, events: Sequence[PublishEvent], *, idempotency_key: str | None = None
    ) -> list[Published]:
        """Publish `events` in order: one request per MAX_BATCH, keyed `<key>:<n>` if several.

        Calling it again with the same key after a failure publishes only what had
        not landed.
        """
        published: list[Published] = []
        for call in _batches(events, idempotency_key):
            published += self._post(call)
        return published

    @contextmanager
    def batch(self, *, idempotency_key: str | None = None) -> Iterator[Batch]:
        batch = Batch()
        yield batch
        batch._published = self.publish_batch(batch.events, idempotency_key=idempotency_key)

    def _post(self, call: _Call) -> list[Published]:
        schedule = _Schedule(self._url, self._retries, self._backoff)
        while True:
            try:
                response = self._http.post("/publish", content=call.body, headers=call.headers)
            except httpx.TransportError as exc:
                time.sleep(schedule.delay(describe(exc)))
                continue
            if response.status_code not in RETRY_STATUSES:
                return call.answer(response)
            time.sleep(schedule.delay(_busy(response), retry_after(response)))


class AsyncPublisher:
    """`Publisher` for asyncio, over one `httpx.AsyncClient`."""

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        timeout: float = 10.0,
        retries: int = 5,
        backoff: float = 0.2,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._url = url
        self._retries = retries
        self._backoff = backoff
        self._http = httpx.AsyncClient(
            base_url=checked_url(url), headers=_auth(token), timeout=timeout, transport=transport
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def publish(
        self,
        topic: str,
        data: JsonValue = "",
        event: str = "message",
        *,
        idempotency_key: str | None = None,
    ) -> Published:
        call = _one(PublishEvent(topic=topic, event=event, data=data), idempotency_key)
        (published,) = await self._post(call)
        return published

    async def publish_batch(
        self, events: Sequence[PublishEvent], *, idempotency_key: str | None = None
    ) -> list[Published]:
        """Like `Publisher.publish_batch`."""
        published: list[Published] = []
        for call in _batches(events, idempotency_key):
            published += await self._post(call)
        return published

    @asynccontextmanager
    async def batch(self, *, idempotency_key: str | None = None) -> AsyncIterator[Batch]:
        batch = Batch()
        yield batch
        batch._published = await self.publish_batch(batch.events, idempotency_key=idempotency_key)

    def stream(self, *, idempotency_key: str | None = None) -> Stream:
        """A streaming publish, for `async with`: see `Stream`."""
        schedule = partial(_Schedule, self._url, self._retries, self._backoff)
        return Stream(self._http, schedule, idempotency_key or str(uuid.uuid4()))

    async def publish_stream(
        self, events: AsyncIterable[PublishEvent], *, idempotency_key: str | None = None
    ) -> StreamPublished:
        """Publish `events` as they come, in one streaming request; Herald's answer."""
        async with self.stream(idempotency_key=idempotency_key) as stream:
            async for event in events:
                stream._add(event)
        return stream.result

    async def _post(self, call: _Call) -> list[Published]:
        schedule = _Schedule(self._url, self._retries, self._backoff)
        while True:
            try:
                response = await self._http.post(
                    "/publish", content=call.body, headers=call.headers
                )
            except httpx.TransportError as exc:
                await asyncio.sleep(schedule.delay(describe(exc)))
                continue
            if response.status_code not in RETRY_STATUSES:
                return call.answer(response)
            await asyncio.sleep(schedule.delay(_busy(response), retry_after(response)))


class Stream:
    """A streaming publish: one request whose NDJSON body grows as events are sent.

        async with publisher.stream() as stream:
            await stream.send("chat.42", "Hel", event="token")
            await stream.send("chat.42", "lo", event="token")
        print(stream.result)  # count=2 last={'chat.42': '…'}

    An event leaves as soon as the event loop runs the request. Every line is kept: after
    a transport error or a 409, 429, 502, 503 or 504, the body is sent again from its
    first line under the same `Idempotency-Key`, and Herald publishes only the lines it
    has not. `retries` counts failures in a row; an attempt that carried new lines starts
    the count again. The block's end waits for the answer; an exception in the block
    abandons the request (what Herald appended stays published).
    """

    def __init__(
        self, http: httpx.AsyncClient, schedule: Callable[[], _Schedule], key: str
    ) -> None:
        self._http = http
        self._schedule = schedule
        self._headers = {"Content-Type": NDJSON, "Idempotency-Key": key}
        self._lines: list[bytes] = []
        self._ended = False
        self._more = asyncio.Event()
        self._carried = 0
        """Most lines one attempt has written so far."""
        self._attempts: asyncio.Task[StreamPublished] | None = None
        self._result: StreamPublished | None = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc_type is None:
            await self.end()
            return
        self._ended = True
        if self._attempts is not None:
            self._attempts.cancel()
            await asyncio.gather(self._attempts, return_exceptions=True)

    async def send(self, topic: str, data: JsonValue = "", event: str = "message") -> None:
        """Add an event to the body (validated first).

        Once the stream has failed it raises that instead, without adding the event:
        `Rejected` every time; `Unavailable` once, and the next call tries again.
        """
        self._add(PublishEvent(topic=topic, event=event, data=data))

    async def end(self) -> None:
        """End the body and wait for Herald's answer (the block's end does it too).

        Raises like `send`; after `Unavailable` it may be called again.
        """
        if self._result is not None:
            return
        self._ended = True
        self._more.set()
        try:
            # Shielded: a caller that stops waiting (a timeout) may call again and wait on.
            self._result = await asyncio.shield(self._running())
        except Unavailable:
            self._attempts = None
            raise

    @property
    def result(self) -> StreamPublished:
        """How many events the body published, and each topic's last id."""
        if self._result is None:
            raise RuntimeError("a stream's answer is known once the stream has ended")
        return self._result

    def _add(self, event: PublishEvent) -> None:
        if self._ended:
            raise RuntimeError("the stream has ended")
        attempts = self._running()
        if attempts.done() and (failure := attempts.exception()) is not None:
            if isinstance(failure, Unavailable):
                self._attempts = None
            raise failure
        self._lines.append(event.model_dump_json().encode() + b"\n")
        self._more.set()

    def _running(self) -> asyncio.Task[StreamPublished]:
        """The attempts under way, or a new round of them."""
        if self._attempts is None:
            self._attempts = asyncio.create_task(self._answer())
        return self._attempts

    async def _answer(self) -> StreamPublished:
        schedule = self._schedule()
        while True:
            carried = self._carried
            try:
                response = await self._http.post(
                    "/publish", content=self._body(), headers=self._headers
                )
            except httpx.TransportError as exc:
                await self._pause(schedule, carried, describe(exc))
                continue
            if response.status_code not in STREAM_RETRY_STATUSES:
                return _streamed(response)
            await self._pause(schedule, carried, _busy(response), retry_after(response))

    async def _pause(
        self, schedule: _Schedule, carried: int, cause: str, retry_after: float | None = None
    ) -> None:
        if self._carried > carried:
            schedule.restart()
        await asyncio.sleep(schedule.delay(cause, retry_after))

    async def _body(self) -> AsyncIterator[bytes]:
        """Every line so far, then each new one as it comes, until the stream ends."""
        sent = 0
        while sent < len(self._lines) or not self._ended:
            if sent == len(self._lines):
                self._more.clear()
                await self._more.wait()
                continue
            chunk = b"".join(self._lines[sent:])
            sent = len(self._lines)
            yield chunk
            self._carried = max(self._carried, sent)


def _streamed(response: httpx.Response) -> StreamPublished:
    """The answer to a streaming publish; the error it is, if it is one."""
    if not response.is_success:
        raise _rejection(response)
    try:
        return _STREAM_ANSWER.validate_json(response.content)
    except ValidationError:
        raise ClientError(
            f"{response.url} answered {response.status_code} without the count"
        ) from None


def _rejection(response: httpx.Response) -> Rejected:
    """`LineRejected` when the answer names the line, else `Rejected`."""
    try:
        body = response.json()
        line, count = body["line"], body["count"]
    except (ValueError, TypeError, KeyError):
        return Rejected.of(response)
    if isinstance(line, int) and isinstance(count, int):
        return LineRejected(response.status_code, body.get("detail"), line, count)
    return Rejected.of(response)


@dataclass(frozen=True)
class _Call:
    """One `POST /publish`. Its body is serialised once: Herald fingerprints the bytes
    under the key, so every retry must send the very same ones."""

    body: bytes
    key: str
    batch: bool
    size: int

    @property
    def headers(self) -> dict[str, str]:
        return {"Content-Type": "application/json", "Idempotency-Key": self.key}

    def answer(self, response: httpx.Response) -> list[Published]:
        if not response.is_success:
            raise Rejected.of(response)
        try:
            if self.batch:
                published = _BATCH_ANSWER.validate_json(response.content)
            else:
                published = [_ONE_ANSWER.validate_json(response.content)]
        except ValidationError:
            published = []
        if len(published) != self.size:
            raise ClientError(f"{response.url} answered {response.status_code} without the ids")
        return published


def _one(event: PublishEvent, key: str | None) -> _Call:
    return _Call(event.model_dump_json().encode(), key or str(uuid.uuid4()), False, 1)


def _batches(events: Sequence[PublishEvent], key: str | None) -> list[_Call]:
    """The requests that publish `events`, at most MAX_BATCH each, each with its own key."""
    key = key or str(uuid.uuid4())
    chunks = [list(events[i : i + MAX_BATCH]) for i in range(0, len(events), MAX_BATCH)]
    return [
        _Call(_EVENTS.dump_json(chunk), key if len(chunks) == 1 else f"{key}:{n}", True, len(chunk))
        for n, chunk in enumerate(chunks)
    ]


class _Schedule:
    """How long to wait before each retry of one request, until the retries run out."""

    def __init__(self, url: str, retries: int, backoff: float) -> None:
        self._url = url
        self._retries = retries
        self._backoff = backoff
        self._failures = 0

    def delay(self, cause: str, retry_after: float | None = None) -> float:
        """Seconds until the next attempt; `Unavailable` when none is left."""
        self._failures += 1
        if self._failures > self._retries:
            raise Unavailable(self._url, self._failures, cause)
        ceiling = min(self._backoff * 2 ** (self._failures - 1), MAX_BACKOFF)
        # Jitter keeps clients that failed together from all retrying together.
        delay = random.uniform(ceiling / 2, ceiling)
        if retry_after is not None:
            delay = max(delay, min(retry_after, MAX_RETRY_AFTER))
        return delay

    def restart(self) -> None:
        """Count the retries afresh: the last attempt got further than any before it."""
        self._failures = 0


def _summary(detail: JsonValue) -> str:
    """A `detail` on one line; pydantic's error lists as `where: what; …`."""
    if not isinstance(detail, list):
        return str(detail)
    parts = []
    for error in detail:
        loc = error.get("loc") if isinstance(error, dict) else None
        if isinstance(error, dict) and isinstance(loc, list):
            parts.append(f"{'.'.join(str(part) for part in loc)}: {error.get('msg')}")
        else:
            parts.append(str(error))
    return "; ".join(parts)


def _detail(response: httpx.Response) -> JsonValue:
    """The JSON `detail` of an error answer, or its text when it is not Herald's."""
    try:
        body: JsonValue = response.json()
    except ValueError:
        return response.text.strip()[:200] or response.reason_phrase
    if isinstance(body, dict) and "detail" in body:
        return body["detail"]
    return body


def _busy(response: httpx.Response) -> str:
    return f"the last answer was {response.status_code} ({_summary(_detail(response))})"


def retry_after(response: httpx.Response) -> float | None:
    """Retry-After in seconds: a number of seconds or an HTTP date."""
    value = response.headers.get("retry-after", "").strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max((when - datetime.now(UTC)).total_seconds(), 0.0)


def describe(exc: httpx.TransportError) -> str:
    """What went wrong, in words rather than an exception's text."""
    for kind, text in _TRANSPORT_ERRORS:
        if isinstance(exc, kind):
            return text
    return str(exc) or type(exc).__name__


def checked_url(url: str) -> str:
    """`url` if it is an http(s) URL (else httpx would fail each attempt the same way)."""
    if httpx.URL(url).scheme not in ("http", "https"):
        raise ValueError(f"Herald's URL must start with http:// or https://, not {url!r}")
    return url


def _auth(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}
