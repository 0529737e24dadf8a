"""Pydantic models at the HTTP edge: what `/publish` accepts and answers."""

from __future__ import annotations

import json
import re
from typing import Annotated, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, JsonValue, PrivateAttr, model_validator

from service.encoding import sse

TOPIC_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
EVENT_PATTERN = r"^[A-Za-z][A-Za-z0-9._-]{0,63}$"
RESERVED_EVENT_PREFIX = sse.RESERVED_PREFIX.decode()
PRESENCE_PREFIX = "presence."
"""Topics of Herald's online counts (`presence.<topic>`), published by its online worker."""

Topic = Annotated[
    str,
    Field(
        pattern=TOPIC_PATTERN,
        description="1 to 128 chars of A-Z a-z 0-9 . _ : -, starting with a letter or digit.",
        examples=["stocks.AAPL"],
    ),
]
EventType = Annotated[
    str,
    Field(
        pattern=EVENT_PATTERN,
        description="1 to 64 chars of A-Z a-z 0-9 . _ -, starting with a letter; "
        "`herald.` is reserved for Herald's own events.",
        examples=["tick"],
    ),
]


class PublishEvent(BaseModel):
    """One event to publish."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"topic": "stocks.AAPL", "event": "tick", "data": {"price": 189.2}}]
        },
    )

    topic: Topic
    event: EventType = "message"
    data: JsonValue = Field(
        default="",
        description="Any JSON value: a string is delivered verbatim, anything else as "
        "compact JSON.",
    )
    _text: str = PrivateAttr(default="")

    @model_validator(mode="after")
    def _serialise(self) -> PublishEvent:
        if self.event.startswith(RESERVED_EVENT_PREFIX):
            raise ValueError(f"event types starting with {RESERVED_EVENT_PREFIX!r} are reserved")
        self._text = wire_text(self.data)
        return self

    @property
    def text(self) -> str:
        """The data exactly as subscribers receive it."""
        return self._text


class Entry(NamedTuple):
    """A valid event as the store appends it."""

    topic: str
    event: str
    text: str
    """The data exactly as subscribers receive it."""


_FIELDS = frozenset(PublishEvent.model_fields)
_TOPIC = re.compile(TOPIC_PATTERN)
_EVENT = re.compile(EVENT_PATTERN)


def entry_of(value: object) -> Entry | None:
    """What validating `value` (JSON as `pydantic_core.from_json` decodes it) as a
    `PublishEvent` gives, at a fraction of the cost; None when it may not be valid,
    to be validated then, for pydantic's errors. A property test holds the two equal."""
    if type(value) is not dict or not value.keys() <= _FIELDS:
        return None
    topic = value.get("topic")
    event = value.get("event", "message")
    if type(topic) is not str or type(event) is not str:
        return None
    # fullmatch: `$` alone would also match before a final line break.
    if not _TOPIC.fullmatch(topic) or not _EVENT.fullmatch(event):
        return None
    if event.startswith(RESERVED_EVENT_PREFIX):
        return None
    try:
        text = wire_text(value.get("data", ""))
    except ValueError:
        return None
    return Entry(topic, event, text)


class Published(BaseModel):
    """Where an accepted event was stored."""

    topic: str
    id: str = Field(description="The Redis stream entry id, also the SSE event id.")


class StreamPublished(BaseModel):
    """What a streaming publish published: its events, and each topic's last entry id."""

    count: int
    last: dict[str, str]


class TopicStatus(BaseModel):
    """A topic right now: who follows it and what its stream holds."""

    topic: str
    count: int = Field(description="Subscribers across all replicas.")
    length: int = Field(description="Entries the stream retains.")
    last_id: str | None = Field(description="The newest entry's id; null before the first.")


def wire_text(data: JsonValue) -> str:
    """Strings verbatim with line breaks normalised to LF; anything else compact JSON."""
    if isinstance(data, str):
        return data.replace("\r\n", "\n").replace("\r", "\n")
    try:
        return json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except ValueError:
        raise ValueError("data must be JSON: NaN and Infinity are not JSON numbers") from None
