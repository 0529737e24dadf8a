"""The ASGI application: `create_app()` wires settings, store, hub and routes together."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from service import __version__, errors, openapi, routes
from service.context import Context
from service.edge import Edge
from service.hub import Hub
from service.metrics import Metrics
from service.settings import Settings
from service.store import Store

log = logging.getLogger("herald")


def create_app(settings: Settings | None = None) -> Edge:
    settings = settings or Settings()
    _configure_logging(settings.log_level)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store = Store.connect(settings)
        if store.embedded:
            log.warning(
                "HERALD_REDIS_URL is not set: running on an in-process fakeredis. This is "
                "the single-process development mode; events live only as long as the process."
            )
        metrics = Metrics()
        hub = Hub(store, settings, metrics)
        app.state.herald = Context(settings, store, hub, metrics)
        try:
            yield
        finally:
            await hub.stop()
            await store.close()

    app = FastAPI(
        title="Herald",
        version=__version__,
        summary="Publish into Redis Streams; subscribe over Server-Sent Events.",
        lifespan=lifespan,
    )
    errors.install(app)
    app.include_router(routes.router)
    openapi.install(app)
    return Edge(app)


def _configure_logging(level: str) -> None:
    logger = logging.getLogger("herald")
    logger.setLevel(level.upper())
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     herald: %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
