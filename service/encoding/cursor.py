"""Stream positions: Redis stream ids and the compact multi-topic cursor (pure functions).

A single-topic subscription uses the stream entry id itself (`1732200000000-0`).
A multi-topic subscription's event ids are cursors holding one position per topic,
in the order of the subscription's sorted topic list:

    <tag>.<top>.<p1>.<p2>…

`tag` is four base-36 digits of a CRC of the topic list, so a cursor is never applied
to a different subscription; `top` is the largest millisecond part in base 36, and each
`p` is `top - ms` in base 36, followed by `-<seq>` in base 36 when the sequence is not 0.
Active topics have close timestamps, so most positions take a character or two.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence

StreamId = tuple[int, int]

ZERO: StreamId = (0, 0)
_MAX_PART = 2**64 - 1
_STREAM_ID = re.compile(r"(\d{1,20})-(\d{1,20})")
_B36 = re.compile(r"[0-9a-z]{1,13}")
_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"


class InvalidPosition(ValueError):
    """A Last-Event-ID that is not a position of this subscription."""


def parse_stream_id(text: str) -> StreamId:
    """`"1732200000000-3"` → `(1732200000000, 3)`."""
    match = _STREAM_ID.fullmatch(text)
    if match is None:
        raise InvalidPosition(f"{text!r} is not a stream id like 1732200000000-0")
    ms, seq = int(match[1]), int(match[2])
    if ms > _MAX_PART or seq > _MAX_PART:
        raise InvalidPosition(f"{text!r} is out of the range of stream ids")
    return ms, seq


def stream_id_of(raw: bytes) -> StreamId:
    """The position of an id as Redis returns it (trusted, so not validated)."""
    ms, _, seq = raw.partition(b"-")
    return int(ms), int(seq)


def format_stream_id(sid: StreamId) -> str:
    return f"{sid[0]}-{sid[1]}"


def next_stream_id(sid: StreamId) -> StreamId | None:
    """The smallest id after `sid`; None after the largest id Redis can hold.

    A replay starts its XRANGE there, inclusive: Redis refuses the exclusive `(` form
    after the largest id, which any client may send as its Last-Event-ID.
    """
    ms, seq = sid
    if seq < _MAX_PART:
        return ms, seq + 1
    if ms < _MAX_PART:
        return ms + 1, 0
    return None


def normalize_topics(topics: Sequence[str]) -> tuple[str, ...]:
    """The canonical topic list of a subscription: sorted, without repeats."""
    return tuple(sorted(set(topics)))


def topic_tag(topics: Sequence[str]) -> str:
    """Four base-36 digits that tell one topic list from another."""
    crc = zlib.crc32("\n".join(topics).encode()) % 36**4
    return _b36(crc).rjust(4, "0")


def encode_cursor(tag: str, positions: Sequence[StreamId]) -> str:
    top = max(ms for ms, _ in positions)
    parts = [tag, _b36(top)]
    for ms, seq in positions:
        delta = _b36(top - ms)
        parts.append(f"{delta}-{_b36(seq)}" if seq else delta)
    return ".".join(parts)


def decode_cursor(tag: str, count: int, text: str) -> list[StreamId]:
    """The positions of a cursor made by `encode_cursor` for the same topic list."""
    parts = text.split(".")
    if len(parts) != count + 2:
        raise InvalidPosition(f"{text[:80]!r} is not a cursor of this {count}-topic subscription")
    if parts[0] != tag:
        raise InvalidPosition("Last-Event-ID is a cursor of a different set of topics")
    top = _parse_b36(parts[1], text)
    positions = []
    for part in parts[2:]:
        delta_text, dash, seq_text = part.partition("-")
        delta = _parse_b36(delta_text, text)
        seq = _parse_b36(seq_text, text) if dash else 0
        if delta > top or seq > _MAX_PART:
            raise InvalidPosition(f"{text[:80]!r} holds a position out of range")
        positions.append((top - delta, seq))
    return positions


def parse_position(topics: Sequence[str], text: str) -> dict[str, StreamId]:
    """Each topic's position from a Last-Event-ID of a subscription to `topics` (normalized)."""
    if len(topics) == 1:
        return {topics[0]: parse_stream_id(text)}
    return dict(zip(topics, decode_cursor(topic_tag(topics), len(topics), text), strict=True))


def _b36(n: int) -> str:
    if n == 0:
        return "0"
    out = []
    while n:
        n, rem = divmod(n, 36)
        out.append(_DIGITS[rem])
    return "".join(reversed(out))


def _parse_b36(part: str, text: str) -> int:
    if not _B36.fullmatch(part):
        raise InvalidPosition(f"{text[:80]!r} is not a valid cursor")
    value = int(part, 36)
    if value > _MAX_PART:
        raise InvalidPosition(f"{text[:80]!r} holds a position out of range")
    return value
