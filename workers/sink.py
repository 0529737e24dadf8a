"""Where a worker's events go: straight into Redis Streams, or to Herald's `/publish`.

Both take validated `PublishEvent`s and answer the entry ids, so a worker does not
know which one it writes to.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from service.client import AsyncPublisher
from service.models import PublishEvent
from service.publishing import body_fingerprint
from service.settings import Settings
from service.store import Store


class Sink(Protocol):
    async def publish(
        self, events: Sequence[PublishEvent], idempotency_key: str | None = None
    ) -> list[str]:
        """Append `events` in order; with a key, a repeat within the window appends nothing."""

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

    async def close(self) -> None:
        """The store belongs to whoever opened it."""


class HttpSink:
    """POST /publish with the publisher client, which retries with the idempotency key."""

    def __init__(self, url: str, token: str | None) -> None:
        self._client = AsyncPublisher(url, token=token)

    async def publish(
        self, events: Sequence[PublishEvent], idempotency_key: str | None = None
    ) -> list[str]:
        answers = await self._client.publish_batch(events, idempotency_key=idempotency_key)
        return [answer.id for answer in answers]

    async def close(self) -> None:
        await self._client.aclose()
