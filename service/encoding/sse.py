"""Server-Sent Events wire format (pure functions over bytes).

Frames are built once per stream entry and shared by every subscriber, so they are
bytes, not strings: a body (`event:` and `data:` lines) and a frame (`id:` + body).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable

from service.encoding.cursor import StreamId, stream_id_of

DEFAULT_EVENT = b"message"
RESERVED_PREFIX = b"herald."
"""Event types of Herald's own; no producer's entry is delivered under one."""
TRIMMED_EVENT = RESERVED_PREFIX + b"trimmed"
"""Announces that a subscription's position is older than the retained history."""

_EVENT_NAME = re.compile(rb"[A-Za-z][A-Za-z0-9._-]{0,63}")


def body(event: bytes, data: bytes) -> bytes:
    """`event:` and one `data:` line per line of `data`; CRLF, CR and LF all break lines."""
    lines = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    return b"event: " + event + b"\ndata: " + lines.replace(b"\n", b"\ndata: ") + b"\n\n"


def frame(event_id: bytes, event_body: bytes) -> bytes:
    return b"id: " + event_id + b"\n" + event_body


def comment(text: str) -> bytes:
    return b": " + text.replace("\r", " ").replace("\n", " ").encode() + b"\n\n"


def retry(ms: int) -> bytes:
    return b"retry: " + str(ms).encode() + b"\n\n"


def position(event_id: bytes) -> bytes:
    """An `id:` line alone: EventSource takes it as its last event id and dispatches nothing."""
    return b"id: " + event_id + b"\n\n"


@functools.lru_cache(maxsize=4096)
def event_name(raw: bytes | None) -> bytes:
    """The `event:` value for a stream entry's `event` field.

    Producers may XADD directly, so anything that is not a valid event type
    (and could break a line) is delivered as `message`, and so is a name in Herald's
    reserved `herald.` space: only Herald announces history loss.
    """
    if raw is not None and _EVENT_NAME.fullmatch(raw) and not raw.startswith(RESERVED_PREFIX):
        return raw
    return DEFAULT_EVENT


def entry_body(fields: dict[bytes, bytes]) -> bytes:
    """The SSE body of a stream entry with fields `event` and `data`."""
    return body(event_name(fields.get(b"event")), fields.get(b"data", b""))


class Frame:
    """A stream entry encoded once and shared by every subscriber.

    `data` is the whole frame for a single-topic subscriber; a multi-topic subscriber
    writes its own `id:` line (a cursor) before `body`.
    """

    __slots__ = ("body", "data", "sid")

    def __init__(self, sid: StreamId, body: bytes, data: bytes) -> None:
        self.sid = sid
        self.body = body
        self.data = data


def encode_entry(raw_id: bytes, fields: dict[bytes, bytes]) -> Frame:
    event_body = entry_body(fields)
    return Frame(stream_id_of(raw_id), event_body, frame(raw_id, event_body))


Encode = Callable[[bytes, dict[bytes, bytes]], Frame]
"""How a stream entry (id and fields) becomes a frame."""
