"""Mercure updates on the wire: the stream entry of an update, its SSE frame, and the
subscriber that lets through only the frames its matchers and its token select.

Every Mercure update is an entry of one internal stream (`keys.MERCURE_TOPIC`), read once
per process by the hub like any topic and encoded once into a `MercureFrame`; each
`MercureSubscriber` filters the frames the hub hands it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

from service.delivery.subscriber import Subscriber
from service.encoding import sse
from service.encoding.cursor import stream_id_of
from service.encoding.sse import Frame
from service.mercure.ids import hub_id_of
from service.transport.direct import chunk

Accepts = Callable[[tuple[str, ...], bool], bool]
"""Whether a subscriber receives an update with these topics, private or not."""


@dataclass(frozen=True, slots=True)
class MercureUpdate:
    """An update as a publisher sent it, validated."""

    topics: tuple[str, ...]
    data: str
    private: bool = False
    id: str | None = None
    type: str | None = None
    retry: int | None = None

    def fields(self) -> dict[str, str]:
        """The stream entry's fields."""
        fields = {"topics": json.dumps(self.topics, ensure_ascii=False), "data": self.data}
        if self.private:
            fields["private"] = "1"
        if self.id is not None:
            fields["id"] = self.id
        if self.type is not None:
            fields["type"] = self.type
        if self.retry is not None:
            fields["retry"] = str(self.retry)
        return fields


class MercureFrame(Frame):
    """An update encoded once, with what subscribers filter it by."""

    __slots__ = ("event_id", "private", "topics")

    def __init__(self, frame: Frame, event_id: str, topics: tuple[str, ...], private: bool) -> None:
        super().__init__(frame.sid, frame.body, frame.data)
        self.event_id = event_id
        self.topics = topics
        self.private = private


def encode_entry(raw_id: bytes, fields: dict[bytes, bytes]) -> MercureFrame:
    """The SSE frame of a Mercure stream entry: its id (the publisher's, else the hub's),
    `event:` for its type, `retry:`, and one `data:` line per line."""
    event_id = fields.get(b"id") or hub_id_of(raw_id).encode()
    head = b""
    event_type = fields.get(b"type")
    if event_type and not _breaks_line(event_type):
        head += b"event: " + event_type + b"\n"
    retry = fields.get(b"retry")
    if retry and retry.isdigit():
        head += b"retry: " + retry + b"\n"
    lines = fields.get(b"data", b"").replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    body = head + b"data: " + lines.replace(b"\n", b"\ndata: ") + b"\n\n"
    frame = Frame(stream_id_of(raw_id), body, sse.frame(event_id, body))
    return MercureFrame(
        frame, event_id.decode(), _topics(fields.get(b"topics")), b"private" in fields
    )


def _breaks_line(value: bytes) -> bool:
    return b"\n" in value or b"\r" in value or b"\0" in value


def _topics(raw: bytes | None) -> tuple[str, ...]:
    """An entry's topics; an entry not written by Herald may hold anything: then none."""
    try:
        topics = json.loads(raw) if raw else []
    except ValueError:
        return ()
    if not isinstance(topics, list):
        return ()
    return tuple(t for t in topics if isinstance(t, str))


class MercureSubscriber(Subscriber):
    """A `Subscriber` that writes only the updates `accepts` lets through."""

    __slots__ = ("accepts",)

    def __init__(
        self,
        topics: tuple[str, ...],
        limit: int,
        send_timeout: float,
        accepts: Accepts,
        expires_at: float | None = None,
    ) -> None:
        super().__init__(topics, limit, send_timeout, expires_at)
        self.accepts = accepts

    def keeps(self, frame: Frame) -> bool:
        return isinstance(frame, MercureFrame) and self.accepts(frame.topics, frame.private)

    def push(self, topic: str, frames: list[Frame], joined: bytes, framed: bytes) -> None:
        # Filtered before anything waits in the backlog: only what this subscriber
        # receives counts against its buffer.
        kept = [f for f in frames if self.keeps(f)]
        if len(kept) == len(frames):
            super().push(topic, frames, joined, framed)
        elif kept:
            joined = b"".join([f.data for f in kept])
            super().push(topic, kept, joined, chunk(joined))
