"""What the routes of one app share: settings, the store, the hub and the metrics."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request

from service.auth import Authenticator
from service.delivery.hub import Hub
from service.mercure.subscriptions import Registry
from service.metrics import Metrics
from service.ratelimit import RateLimiter
from service.settings import Settings
from service.storage.store import Store


@dataclass(frozen=True)
class Context:
    settings: Settings
    store: Store
    hub: Hub
    metrics: Metrics
    auth: Authenticator | None
    """None when auth is off (no HERALD_JWT_KEY)."""
    limiter: RateLimiter | None
    """None when publishing is not rate limited."""
    mercure_subscriptions: Registry | None = None
    """None unless HERALD_MERCURE_SUBSCRIPTIONS is on."""


def of(request: Request) -> Context:
    ctx: Context = request.app.state.herald
    return ctx
