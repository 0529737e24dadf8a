"""Mercure's active subscriptions (optional in the spec, HERALD_MERCURE_SUBSCRIPTIONS).

Every subscription (one per matcher of a connection) has a document; when it starts and
when it ends, the hub publishes it as a private update of type `mercure` on the topic
`/.well-known/mercure/subscriptions/{match_type}/{match}/{subscriber}` (v0's `topic=`
subscriptions: `/.well-known/mercure/subscriptions/{topic}/{subscriber}`), through the
Mercure stream like any update, so subscribers on every replica see it.

The subscription API lists the subscriptions of every replica: each replica keeps its own in
a Redis hash that expires unless refreshed (as online counts do), so a replica that crashed
drops out by itself; it writes a subscription there before publishing its event, and the
API reads the stream's cursor before the hashes, so a client that lists and then
subscribes from that cursor misses no change.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote

from redis.exceptions import ResponseError

from service.delivery.reporter import Reporter
from service.errors import REDIS_DOWN, NotFound
from service.mercure.auth import Grant
from service.mercure.match import Matcher
from service.mercure.sse import MercureUpdate
from service.storage.store import Store

log = logging.getLogger("herald")

EVENT_TYPE = "mercure"
V0_CONTEXT = "https://mercure.rocks/"
_LIFETIMES = 3


def segment(value: str) -> str:
    """One path segment of a subscription URL: every reserved character encoded, once."""
    return quote(value, safe="")


@dataclass(frozen=True, slots=True)
class Subscription:
    """One matcher of one connection."""

    matcher: Matcher
    subscriber: str
    payload: Any
    hub_path: str

    @property
    def id(self) -> str:
        """The topic of its events, and its URL in the subscription API."""
        base = f"{self.hub_path}/subscriptions/"
        if self.matcher.kind == "template":
            return base + f"{segment(self.matcher.pattern)}/{segment(self.subscriber)}"
        kind, pattern = segment(self.matcher.kind), segment(self.matcher.pattern)
        return base + f"{kind}/{pattern}/{segment(self.subscriber)}"

    def document(self, active: bool) -> dict[str, Any]:
        if self.matcher.kind == "template":
            document: dict[str, Any] = {
                "@context": V0_CONTEXT,
                "id": self.id,
                "type": "Subscription",
                "topic": self.matcher.pattern,
            }
        else:
            document = {
                "id": self.id,
                "type": "subscription",
                "match_type": self.matcher.kind,
                "match": self.matcher.pattern,
            }
        document |= {"subscriber": self.subscriber, "active": active}
        if self.payload is not None:
            document["payload"] = self.payload
        return document

    def update(self, active: bool) -> MercureUpdate:
        data = json.dumps(self.document(active), ensure_ascii=False, separators=(",", ":"))
        return MercureUpdate(topics=(self.id,), data=data, private=True, type=EVENT_TYPE)


def subscriptions_of(
    matchers: list[Matcher], grant: Grant, hub_path: str, base: str
) -> list[Subscription]:
    """The subscriptions of one new connection, under a fresh subscriber id."""
    subscriber = f"urn:uuid:{uuid.uuid4()}"
    return [Subscription(m, subscriber, grant.payload_for(m, base), hub_path) for m in matchers]


class Registry(Reporter):
    """This replica's active subscriptions, kept in Redis and announced as they change."""

    task_name = "herald-mercure-subscriptions"
    what = "the Mercure subscriptions"

    def __init__(self, store: Store, interval: float, retention: int) -> None:
        super().__init__()
        self._store = store
        self._interval = interval
        self._retention = retention
        self._active: dict[str, str] = {}

    @property
    def ttl(self) -> float:
        return self._interval * _LIFETIMES

    async def _withdraw(self) -> None:
        await self._store.withdraw_mercure_subscriptions(self.replica)

    async def opened(self, subscriptions: list[Subscription]) -> None:
        """Record them, then announce them."""
        documents = {s.id: json.dumps(s.document(True)) for s in subscriptions}
        self._active |= documents
        await self._store.add_mercure_subscriptions(self.replica, documents, self.ttl)
        await self._announce(subscriptions, active=True)

    async def closed(self, subscriptions: list[Subscription]) -> None:
        """Forget them, then announce their end (best effort: they expire anyway)."""
        for subscription in subscriptions:
            self._active.pop(subscription.id, None)
        try:
            await self._store.remove_mercure_subscriptions(
                self.replica, [s.id for s in subscriptions]
            )
            await self._announce(subscriptions, active=False)
        except (*REDIS_DOWN, ResponseError) as exc:
            log.warning("could not announce the end of a Mercure subscription: %s", exc)

    async def _announce(self, subscriptions: list[Subscription], active: bool) -> None:
        for subscription in subscriptions:
            update = subscription.update(active)
            await self._store.publish_mercure(update.fields(), None, self._retention)

    async def _run(self) -> None:
        """Refresh this replica's record, so that it outlives its TTL while the replica does."""
        while not self._stopping.is_set():
            try:
                await self._store.report_mercure_subscriptions(
                    self.replica, dict(self._active), self.ttl
                )
            except (*REDIS_DOWN, ResponseError) as exc:
                log.warning("could not refresh the Mercure subscriptions: %s", exc)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval):
                    await self._stopping.wait()


@dataclass(frozen=True, slots=True)
class SubscriptionQuery:
    """What a subscription API path asks for: all, one matcher's, or one subscription.

    `/{match_type}/{match}[/{subscriber}]` for the current protocol's subscriptions, and
    v0's `/{topic}[/{subscriber}]` when the first segment names no matcher type.
    """

    match_type: str | None = None
    match: str | None = None
    subscriber: str | None = None

    @classmethod
    def parse(cls, rest: str) -> SubscriptionQuery:
        """From the path after `…/subscriptions` (still percent-encoded)."""
        if rest and not rest.startswith("/"):
            raise NotFound("no such subscription resource")
        parts = [unquote(p) for p in rest.strip("/").split("/")] if rest.strip("/") else []
        if parts and parts[0] in ("exact", "urlpattern") and len(parts) in (2, 3):
            return cls(parts[0], parts[1], parts[2] if len(parts) == 3 else None)
        if len(parts) in (1, 2):
            return cls("template", parts[0], parts[1] if len(parts) == 2 else None)
        if parts:
            raise NotFound("no such subscription resource")
        return cls()

    def selects(self, document: dict[str, Any]) -> bool:
        if self.match_type is not None:
            kind = document.get("match_type", "template")
            pattern = document.get("match", document.get("topic"))
            if (kind, pattern) != (self.match_type, self.match):
                return False
        return self.subscriber is None or document.get("subscriber") == self.subscriber
