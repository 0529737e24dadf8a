"""Replay after a resume: retained events after a position, in bounded XRANGE pages."""

from __future__ import annotations

import json
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence

from service.encoding import sse
from service.encoding.cursor import ZERO, StreamId, format_stream_id
from service.encoding.sse import Frame
from service.metrics import Metrics
from service.storage.store import Store, StreamInfo

WriteFrame = Callable[[str, Frame], bytes]


def is_trimmed(after: StreamId, info: StreamInfo) -> bool:
    """Whether events after `after` may be missing from the stream's retained history.

    Redis does not record what MAXLEN trimmed (max-deleted-entry-id only follows
    XDEL), but trimming removes the oldest entries, so a position older than the
    oldest retained entry may have lost events after it. So may a position older than
    the first entry of a stream Redis recreated after losing its data. A position the
    stream has not reached at all means the stream was reset.
    """
    if after > info.last_generated_id or after < info.max_deleted_id:
        return True
    if after == ZERO:
        return False
    if info.first_id is None:
        return info.entries_added > info.length and after < info.last_generated_id
    # Older than the oldest entry: trimmed away, or the stream was recreated after Redis
    # lost its data (no position a client got from it can be older than its first entry).
    return after < info.first_id


def is_reset(after: StreamId, info: StreamInfo) -> bool:
    """The stream is behind `after`: it was recreated, so all it holds is new."""
    return after > info.last_generated_id


def trimmed_announcement(topic: str, after: StreamId, info: StreamInfo) -> bytes:
    data = {
        "topic": topic,
        "lastEventId": format_stream_id(after),
        "firstId": format_stream_id(info.first_id) if info.first_id else None,
    }
    return sse.body(sse.TRIMMED_EVENT, json.dumps(data, separators=(",", ":")).encode())


async def replay(
    store: Store,
    topics: Sequence[str],
    positions: dict[str, StreamId],
    until: dict[str, StreamId],
    page: int,
    write: WriteFrame,
    metrics: Metrics,
    encode: sse.Encode = sse.encode_entry,
    announce: bool = True,
) -> AsyncIterator[bytes]:
    """Yield every retained event in (positions, until] of each topic, merged in id order.

    `write` turns a frame into bytes and moves the client's position; memory stays
    bounded by one page per topic. `encode` makes the frames; without `announce`, lost
    history is not announced in the stream (the caller says so its own way).
    """
    after = dict(positions)
    buffers: dict[str, deque[Frame]] = {topic: deque() for topic in topics}
    exhausted: set[str] = set()
    while True:
        parts: list[bytes] = []
        for topic in topics:
            if topic in exhausted or buffers[topic]:
                continue
            result = await store.replay_page(topic, after[topic], until[topic], page)
            if is_trimmed(after[topic], result.info):
                if announce:
                    parts.append(trimmed_announcement(topic, after[topic], result.info))
                metrics.trimmed.inc()
                if is_reset(after[topic], result.info):
                    after[topic] = positions[topic] = ZERO
                    result = await store.replay_page(topic, ZERO, until[topic], page)
            frames = [encode(raw_id, fields) for raw_id, fields in result.entries]
            if frames:
                after[topic] = frames[-1].sid
                buffers[topic].extend(frames)
            if len(frames) < page:
                exhausted.add(topic)
        replayed = _merge(buffers, exhausted, write)
        metrics.replayed.inc(len(replayed))
        parts.extend(replayed)
        if parts:
            yield b"".join(parts)
        if len(exhausted) == len(topics) and not any(buffers.values()):
            return


def _merge(buffers: dict[str, deque[Frame]], exhausted: set[str], write: WriteFrame) -> list[bytes]:
    """Frames in id order until a topic that has more pages runs dry."""
    out: list[bytes] = []
    while True:
        heads = [(buf[0].sid, topic) for topic, buf in buffers.items() if buf]
        if not heads:
            return out
        if any(not buf and topic not in exhausted for topic, buf in buffers.items()):
            return out
        _, topic = min(heads)
        out.append(write(topic, buffers[topic].popleft()))
