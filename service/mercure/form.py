"""Mercure requests at the edge: the publish form and the subscribe query, validated.

Both are `application/x-www-form-urlencoded`; names and values must be UTF-8 once
percent-decoded (else 400), as the spec requires, so they are parsed here rather than by
Starlette, which would replace bad bytes silently.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl

from service.errors import BadRequest, PayloadTooLarge
from service.mercure.ids import InvalidId, check_publisher_id
from service.mercure.match import (
    WILDCARD,
    InvalidMatcher,
    Kind,
    Matcher,
    check,
    in_namespace,
    valid_protocol_string,
)
from service.mercure.sse import MercureUpdate

MAX_TOPICS = 100
"""Topics of one update, and matchers of one subscription."""
MAX_PATTERN_LENGTH = 4096
"""Characters of one topic or one matcher."""
MAX_TYPE_LENGTH = 256
_DIGITS = re.compile(r"[0-9]{1,10}")
_MATCHER_PARAMETERS: dict[str, Kind] = {
    "match": "exact",
    "match_exact": "exact",
    "match_urlpattern": "urlpattern",
    "topic": "template",
}
"""Subscribe parameters: the current protocol's `match*`, and v0's `topic` (exact or URI
template)."""
RESERVED_TYPE = "mercure"


def parse_pairs(raw: bytes) -> list[tuple[str, str]]:
    """Name/value pairs of a form-urlencoded body or query string (400 unless UTF-8)."""
    try:
        return parse_qsl(raw.decode(), keep_blank_values=True, errors="strict")
    except UnicodeDecodeError:
        raise BadRequest("names and values must be UTF-8") from None


def first(pairs: list[tuple[str, str]], name: str) -> str | None:
    return next((value for key, value in pairs if key == name), None)


def parse_update(pairs: list[tuple[str, str]], max_data_bytes: int, hub_path: str) -> MercureUpdate:
    """The update a publish form describes; 400 or 413 with what is wrong."""
    topics = [value for key, value in pairs if key == "topic"]
    if not topics:
        raise BadRequest("an update needs at least one topic field")
    if len(topics) > MAX_TOPICS:
        raise PayloadTooLarge(f"an update has at most {MAX_TOPICS} topics")
    for topic in topics:
        _check_topic(topic, hub_path)
    data = first(pairs, "data") or ""
    if len(data.encode()) > max_data_bytes:
        raise PayloadTooLarge(f"data is over the limit of {max_data_bytes} bytes")
    update_id = first(pairs, "id") or None
    if update_id is not None:
        try:
            check_publisher_id(update_id)
        except InvalidId as exc:
            raise BadRequest(f"id: {exc}") from None
    update_type = first(pairs, "type") or None
    if update_type is not None:
        _check_type(update_type)
    retry = first(pairs, "retry") or None
    if retry is not None and not _DIGITS.fullmatch(retry):
        raise BadRequest("retry must be a number of milliseconds (ASCII digits)")
    return MercureUpdate(
        topics=tuple(topics),
        data=data,
        private=any(key == "private" for key, _ in pairs),
        id=update_id,
        type=update_type,
        retry=int(retry) if retry is not None else None,
    )


def _check_topic(topic: str, hub_path: str) -> None:
    if not topic:
        raise BadRequest("a topic must not be empty")
    if len(topic) > MAX_PATTERN_LENGTH:
        raise PayloadTooLarge(f"a topic is at most {MAX_PATTERN_LENGTH} characters")
    if not valid_protocol_string(topic):
        raise BadRequest("a topic must not contain control or format characters")
    if topic == WILDCARD:
        raise BadRequest("'*' is the wildcard and cannot be a topic")
    if in_namespace(topic, hub_path):
        raise BadRequest(f"{topic[:200]!r} is in the hub's own namespace ({hub_path})")


def _check_type(update_type: str) -> None:
    if update_type == RESERVED_TYPE:
        raise BadRequest("the type 'mercure' is reserved for the hub's own events")
    if len(update_type) > MAX_TYPE_LENGTH:
        raise BadRequest(f"a type is at most {MAX_TYPE_LENGTH} characters")
    if not valid_protocol_string(update_type):
        raise BadRequest("a type must not contain control or format characters")


def parse_matchers(pairs: list[tuple[str, str]], base: str) -> list[Matcher]:
    """The topic matchers of a subscribe query; 400 for anything the hub cannot use."""
    matchers: list[Matcher] = []
    for name, value in pairs:
        kind = _MATCHER_PARAMETERS.get(name)
        if kind is None:
            if name[:5].lower() == "match":
                raise BadRequest(f"unknown topic matcher parameter {name[:100]!r}")
            continue
        if len(matchers) == MAX_TOPICS:
            raise BadRequest(f"at most {MAX_TOPICS} topic matchers per subscription")
        if len(value) > MAX_PATTERN_LENGTH:
            raise BadRequest(f"a topic matcher is at most {MAX_PATTERN_LENGTH} characters")
        matcher = Matcher(kind, value)
        try:
            check(matcher, base)
        except InvalidMatcher as exc:
            raise BadRequest(f"{name}: {exc}") from None
        matchers.append(matcher)
    if not matchers:
        raise BadRequest("give at least one topic matcher: match, match_urlpattern (or topic)")
    return matchers
