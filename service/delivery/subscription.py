"""One SSE subscription: register with the hub, replay what was missed, then stream live."""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated

from pydantic import Field, TypeAdapter, ValidationError
from redis.exceptions import ResponseError
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from service.context import Context
from service.delivery.replay import WriteFrame, replay
from service.delivery.subscriber import Ended, Framer, Subscriber, body_message
from service.encoding import sse
from service.encoding.cursor import InvalidPosition, StreamId, normalize_topics, parse_position
from service.errors import REDIS_DOWN, BadRequest, Invalid, Unavailable
from service.models import Topic

log = logging.getLogger("herald")

MEDIA_TYPE = "text/event-stream"

_TOPICS: TypeAdapter[list[str]] = TypeAdapter(Annotated[list[Topic], Field(min_length=1)])


def parse_topics(values: list[str]) -> list[str]:
    """The `topic` query values, each a valid topic name, at least one (422 otherwise)."""
    try:
        return _TOPICS.validate_python(values)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_context=False)
        for error in errors:
            error["loc"] = ("query", "topic", *error["loc"])
        raise Invalid(errors) from None


async def open_subscription(
    ctx: Context, topics: list[str], last_event_id: str | None, expires_at: float | None = None
) -> SubscriptionStream:
    """Validate, register with the hub (503 if Redis is down), and answer the stream."""
    if ctx.hub.streams >= ctx.settings.max_streams:
        ctx.metrics.refused.inc()
        raise Unavailable(f"this server holds its limit of {ctx.settings.max_streams} streams")
    names = normalize_topics(topics)
    if len(names) > ctx.settings.max_topics:
        raise BadRequest(f"at most {ctx.settings.max_topics} topics per subscription")
    start = None
    if last_event_id:
        try:
            start = parse_position(names, last_event_id)
        except InvalidPosition as exc:
            raise BadRequest(f"malformed Last-Event-ID: {exc}") from None
    subscriber = Subscriber(
        names, ctx.settings.subscriber_buffer, ctx.settings.send_timeout_seconds, expires_at
    )
    live_from = await ctx.hub.subscribe(subscriber)
    return SubscriptionStream(ctx, subscriber, start, live_from)


class SubscriptionStream(Response):
    """The `text/event-stream` response of one subscription.

    A plain ASGI response rather than a generator-driven one: once live, the hub
    writes to it directly, and the only task it keeps is the one that notices the
    client leaving.
    """

    media_type = MEDIA_TYPE
    encode: sse.Encode = staticmethod(sse.encode_entry)
    """How the replay turns stream entries into frames (the hub's encoder for the topic)."""
    announce_trimmed = True
    """Whether lost history is announced with a `herald.trimmed` event."""

    def __init__(
        self,
        ctx: Context,
        subscriber: Subscriber,
        start: dict[str, StreamId] | None,
        live_from: dict[str, StreamId],
        headers: dict[str, str] | None = None,
    ) -> None:
        self.status_code = 200
        self.background = None
        self.init_headers(
            {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"} | (headers or {})
        )
        self._ctx = ctx
        self._subscriber = subscriber
        self._start = start
        self._live_from = live_from

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        subscriber = self._subscriber
        leaving = asyncio.ensure_future(_until_disconnect(receive))
        leaving.add_done_callback(lambda _: subscriber.end(Ended.DISCONNECTED))
        try:
            await self._send(
                send, {"type": "http.response.start", "status": 200, "headers": self.raw_headers}
            )
            await self._send(send, body_message(self._opening()))
            framer, floors = await self._replay(send)
            subscriber.go_live(send, framer, floors)
            why = await subscriber.closed
        except REDIS_DOWN as exc:
            # Ending the stream makes the client reconnect with its Last-Event-ID.
            log.warning("ending a stream: Redis unreachable during replay: %s", exc)
            why = Ended.UNAVAILABLE
        except ResponseError as exc:
            # Redis refused the replay (a key of the wrong type, say): the operator's to
            # fix, so one line that says so rather than a traceback per reconnect.
            topics = ", ".join(self._subscriber.topics)
            log.error("ending a stream of %s: Redis refused the replay: %s", topics, exc)
            why = Ended.UNAVAILABLE
        except TimeoutError:
            why = Ended.STUCK
        finally:
            leaving.cancel()
            self._ctx.hub.unsubscribe(subscriber)
        await subscriber.stop_writing()
        await self._finish(send, why)

    def _opening(self) -> bytes:
        """`retry:` and, for a live start, the position it starts from.

        A client that drops before its first event then resumes from where it
        connected, instead of starting live again and missing what came between.
        """
        opening = sse.retry(self._ctx.settings.retry_ms)
        if self._start is None:
            live = Framer(self._subscriber.topics, dict(self._live_from))
            opening += sse.position(live.last_id())
        return opening

    async def _send(self, send: Send, message: Message) -> None:
        async with asyncio.timeout(self._ctx.settings.send_timeout_seconds):
            await send(message)

    async def _replay(self, send: Send) -> tuple[Framer, dict[str, StreamId]]:
        """Send every retained event after the client's position, up to where live begins.

        Live entries past that point wait in the subscriber's backlog meanwhile; the
        returned floors drop those the replay already sent.
        """
        topics = self._subscriber.topics
        if self._start is None:
            return Framer(topics, dict(self._live_from)), {}
        framer = Framer(topics, dict(self._start))
        ctx = self._ctx
        async for chunk in replay(
            ctx.store,
            topics,
            framer.positions,
            self._live_from,
            ctx.settings.replay_page,
            self._writer(framer),
            ctx.metrics,
            self.encode,
            self.announce_trimmed,
        ):
            await self._send(send, body_message(chunk))
        return framer, dict(framer.positions)

    def _writer(self, framer: Framer) -> WriteFrame:
        """How the replay writes a frame (and moves the client's position)."""
        return framer.write

    async def _finish(self, send: Send, why: Ended) -> None:
        if why is Ended.OVERFLOW:
            self._ctx.metrics.overflows.inc()
        if why in (Ended.OVERFLOW, Ended.STUCK):
            log.info("ending a stream: %s", why.value)
        if why in (Ended.DISCONNECTED, Ended.STUCK):
            return
        try:
            await self._send(send, {"type": "http.response.body", "body": b"", "more_body": False})
        except TimeoutError:
            log.info("ending a stream: %s", Ended.STUCK.value)


async def _until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
