"""Replay after a resume: exactly the missed events, and an announcement when history is gone."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest

from service.delivery.replay import is_trimmed, replay
from service.encoding.cursor import ZERO, StreamId, stream_id_of
from service.encoding.sse import Frame
from service.metrics import Metrics
from service.settings import Settings
from service.storage.keys import stream_key
from service.storage.store import Store, StreamInfo
from service.storage.stores import open_store
from tests.sse import parse


@pytest.fixture
async def store() -> AsyncIterator[Store]:
    store = open_store(Settings())
    yield store
    await store.close()


async def publish(store: Store, topic: str, n: int) -> list[StreamId]:
    ids = await store.publish([(topic, "message", f"{topic}{i}") for i in range(n)], 10_000)
    return [stream_id_of(i.encode()) for i in ids]


async def run_replay(
    store: Store, topics: list[str], after: dict[str, StreamId], until: dict[str, StreamId], page=3
) -> tuple[list[tuple[str, str]], dict[str, StreamId]]:
    positions = dict(after)

    def write(topic: str, frame: Frame) -> bytes:
        positions[topic] = frame.sid
        return frame.data

    chunks = [c async for c in replay(store, topics, positions, until, page, write, Metrics())]
    return [(e.event, e.data) for e in parse(chunks)], positions


def info(length: int, added: int, first: StreamId | None, last: StreamId) -> StreamInfo:
    return StreamInfo(length, added, first, last, ZERO)


@pytest.mark.parametrize(
    ("after", "stream", "trimmed"),
    [
        ((5, 0), info(10, 10, (1, 0), (10, 0)), False),  # nothing ever removed
        ((0, 0), info(10, 10, (1, 0), (10, 0)), False),  # from the very start
        ((5, 0), info(10, 20, (11, 0), (20, 0)), True),  # the next events were trimmed
        ((11, 0), info(10, 20, (11, 0), (20, 0)), False),  # position still retained
        ((20, 0), info(0, 20, None, (20, 0)), False),  # all trimmed, but all were seen
        ((19, 0), info(0, 20, None, (20, 0)), True),  # all trimmed, the last one unseen
        ((30, 0), info(2, 2, (1, 0), (2, 0)), True),  # stream behind the position: reset
        ((30, 0), StreamInfo.missing(), True),  # stream gone: reset
        ((0, 0), StreamInfo.missing(), False),  # nothing there, nothing expected
        ((5, 0), info(3, 3, (8, 0), (10, 0)), True),  # recreated empty, then new events
    ],
)
def test_trimmed_history_is_recognised(after: StreamId, stream: StreamInfo, trimmed: bool) -> None:
    assert is_trimmed(after, stream) is trimmed


async def test_replay_sends_exactly_the_missed_events_across_pages(store: Store) -> None:
    ids = await publish(store, "a", 10)
    events, positions = await run_replay(store, ["a"], {"a": ids[2]}, {"a": ids[-1]})
    assert [d for _, d in events] == [f"a{i}" for i in range(3, 10)]
    assert positions["a"] == ids[-1]


async def test_replay_stops_at_the_hub_position_where_live_delivery_takes_over(
    store: Store,
) -> None:
    ids = await publish(store, "a", 10)
    events, _ = await run_replay(store, ["a"], {"a": ids[2]}, {"a": ids[5]})
    assert [d for _, d in events] == ["a3", "a4", "a5"]


async def test_replay_of_several_topics_is_merged_in_id_order(store: Store) -> None:
    published = []
    for _ in range(6):
        for topic in ("a", "b"):
            (sid,) = await publish(store, topic, 1)
            published.append((sid, topic))
    after = {"a": ZERO, "b": published[1][0]}
    until = {"a": published[-2][0], "b": published[-1][0]}
    events, _ = await run_replay(store, ["a", "b"], after, until, page=2)
    expected = [(sid, t) for sid, t in published if sid > after[t]]
    assert len(events) == len(expected) == 11
    assert [d[0] for _, d in events] == [t for _, t in sorted(expected)]


async def test_trimmed_history_is_announced_then_the_oldest_retained_events_follow(
    store: Store,
) -> None:
    ids = await publish(store, "a", 30)
    await store._client.xtrim(stream_key("a"), maxlen=10, approximate=False)
    events, _ = await run_replay(store, ["a"], {"a": ids[0]}, {"a": ids[-1]})
    (kind, data), *rest = events
    assert kind == "herald.trimmed"
    assert json.loads(data)["topic"] == "a"
    assert [d for _, d in rest] == [f"a{i}" for i in range(20, 30)]


async def test_a_position_the_stream_never_reached_is_announced_and_all_is_replayed(
    store: Store,
) -> None:
    ids = await publish(store, "a", 3)
    future = (ids[-1][0] + 10_000, 0)
    events, positions = await run_replay(store, ["a"], {"a": future}, {"a": ids[-1]})
    assert [k for k, _ in events] == ["herald.trimmed", "message", "message", "message"]
    assert positions["a"] == ids[-1]
