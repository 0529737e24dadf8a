"""Where a worker's events go: straight into Redis Streams, or to Herald's `/publish`.

Both take validated `PublishEvent`s and answer the entry ids, and both stream events
that come over time (each one reaching subscribers as it is sent), so a worker does not
know which one it writes to.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Protocol, Self

from pydantic import JsonValue

from service.client.publisher import AsyncPublisher, Stream
from service.models import PublishEvent
from service.publish.body import body_fingerprint
from service.settings import Settings
from service.storage.store import Store


class EventStream(Protocol):
    """Events sent one at a time, for `async with`; `service.client.publisher.Stream` is one."""

    async def send(self, topic: str, data: JsonValue = "", event: str = "message") -> None:
        """Publish one more event; raises the stream's failure instead once it failed."""

    async def end(self) -> None:
        """Wait until every event sent is published; may be called again after an outage."""


class Sink(Protocol):
    async def publish(
        self, events: Sequence[PublishEvent], idempotency_key: str | None = None
    ) -> list[str]:
        """Append `events` in order; with a key, a repeat within the window appends nothing."""

    def stream(self) -> AbstractAsyncContextManager[EventStream]:
        """Events that come over time, such as one answer's tokens."""

    async def close(self) -> None: ...


class StoreSink:
    """XADD through the module the service itself publishes with."""

    def __init__(self, store: Store, settings: Settings) -> None:
        self._store = store
        self._settings = settings

    async def publish(
        self, events: Sequence[PublishEvent], idempotency_key: str | None = None
    ) -> list[str]:
        entries = [(e.topic, e.event, e.text) for e in events]
        retention = self._settings.retention
        if idempotency_key is None:
            return await self._store.publish(entries, retention)
        fingerprint = body_fingerprint(repr(entries).encode())
        _, _, ids = await self._store.publish_once(
            idempotency_key, fingerprint, entries, retention, self._settings.idempotency_seconds
        )
        return ids

    def stream(self) -> _StoreStream:
        return _StoreStream(self)

    async def close(self) -> None:
        """The store belongs to whoever opened it."""


class _StoreStream:
    """Each event appended as it is sent: there is no request to keep open."""

    def __init__(self, sink: StoreSink) -> None:
        self._sink = sink

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        return None

    async def send(self, topic: str, data: JsonValue = "", event: str = "message") -> None:
        await self._sink.publish([PublishEvent(topic=topic, event=event, data=data)])

    async def end(self) -> None:
        return None


class HttpSink:
    """POST /publish with the publisher client, which retries with the idempotency key."""

    def __init__(self, url: str, token: str | None) -> None:
        self._client = AsyncPublisher(url, token=token)

    async def publish(
        self, events: Sequence[PublishEvent], idempotency_key: str | None = None
    ) -> list[str]:
        answers = await self._client.publish_batch(events, idempotency_key=idempotency_key)
        return [answer.id for answer in answers]

    def stream(self) -> Stream:
        """One streaming publish for all the events: one request, resent whole on failure."""
        return self._client.stream()

    async def close(self) -> None:
        await self._client.aclose()
