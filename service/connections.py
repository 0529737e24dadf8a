"""Redis clients for each kind of deployment: one for commands, and a factory of
dedicated single connections for the hub's blocking reads.

Commands never retry by themselves (a retried XADD could append twice); the failure
reaches the caller, which answers 503.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from service.redis_url import InvalidRedisUrl, RedisTarget
from service.settings import Settings

ClientFactory = Callable[[], redis.Redis]

# Redis answers XREAD BLOCK within the block time; this margin covers the round trip.
READ_MARGIN_SECONDS = 5.0


@dataclass(frozen=True)
class Clients:
    commands: redis.Redis
    reader: ClientFactory
    """A new client on one connection of its own, for XREAD BLOCK."""


def connect(target: RedisTarget, settings: Settings) -> Clients:
    if target.mode == "standalone":
        return standalone(target, settings)
    raise InvalidRedisUrl(f"{target.mode} deployments are not supported yet")


def standalone(target: RedisTarget, settings: Settings) -> Clients:
    client = redis.Redis.from_url(
        target.url,
        socket_timeout=settings.redis_timeout_seconds,
        socket_connect_timeout=settings.redis_timeout_seconds,
        retry=Retry(NoBackoff(), 0),
    )
    read_timeout = settings.reader_block_ms / 1000 + READ_MARGIN_SECONDS

    def reader() -> redis.Redis:
        return redis.Redis.from_url(
            target.url,
            socket_timeout=read_timeout,
            socket_connect_timeout=settings.redis_timeout_seconds,
            retry=Retry(NoBackoff(), 0),
            single_connection_client=True,
        )

    return Clients(client, reader)
