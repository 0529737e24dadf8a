"""The typewriter worker: tokens that join back to the text, streamed into a real Redis."""

from __future__ import annotations

import asyncio
import json
import random

import pytest
import redis.asyncio as aioredis
from hypothesis import given
from hypothesis import strategies as st

from service.settings import Settings
from service.store import Store
from tests.conftest import RedisServer
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
    store = Store.connect(settings)
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
