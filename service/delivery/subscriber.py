"""One subscriber: how the hub's frames reach its HTTP stream, in order and bounded."""

from __future__ import annotations

import asyncio
import contextlib
import enum
from collections.abc import Awaitable

from starlette.types import Message, Send

from service.encoding import sse
from service.encoding.cursor import StreamId, encode_cursor, format_stream_id, topic_tag
from service.encoding.sse import Frame
from service.transport.direct import DirectWriter, chunk
from service.transport.send_now import send_now

HEARTBEAT = sse.comment("heartbeat")

Batch = tuple[str, list[Frame]]
"""Frames of one topic, in stream order, as the hub hands them over."""


class Ended(enum.Enum):
    """Why a stream ends."""

    DISCONNECTED = "the client went away"
    OVERFLOW = "the client fell too far behind"
    STUCK = "the client stopped reading"
    SHUTDOWN = "the server is shutting down"
    UNAVAILABLE = "Redis is unreachable"
    EXPIRED = "its token expired"


class Framer:
    """Writes frames with the id the client resumes from, and tracks its positions."""

    def __init__(self, topics: tuple[str, ...], positions: dict[str, StreamId]) -> None:
        self.topics = topics
        self.positions = positions
        self.multi = len(topics) > 1
        self._tag = topic_tag(topics)

    def last_id(self) -> bytes:
        """The id a client holding these positions resumes from."""
        if not self.multi:
            return format_stream_id(self.positions[self.topics[0]]).encode()
        return encode_cursor(self._tag, [self.positions[t] for t in self.topics]).encode()

    def write(self, topic: str, frame: Frame) -> bytes:
        self.positions[topic] = frame.sid
        if not self.multi:
            return frame.data
        cursor = encode_cursor(self._tag, [self.positions[t] for t in self.topics])
        return b"id: " + cursor.encode() + b"\n" + frame.body


def body_message(data: bytes) -> Message:
    return {"type": "http.response.body", "body": data, "more_body": True}


class Subscriber:
    """Takes the hub's frames for one stream and writes them, never making the hub wait.

    Until the stream has replayed what the client missed, frames wait in a backlog.
    Live, `push` writes straight to the stream (see `send_now`). While a write is held
    up by a slow client, later frames queue behind it; past `limit` queued events the
    stream ends with `Ended.OVERFLOW`, so the client resumes from its Last-Event-ID
    and replays from Redis instead of being silently skipped.
    """

    __slots__ = (
        "_backlog",
        "_direct",
        "_floors",
        "_flusher",
        "_framer",
        "_limit",
        "_pending",
        "_queued",
        "_send",
        "_send_timeout",
        "closed",
        "expires_at",
        "topics",
        "wrote",
    )

    def __init__(
        self,
        topics: tuple[str, ...],
        limit: int,
        send_timeout: float,
        expires_at: float | None = None,
    ) -> None:
        self.topics = topics
        self.expires_at = expires_at
        self._limit = limit
        self._send_timeout = send_timeout
        self._backlog: list[Batch] = []
        self._queued: list[bytes] = []
        self._pending = 0
        self._send: Send | None = None
        self._direct: DirectWriter | None = None
        self._framer: Framer | None = None
        self._floors: dict[str, StreamId] = {}
        self._flusher: asyncio.Task[None] | None = None
        self.wrote = False
        self.closed: asyncio.Future[Ended] = asyncio.get_running_loop().create_future()

    def push(self, topic: str, frames: list[Frame], joined: bytes, framed: bytes) -> None:
        """Deliver `frames` of `topic`.

        `joined` is all their `data` and `framed` the same as one HTTP chunk, made once
        and shared by every single-topic subscriber the frames go to as they are.
        """
        if self.closed.done():
            return
        if self._send is None:
            self._backlog.append((topic, frames))
            self._count(len(frames))
            return
        data = self._encode(topic, frames, joined)
        if data:
            # The shared chunk fits only when the subscriber writes the shared bytes.
            self._write(data, len(frames), framed if data is joined else None)

    def heartbeat(self) -> None:
        """Send a comment unless something was written since the last call."""
        if self.wrote:
            self.wrote = False
        elif self._send is not None and self._flusher is None and not self.closed.done():
            self._write(HEARTBEAT, 0)

    def end(self, why: Ended) -> None:
        if not self.closed.done():
            self.closed.set_result(why)
            self._backlog = []
            self._queued = []

    def go_live(self, send: Send, framer: Framer, floors: dict[str, StreamId]) -> None:
        """Write the backlog, then every frame as it comes; `floors` drop what replay sent."""
        self._send = send
        self._direct = DirectWriter.of(send)
        if self._direct is not None:
            self._direct.close_when_unacknowledged(self._send_timeout)
        self._framer = framer
        self._floors = floors
        backlog, self._backlog, self._pending = self._backlog, [], 0
        parts = [self._encode(topic, frames, None) for topic, frames in backlog]
        data = b"".join(parts)
        if data:
            self._write(data, sum(len(frames) for _, frames in backlog))

    async def stop_writing(self) -> None:
        """Abandon a write held up by the client, so the stream can be finished."""
        flusher = self._flusher
        if flusher is not None:
            flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flusher

    def _count(self, events: int) -> None:
        self._pending += events
        if self._pending > self._limit:
            self.end(Ended.OVERFLOW)

    def _encode(self, topic: str, frames: list[Frame], joined: bytes | None) -> bytes:
        floor = self._floors.get(topic)
        if floor is not None:
            kept = [f for f in frames if f.sid > floor]
            if kept:
                del self._floors[topic]
            if len(kept) != len(frames):
                frames, joined = kept, None
        assert self._framer is not None
        if self._framer.multi:
            return b"".join([self._framer.write(topic, f) for f in frames])
        if joined is None:
            joined = b"".join([f.data for f in frames])
        return joined

    def _write(self, data: bytes, events: int, framed: bytes | None = None) -> None:
        """Write `data`; `framed`, when given, is the same already framed as a chunk."""
        self.wrote = True
        if self._flusher is not None:
            self._queued.append(data)
            self._count(events)
            return
        if self._direct is not None and self._direct.write(framed or chunk(data)):
            return
        assert self._send is not None
        try:
            rest = send_now(self._send, body_message(data))
        except Exception:
            # The server refused the write: the connection is gone.
            self.end(Ended.DISCONNECTED)
            return
        if rest is not None:
            self._flusher = asyncio.ensure_future(self._flush(rest))

    async def _flush(self, rest: Awaitable[None]) -> None:
        """Finish the held-up write, then write what queued behind it, one chunk a time."""
        assert self._send is not None
        try:
            async with asyncio.timeout(self._send_timeout):
                await rest
            while self._queued:
                data = b"".join(self._queued)
                self._queued, self._pending = [], 0
                async with asyncio.timeout(self._send_timeout):
                    await self._send(body_message(data))
        except TimeoutError:
            self.end(Ended.STUCK)
        except Exception:
            self.end(Ended.DISCONNECTED)
        finally:
            self._flusher = None
