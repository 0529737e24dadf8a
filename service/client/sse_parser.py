"""Server-Sent Events parsing, as `EventSource` does it (the client side of `service.encoding.sse`).

`SSEParser` follows the WHATWG HTML "event stream interpretation" algorithm exactly:

- the stream is UTF-8 (invalid bytes become U+FFFD), one BOM at the very start is dropped;
- lines end in CRLF, LF or CR, also when a CR ends one chunk and its LF starts the next;
- `field: value` loses ONE leading space of the value; a line starting with `:` is a comment;
- `data` lines are joined with LF; an event whose data buffer is empty is not dispatched;
- `id` values containing NUL are ignored; `retry` is used only when it is all ASCII digits;
- an event still open when the stream ends is discarded.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass

__all__ = ["Event", "SSEParser"]


@dataclass(frozen=True)
class Event:
    """A dispatched event, as `EventSource` would hand it to a listener."""

    id: str | None
    """The last event id in force when the event was dispatched (`None`: never set)."""
    event: str = "message"
    data: str = ""


class SSEParser:
    """Incremental event-stream parser: `feed(bytes)` returns the events completed so far.

    Comments and `retry` fields reach `on_comment` and `on_retry`, which do nothing
    here; override them to observe a stream.
    """

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._at_stream_start = True  # a BOM may still have to be dropped
        self._pending = ""  # text of the current, not yet terminated line
        self._skip_lf = False  # the last chunk ended in CR: an LF starting the next is its pair
        self._data: list[str] = []
        self._event_type = ""
        self._last_event_id: str | None = None  # the spec's "last event ID buffer"
        self._last_event_id_string: str | None = None  # and the EventSource's own copy
        self.retry: int | None = None
        """The reconnection time the stream asked for, in milliseconds."""
        self.dispatched = 0
        """How many events were dispatched so far."""

    @property
    def last_event_id(self) -> str | None:
        """The id a reconnecting `EventSource` would send as `Last-Event-ID`."""
        return self._last_event_id_string

    def feed(self, data: bytes) -> list[Event]:
        return self._feed_text(self._decoder.decode(data))

    def close(self) -> list[Event]:
        """End of stream: flush the decoder; an unterminated line or event is discarded."""
        self._decoder.decode(b"", final=True)
        self._pending = ""
        self._data = []
        self._event_type = ""
        return []

    def on_comment(self, text: str) -> None:
        """A comment line, without its `:` and at most one following space."""

    def on_retry(self, ms: int) -> None:
        """A valid `retry` field, already stored in `retry`."""

    def _feed_text(self, text: str) -> list[Event]:
        if self._at_stream_start and text:
            self._at_stream_start = False
            if text.startswith("\ufeff"):
                text = text[1:]
        if self._skip_lf and text:
            self._skip_lf = False
            if text.startswith("\n"):
                text = text[1:]
        events: list[Event] = []
        start = 0
        length = len(text)
        i = 0
        while i < length:
            char = text[i]
            if char == "\r" or char == "\n":
                line = self._pending + text[start:i]
                self._pending = ""
                if char == "\r":
                    if i + 1 < length:
                        if text[i + 1] == "\n":
                            i += 1
                    else:
                        self._skip_lf = True
                event = self._process_line(line)
                if event is not None:
                    events.append(event)
                start = i + 1
            i += 1
        self._pending += text[start:]
        return events

    def _process_line(self, line: str) -> Event | None:
        if line == "":
            return self._dispatch()
        if line.startswith(":"):
            comment = line[1:]
            self.on_comment(comment[1:] if comment.startswith(" ") else comment)
            return None
        field, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if field == "event":
            self._event_type = value
        elif field == "data":
            self._data.append(value)
        elif field == "id":
            if "\0" not in value:
                self._last_event_id = value
        elif field == "retry" and value.isascii() and value.isdigit():
            self.retry = int(value)
            self.on_retry(self.retry)
        return None

    def _dispatch(self) -> Event | None:
        self._last_event_id_string = self._last_event_id
        data, event_type = self._data, self._event_type
        self._data, self._event_type = [], ""
        if not data:
            return None
        self.dispatched += 1
        return Event(id=self._last_event_id, event=event_type or "message", data="\n".join(data))
