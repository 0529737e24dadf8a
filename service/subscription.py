"""One SSE subscription: register with the hub, replay what was missed, then stream live."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import cast

import anyio
from sse_starlette import EventSourceResponse
from sse_starlette.sse import SendTimeoutError
from starlette.types import Message, Receive, Scope, Send

from service import sse
from service.context import Context
from service.cursor import (
    InvalidPosition,
    StreamId,
    encode_cursor,
    normalize_topics,
    parse_position,
    topic_tag,
)
from service.errors import REDIS_DOWN, BadRequest
from service.replay import replay
from service.settings import Settings
from service.sse import Frame
from service.subscriber import Subscriber

log = logging.getLogger("herald")

HEARTBEAT = sse.comment("heartbeat")


class Framer:
    """Writes frames with the id the client resumes from, and tracks its positions."""

    def __init__(self, topics: tuple[str, ...], positions: dict[str, StreamId]) -> None:
        self.topics = topics
        self.positions = positions
        self.multi = len(topics) > 1
        self._tag = topic_tag(topics)

    def write(self, topic: str, frame: Frame) -> bytes:
        self.positions[topic] = frame.sid
        if not self.multi:
            return frame.data
        cursor = encode_cursor(self._tag, [self.positions[t] for t in self.topics])
        return b"id: " + cursor.encode() + b"\n" + frame.body


async def open_subscription(
    ctx: Context, topics: list[str], last_event_id: str | None
) -> EventSourceResponse:
    """Validate, register with the hub (503 if Redis is down), and answer the stream."""
    names = normalize_topics(topics)
    if len(names) > ctx.settings.max_topics:
        raise BadRequest(f"at most {ctx.settings.max_topics} topics per subscription")
    start = None
    if last_event_id:
        try:
            start = parse_position(names, last_event_id)
        except InvalidPosition as exc:
            raise BadRequest(f"malformed Last-Event-ID: {exc}") from None
    subscriber = Subscriber(ctx.settings.subscriber_buffer)
    live_from = await ctx.hub.subscribe(subscriber, names)
    return _StreamResponse(
        _events(ctx, subscriber, names, start, live_from),
        on_close=lambda: ctx.hub.unsubscribe(subscriber, names),
        on_shutdown=subscriber,
        settings=ctx.settings,
    )


async def _events(
    ctx: Context,
    subscriber: Subscriber,
    topics: tuple[str, ...],
    start: dict[str, StreamId] | None,
    live_from: dict[str, StreamId],
) -> AsyncIterator[bytes]:
    yield sse.retry(ctx.settings.retry_ms)
    try:
        if start is None:
            framer = Framer(topics, dict(live_from))
            floors: dict[str, StreamId] = {}
        else:
            # Registered before replaying: live entries past `live_from` wait in the
            # buffer, and those the replay already sent are dropped at the seam.
            framer = Framer(topics, dict(start))
            async for chunk in replay(
                ctx.store,
                topics,
                framer.positions,
                live_from,
                ctx.settings.replay_page,
                framer.write,
                ctx.metrics,
            ):
                yield chunk
            floors = dict(framer.positions)
        async for chunk in _live(ctx, subscriber, framer, floors):
            yield chunk
    except REDIS_DOWN as exc:
        # Ending the stream makes the client reconnect with its Last-Event-ID.
        log.warning("ending a stream: Redis unreachable during replay: %s", exc)


async def _live(
    ctx: Context, subscriber: Subscriber, framer: Framer, floors: dict[str, StreamId]
) -> AsyncIterator[bytes]:
    heartbeat = ctx.settings.heartbeat_seconds
    while True:
        if not await subscriber.wait(heartbeat):
            yield HEARTBEAT
            continue
        if subscriber.ended:
            return
        if subscriber.overflowed:
            ctx.metrics.overflows.inc()
            log.info(
                "disconnecting a subscriber more than %s events behind",
                ctx.settings.subscriber_buffer,
            )
            return
        parts: list[bytes] = []
        for topic, batch in subscriber.take():
            frames = batch
            if floors:
                floor = floors.get(topic)
                if floor is not None:
                    frames = [f for f in batch if f.sid > floor]
                    if frames:
                        del floors[topic]
            if framer.multi:
                parts.extend([framer.write(topic, f) for f in frames])
            else:
                parts.extend([f.data for f in frames])
        if parts:
            yield b"".join(parts)


class _StreamResponse(EventSourceResponse):
    """sse-starlette's response with Herald's headers and a hub unsubscribe that always runs."""

    def __init__(
        self,
        content: AsyncIterator[bytes],
        on_close: Callable[[], None],
        on_shutdown: Subscriber,
        settings: Settings,
    ) -> None:
        send_timeout = settings.send_timeout_seconds
        super().__init__(
            content,
            headers={"Cache-Control": "no-cache"},
            ping=0,
            send_timeout=send_timeout,
            # On SIGTERM sse-starlette calls `on_shutdown.set()`: the live loop ends the
            # stream properly, and only a stream still replaying is cut off after the grace.
            shutdown_event=cast(anyio.Event, on_shutdown),
            shutdown_grace_period=settings.shutdown_timeout_seconds / 2,
        )
        # sse-starlette always adds it; HTTP/2 forbids connection-specific headers.
        del self.headers["connection"]
        self._on_close = on_close
        self._final_send_timeout = send_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_final_with_timeout(message: Message) -> None:
            # sse-starlette bounds every send but the last one, which would wait
            # forever on a client that stopped reading.
            if message["type"] != "http.response.body" or message.get("more_body"):
                await send(message)
                return
            with anyio.move_on_after(self._final_send_timeout) as scope_:
                await send(message)
            if scope_.cancelled_caught:
                raise SendTimeoutError()

        try:
            await super().__call__(scope, receive, send_final_with_timeout)
        except SendTimeoutError:
            log.info("closing a stream whose client stopped reading")
        finally:
            self._on_close()
