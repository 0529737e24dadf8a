"""Topic lifetime: every append keeps its stream alive for HERALD_TOPIC_TTL, and no longer."""

from __future__ import annotations

import json

import httpx
import pytest
import redis.asyncio as aioredis
from hypothesis import given
from hypothesis import strategies as st

from service.storage.expiry import TopicExpiry
from service.storage.keys import stream_key
from tests.conftest import HeraldFactory, wait_until
from tests.sse import SSEStream


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@given(st.lists(st.floats(min_value=0, max_value=120), min_size=1, max_size=60))
def test_a_stream_never_expires_sooner_than_the_ttl_after_its_last_append(
    gaps: list[float],
) -> None:
    clock = Clock()
    expiry = TopicExpiry(3600, clock)
    expires_at = None
    for gap in gaps:
        clock.now += gap
        if expiry.due([b"s"]):
            expires_at = clock.now + expiry.expire_ms / 1000
        assert expires_at is not None
        # The expiry the stream has holds at least a TTL from this append, at most TTL + slack.
        assert clock.now + 3600 <= expires_at + 1e-6
        assert expires_at <= clock.now + 3600 + expiry.slack + 1e-6


def test_a_busy_topic_costs_one_expiry_refresh_per_slack_not_one_per_event() -> None:
    clock = Clock()
    expiry = TopicExpiry(86_400, clock)
    refreshes = 0
    for _ in range(10_000):
        clock.now += 0.04  # 25 events a second for 400 s
        refreshes += len(expiry.due([b"chat.1", b"chat.1"]))
    assert expiry.slack == 60
    assert refreshes == 7


def test_topics_that_never_expire_cost_nothing() -> None:
    assert TopicExpiry(0).due([b"a", b"b"]) == []


@pytest.mark.integration
async def test_every_kind_of_append_sets_the_expiry_and_the_topic_goes_when_idle(
    herald: HeraldFactory, redis_client: aioredis.Redis
) -> None:
    app = herald(HERALD_TOPIC_TTL=2)
    ndjson = {"Content-Type": "application/x-ndjson"}
    async with httpx.AsyncClient(timeout=10) as client:
        first = await client.post(f"{app.url}/publish", json={"topic": "one", "data": 1})
        await client.post(f"{app.url}/publish", json=[{"topic": "batch.a"}, {"topic": "batch.b"}])
        await client.post(
            f"{app.url}/publish", json={"topic": "keyed"}, headers={"Idempotency-Key": "k"}
        )
        await client.post(
            f"{app.url}/publish",
            content=b'{"topic": "lines"}\n{"topic": "lines"}\n',
            headers=ndjson,
        )
        await client.post(
            f"{app.url}/publish",
            content=b'{"topic": "keyed.lines"}\n',
            headers=ndjson | {"Idempotency-Key": "k"},
        )
        topics = ["one", "batch.a", "batch.b", "keyed", "lines", "keyed.lines"]
        ttls = [await redis_client.pttl(stream_key(t)) for t in topics]
        # Set on every stream, to the TTL and its margin at most (PTTL counts down).
        assert all(0 < ttl <= 2020 for ttl in ttls), dict(zip(topics, ttls, strict=True))

        async def all_gone() -> bool:
            return not await redis_client.exists(*(stream_key(t) for t in topics))

        await wait_until(all_gone, "every topic expired", within=15)
        # A reader coming back to an expired topic is told its history is gone.
        async with SSEStream(
            client,
            f"{app.url}/events",
            params={"topic": "one"},
            headers={"Last-Event-ID": first.json()["id"]},
        ) as stream:
            notice = await stream.next_event()
    assert notice.event == "herald.trimmed"
    assert json.loads(notice.data)["firstId"] is None


@pytest.mark.integration
async def test_a_busy_topic_adds_no_redis_command_per_event(
    herald: HeraldFactory, redis_client: aioredis.Redis
) -> None:
    app = herald(HERALD_TOPIC_TTL=3600)
    async with httpx.AsyncClient(timeout=10) as client:
        await redis_client.config_resetstat()
        for n in range(200):
            await client.post(f"{app.url}/publish", json={"topic": "busy", "data": n})
    stats = await redis_client.info("commandstats")
    assert stats["cmdstat_xadd"]["calls"] == 200
    assert stats["cmdstat_pexpire"]["calls"] == 1
    assert 3_000_000 < await redis_client.pttl(stream_key("busy")) <= 3_636_000


@pytest.mark.integration
async def test_a_ttl_of_zero_keeps_topics_forever(
    herald: HeraldFactory, redis_client: aioredis.Redis
) -> None:
    app = herald(HERALD_TOPIC_TTL=0)
    async with httpx.AsyncClient(timeout=10) as client:
        await client.post(f"{app.url}/publish", json={"topic": "forever"})
    assert await redis_client.pttl(stream_key("forever")) == -1
