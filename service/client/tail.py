"""`herald tail`: follow a subscription like `EventSource` does, across reconnects.

When the connection drops, the next one sends `Last-Event-ID` with the last id seen,
so Herald replays exactly what was missed: no gap, no duplicate.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import NoReturn

import httpx

from service.client.publisher import RETRY_STATUSES, Rejected, checked_url, describe, retry_after
from service.client.sse_parser import Event, SSEParser
from service.encoding.cursor import (
    ZERO,
    encode_cursor,
    format_stream_id,
    normalize_topics,
    topic_tag,
)

DEFAULT_RETRY_MS = 2000
"""Reconnection delay until the stream sends its `retry:` (Herald's default HERALD_RETRY_MS)."""
MAX_DELAY = 30.0
"""Longest wait between two connection attempts, in seconds."""
CONNECT_TIMEOUT = 10.0
# Herald sends a heartbeat every 15 s by default: three missed means the connection is dead.
READ_TIMEOUT = 45.0


def start_position(topics: Sequence[str]) -> str:
    """The `Last-Event-ID` that replays all retained history of `topics`."""
    names = normalize_topics(topics)
    if len(names) == 1:
        return format_stream_id(ZERO)
    return encode_cursor(topic_tag(names), [ZERO] * len(names))


def format_event(event: Event, as_json: bool) -> str:
    """One line: `<id> <event> <data>` with line breaks shown as `\\n`, or a JSON object."""
    if as_json:
        return json.dumps({"id": event.id, "event": event.event, "data": event.data})
    data = event.data.replace("\n", "\\n")
    return f"{event.id or '-'} {event.event} {data}"


class Tail:
    """A subscription to `topics` that reconnects forever, resuming after `last_event_id`."""

    def __init__(
        self,
        url: str,
        topics: Sequence[str],
        *,
        token: str | None = None,
        last_event_id: str | None = None,
    ) -> None:
        self._url = checked_url(url)
        self._params = httpx.QueryParams([("topic", topic) for topic in topics])
        self._headers = {"Accept": "text/event-stream"}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self.last_event_id = last_event_id
        self.retry_ms = DEFAULT_RETRY_MS
        self._failures = 0  # attempts in a row that opened no stream

    def run(self, emit: Callable[[Event], None], warn: Callable[[str], None]) -> NoReturn:
        """Hand every event to `emit`; `warn` hears why and when it reconnects.

        Raises `Rejected` when Herald refuses the subscription for good (4xx).
        """
        timeout = httpx.Timeout(CONNECT_TIMEOUT, read=READ_TIMEOUT)
        with httpx.Client(base_url=self._url, timeout=timeout) as http:
            while True:
                why, wait_at_least = self._follow(http, emit)
                delay = self._delay(wait_at_least)
                warn(f"{why}; reconnecting in {delay:.1f} s")
                time.sleep(delay)

    def _follow(
        self, http: httpx.Client, emit: Callable[[Event], None]
    ) -> tuple[str, float | None]:
        """Read one connection until it ends: why it ended and any Retry-After."""
        headers = dict(self._headers)
        if self.last_event_id:
            headers["Last-Event-ID"] = self.last_event_id
        self._failures += 1
        try:
            with http.stream("GET", "/events", params=self._params, headers=headers) as response:
                if response.status_code != 200:
                    response.read()
                    if response.status_code in RETRY_STATUSES:
                        return f"answered {response.status_code}", retry_after(response)
                    raise Rejected.of(response)
                self._failures = 0
                parser = SSEParser()
                for chunk in response.iter_bytes():
                    for event in parser.feed(chunk):
                        emit(event)
                    if parser.last_event_id is not None:
                        self.last_event_id = parser.last_event_id
                    if parser.retry is not None:
                        self.retry_ms = parser.retry
        except httpx.TransportError as exc:
            return describe(exc), None
        return "the stream ended", None

    def _delay(self, wait_at_least: float | None) -> float:
        """The stream's `retry` delay, doubled for each failed attempt in a row."""
        delay = min(self.retry_ms / 1000 * 2.0**self._failures, MAX_DELAY)
        if wait_at_least is not None:
            delay = max(delay, min(wait_at_least, MAX_DELAY))
        return delay
