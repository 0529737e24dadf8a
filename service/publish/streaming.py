"""Streaming publish: `POST /publish` with an NDJSON body, each line appended as it arrives.

The lines that arrive together go to Redis in one round trip, and subscribers see them
while the request is still open. The answer comes when the body ends:
`{"count": N, "last": {topic: id}}`. A bad line ends the request with its status and
`{"detail", "line", "count"}`; the lines before it stay published.

With an `Idempotency-Key` the request can be sent again after a failure: Redis records
how many lines were published under the key and a fingerprint of them, so a retry
with the same body publishes only the lines the earlier attempts did not.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from service import errors
from service.auth import Grant
from service.context import Context
from service.errors import Conflict, Invalid, PayloadTooLarge
from service.models import Entry
from service.publish import body as publishing
from service.storage import keys
from service.storage.store import LinesState

MEDIA_TYPE = "application/x-ndjson"

Line = tuple[int, bytes]
"""A line's 1-based number in the body, and its bytes."""


def is_streaming(request: Request) -> bool:
    media_type = request.headers.get("content-type", "").partition(";")[0]
    return media_type.strip().lower() == MEDIA_TYPE


async def lines(chunks: AsyncIterator[bytes], max_line: int) -> AsyncIterator[list[Line]]:
    """The non-blank lines of an NDJSON body, those of each chunk together."""
    number = 0
    rest = b""
    async for chunk in chunks:
        *complete, rest = (rest + chunk).split(b"\n")
        group = []
        for raw in complete:
            number += 1
            if raw.strip():
                group.append((number, raw))
        if len(rest) > max_line:
            raise _AtLine(number + 1, PayloadTooLarge(f"a line exceeds {max_line} bytes"))
        if group:
            yield group
    if rest.strip():
        yield [(number + 1, rest)]


def chained(fingerprint: str, line: bytes) -> str:
    """The fingerprint of the lines so far, followed by `line`."""
    return hashlib.sha256(fingerprint.encode() + b"\n" + line.strip()).hexdigest()[:32]


class _AtLine(Exception):
    """`error` happened at body line `line`."""

    def __init__(self, line: int, error: Exception) -> None:
        super().__init__(line)
        self.line = line
        self.error = error


@dataclass
class _Progress:
    count: int = 0
    """Events of the body so far: published now or, under a key, before."""
    last: dict[str, str] = field(default_factory=dict)


async def publish_lines(
    ctx: Context, request: Request, grant: Grant | None, key: str | None
) -> Response:
    """`POST /publish` with an NDJSON body."""
    progress = _Progress()
    keyed = _Keyed(ctx, grant, key) if key is not None else None
    chunks = request.stream()
    try:
        async for group in lines(chunks, ctx.settings.max_body_bytes):
            for start in range(0, len(group), ctx.settings.max_batch):
                part = group[start : start + ctx.settings.max_batch]
                events, bad_line = _events(ctx, request, part, grant)
                if keyed is not None:
                    events, bad_line = keyed.on_one_slot(part, events, bad_line)
                if events:
                    valid = part[: len(events)]
                    if keyed is None:
                        await _append(ctx, valid, events, progress)
                    else:
                        await keyed.append(valid, events, progress)
                if bad_line is not None:
                    raise bad_line
        if keyed is not None:
            keyed.finish(progress)
    except _AtLine as failed:
        extra = {"line": failed.line, "count": progress.count}
        return errors.response_for(failed.error, request.method, request.url.path, extra)
    headers = {"Idempotency-Key": key} if key is not None else None
    return JSONResponse({"count": progress.count, "last": progress.last}, headers=headers)


def _events(
    ctx: Context, request: Request, part: list[Line], grant: Grant | None
) -> tuple[list[Entry], _AtLine | None]:
    """The events of the lines up to the first that is not a valid event within the
    limits and allowed by the token, and that line's error."""
    events: list[Entry] = []
    for number, raw in part:
        try:
            events.append(_event(ctx, raw, grant))
        except errors.HeraldError as exc:
            return events, _AtLine(number, exc)
    try:
        publishing.check_rate(ctx, request, grant, len(events))
    except errors.HeraldError as exc:
        raise _AtLine(part[0][0], exc) from None
    return events, None


def _event(ctx: Context, raw: bytes, grant: Grant | None) -> Entry:
    event = publishing.parse_event(raw)
    size = len(event.text.encode())
    if size > ctx.settings.max_event_bytes:
        limit = ctx.settings.max_event_bytes
        raise PayloadTooLarge(f"data is {size} bytes; the limit is {limit}")
    if grant is not None:
        grant.check_publish([event.topic])
    return event


async def _append(ctx: Context, part: list[Line], events: list[Entry], progress: _Progress) -> None:
    try:
        ids, failure = await ctx.store.append(events, ctx.settings.retention)
    except Exception as exc:
        raise _AtLine(part[0][0], exc) from exc
    ctx.metrics.published.inc(len(ids))
    progress.count += len(ids)
    progress.last |= {e.topic: i for e, i in zip(events, ids, strict=False)}
    if isinstance(failure, Exception):
        raise _AtLine(part[len(ids)][0], failure)
    if failure is not None:
        raise failure


class _Keyed:
    """Appends under an idempotency key, skipping the lines earlier attempts published."""

    def __init__(self, ctx: Context, grant: Grant | None, key: str) -> None:
        self._ctx = ctx
        self._key = keys.scoped_idempotency_key(grant.publisher if grant else None, key)
        self._first_topic: str | None = None
        self._group: int | None = None
        """The record lives on this topic's Cluster slot."""
        self._state_key = b""
        self._before: LinesState | None = None
        self._fingerprint = ""
        self._last_line = 0

    def on_one_slot(
        self, part: list[Line], events: list[Entry], bad_line: _AtLine | None
    ) -> tuple[list[Entry], _AtLine | None]:
        """The events up to the first whose stream is not on the record's Redis Cluster
        slot (the first event's): the record and the appends go in one script."""
        store = self._ctx.store
        for index, event in enumerate(events):
            group = store.group_of(keys.stream_key(event.topic))
            if self._first_topic is None:
                self._first_topic, self._group = event.topic, group
            elif group != self._group:
                refused = Invalid(
                    "on a Redis Cluster, a streaming publish with an Idempotency-Key "
                    "publishes to one topic"
                )
                return events[:index], _AtLine(part[index][0], refused)
        return events, bad_line

    async def append(self, part: list[Line], events: list[Entry], progress: _Progress) -> None:
        ctx = self._ctx
        first_line = part[0][0]
        self._last_line = part[-1][0]
        try:
            if self._before is None:
                topic = self._first_topic or events[0].topic
                self._state_key = keys.stream_idempotency_key(self._key, topic)
                self._before = await ctx.store.lines_state(self._state_key)
                progress.last |= self._before.last
        except Exception as exc:
            raise _AtLine(first_line, exc) from exc
        before = self._before
        published = progress.count
        fresh: list[tuple[int, Entry]] = []
        for (number, raw), event in zip(part, events, strict=True):
            self._fingerprint = chained(self._fingerprint, raw)
            progress.count += 1
            if progress.count > before.published:
                fresh.append((number, event))
            elif progress.count == before.published and self._fingerprint != before.fingerprint:
                raise _AtLine(number, Invalid("this Idempotency-Key was used for another body"))
        if not fresh:
            return
        already = max(published, before.published)
        try:
            ids = await ctx.store.append_lines(
                self._state_key,
                already,
                self._fingerprint,
                [e for _, e in fresh],
                ctx.settings.retention,
                ctx.settings.idempotency_seconds,
            )
        except Exception as exc:
            progress.count = already
            raise _AtLine(fresh[0][0], exc) from exc
        if ids is None:
            progress.count = already
            raise _AtLine(
                fresh[0][0], Conflict("another request with this Idempotency-Key is publishing")
            )
        ctx.metrics.published.inc(len(ids))
        progress.last |= {e.topic: i for (_, e), i in zip(fresh, ids, strict=True)}

    def finish(self, progress: _Progress) -> None:
        """A body shorter than what the key already published is another body."""
        if self._before is not None and progress.count < self._before.published:
            raise _AtLine(
                self._last_line + 1,
                Invalid("this Idempotency-Key was used for another, longer body"),
            )
