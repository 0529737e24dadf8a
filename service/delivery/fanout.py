"""What both ways of reading share: a followed topic, and the delivery of a read's entries."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from service.delivery.subscriber import Subscriber
from service.encoding.cursor import StreamId, format_stream_id
from service.encoding.sse import Encode, Frame
from service.metrics import Metrics
from service.storage import keys
from service.storage.store import XreadReply, encode_arg
from service.transport.direct import chunk

# Deliveries between two yields to the event loop: a broadcast to thousands of
# streams must not hold up publishes, whose entries the next read then takes together.
_DELIVERIES_PER_SLICE = 256


class Topic:
    """A topic some local subscriber follows, and how far the hub has read it."""

    __slots__ = (
        "encode",
        "key",
        "key_arg",
        "name",
        "position",
        "position_arg",
        "slot",
        "subscribers",
    )

    def __init__(self, name: str, position: StreamId, encode: Encode) -> None:
        self.name = name
        self.encode = encode
        self.key = keys.stream_key(name)
        self.position = position
        self.key_arg = encode_arg(self.key)
        self.position_arg = encode_arg(format_stream_id(position).encode())
        self.slot = 0
        self.subscribers: set[Subscriber] = set()


async def deliver(reply: XreadReply, topics: Mapping[bytes, Topic], metrics: Metrics) -> int:
    """Encode each new entry once and hand it to every subscriber of its topic, moving the
    topics' positions: the time (ms) of the newest entry delivered, 0 when none was."""
    delivered = 0
    newest_ms = 0
    for key, entries in reply:
        topic = topics.get(key)
        if topic is None:
            continue
        position = topic.position
        frames: list[Frame] = []
        for raw_id, fields in entries:
            frame = topic.encode(raw_id, fields)
            if frame.sid > position:
                frames.append(frame)
                position = frame.sid
        if not frames:
            continue
        # Moved before delivering: a subscriber that joins while this batch is
        # being delivered starts after it (and replays it if it resumes).
        topic.position = position
        newest_ms = max(newest_ms, position[0])
        topic.position_arg = encode_arg(entries[-1][0])
        metrics.entries_read.inc(len(frames))
        joined = b"".join([f.data for f in frames])
        framed = chunk(joined)
        subscribers = list(topic.subscribers)
        for start in range(0, len(subscribers), _DELIVERIES_PER_SLICE):
            if start:
                await asyncio.sleep(0)
            for subscriber in subscribers[start : start + _DELIVERIES_PER_SLICE]:
                subscriber.push(topic.name, frames, joined, framed)
        delivered += len(frames) * len(subscribers)
    metrics.deliveries.inc(delivered)
    return newest_ms
