"""Turning a `/publish` request body into validated events, within the configured limits."""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import Field, TypeAdapter, ValidationError
from pydantic_core import from_json
from starlette.requests import Request

from service.errors import BadRequest, Invalid, PayloadTooLarge, TooManyRequests
from service.models import Entry, PublishEvent, entry_of
from service.ratelimit import retry_after
from service.settings import Settings
from service.storage import keys

if TYPE_CHECKING:
    from service.auth import Grant
    from service.context import Context

_IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,200}")

_ONE = TypeAdapter(PublishEvent)
_BATCH: TypeAdapter[list[PublishEvent]] = TypeAdapter(
    Annotated[list[PublishEvent], Field(min_length=1)]
)

REQUEST_SCHEMA: dict[str, Any] = {
    "anyOf": [
        PublishEvent.model_json_schema(),
        {"type": "array", "items": PublishEvent.model_json_schema(), "minItems": 1},
    ]
}


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes `limit` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body is {declared} bytes; the limit is {limit}")
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_events(body: bytes, settings: Settings) -> tuple[list[Entry], bool]:
    """The events of a body (one object or a JSON array) and whether it was a batch."""
    batch = body.lstrip()[:1] == b"["
    events = _batch(body) if batch else [parse_event(body)]
    if len(events) > settings.max_batch:
        raise PayloadTooLarge(f"a batch holds at most {settings.max_batch} events")
    for index, event in enumerate(events):
        size = len(event.text.encode())
        if size > settings.max_event_bytes:
            where = f"event {index}" if batch else "event"
            raise PayloadTooLarge(
                f"{where} data is {size} bytes; the limit is {settings.max_event_bytes}"
            )
    return events, batch


def parse_event(raw: bytes) -> Entry:
    """The event of one JSON object (422 when it is not a valid one)."""
    try:
        entry = entry_of(from_json(raw))
    except ValueError:
        entry = None
    return entry if entry is not None else _validated(_ONE, raw)[0]


def _batch(body: bytes) -> list[Entry]:
    """The events of a JSON array (422 when it is not one of valid events)."""
    try:
        items = from_json(body)
    except ValueError:
        items = None
    if type(items) is not list or not items:
        return _validated(_BATCH, body)
    entries = []
    for item in items:
        entry = entry_of(item)
        if entry is None:
            return _validated(_BATCH, body)
        entries.append(entry)
    return entries


def _validated(adapter: TypeAdapter[Any], body: bytes) -> list[Entry]:
    """The events pydantic finds in `body`, or its errors as a 422."""
    try:
        value = adapter.validate_json(body)
    except ValidationError as exc:
        raise Invalid(
            exc.errors(include_url=False, include_context=False, include_input=False)
        ) from None
    events: list[PublishEvent] = value if isinstance(value, list) else [value]
    return [Entry(e.topic, e.event, e.text) for e in events]


def check_rate(ctx: Context, request: Request, grant: Grant | None, events: int) -> None:
    """429 when this client publishes faster than its rate allows."""
    if ctx.limiter is None:
        return
    client = grant.subject if grant is not None and grant.subject else None
    if client is None:
        client = request.client.host if request.client else "unknown"
    wait = ctx.limiter.take(client, events, time.monotonic())
    if wait:
        rate = ctx.settings.publish_rate
        raise TooManyRequests(
            f"publishing faster than {rate:g} events/s; retry after {wait:.1f} s",
            retry_after(wait),
        )


def body_fingerprint(body: bytes) -> str:
    """What an Idempotency-Key remembers of the body it was used with."""
    return hashlib.sha256(body).hexdigest()[:32]


def idempotency_key(request: Request) -> str | None:
    """The request's `Idempotency-Key`: 1 to 200 visible ASCII characters (400 otherwise)."""
    key = request.headers.get("idempotency-key")
    if key is not None and not _IDEMPOTENCY_KEY.fullmatch(key):
        raise BadRequest("Idempotency-Key must be 1 to 200 visible ASCII characters")
    return key


async def publish_once(
    ctx: Context,
    publisher: str | None,
    key: str,
    body: bytes,
    entries: Sequence[Entry],
) -> list[str]:
    """Publish unless `publisher` used `key` within the window; either way, the ids it got.

    A key used again with another body is refused (422), so a client bug cannot pass
    for a retry. Keys are the publisher's own: another's cannot collide with them.
    """
    fingerprint = body_fingerprint(body)
    fresh, stored, ids = await ctx.store.publish_once(
        keys.scoped_idempotency_key(publisher, key),
        fingerprint,
        entries,
        ctx.settings.retention,
        ctx.settings.idempotency_seconds,
    )
    if stored != fingerprint:
        raise Invalid("this Idempotency-Key was used for another body")
    if fresh:
        ctx.metrics.published.inc(len(ids))
    return ids
