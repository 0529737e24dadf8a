"""The typewriter worker: tokens that join back to the text, streamed into a real Redis
or over HTTP to a real Herald."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sys

import httpx
import pytest
import redis.asyncio as aioredis
from hypothesis import given
from hypothesis import strategies as st

from service.settings import Settings
from service.storage.stores import open_store
from tests.conftest import ROOT, HeraldFactory, RedisServer, wait_until
from tests.sse import SSEStream
from workers import typewriter
from workers.runtime import Runtime
from workers.sink import StoreSink


@given(st.text())
def test_tokens_join_back_to_exactly_the_text(text: str) -> None:
    pieces = typewriter.tokens(text)
    assert "".join(pieces) == text
    assert all(pieces)


def test_tokens_look_like_word_pieces() -> None:
    assert typewriter.tokens("Hello, world! It's 2026.") == [
        "Hello",
        ",",
        " world",
        "!",
        " It",
        "'",
        "s",
        " 202",
        "6",
        ".",
    ]


def test_pauses_are_longer_after_a_sentence_than_inside_one() -> None:
    rng = random.Random(3)
    inside = sum(typewriter.delay_after(" word", 20, rng) for _ in range(2000))
    after = sum(typewriter.delay_after(".", 20, rng) for _ in range(2000))
    assert inside / 2000 == pytest.approx(1 / 20, rel=0.15)
    assert after > 4 * inside


def test_a_file_of_texts_is_split_at_blank_lines(tmp_path: object) -> None:
    from pathlib import Path

    path = Path(str(tmp_path)) / "answers.txt"
    path.write_text("First answer,\non two lines.\n\n  \nSecond answer.\n", encoding="utf-8")
    assert typewriter.load_texts(None, str(path)) == [
        "First answer,\non two lines.",
        "Second answer.",
    ]
    assert typewriter.load_texts("Just this.", str(path)) == ["Just this."]


@pytest.mark.integration
async def test_an_answer_streams_as_tokens_then_done(
    flushed_redis: RedisServer, redis_client: aioredis.Redis
) -> None:
    text = "Streaming, token by token:\nlike an LLM — with ünïcode too."
    settings = Settings(redis_url=flushed_redis.url, typewriter_tokens_per_second=500)
    store = open_store(settings)
    runtime = Runtime("typewriter", settings, StoreSink(store, settings), store)
    try:
        answer = await asyncio.wait_for(
            typewriter.stream_answer(runtime, "chat.t1", text, random.Random(1)), 20
        )
    finally:
        await store.close()
    entries = await redis_client.xrange("herald:stream:chat.t1")
    kinds = [fields["event"] for _, fields in entries]
    assert kinds == ["token"] * (len(entries) - 1) + ["done"]
    tokens = [json.loads(fields["data"]) for _, fields in entries[:-1]]
    assert [t["index"] for t in tokens] == list(range(len(tokens)))
    assert {t["answer"] for t in tokens} == {answer}
    assert "".join(t["text"] for t in tokens) == text
    assert json.loads(entries[-1][1]["data"]) == {"answer": answer, "tokens": len(tokens)}


@pytest.mark.integration
async def test_over_http_an_answer_is_one_streaming_request(herald: HeraldFactory) -> None:
    app = herald(HERALD_ACCESS_LOG="true")
    text = "One request per answer, token by token."
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")} | {
        "HERALD_URL": app.url,
        "HERALD_TYPEWRITER_TOPIC": "chat.http",
        "HERALD_TYPEWRITER_TEXT": text,
        "HERALD_TYPEWRITER_TOKENS_PER_SECOND": "200",
        "HERALD_TYPEWRITER_PAUSE_SECONDS": "600",
    }

    async def answered() -> bool:
        # uvicorn's access log has a line per request, once its answer starts.
        return '"POST /publish HTTP/1.1" 200' in app.stdout_path.read_text()

    async with (
        httpx.AsyncClient() as http,
        SSEStream(http, f"{app.url}/events", params={"topic": "chat.http"}) as stream,
    ):
        worker = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "service", "worker", "typewriter", cwd=ROOT, env=env
        )
        try:
            events = [await stream.next_event(timeout=20)]
            while events[-1].event != "done":
                events.append(await stream.next_event())
            await wait_until(answered, "Herald's answer to the streaming publish")
        finally:
            worker.send_signal(signal.SIGTERM)
            stopped = await asyncio.wait_for(worker.wait(), 10)
    assert stopped == 0
    assert [e.event for e in events] == ["token"] * (len(events) - 1) + ["done"]
    assert "".join(json.loads(e.data)["text"] for e in events[:-1]) == text
    assert json.loads(events[-1].data)["tokens"] == len(events) - 1
    access_log = app.stdout_path.read_text()
    assert access_log.count('"POST /publish HTTP/1.1"') == 1, access_log
