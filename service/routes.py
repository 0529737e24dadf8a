"""HTTP routes: thin, they parse, call the store or the hub, and answer."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response

from service import context, publishing
from service.errors import REDIS_DOWN
from service.metrics import CONTENT_TYPE
from service.models import Published, Topic
from service.subscription import SubscriptionStream, open_subscription

router = APIRouter()

_DEMO_PAGE = Path(__file__).parent / "static" / "index.html"
_READY_TIMEOUT_SECONDS = 2.0

_ERROR = {"content": {"application/json": {"example": {"detail": "…"}}}}


@router.post(
    "/publish",
    summary="Publish one event or a batch",
    response_model=Published | list[Published],
    responses={413: _ERROR, 422: _ERROR, 503: _ERROR},
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": publishing.REQUEST_SCHEMA}},
        }
    },
)
async def publish(request: Request) -> Any:
    ctx = context.of(request)
    body = await publishing.read_body(request, ctx.settings.max_body_bytes)
    events, batch = publishing.parse_events(body, ctx.settings)
    ids = await ctx.store.publish(
        [(e.topic, e.event, e.text) for e in events], ctx.settings.retention
    )
    ctx.metrics.published.inc(len(ids))
    answers = [{"topic": e.topic, "id": i} for e, i in zip(events, ids, strict=True)]
    return JSONResponse(answers if batch else answers[0])


@router.get(
    "/events",
    summary="Subscribe to topics over Server-Sent Events",
    response_class=SubscriptionStream,
    responses={400: _ERROR, 422: _ERROR, 503: _ERROR},
)
async def events(
    request: Request,
    topic: Annotated[list[Topic], Query(min_length=1, description="Repeat for several topics.")],
    last_event_id_query: Annotated[
        str | None,
        Query(alias="lastEventId", description="Resume position when no header can be set."),
    ] = None,
    last_event_id: Annotated[
        str | None, Header(description="Resume position; wins over the query parameter.")
    ] = None,
) -> Response:
    position = last_event_id if last_event_id is not None else last_event_id_query
    return await open_subscription(context.of(request), topic, position)


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


@router.get("/metrics", summary="Prometheus metrics")
async def metrics(request: Request) -> Response:
    return Response(context.of(request).metrics.render(), media_type=CONTENT_TYPE)


@router.get("/", include_in_schema=False)
async def demo() -> FileResponse:
    return FileResponse(_DEMO_PAGE)
