"""HTTP routes: thin, they parse, call the store or the hub, and answer.

`publish` and `events` carry the load and are served by `service.web.edge` directly;
the operational routes are FastAPI's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, HTTPException, Request
from fastapi import Path as FastAPIPath
from fastapi.responses import FileResponse, JSONResponse, Response

from service import context
from service.auth import metrics_bearer
from service.context import Context
from service.delivery.subscription import open_subscription, parse_topics
from service.encoding.cursor import format_stream_id
from service.errors import REDIS_DOWN
from service.mercure import routes as mercure
from service.metrics import CONTENT_TYPE
from service.models import TOPIC_PATTERN, Entry, TopicStatus
from service.publish import body as publishing
from service.publish import streaming as streaming_publish

HotRoute = Callable[[Context, Request], Awaitable[Response]]

router = APIRouter()

_STATIC = Path(__file__).parent / "static"
# The page shows what its URL and its events carry; should any of it ever be read as
# markup, this policy still lets only Herald's own script, style and stream in, and
# Trusted Types make Chromium refuse HTML strings outright.
_DEMO_HEADERS = {
    "Content-Security-Policy": "; ".join(
        [
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "connect-src 'self'",
            "img-src 'self' data:",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
            "require-trusted-types-for 'script'",
            "trusted-types 'none'",
        ]
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
_READY_TIMEOUT_SECONDS = 2.0
_JSON = "application/json"

_CLIENT = Path(__file__).parent / "static" / "herald.js"
_CLIENT_TYPES = Path(__file__).parent / "static" / "herald.d.ts"
# Pages import the client from an unversioned URL: a short max-age spares a page load the
# round trip, yet pages get a new Herald's client within minutes (an ETag check after that).
_CLIENT_CACHE = {"Cache-Control": "public, max-age=300"}


async def publish(ctx: Context, request: Request) -> Response:
    """`POST /publish`: one event or a batch, acknowledged once Redis stored it."""
    grant = ctx.auth.publisher(request) if ctx.auth else None
    idempotency_key = publishing.idempotency_key(request)
    if streaming_publish.is_streaming(request):
        return await streaming_publish.publish_lines(ctx, request, grant, idempotency_key)
    body = await publishing.read_body(request, ctx.settings.max_body_bytes)
    events, batch = publishing.parse_events(body, ctx.settings)
    if grant is not None:
        grant.check_publish(e.topic for e in events)
    publishing.check_rate(ctx, request, grant, len(events))
    headers = {}
    if idempotency_key is None:
        ids = await ctx.store.publish(events, ctx.settings.retention)
        ctx.metrics.published.inc(len(ids))
    else:
        publisher = grant.publisher if grant is not None else None
        ids = await publishing.publish_once(ctx, publisher, idempotency_key, body, events)
        headers = {"Idempotency-Key": idempotency_key}
    return Response(_published(events, ids, batch), headers=headers, media_type=_JSON)


def _published(events: list[Entry], ids: list[str], batch: bool) -> bytes:
    """The answer to a publish, `{"topic", "id"}` for each event, as compact JSON.

    Written out rather than encoded: topics (validated names) and stream ids hold no
    character that JSON escapes, and `json.dumps` cost more than the rest of a batch's
    answer.
    """
    answers = ",".join(
        f'{{"topic":"{e.topic}","id":"{i}"}}' for e, i in zip(events, ids, strict=True)
    )
    return (f"[{answers}]" if batch else answers).encode()


async def events(ctx: Context, request: Request) -> Response:
    """`GET /events?topic=…`: the SSE stream; the Last-Event-ID header wins over the query."""
    grant = ctx.auth.subscriber(request) if ctx.auth else None
    topics = parse_topics(request.query_params.getlist("topic"))
    if grant is not None:
        grant.check_subscribe(topics)
    position = request.headers.get("last-event-id")
    if position is None:
        position = request.query_params.get("lastEventId")
    expires_at = grant.expires_at if grant is not None else None
    return await open_subscription(ctx, topics, position, expires_at)


HOT: dict[str, dict[str, HotRoute]] = {
    "/publish": {"POST": publish},
    "/events": {"GET": events},
    mercure.PATH: {"GET": mercure.subscribe, "POST": mercure.publish},
}
"""Served by `service.web.edge` without FastAPI's routing layers: path -> method -> handler."""


@router.get("/healthz", summary="The process is alive")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="Redis answers and the hub reader is running")
async def readyz(request: Request) -> JSONResponse:
    ctx = context.of(request)
    try:
        async with asyncio.timeout(_READY_TIMEOUT_SECONDS):
            redis_ok = await ctx.store.ping()
    except (*REDIS_DOWN, TimeoutError):
        redis_ok = False
    ready = redis_ok and ctx.hub.healthy
    body = {"ready": ready, "redis": redis_ok, "hub": ctx.hub.healthy}
    return JSONResponse(body, 200 if ready else 503)


@router.get("/topics/{topic}", summary="A topic's online count, stream length and last id")
async def topic_status(
    request: Request, topic: Annotated[str, FastAPIPath(pattern=TOPIC_PATTERN)]
) -> TopicStatus:
    ctx = context.of(request)
    if ctx.auth is not None:
        ctx.auth.subscriber(request).check_subscribe([topic])
    info, online = await asyncio.gather(ctx.store.stream_info(topic), ctx.store.online())
    last_id = format_stream_id(info.last_generated_id) if info.entries_added else None
    return TopicStatus(topic=topic, count=online.get(topic, 0), length=info.length, last_id=last_id)


@router.get("/herald.js", include_in_schema=False)
async def client() -> FileResponse:
    """The browser client: an ES module, whatever the demo page's settings."""
    media_type = "text/javascript; charset=utf-8"
    return FileResponse(_CLIENT, media_type=media_type, headers=_CLIENT_CACHE)


@router.get("/herald.d.ts", include_in_schema=False)
async def client_types() -> FileResponse:
    """The browser client's TypeScript declarations."""
    media_type = "application/typescript; charset=utf-8"
    return FileResponse(_CLIENT_TYPES, media_type=media_type, headers=_CLIENT_CACHE)


@router.get("/metrics", summary="Prometheus metrics")
async def metrics(request: Request) -> Response:
    ctx = context.of(request)
    if ctx.settings.metrics_token is not None:
        metrics_bearer(request, ctx.settings.metrics_token.get_secret_value())
    return Response(ctx.metrics.render(), media_type=CONTENT_TYPE)


@router.get("/", include_in_schema=False)
async def demo_page(request: Request) -> FileResponse:
    return _demo_file(request, "index.html", "text/html; charset=utf-8")


@router.get("/demo.js", include_in_schema=False)
async def demo_script(request: Request) -> FileResponse:
    return _demo_file(request, "demo.js", "text/javascript; charset=utf-8")


@router.get("/demo.css", include_in_schema=False)
async def demo_style(request: Request) -> FileResponse:
    return _demo_file(request, "demo.css", "text/css; charset=utf-8")


def _demo_file(request: Request, name: str, media_type: str) -> FileResponse:
    """One of the demo page's files, or 404 where the page is not served."""
    ctx = context.of(request)
    served = ctx.settings.demo_page
    if served is None:
        # A production replica (on Redis, without --demo) has no use for it.
        served = ctx.settings.demo or ctx.store.embedded
    if not served:
        raise HTTPException(404, "the demo page is not served here (HERALD_DEMO_PAGE)")
    return FileResponse(_STATIC / name, media_type=media_type, headers=_DEMO_HEADERS)
