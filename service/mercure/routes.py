"""Herald as a Mercure hub: `POST` and `GET /.well-known/mercure`, and its metadata.

Routes stay thin: the form and query are `mercure_form`'s, tokens `mercure_auth`'s,
matching `mercure_match`'s, ids `mercure_ids`'s. Every update is an entry of the one Mercure
stream (`keys.MERCURE_TOPIC`); subscribers are hub subscribers of that stream that keep only
what their matchers and token select (`mercure_sse`), so fan-out, heartbeats, backpressure,
replay and shutdown are the same as `/events`'.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from urllib.parse import urlsplit

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.responses import PlainTextResponse, Response
from starlette.types import Receive, Scope, Send

from service import context
from service.context import Context
from service.delivery.replay import WriteFrame, is_trimmed
from service.delivery.subscriber import Framer
from service.delivery.subscription import SubscriptionStream
from service.encoding import sse
from service.encoding.cursor import ZERO, StreamId
from service.errors import HeraldError, NotFound, Unavailable
from service.mercure.auth import (
    ANONYMOUS,
    COOKIES,
    DETAIL_TYPE,
    UNRESTRICTED,
    Grant,
    InsufficientScope,
    MercureAuthenticator,
    TokenRequired,
    check_origin,
    token_of,
)
from service.mercure.form import first, parse_matchers, parse_pairs, parse_update
from service.mercure.ids import EARLIEST, decode_hub_id, hub_id, hub_id_of
from service.mercure.match import FALLBACK_HUB_URL, Matcher, any_matches
from service.mercure.sse import MercureSubscriber, encode_entry
from service.mercure.subscriptions import Subscription, SubscriptionQuery, subscriptions_of
from service.publish import body as publishing
from service.settings import Settings
from service.storage import keys

PATH = "/.well-known/mercure"
METADATA_PATH = "/.well-known/oauth-protected-resource" + PATH
FORM = "application/x-www-form-urlencoded"

router = APIRouter()


class UnsupportedMediaType(HeraldError):
    status = 415


@dataclass(frozen=True, slots=True)
class Hub:
    """Where this hub is, as each request sees it."""

    url: str
    """The hub's URL: HERALD_MERCURE_URL, else this request's origin and PATH."""
    base: str
    """What relative URL patterns and topics resolve against."""

    @classmethod
    def of(cls, settings: Settings, request: Request) -> Hub:
        if settings.mercure_url is not None:
            return cls(settings.mercure_url, settings.mercure_url)
        return cls(_origin(request) + PATH, FALLBACK_HUB_URL)

    @property
    def path(self) -> str:
        return urlsplit(self.url).path or PATH

    @property
    def metadata_url(self) -> str:
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.netloc}/.well-known/oauth-protected-resource{self.path}"

    def link(self, last_event_id: str | None = None) -> str:
        link = f'<{self.url}>; rel="mercure"'
        if last_event_id is not None:
            link += f'; last-event-id="{_quoted(last_event_id)}"'
        return link


def _origin(request: Request) -> str:
    host = request.headers.get("host") or "localhost"
    return f"{request.url.scheme}://{host}"


def _quoted(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def _authenticator(ctx: Context, hub: Hub) -> MercureAuthenticator | None:
    if ctx.settings.jwt_key is None:
        return None
    return MercureAuthenticator(ctx.settings, hub.base)


async def publish(ctx: Context, request: Request) -> Response:
    """`POST /.well-known/mercure`: a form-encoded update; answers its id as text."""
    hub = Hub.of(ctx.settings, request)
    grant = _publisher(ctx, request, hub)
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type != FORM:
        raise UnsupportedMediaType(f"a Mercure update is sent as {FORM}")
    body = await publishing.read_body(request, ctx.settings.max_body_bytes)
    update = parse_update(parse_pairs(body), ctx.settings.max_event_bytes, hub.path)
    if not grant.may_publish(update.topics, hub.base):
        raise InsufficientScope("the token may not publish to every topic", hub.metadata_url)
    # Mercure tokens name no publisher Herald counts by: the client's address does.
    publishing.check_rate(ctx, request, None, 1)
    entry_id = await ctx.store.publish_mercure(
        update.fields(), update.id, ctx.settings.mercure_retention
    )
    ctx.metrics.mercure_published.inc()
    update_id = update.id or hub_id_of(entry_id.encode())
    return PlainTextResponse(update_id, headers={"Link": hub.link(update_id)})


def _publisher(ctx: Context, request: Request, hub: Hub) -> Grant:
    auth = _authenticator(ctx, hub)
    if auth is None:
        return UNRESTRICTED
    token = token_of(request, hub.metadata_url)
    if token is None:
        raise TokenRequired("publishing needs a Mercure token", hub.metadata_url)
    if token[1] == "cookie":
        check_origin(request, ctx.settings.cors_origins)
    return auth.verify(*token, hub.metadata_url)


def _subscriber(ctx: Context, request: Request, hub: Hub) -> Grant:
    auth = _authenticator(ctx, hub)
    token = token_of(request, hub.metadata_url) if auth is not None else None
    if auth is None or token is None:
        if auth is not None and not ctx.settings.mercure_anonymous:
            raise TokenRequired("subscribing needs a Mercure token", hub.metadata_url)
        return ANONYMOUS
    return auth.verify(*token, hub.metadata_url)


async def subscribe(ctx: Context, request: Request) -> Response:
    """`GET /.well-known/mercure?match=…`: the updates of the matched topics, over SSE."""
    hub = Hub.of(ctx.settings, request)
    pairs = parse_pairs(request.scope["query_string"])
    matchers = parse_matchers(pairs, hub.base)
    grant = _subscriber(ctx, request, hub)
    requested = (
        request.headers.get("last-event-id")
        or first(pairs, "last_event_id")
        or first(pairs, "lastEventID")
    )
    if ctx.hub.streams >= ctx.settings.max_streams:
        ctx.metrics.refused.inc()
        raise Unavailable(f"this server holds its limit of {ctx.settings.max_streams} streams")
    headers = {"Link": hub.link()}
    start = None
    if requested:
        position, answer = await _resume_point(ctx, requested)
        start = {keys.MERCURE_TOPIC: position}
        # v0 clients read `Last-Event-ID`, current ones `Mercure-Last-Event-ID`.
        headers |= {"Mercure-Last-Event-ID": answer, "Last-Event-ID": answer}
    subscriber = MercureSubscriber(
        (keys.MERCURE_TOPIC,),
        ctx.settings.subscriber_buffer,
        ctx.settings.send_timeout_seconds,
        MercureAccepts(tuple(matchers), grant, hub.base),
        grant.expires_at,
    )
    subscriptions = []
    registry = ctx.mercure_subscriptions
    if registry is not None:
        # Announced before the hub follows the subscriber: it does not hear of itself.
        subscriptions = subscriptions_of(matchers, grant, hub.path, hub.base)
        await registry.opened(subscriptions)
    try:
        live_from = await ctx.hub.subscribe(subscriber)
    except BaseException:
        if registry is not None:
            await registry.closed(subscriptions)
        raise
    return MercureStream(ctx, subscriber, start, live_from, headers, subscriptions)


async def _resume_point(ctx: Context, requested: str) -> tuple[StreamId, str]:
    """Where a resume starts, and what `Mercure-Last-Event-ID` says: the requested id when
    its update is still retained, else `earliest` (everything retained is replayed)."""
    if requested == EARLIEST:
        return ZERO, EARLIEST
    position = decode_hub_id(requested)
    if position is None:
        position = await ctx.store.mercure_position(requested)
    if position is None:
        return ZERO, EARLIEST
    info = await ctx.store.stream_info(keys.MERCURE_TOPIC)
    if is_trimmed(position, info):
        ctx.metrics.trimmed.inc()
        return ZERO, EARLIEST
    return position, requested


@dataclass(frozen=True, slots=True)
class MercureAccepts:
    """A subscriber's filter: its matchers select the update, and a private one needs its
    token's subscribe grant on one of the update's topics."""

    matchers: tuple[Matcher, ...]
    grant: Grant
    base: str

    def __call__(self, topics: tuple[str, ...], private: bool) -> bool:
        if not any_matches(self.matchers, topics, self.base):
            return False
        return not private or self.grant.may_read(topics, self.base)


class MercureStream(SubscriptionStream):
    """A subscription to the Mercure stream: hub ids, no `herald.trimmed` events, and only
    the updates its subscriber keeps."""

    encode = staticmethod(encode_entry)
    announce_trimmed = False

    def __init__(
        self,
        ctx: Context,
        subscriber: MercureSubscriber,
        start: dict[str, StreamId] | None,
        live_from: dict[str, StreamId],
        headers: dict[str, str],
        subscriptions: list[Subscription],
    ) -> None:
        super().__init__(ctx, subscriber, start, live_from, headers)
        self.subscriptions = subscriptions
        """Its active subscriptions, announced as ended when the stream ends."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            registry = self._ctx.mercure_subscriptions
            if registry is not None and self.subscriptions:
                await asyncio.shield(registry.closed(self.subscriptions))

    def _opening(self) -> bytes:
        opening = sse.retry(self._ctx.settings.retry_ms)
        if self._start is None:
            live = self._live_from[keys.MERCURE_TOPIC]
            opening += sse.position(hub_id(live).encode())
        return opening

    def _writer(self, framer: Framer) -> WriteFrame:
        subscriber = self._subscriber
        assert isinstance(subscriber, MercureSubscriber)

        def write(topic: str, frame: sse.Frame) -> bytes:
            if subscriber.keeps(frame):
                return framer.write(topic, frame)
            framer.positions[topic] = frame.sid
            return b""

        return write


@router.get(METADATA_PATH, summary="Mercure: the hub's OAuth protected resource metadata")
async def metadata(request: Request) -> JSONResponse:
    ctx = context.of(request)
    hub = Hub.of(ctx.settings, request)
    return JSONResponse(
        {
            "resource": ctx.settings.mercure_audience or hub.url,
            "authorization_details_types_supported": [DETAIL_TYPE],
            "bearer_methods_supported": ["header"],
            "mercure_cookie": COOKIES[0],
            "mercure_matcher_types_supported": ["exact", "urlpattern"],
        }
        | ({"mercure_subscriptions": True} if ctx.settings.mercure_subscriptions else {})
    )


@router.get(PATH + "/subscriptions{rest:path}", summary="Mercure: active subscriptions")
async def subscriptions(request: Request) -> Response:
    """The subscription API: every replica's active subscriptions, or those of one matcher,
    or one; with the cursor to follow their events from in the `Link` header."""
    ctx = context.of(request)
    registry = ctx.mercure_subscriptions
    if registry is None:
        raise NotFound("active subscriptions are off here (HERALD_MERCURE_SUBSCRIPTIONS)")
    hub = Hub.of(ctx.settings, request)
    raw_path = request.scope.get("raw_path", request.url.path.encode()).decode("latin-1")
    rest = raw_path.partition("?")[0].removeprefix(PATH + "/subscriptions")
    query = SubscriptionQuery.parse(rest)
    # The resource as its events name it: under the hub's public path (behind a proxy's
    # prefix, that is not the path Herald was asked for).
    path = hub.path + "/subscriptions" + rest
    grant = _subscriber(ctx, request, hub)
    if ctx.settings.jwt_key is not None and not grant.may_read((path,), hub.base):
        if grant.anonymous:
            raise TokenRequired("the subscription API needs a Mercure token", hub.metadata_url)
        raise InsufficientScope(f"the token may not read {path}", hub.metadata_url)
    # The cursor first: a change it does not cover is in the list that follows.
    info = await ctx.store.stream_info(keys.MERCURE_TOPIC)
    cursor = hub_id(info.last_generated_id) if info.entries_added else EARLIEST
    documents = [json.loads(d) for d in await ctx.store.mercure_subscriptions()]
    etag = '"' + cursor + '"'
    headers = {
        "ETag": etag,
        "Cache-Control": "must-revalidate",
        "Link": hub.link(cursor) + '; type="mercure"; content-type="application/json"',
    }
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    selected = [d for d in documents if query.selects(d)]
    if query.subscriber is not None:
        if not selected:
            raise NotFound("no such active subscription")
        return JSONResponse(selected[0], headers=headers)
    collection = {"id": path, "type": "subscriptions", "subscriptions": selected}
    return JSONResponse(collection, headers=headers)
