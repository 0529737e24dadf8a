"""Typewriter: texts streamed token by token, the shape of an LLM's streaming answer.

Each answer is a run of `token` events then one `done` event on the same topic; the
tokens joined give back the text exactly. Pacing imitates a model: a moment of
"thinking", then tokens at `typewriter_tokens_per_second` with a random spread and
longer pauses after punctuation.

With `typewriter_upstream_url` the texts are prompts instead, and the answers those of
an OpenAI-compatible API, relayed by `workers.relay` (which may end one with `failed`).
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import secrets
from collections.abc import Iterator, Sequence
from functools import partial
from pathlib import Path

from pydantic import JsonValue

from service.models import PublishEvent
from service.settings import Settings
from workers.openai_stream import ChatMessage, Upstream
from workers.relay import relay_answer
from workers.runtime import Runtime, Stopped

log = logging.getLogger("herald.worker")

# Word pieces of up to six letters, numbers in threes, single punctuation marks, each
# carrying the whitespace before it: roughly how BPE vocabularies cut English.
_TOKEN = re.compile(r"\s*[^\W\d_]{1,6}|\s*\d{1,3}|\s*[^\w\s]|\s*_|\s+")
_PAUSE_AFTER = {".": 6.0, "!": 6.0, "?": 6.0, ",": 2.5, ";": 2.5, ":": 2.5, "\n": 4.0}

DEFAULT_TEXTS = (
    "Herald is a pub/sub broadcaster: backends publish events into Redis Streams, and "
    "browsers subscribe with the plain EventSource API. Every event id is a Redis stream "
    "id, so a reconnect resumes exactly where it left off — no gap, no duplicate.",
    "You are reading a typewriter answer: a worker publishes it one token at a time as "
    "`token` events on chat.demo, then a `done` event. It is the shape of an LLM's "
    "streaming reply, delivered by the same hub that carries the stock ticks.",
    "Scaling out is adding replicas. They keep nothing of their own; all state lives in "
    "Redis, so any replica can resume any client, and no sticky sessions are needed.",
)
DEFAULT_PROMPTS = (
    "In three sentences: what are Server-Sent Events, and when are they the right choice?",
)


def tokens(text: str) -> list[str]:
    """`text` cut into tokens that join back to exactly `text`."""
    return _TOKEN.findall(text)


def delay_after(token: str, tokens_per_second: float, rng: random.Random) -> float:
    """Seconds to wait after `token`: the average pace, spread, slower after punctuation."""
    base = rng.lognormvariate(0.0, 0.45) / tokens_per_second
    return base * _PAUSE_AFTER.get(token.rstrip(" ")[-1:], 1.0)


def load_texts(
    text: str | None, file: str | None, default: Sequence[str] = DEFAULT_TEXTS
) -> list[str]:
    if text:
        return [text]
    if file:
        paragraphs = re.split(r"\n\s*\n", Path(file).read_text(encoding="utf-8"))
        texts = [p.strip() for p in paragraphs if p.strip()]
        if not texts:
            raise SystemExit(f"herald worker typewriter: {file} holds no text")
        return texts
    return list(default)


def _cycle(texts: list[str]) -> Iterator[str]:
    while True:
        yield from texts


async def run(rt: Runtime) -> None:
    settings = rt.settings
    upstream = upstream_of(settings)
    default = DEFAULT_TEXTS if upstream is None else DEFAULT_PROMPTS
    texts = load_texts(settings.typewriter_text, settings.typewriter_file, default)
    topic = settings.typewriter_topic
    rng = random.Random()
    for text in _cycle(texts):
        if upstream is None:
            await stream_answer(rt, topic, text, rng)
        else:
            await relay_prompt(rt, upstream, topic, text)
        await rt.sleep(settings.typewriter_pause_seconds)


def upstream_of(settings: Settings) -> Upstream | None:
    """The API to relay answers from; None: the texts are typed out."""
    if settings.typewriter_upstream_url is None:
        return None
    if not settings.typewriter_model:
        raise SystemExit(
            "herald worker typewriter: HERALD_TYPEWRITER_UPSTREAM_URL needs HERALD_TYPEWRITER_MODEL"
        )
    return Upstream(
        url=settings.typewriter_upstream_url,
        model=settings.typewriter_model,
        api_key=settings.typewriter_api_key,
        timeout=settings.typewriter_upstream_timeout_seconds,
    )


async def relay_prompt(rt: Runtime, upstream: Upstream, topic: str, prompt: str) -> None:
    """Relay the upstream's answer to `prompt`; a stop meanwhile ends it with `failed`."""
    # Over HTTP the answer is one streaming request, as a typed one is.
    async with rt.sink.stream() as out:

        async def publish(events: list[PublishEvent]) -> None:
            for e in events:
                await rt.retry("publishing tokens", partial(out.send, e.topic, e.data, e.event))

        messages = [ChatMessage(role="user", content=prompt)]
        relay = asyncio.create_task(relay_answer(publish, topic, messages, upstream))
        stopping = asyncio.create_task(rt.stopping.wait())
        try:
            await asyncio.wait({relay, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            if not relay.done():
                relay.cancel()
                await asyncio.gather(relay, return_exceptions=True)
        await rt.retry("publishing tokens", out.end)
    if relay.cancelled():
        raise Stopped
    relayed = relay.result()
    if relayed.detail is not None:
        log.warning("%s: answer %s failed: %s", rt.name, relayed.answer, relayed.detail)


async def stream_answer(rt: Runtime, topic: str, text: str, rng: random.Random) -> str:
    """Publish `text` as `token` events then `done`; the answer's id."""
    answer = secrets.token_hex(4)
    pace = rt.settings.typewriter_tokens_per_second
    pieces = tokens(text)
    await rt.sleep(rng.uniform(0.3, 0.9))
    # Over HTTP the answer is one streaming request; into Redis, one append per token.
    async with rt.sink.stream() as out:
        for index, piece in enumerate(pieces):
            token: JsonValue = {"answer": answer, "index": index, "text": piece}
            await rt.retry("publishing tokens", partial(out.send, topic, token, "token"))
            await rt.sleep(delay_after(piece, pace, rng))
        done: JsonValue = {"answer": answer, "tokens": len(pieces)}
        await rt.retry("publishing tokens", partial(out.send, topic, done, "done"))
        await rt.retry("publishing tokens", out.end)
    return answer
