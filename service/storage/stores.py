"""Which `Store` a deployment gets: in-process fakeredis, one Redis (or Sentinel's
primary), or a Redis Cluster.

It lives apart from `service.storage.store` so that the cluster's store, a subclass of
`Store`, and the choice between the two import in one direction only.
"""

from __future__ import annotations

import redis.asyncio as redis

from service.settings import Settings
from service.storage import connections
from service.storage.cluster import ClusterStore
from service.storage.expiry import TopicExpiry
from service.storage.redis_url import RedisTarget
from service.storage.store import Store


def open_store(settings: Settings) -> Store:
    """The store `HERALD_REDIS_URL` names; without one, an embedded fakeredis."""
    if settings.redis_url is None:
        return _embedded(settings)
    target = RedisTarget.parse(settings.redis_url)
    if target.mode == "cluster":
        return ClusterStore.open(target, settings)
    clients = connections.connect(target, settings)
    return Store(
        clients.commands,
        clients.reader,
        embedded=False,
        replicas=settings.publish_replicas,
        replicas_timeout_ms=settings.publish_replicas_timeout_ms,
        expiry=TopicExpiry(settings.topic_ttl),
    )


def _embedded(settings: Settings) -> Store:
    import fakeredis

    server = fakeredis.FakeServer()

    def reader_client() -> redis.Redis:
        client: redis.Redis = fakeredis.FakeAsyncRedis(server=server, single_connection_client=True)
        return client

    return Store(
        fakeredis.FakeAsyncRedis(server=server),
        reader_client,
        embedded=True,
        expiry=TopicExpiry(settings.topic_ttl),
    )
