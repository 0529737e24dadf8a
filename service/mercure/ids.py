"""Mercure update ids (pure functions): the hub's own, and the rules for publishers' ids.

The hub's ids are `urn:herald:<ms>-<seq>`, the entry id of the update in the Mercure stream
inside a URN: a valid IRI, as the spec asks, that decodes to its position without a lookup.
"""

from __future__ import annotations

from service.encoding.cursor import InvalidPosition, StreamId, format_stream_id, parse_stream_id
from service.mercure.match import valid_protocol_string

HUB_PREFIX = "urn:herald:"
EARLIEST = "earliest"
MAX_ID_LENGTH = 1024


class InvalidId(ValueError):
    """A publisher's id the hub refuses."""


def hub_id(position: StreamId) -> str:
    return HUB_PREFIX + format_stream_id(position)


def hub_id_of(raw: bytes) -> str:
    """The hub id of an entry id as Redis returns it."""
    return HUB_PREFIX + raw.decode()


def decode_hub_id(text: str) -> StreamId | None:
    """The position a hub id stands for; None when `text` is not a hub id."""
    if not text.startswith(HUB_PREFIX):
        return None
    try:
        return parse_stream_id(text[len(HUB_PREFIX) :])
    except InvalidPosition:
        return None


def check_publisher_id(text: str) -> None:
    """Raise `InvalidId` unless a publisher may give its update the id `text`."""
    if text.startswith("#"):
        raise InvalidId("an id must not start with '#'")
    if text == EARLIEST:
        raise InvalidId("'earliest' is reserved and cannot be an id")
    if text.startswith(HUB_PREFIX):
        raise InvalidId(f"ids starting with {HUB_PREFIX!r} are the hub's own")
    if len(text) > MAX_ID_LENGTH:
        raise InvalidId(f"an id is at most {MAX_ID_LENGTH} characters")
    if not valid_protocol_string(text):
        raise InvalidId("an id must not contain control or format characters")
