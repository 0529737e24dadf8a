"""Streaming publish: one request, a body of NDJSON lines appended as they arrive (real sockets,
real Herald, real Redis)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import jwt
import pytest
import redis.asyncio as aioredis

from service.storage.keys import stream_key
from tests.conftest import Herald, HeraldFactory, metric, wait_until
from tests.sse import SSEStream

pytestmark = pytest.mark.integration

NDJSON = {"Content-Type": "application/x-ndjson"}
SECRET = "streaming-publish-secret-long-enough-for-hs256"


def line(topic: str, data: Any, event: str = "token") -> bytes:
    return json.dumps({"topic": topic, "event": event, "data": data}).encode() + b"\n"


async def ids_of(redis: aioredis.Redis, topic: str) -> list[str]:
    return [entry_id for entry_id, _ in await redis.xrange(stream_key(topic))]


async def datas_of(redis: aioredis.Redis, topic: str) -> list[str]:
    return [fields["data"] for _, fields in await redis.xrange(stream_key(topic))]


async def round_trips(client: httpx.AsyncClient, app: Herald) -> float:
    exposition = (await client.get(f"{app.url}/metrics")).text
    return metric(exposition, "herald_append_round_trips_total")


async def stream_post(
    client: httpx.AsyncClient, app: Herald, body: AsyncIterator[bytes], **headers: str
) -> httpx.Response:
    return await client.post(f"{app.url}/publish", content=body, headers=NDJSON | headers)


async def test_subscribers_see_each_line_while_the_request_is_still_open(
    default_herald: Herald, redis_client: aioredis.Redis
) -> None:
    app = default_herald
    tokens = ["Her", "ald", " str", "eams", "."]
    seen: list[str] = []
    async with (
        httpx.AsyncClient(timeout=30) as client,
        SSEStream(client, f"{app.url}/events", params={"topic": "answer.1"}) as stream,
    ):
        await asyncio.sleep(0.2)

        async def body() -> AsyncIterator[bytes]:
            for token in tokens:
                yield line("answer.1", token)
                # The next line goes only once the subscriber has this one.
                seen.append((await stream.next_event(timeout=5)).data)
            yield line("answer.1", {"tokens": len(tokens)}, event="done")

        answer = await stream_post(client, app, body())
        done = await stream.next_event(timeout=5)
    assert answer.status_code == 200, answer.text
    assert seen == tokens
    ids = await ids_of(redis_client, "answer.1")
    assert answer.json() == {"count": 6, "last": {"answer.1": ids[-1]}}
    assert (done.event, done.id) == ("done", ids[-1])


async def test_lines_that_arrive_together_share_one_redis_round_trip(
    default_herald: Herald, redis_client: aioredis.Redis
) -> None:
    app = default_herald
    await redis_client.config_resetstat()
    body = b"".join(line(f"many.{n % 3}", n) for n in range(60))
    async with httpx.AsyncClient(timeout=30) as client:
        before = await round_trips(client, app)
        answer = await client.post(f"{app.url}/publish", content=body, headers=NDJSON)
        after = await round_trips(client, app)
    stats = await redis_client.info("commandstats")
    assert answer.status_code == 200
    assert answer.json()["count"] == 60
    assert stats["cmdstat_xadd"]["calls"] == 60
    assert after - before == 1
    assert [await datas_of(redis_client, f"many.{k}") for k in range(3)] == [
        [str(n) for n in range(k, 60, 3)] for k in range(3)
    ]


@pytest.mark.parametrize(
    ("bad", "status"),
    [
        (b'{"topic": "bad topic", "data": 1}\n', 422),
        (b"not json\n", 422),
        (b'{"topic": "ok", "event": "herald.trimmed"}\n', 422),
        (line("ok", "x" * 70_000), 413),
    ],
    ids=["topic", "json", "reserved", "size"],
)
async def test_a_bad_line_ends_the_request_with_its_number_and_keeps_what_came_before(
    default_herald: Herald, redis_client: aioredis.Redis, bad: bytes, status: int
) -> None:
    app = default_herald

    async def body() -> AsyncIterator[bytes]:
        yield line("kept", 1) + line("kept", 2)
        await asyncio.sleep(0.1)
        # The third line arrives with the bad fourth: it is published all the same.
        yield b"\n" + line("kept", 3) + bad + line("kept", 5)

    async with httpx.AsyncClient(timeout=30) as client:
        answer = await stream_post(client, app, body())
    assert answer.status_code == status, answer.text
    assert answer.json()["line"] == 5  # the blank line counts as a line, not an event
    assert answer.json()["count"] == 3
    assert answer.json()["detail"]
    assert await datas_of(redis_client, "kept") == ["1", "2", "3"]


async def test_a_line_outside_the_token_gets_403_with_its_number(
    herald: HeraldFactory, redis_client: aioredis.Redis
) -> None:
    app = herald(HERALD_JWT_KEY=SECRET)
    token = jwt.encode({"herald": {"publish": ["chat.*"]}}, SECRET, algorithm="HS256")
    body = line("chat.1", "a") + line("chat.1", "b") + line("stocks.X", "c")
    async with httpx.AsyncClient(timeout=30) as client:
        refused = await client.post(f"{app.url}/publish", content=body, headers=NDJSON)
        answer = await client.post(
            f"{app.url}/publish",
            content=body,
            headers=NDJSON | {"Authorization": f"Bearer {token}"},
        )
    assert refused.status_code == 401
    assert answer.status_code == 403
    assert (answer.json()["line"], answer.json()["count"]) == (3, 2)
    assert await datas_of(redis_client, "chat.1") == ["a", "b"]
    assert await ids_of(redis_client, "stocks.X") == []


async def test_a_keyed_stream_cut_midway_and_sent_again_publishes_every_line_once(
    default_herald: Herald, redis_client: aioredis.Redis
) -> None:
    app = default_herald
    lines = [line("resumed", n) for n in range(8)]
    key = {"Idempotency-Key": "answer-7"}
    host, port = app.url.removeprefix("http://").split(":")
    _, writer = await asyncio.open_connection(host, int(port))
    head = "POST /publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-ndjson\r\n"
    writer.write(f"{head}Idempotency-Key: answer-7\r\nTransfer-Encoding: chunked\r\n\r\n".encode())
    for chunk in lines[:3]:
        writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        await writer.drain()
        await asyncio.sleep(0.1)
    # The producer's connection drops after three lines.
    writer.close()

    async def three_published() -> bool:
        return await datas_of(redis_client, "resumed") == ["0", "1", "2"]

    await wait_until(three_published, "the three lines sent were published")

    async with httpx.AsyncClient(timeout=30) as client:
        retried = await client.post(
            f"{app.url}/publish", content=b"".join(lines), headers=NDJSON | key
        )
        again = await client.post(
            f"{app.url}/publish", content=b"".join(lines), headers=NDJSON | key
        )
        other = await client.post(
            f"{app.url}/publish",
            content=line("resumed", "x") + b"".join(lines[1:]),
            headers=NDJSON | key,
        )
        shorter = await client.post(
            f"{app.url}/publish", content=b"".join(lines[:5]), headers=NDJSON | key
        )
    ids = await ids_of(redis_client, "resumed")
    assert await datas_of(redis_client, "resumed") == [str(n) for n in range(8)]
    assert retried.status_code == 200, retried.text
    assert retried.json() == {"count": 8, "last": {"resumed": ids[-1]}}
    assert again.json() == retried.json()
    assert other.status_code == 422
    assert shorter.status_code == 422


async def test_publishers_keyed_streams_do_not_collide(
    herald: HeraldFactory, redis_client: aioredis.Redis
) -> None:
    app = herald(HERALD_JWT_KEY=SECRET)
    alice, bob = (
        jwt.encode({"sub": who, "herald": {"publish": ["*"]}}, SECRET, algorithm="HS256")
        for who in ("alice", "bob")
    )
    async with httpx.AsyncClient(timeout=30) as client:
        for token, data in ((alice, "a"), (bob, "b")):
            answer = await client.post(
                f"{app.url}/publish",
                content=line("shared", data),
                headers=NDJSON | {"Authorization": f"Bearer {token}", "Idempotency-Key": "k"},
            )
            assert answer.status_code == 200, answer.text
    assert await datas_of(redis_client, "shared") == ["a", "b"]
