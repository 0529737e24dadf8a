"""The bytes of a growing file, cut into lines: a partial line waits, a long one is split.

    splitter = LineSplitter(offset=0, limit=100)
    list(splitter.feed(b"one\\r\\ntw"))   # [Line(text='one', end=5)]
    list(splitter.feed(b"o\\n"))         # [Line(text='two', end=9)]

A line ends at LF, and a CR right before it goes too. A line longer than `limit` bytes
comes out in pieces of at most `limit` bytes, cut where a UTF-8 character starts. Every
cut depends only on the bytes since the piece began, so however the file is read, in
whatever chunks, from whichever line end, the same lines come out.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

MIN_LIMIT = 16
"""Shortest allowed piece: room to back off to a character start and still move on."""

_CR = 0x0D
_LF = b"\n"
_UTF8_CHARACTER_BYTES = 4


@dataclass(frozen=True, slots=True)
class Line:
    text: str
    """The line without its ending; bytes that are not UTF-8 become U+FFFD."""
    end: int
    """The file offset just past the line and its ending: where the next one starts."""


class LineSplitter:
    """Turns chunks of a file, read from `offset` on, into lines.

    Exhaust what `feed` returns before feeding again.
    """

    def __init__(self, offset: int, limit: int) -> None:
        if limit < MIN_LIMIT:
            raise ValueError(f"a line limit of {limit} bytes is below {MIN_LIMIT}")
        self._limit = limit
        self._data = b""
        self._start = 0
        """Where the next line starts in `_data`."""
        self._base = offset
        """The file offset of `_data[0]`."""

    @property
    def offset(self) -> int:
        """The file offset just past the last line handed out."""
        return self._base + self._start

    def feed(self, chunk: bytes) -> Iterator[Line]:
        """The lines `chunk` completes; an unterminated rest waits for more."""
        self._base += self._start
        self._data = self._data[self._start :] + chunk
        self._start = 0
        return self._lines(final=False)

    def finish(self) -> Iterator[Line]:
        """The unterminated rest as a last line, for a file that will not grow again."""
        return self._lines(final=True)

    def _lines(self, final: bool) -> Iterator[Line]:
        data, limit = self._data, self._limit
        while self._start < len(data):
            start = self._start
            # A line of `limit` bytes ends at most `limit` + 2 bytes on, with CRLF.
            newline = data.find(_LF, start, start + limit + 2)
            if newline >= 0:
                end = newline - 1 if newline > start and data[newline - 1] == _CR else newline
                if end - start <= limit:
                    yield self._take(start, end, newline + 1)
                    continue
            elif len(data) - start <= limit + (0 if final else 1):
                # Unless the file is done, up to `limit` + 1 bytes may still be a
                # line of `limit` followed by CRLF: wait.
                if final:
                    yield self._take(start, len(data), len(data))
                return
            cut = _character_start(data, start + limit)
            yield self._take(start, cut, cut)

    def _take(self, start: int, end: int, after: int) -> Line:
        self._start = after
        return Line(self._data[start:end].decode("utf-8", "replace"), self._base + after)


def _character_start(data: bytes, at: int) -> int:
    """`at`, or up to three bytes before it where a UTF-8 character starts."""
    for back in range(_UTF8_CHARACTER_BYTES):
        if data[at - back] & 0xC0 != 0x80:  # not a continuation byte
            return at - back
    return at  # not UTF-8 here: any cut will do
