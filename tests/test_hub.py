"""The hub: one reader per process, entries encoded once, fanned out to every subscriber."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from service.hub import Hub
from service.keys import stream_key
from service.metrics import Metrics
from service.settings import Settings
from service.sse import Frame
from service.store import Store
from service.subscriber import Subscriber


@pytest.fixture
async def hub_and_store(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Hub, Store]]:
    overrides = getattr(request, "param", {})
    settings = Settings(**overrides)
    store = Store.connect(settings)
    hub = Hub(store, settings, Metrics())
    yield hub, store
    await hub.stop()
    await store.close()


async def xadd(store: Store, topic: str, data: str, event: str = "message") -> str:
    (raw,) = await store.publish([(topic, event, data)], retention=1000)
    return raw


async def frames_of(subscriber: Subscriber, count: int) -> list[tuple[str, Frame]]:
    got: list[tuple[str, Frame]] = []
    async with asyncio.timeout(5):
        while len(got) < count:
            assert await subscriber.wait(5)
            got.extend((topic, f) for topic, batch in subscriber.take() for f in batch)
    return got


async def test_every_subscriber_gets_the_same_frames_encoded_once(
    hub_and_store: tuple[Hub, Store],
) -> None:
    hub, store = hub_and_store
    first, second = Subscriber(100), Subscriber(100)
    await hub.subscribe(first, ["prices"])
    await hub.subscribe(second, ["prices"])
    ids = [await xadd(store, "prices", str(i), "tick") for i in range(3)]

    got_first = await frames_of(first, 3)
    got_second = await frames_of(second, 3)

    assert [f.data for _, f in got_first] == [
        f"id: {i}\nevent: tick\ndata: {n}\n\n".encode() for n, i in enumerate(ids)
    ]
    assert all(a is b for (_, a), (_, b) in zip(got_first, got_second, strict=True))


async def test_live_subscription_starts_after_the_newest_entry(
    hub_and_store: tuple[Hub, Store],
) -> None:
    hub, store = hub_and_store
    old = await xadd(store, "news", "old")
    subscriber = Subscriber(100)
    start = await hub.subscribe(subscriber, ["news"])
    new = await xadd(store, "news", "new")

    (got,) = await frames_of(subscriber, 1)
    assert start["news"] == tuple(map(int, old.split("-")))
    assert got[1].data.startswith(f"id: {new}\n".encode())


async def test_entries_producers_xadd_directly_are_delivered(
    hub_and_store: tuple[Hub, Store],
) -> None:
    hub, store = hub_and_store
    subscriber = Subscriber(100)
    await hub.subscribe(subscriber, ["logs.app"])
    client = store._client
    await client.xadd(stream_key("logs.app"), {"event": "log", "data": "a\r\nb"})
    await client.xadd(stream_key("logs.app"), {"event": "bad\nname", "data": "c"})

    (_, one), (_, two) = await frames_of(subscriber, 2)
    assert one.body == b"event: log\ndata: a\ndata: b\n\n"
    assert two.body == b"event: message\ndata: c\n\n"


@pytest.mark.parametrize("hub_and_store", [{"reader_block_ms": 60_000}], indirect=True)
async def test_a_new_topic_joins_a_blocked_reader_without_waiting_for_its_block_time(
    hub_and_store: tuple[Hub, Store],
) -> None:
    hub, store = hub_and_store
    await hub.subscribe(Subscriber(100), ["quiet"])
    await asyncio.sleep(0.2)  # the reader is now blocked for a minute on "quiet"
    late = Subscriber(100)
    await hub.subscribe(late, ["busy"])
    await xadd(store, "busy", "hello")

    (got,) = await frames_of(late, 1)  # fails after 5 s, long before the block ends
    assert got[0] == "busy"


@pytest.mark.parametrize("hub_and_store", [{"reader_chunk": 2}], indirect=True)
async def test_topics_beyond_a_chunk_are_read_by_another_reader(
    hub_and_store: tuple[Hub, Store],
) -> None:
    hub, store = hub_and_store
    subscriber = Subscriber(100)
    topics = [f"t{i}" for i in range(5)]
    await hub.subscribe(subscriber, topics)
    for topic in topics:
        await xadd(store, topic, topic)

    got = await frames_of(subscriber, 5)
    assert sorted(topic for topic, _ in got) == topics
    assert len(hub._readers) == 3


async def test_a_topic_nobody_follows_any_more_is_dropped(
    hub_and_store: tuple[Hub, Store],
) -> None:
    hub, _ = hub_and_store
    subscriber = Subscriber(100)
    await hub.subscribe(subscriber, ["a", "b"])
    hub.unsubscribe(subscriber, ["a", "b"])
    assert hub._topics == {}


def test_a_subscriber_past_its_buffer_is_marked_overflowed_and_gets_nothing_more() -> None:
    subscriber = Subscriber(limit=3)
    frame = Frame((1, 0), b"", b"")
    subscriber.push("t", [frame, frame])
    assert not subscriber.overflowed
    subscriber.push("t", [frame, frame])
    assert subscriber.overflowed
    subscriber.push("t", [frame])
    assert subscriber.take() == []
