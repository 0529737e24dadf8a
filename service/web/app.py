"""The ASGI application: `create_app()` wires settings, store, hub and routes together."""

from __future__ import annotations

import functools
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from fastapi import FastAPI

from service import __version__, errors
from service.auth import Authenticator
from service.context import Context
from service.delivery import shutdown
from service.delivery.hub import Hub
from service.delivery.presence import Presence
from service.mercure import routes as mercure
from service.mercure import sse as mercure_sse
from service.mercure.subscriptions import Registry
from service.metrics import Metrics
from service.ratelimit import RateLimiter
from service.settings import Settings
from service.storage import keys
from service.storage.cluster import ClusterStore
from service.storage.store import Store
from service.storage.stores import open_store
from service.web import api_docs, openapi, routes
from service.web.edge import Edge

if TYPE_CHECKING:
    from workers.runtime import InProcess

log = logging.getLogger("herald")


def create_app(settings: Settings | None = None) -> Edge:
    settings = settings or Settings()
    _configure_logging(settings.log_level)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        shutdown.watch()
        store = open_store(settings)
        await store.start()
        if store.embedded:
            log.warning(
                "HERALD_REDIS_URL is not set: running on an in-process fakeredis. This is "
                "the single-process development mode; events live only as long as the process."
            )
        if settings.jwt_key is None and not store.embedded:
            log.warning(
                "HERALD_JWT_KEY is not set: anyone who reaches this service may publish "
                "and subscribe to any topic. Set it in production."
            )
        metrics = Metrics()
        store.on_append_round_trip = metrics.append_round_trips.inc
        if isinstance(store, ClusterStore):
            store.on_refresh = metrics.topology_refreshes.inc
        hub = Hub(store, settings, metrics, {keys.MERCURE_TOPIC: mercure_sse.encode_entry})
        presence = Presence(store, hub, settings)
        presence.start()
        # With several worker processes, `herald serve` runs the producers once, beside them.
        demo = _start_demo(store, settings) if settings.demo and settings.workers == 1 else None
        limiter = (
            RateLimiter(settings.publish_rate, settings.publish_burst)
            if settings.publish_rate > 0
            else None
        )
        registry = None
        if settings.mercure_subscriptions:
            registry = Registry(store, settings.presence_seconds, settings.mercure_retention)
            registry.start()
        app.state.herald = Context(
            settings, store, hub, metrics, Authenticator.of(settings), limiter, registry
        )
        _freeze_startup_objects()
        try:
            yield
        finally:
            if registry is not None:
                await registry.stop()
            if demo is not None:
                await demo.stop()
            await presence.stop()
            await hub.stop()
            await store.close()
            metrics.close()

    docs = settings.api_docs
    app = FastAPI(
        title="Herald",
        version=__version__,
        summary="Publish into Redis Streams; subscribe over Server-Sent Events.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json" if docs else None,
    )
    errors.install(app)
    app.include_router(routes.router)
    app.include_router(mercure.router)
    if docs:
        app.include_router(api_docs.router())
    openapi.install(app)
    return Edge(app, settings.cors_origins, settings.max_header_bytes)


@functools.cache
def _freeze_startup_objects() -> None:
    """Leave what exists once the first app started (modules, the app, its clients) out
    of the cyclic garbage collector's full collections, once per process.

    They live as long as the process, yet each full collection walked all of them:
    under a streaming publish that was about a sixth of the CPU (about 90,000 objects,
    most of them from the imports).
    """
    gc.freeze()


def _start_demo(store: Store, settings: Settings) -> InProcess:
    # Imported here: the service needs the workers only for its demo.
    from workers import demo
    from workers.runtime import InProcess
    from workers.sink import StoreSink

    log.info("--demo: stock ticks, a log, online counts and a typewriter publish in-process")
    return InProcess.start("demo", demo.run, settings, StoreSink(store, settings), store)


def _configure_logging(level: str) -> None:
    logger = logging.getLogger("herald")
    logger.setLevel(level.upper())
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     herald: %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
