"""The hub: one reader per process, entries encoded once, written to every subscriber."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from starlette.types import Message

from service.delivery.hub import Hub
from service.delivery.subscriber import Ended, Framer, Subscriber
from service.metrics import Metrics
from service.settings import Settings
from service.storage.keys import stream_key
from service.storage.store import Store
from service.storage.stores import open_store
from tests.sse import Event, parse


@pytest.fixture
async def hub_and_store(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Hub, Store]]:
    overrides = getattr(request, "param", {})
    settings = Settings(**overrides)
    store = open_store(settings)
    hub = Hub(store, settings, Metrics())
    yield hub, store
    await hub.stop()
    await store.close()


async def xadd(store: Store, topic: str, data: str, event: str = "message") -> str:
    (raw,) = await store.publish([(topic, event, data)], retention=1000)
    return raw


class Stream:
    """A live subscriber writing into a list, as an ASGI server's `send` would."""

    def __init__(self, topics: list[str]) -> None:
        self.subscriber = Subscriber(tuple(sorted(topics)), limit=100, send_timeout=5)
        self.chunks: list[bytes] = []
        self._arrived = asyncio.Event()

    async def join(self, hub: Hub) -> dict[str, tuple[int, int]]:
        start = await hub.subscribe(self.subscriber)
        framer = Framer(self.subscriber.topics, dict(start))
        self.subscriber.go_live(self._send, framer, {})
        return start

    async def _send(self, message: Message) -> None:
        self.chunks.append(message["body"])
        self._arrived.set()

    async def events(self, count: int) -> list[Event]:
        async with asyncio.timeout(5):
            while len(got := parse(self.chunks)) < count:
                self._arrived.clear()
                await self._arrived.wait()
        return got


async def test_every_subscriber_gets_the_same_bytes_encoded_once(
    hub_and_store: tuple[Hub, Store],
) -> None:
    hub, store = hub_and_store
    first, second = Stream(["prices"]), Stream(["prices"])
    await first.join(hub)
    await second.join(hub)
    ids = [await xadd(store, "prices", str(i), "tick") for i in range(3)]

    got = await first.events(3)
    await second.events(3)

    assert got == [Event(i, "tick", str(n)) for n, i in enumerate(ids)]
    assert all(a is b for a, b in zip(first.chunks, second.chunks, strict=True))


async def test_live_subscription_starts_after_the_newest_entry(
    hub_and_store: tuple[Hub, Store],
) -> None:
    hub, store = hub_and_store
    old = await xadd(store, "news", "old")
    stream = Stream(["news"])
    start = await stream.join(hub)
    new = await xadd(store, "news", "new")

    assert await stream.events(1) == [Event(new, "message", "new")]
    assert start["news"] == tuple(map(int, old.split("-")))


async def test_entries_producers_xadd_directly_are_delivered(
    hub_and_store: tuple[Hub, Store],
) -> None:
    hub, store = hub_and_store
    stream = Stream(["logs.app"])
    await stream.join(hub)
    client = store._client
    await client.xadd(stream_key("logs.app"), {"event": "log", "data": "a\r\nb"})
    await client.xadd(stream_key("logs.app"), {"event": "bad\nname", "data": "c"})

    one, two = await stream.events(2)
    assert (one.event, one.data) == ("log", "a\nb")
    assert (two.event, two.data) == ("message", "c")


@pytest.mark.parametrize("hub_and_store", [{"reader_block_ms": 60_000}], indirect=True)
async def test_a_new_topic_joins_a_blocked_reader_without_waiting_for_its_block_time(
    hub_and_store: tuple[Hub, Store],
) -> None:
    hub, store = hub_and_store
    await Stream(["quiet"]).join(hub)
    await asyncio.sleep(0.2)  # the reader is now blocked for a minute on "quiet"
    late = Stream(["busy"])
    await late.join(hub)
    await xadd(store, "busy", "hello")

    (got,) = await late.events(1)  # fails after 5 s, long before the block ends
    assert got.data == "hello"


@pytest.mark.parametrize("hub_and_store", [{"reader_chunk": 2}], indirect=True)
async def test_topics_beyond_a_chunk_are_read_by_another_reader(
    hub_and_store: tuple[Hub, Store],
) -> None:
    hub, store = hub_and_store
    topics = [f"t{i}" for i in range(5)]
    stream = Stream(topics)
    await stream.join(hub)
    for topic in topics:
        await xadd(store, topic, topic)

    got = await stream.events(5)
    assert sorted(event.data for event in got) == topics
    assert len(hub._readers) == 3


async def test_a_topic_nobody_follows_any_more_is_dropped(
    hub_and_store: tuple[Hub, Store],
) -> None:
    hub, _ = hub_and_store
    stream = Stream(["a", "b"])
    await stream.join(hub)
    hub.unsubscribe(stream.subscriber)
    assert hub._topics == {}


async def test_a_broadcast_to_many_streams_lets_other_work_run_in_between(
    hub_and_store: tuple[Hub, Store],
) -> None:
    hub, store = hub_and_store
    streams = [Stream(["crowd"]) for _ in range(2000)]
    for stream in streams:
        await stream.join(hub)
    ticks = 0

    async def count_ticks() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    ticker = asyncio.create_task(count_ticks())
    await xadd(store, "crowd", "hello")
    for stream in streams:
        assert len(await stream.events(1)) == 1
    ticker.cancel()

    # Without yielding, the whole broadcast would pass within one tick.
    assert ticks >= 2000 // 256


@pytest.mark.parametrize("hub_and_store", [{"heartbeat_seconds": 0.2}], indirect=True)
async def test_idle_streams_get_heartbeats_and_busy_ones_do_not(
    hub_and_store: tuple[Hub, Store],
) -> None:
    hub, store = hub_and_store
    idle, busy = Stream(["idle"]), Stream(["busy"])
    await idle.join(hub)
    await busy.join(hub)
    for n in range(12):
        await xadd(store, "busy", str(n))
        await asyncio.sleep(0.05)

    assert b": heartbeat\n\n" in idle.chunks
    assert b": heartbeat\n\n" not in busy.chunks


async def test_ending_every_stream_reaches_each_subscriber(
    hub_and_store: tuple[Hub, Store],
) -> None:
    hub, _ = hub_and_store
    streams = [Stream(["a"]), Stream(["a", "b"])]
    for stream in streams:
        await stream.join(hub)

    hub.end_all(Ended.SHUTDOWN)

    assert [stream.subscriber.closed.result() for stream in streams] == [Ended.SHUTDOWN] * 2
