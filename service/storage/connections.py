"""Redis clients for each kind of deployment: one for commands, and a factory of
dedicated single connections for the hub's blocking reads.

Commands never retry by themselves (a retried XADD could append twice); the failure
reaches the caller, which answers 503.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as redis
from redis.asyncio.connection import BlockingConnectionPool
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.maint_notifications import MaintNotificationsConfig

from service.settings import Settings
from service.storage.redis_url import InvalidRedisUrl, RedisTarget
from service.storage.sentinel import Primary

ClientFactory = Callable[[], redis.Redis]

# Redis answers XREAD BLOCK within the block time; this margin covers the round trip.
READ_MARGIN_SECONDS = 5.0

MAX_CONNECTIONS = 100
"""Command connections one process opens to a Redis server at most."""

# redis-py turns maintenance notifications on ("auto") by default, and a pool with them
# on skips its check that a pooled connection is still open: a publish after Redis died
# would be written into the dead connection and answer 504 (sent, outcome unknown)
# rather than 503 (nothing sent). Herald uses none of them.
NO_MAINT_NOTIFICATIONS: dict[str, Any] = {
    "maint_notifications_config": MaintNotificationsConfig(enabled=False)
}


@dataclass(frozen=True)
class Clients:
    commands: redis.Redis
    reader: ClientFactory
    """A new client on one connection of its own, for XREAD BLOCK."""


def connect(target: RedisTarget, settings: Settings) -> Clients:
    if target.mode == "standalone":
        return standalone(target, settings)
    if target.mode == "sentinel":
        return sentinel(target, settings)
    raise InvalidRedisUrl(f"{target.mode} deployments are not supported yet")


def standalone(target: RedisTarget, settings: Settings) -> Clients:
    url, credentials = _credentials_apart(target)
    # Past its connections, redis-py's default pool fails at once ("No connection
    # available"): a burst of batches would get 503s. This one waits for a free one.
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=MAX_CONNECTIONS,
        timeout=settings.redis_timeout_seconds,
        socket_timeout=settings.redis_timeout_seconds,
        socket_connect_timeout=settings.redis_timeout_seconds,
        retry=Retry(NoBackoff(), 0),
        **credentials,
        **NO_MAINT_NOTIFICATIONS,
    )
    client = redis.Redis.from_pool(pool)
    read_timeout = settings.reader_block_ms / 1000 + READ_MARGIN_SECONDS

    def reader() -> redis.Redis:
        return redis.Redis.from_url(
            url,
            socket_timeout=read_timeout,
            socket_connect_timeout=settings.redis_timeout_seconds,
            retry=Retry(NoBackoff(), 0),
            single_connection_client=True,
            **credentials,
            **NO_MAINT_NOTIFICATIONS,
        )

    return Clients(client, reader)


def _credentials_apart(target: RedisTarget) -> tuple[str, dict[str, Any]]:
    """The URL without its credentials, and the credentials as the target reads them.

    from_url would take a lone `secret@` for a user name; Herald reads it as a password,
    like redis-cli (and as the Sentinel and Cluster clients get it). A unix:// URL goes
    to from_url whole.
    """
    if not target.hosts:
        return target.url, {}
    scheme, _, rest = target.url.partition("://")
    rest, question, query = rest.partition("?")
    head, slash, path = rest.partition("/")
    url = f"{scheme}://{head.rpartition('@')[2]}{slash}{path}{question}{query}"
    return url, {"username": target.username, "password": target.password}


def sentinel(target: RedisTarget, settings: Settings) -> Clients:
    """Clients of the primary the sentinels name for `target.service`, following failovers."""
    assert target.service is not None
    timeout = settings.redis_timeout_seconds
    tls: dict[str, Any] = {"ssl": True, "ssl_ca_certs": target.ca_certs} if target.tls else {}
    sentinels = Sentinel(  # type: ignore[no-untyped-call]
        target.hosts,
        sentinel_kwargs={
            "username": target.sentinel_username,
            "password": target.sentinel_password,
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
            # Discovery asks the next sentinel when one fails: no retries on the same one.
            "retry": Retry(NoBackoff(), 0),
            **tls,
        },
    )
    primary = Primary(sentinels, target.service, tls=target.tls)
    node: dict[str, Any] = {
        "username": target.username,
        "password": target.password,
        "db": target.db,
        "socket_connect_timeout": timeout,
        "retry": Retry(NoBackoff(), 0),
        **({"ssl_ca_certs": target.ca_certs} if target.tls else {}),
        **NO_MAINT_NOTIFICATIONS,
    }
    read_timeout = settings.reader_block_ms / 1000 + READ_MARGIN_SECONDS

    def reader() -> redis.Redis:
        return primary.reader(socket_timeout=read_timeout, **node)

    return Clients(primary.client(socket_timeout=timeout, **node), reader)
