"""An OpenAI-compatible streaming answer relayed into a topic, as the typewriter's events.

    async with AsyncPublisher("http://127.0.0.1:8000") as herald:
        relayed = await relay_answer(herald.publish_batch, "chat.42", messages, upstream)

The topic gets, in order:

    token   {"answer", "index", "text"}             one per text delta, as it arrives
    done    {"answer", "tokens", "finish_reason"}   the upstream sent [DONE]
    failed  {"answer", "tokens", "detail"}          it did not, or the relay was cancelled

so a page always learns how the answer ended. `failed` is not `error` because
`EventSource` fires `error` itself whenever its connection drops.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass

from pydantic import JsonValue

from service.models import PublishEvent
from workers.openai_stream import ChatMessage, Upstream, UpstreamError, stream_chat

__all__ = ["Publish", "Relayed", "relay_answer"]

Publish = Callable[[list[PublishEvent]], Awaitable[object]]
"""Publishes events in order: `AsyncPublisher.publish_batch`, or a worker's `Sink.publish`."""


@dataclass(frozen=True)
class Relayed:
    """How an answer ended."""

    answer: str
    """The id in every event of the answer."""
    tokens: int
    finish_reason: str | None
    detail: str | None
    """Why the answer failed; None when it was done."""


async def relay_answer(
    publish: Publish, topic: str, messages: Sequence[ChatMessage], upstream: Upstream
) -> Relayed:
    """Publish the upstream's answer to `messages` on `topic`: `token`s, then `done` or `failed`.

    Upstream failures end in `failed`, not in an exception; an exception of `publish`
    propagates, since nothing more can reach the topic then.
    """
    answer = secrets.token_hex(4)
    tokens = 0
    finish_reason: str | None = None

    async def send(event: str, data: dict[str, JsonValue]) -> None:
        await publish([PublishEvent(topic=topic, event=event, data={"answer": answer, **data})])

    try:
        async with aclosing(stream_chat(upstream, messages)) as deltas:
            async for delta in deltas:
                finish_reason = delta.finish_reason or finish_reason
                if delta.text:
                    await send("token", {"index": tokens, "text": delta.text})
                    tokens += 1
    except UpstreamError as exc:
        await send("failed", {"tokens": tokens, "detail": exc.detail})
        return Relayed(answer, tokens, finish_reason, exc.detail)
    except asyncio.CancelledError:
        await send("failed", {"tokens": tokens, "detail": "the relay was stopped"})
        raise
    await send("done", {"tokens": tokens, "finish_reason": finish_reason})
    return Relayed(answer, tokens, finish_reason, None)
