"""Redis Cluster: the store's commands routed to the node of each topic's slot.

    redis+cluster://host:port,host:port     (rediss+cluster:// for TLS)

- Publishing goes to each node as one pipeline of its events' XADDs. A batch that
  spans shards cannot be one transaction: each event lands or fails on its own, and a
  partial failure answers every event's result (`PartlyPublished`). With an
  Idempotency-Key each event is checked and appended by one script on its own slot,
  so a retry appends only what is missing.
- The hub reads per slot: topics whose streams share a slot share one XREAD BLOCK
  connection to the slot's primary; others get one each. After a failure or a
  redirection the reader refreshes the slot map and reconnects, resuming from the
  positions the hub keeps.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

import redis.asyncio as redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.crc import key_slot

from service.errors import (
    REDIRECTED,
    REDIS_DOWN,
    NotReplicated,
    OutcomeUnknown,
    PartlyPublished,
)
from service.settings import Settings
from service.storage import connections, keys
from service.storage.expiry import TopicExpiry
from service.storage.redis_url import RedisTarget
from service.storage.store import Store, StreamReader, _text, send

# KEYS = this event's idempotency key (on the stream's slot), the stream;
# ARGV = fingerprint, retention, window in seconds, event, data, stream expiry in ms.
_PUBLISH_ONE_ONCE = """
local stored = redis.call('GET', KEYS[1])
if stored then return {0, stored} end
local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*',
                      'event', ARGV[4], 'data', ARGV[5])
if ARGV[6] ~= '0' then redis.call('PEXPIRE', KEYS[2], ARGV[6]) end
local answer = ARGV[1] .. ' ' .. id
redis.call('SET', KEYS[1], answer, 'EX', ARGV[3])
return {1, answer}
"""
log = logging.getLogger("herald")

# One refresh of the slot map at a time, and not more often than this.
_REFRESH_INTERVAL_SECONDS = 0.25

Entries = Sequence[tuple[str, str, str]]


class ClusterStore(Store):
    def __init__(self, cluster: RedisCluster, target: RedisTarget, settings: Settings) -> None:
        super().__init__(
            cluster,  # type: ignore[arg-type]
            _no_default_reader,
            embedded=False,
            replicas=settings.publish_replicas,
            replicas_timeout_ms=settings.publish_replicas_timeout_ms,
            expiry=TopicExpiry(settings.topic_ttl),
        )
        self._cluster = cluster
        self._target = target
        self._settings = settings
        self._nodes: dict[str, redis.Redis] = {}
        self._refreshing = asyncio.Lock()
        self._refreshed_at = 0.0
        self.on_refresh: Callable[[], None] = lambda: None
        """Called after each reload of the slot map (the app counts them in its metrics)."""

    @classmethod
    def open(cls, target: RedisTarget, settings: Settings) -> ClusterStore:
        cluster = RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in target.hosts],
            retry=Retry(NoBackoff(), 0),
            cluster_error_retry_attempts=0,
            **_credentials(target, settings.redis_timeout_seconds),
        )
        return cls(cluster, target, settings)

    async def start(self) -> None:
        # Load the slot map before anything runs concurrently: redis-py's cluster client
        # can hang when several first commands race to initialise it.
        try:
            await self._cluster.initialize()
        except REDIS_DOWN as exc:
            log.warning("Redis Cluster unreachable at start: %s; retrying on use", exc)

    async def close(self) -> None:
        for client in self._nodes.values():
            await client.aclose()
        await self._cluster.aclose()

    def group_of(self, key: bytes) -> int | None:
        return key_slot(key)

    def reader(self, key: bytes) -> StreamReader:
        return SlotReader(self, key)

    def notification_nodes(self) -> dict[str, connections.ClientFactory]:
        """Every primary of the slot map: keyspace notifications are node-local."""
        return {
            node.name: partial(self._node_connection, node.name, None)
            for node in self._cluster.get_primaries()
        }

    def node_of(self, key: bytes) -> str:
        return str(self.primary_of(key).name)

    def node_reader(self, node: str) -> StreamReader:
        return NodeReader(self, node)

    async def nodes_moved(self) -> None:
        await self.refresh()

    def _node_connection(self, node_name: str, socket_timeout: float | None) -> redis.Redis:
        """A client on one connection of its own to `node_name`."""
        host, _, port = node_name.rpartition(":")
        return redis.Redis(
            host=host,
            port=int(port),
            retry=Retry(NoBackoff(), 0),
            single_connection_client=True,
            **_credentials(self._target, socket_timeout or self._settings.redis_timeout_seconds),
        )

    async def publish(self, events: Entries, retention: int) -> list[str]:
        """XADD each event on its node; every event's fate is reported."""
        replies = await self._per_node(
            events, lambda pipe, i: _xadd(pipe, events[i], retention), _text, expire=True
        )
        return [_text(reply) for reply in replies]

    async def append(
        self, events: Entries, retention: int
    ) -> tuple[list[str], BaseException | None]:
        """Like `Store.append`, each node's events in one pipeline."""
        try:
            return await self.publish(events, retention), None
        except PartlyPublished as partly:
            ids = []
            for result in partly.results:
                if "id" not in result:
                    break
                ids.append(result["id"])
            return ids, partly

    async def publish_once(
        self,
        key: str,
        fingerprint: str,
        events: Entries,
        retention: int,
        window_seconds: int,
    ) -> tuple[bool, str, list[str]]:
        """Like `Store.publish_once`, but each event is checked and appended on its own slot."""
        replies = await self._per_node(
            events,
            lambda pipe, i: pipe.eval(
                _PUBLISH_ONE_ONCE,
                2,
                keys.event_idempotency_key(events[i][0], key, i),
                keys.stream_key(events[i][0]),
                fingerprint,
                retention,
                window_seconds,
                events[i][1],
                events[i][2],
                self.expiry.expire_ms,
            ),
            lambda reply: _text(reply[1]).split(" ")[1],
        )
        fresh = any(int(reply[0]) for reply in replies)
        ids = []
        for reply in replies:
            stored_fingerprint, entry_id = _text(reply[1]).split(" ")
            if stored_fingerprint != fingerprint:
                # The key was used for another body: the caller refuses it.
                return False, stored_fingerprint, []
            ids.append(entry_id)
        return fresh, fingerprint, ids

    async def publish_and_mark(
        self,
        events: Entries,
        retention: int,
        mark_key: bytes,
        mark: Mapping[str, str],
    ) -> list[str]:
        """One transaction on one node: the mark must share its events' slot (a hash tag,
        see `keys.worker_mark`)."""
        slots = {key_slot(mark_key)} | {key_slot(keys.stream_key(t)) for t, _, _ in events}
        if len(slots) > 1:
            raise ValueError("on a Cluster a mark and its events must share one slot")
        return await super().publish_and_mark(events, retention, mark_key, mark)

    def _client_for(self, key: bytes) -> redis.Redis:
        return self.node_client(self.primary_of(key).name)

    async def _per_node(
        self,
        events: Entries,
        queue: Callable[[Any, int], object],
        entry_id: Callable[[Any], str],
        expire: bool = False,
    ) -> list[Any]:
        """Queue each event's command on its node's pipeline (and, with `expire`, the
        refreshes of its streams' expiry), send them all, and return the replies in
        order; raise `PartlyPublished` when any failed."""
        by_node: dict[str, list[int]] = {}
        for index, (topic, _, _) in enumerate(events):
            node = self.primary_of(keys.stream_key(topic))
            by_node.setdefault(node.name, []).append(index)
        results: list[Any] = [None] * len(events)
        sent = await asyncio.gather(
            *(
                self._on_node(
                    node,
                    indexes,
                    queue,
                    [keys.stream_key(events[i][0]) for i in indexes] if expire else [],
                )
                for node, indexes in by_node.items()
            )
        )
        for indexes, replies in zip(by_node.values(), sent, strict=True):
            for index, reply in zip(indexes, replies, strict=True):
                results[index] = reply
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            if any(isinstance(r, (*REDIS_DOWN, OutcomeUnknown)) for r in failed):
                await self.refresh()
            if len(failed) == len(events) and len(events) == 1:
                raise failed[0]
            raise PartlyPublished(
                [
                    {"topic": topic, "error": _reason(r)}
                    if isinstance(r, BaseException)
                    else {"topic": topic, "id": entry_id(r)}
                    for (topic, _, _), r in zip(events, results, strict=True)
                ],
                unknown=any(isinstance(r, OutcomeUnknown) for r in failed),
            )
        return results

    async def _on_node(
        self,
        node_name: str,
        indexes: list[int],
        queue: Callable[[Any, int], object],
        expiring: list[bytes],
    ) -> list[Any]:
        """One pipeline of the node's commands (then WAIT, if replicas must confirm):
        a reply or an error for each."""
        pipe = self.node_client(node_name).pipeline(transaction=False)
        for index in indexes:
            queue(pipe, index)
        self._expire(pipe, expiring)
        try:
            if not self._replicas:
                replies = await send(pipe, raise_on_error=False)
                return replies[: len(indexes)]
            # WAIT covers the writes of its own connection: the pipeline's.
            replies, shortfall = await self._waiting(pipe)
            replies = replies[: len(indexes)]
        except (*REDIS_DOWN, OutcomeUnknown) as exc:
            return [exc] * len(indexes)
        if shortfall is None:
            return replies
        return [r if isinstance(r, BaseException) else shortfall for r in replies]

    def node_client(self, node_name: str) -> redis.Redis:
        """Commands to one node, over a pool of its own (the cluster client routes by key only)."""
        client = self._nodes.get(node_name)
        if client is None:
            host, _, port = node_name.rpartition(":")
            client = redis.Redis(
                host=host,
                port=int(port),
                retry=Retry(NoBackoff(), 0),
                **_credentials(self._target, self._settings.redis_timeout_seconds),
            )
            self._nodes[node_name] = client
        return client

    def primary_of(self, key: bytes) -> ClusterNode:
        """The node serving the slot of `key`, as the slot map last said."""
        return self._cluster.nodes_manager.get_node_from_slot(key_slot(key))

    async def refresh(self) -> None:
        """Reload the slot map (after a failover or a migration), unless one just ran."""
        async with self._refreshing:
            if time.monotonic() - self._refreshed_at < _REFRESH_INTERVAL_SECONDS:
                return
            try:
                await self._cluster.nodes_manager.initialize()
            finally:
                self._refreshed_at = time.monotonic()
            self.on_refresh()


class SlotReader(StreamReader):
    """XREAD BLOCK over the topics of one slot, on a connection to that slot's primary."""

    def __init__(self, store: ClusterStore, key: bytes) -> None:
        self._store = store
        self._key = key
        self._node_name = ""
        super().__init__(self._new_client, store.node_client(store.primary_of(key).name))

    @property
    def node(self) -> str:
        return self._node_name

    def _new_client(self) -> redis.Redis:
        node = self._store.primary_of(self._key)
        self._node_name = node.name
        # CLIENT UNBLOCK must reach the node that holds the blocked connection.
        self._control = self._store.node_client(node.name)
        settings = self._store._settings
        return redis.Redis(
            host=node.host,
            port=int(node.port),
            retry=Retry(NoBackoff(), 0),
            single_connection_client=True,
            **_credentials(
                self._store._target,
                settings.reader_block_ms / 1000 + connections.READ_MARGIN_SECONDS,
            ),
        )

    async def recover(self) -> None:
        await self.reset()
        await self._store.refresh()


class NodeReader(StreamReader):
    """The change feed's non-blocking reads on one node (one XREAD per slot)."""

    def __init__(self, store: ClusterStore, node_name: str) -> None:
        self._store = store
        self._node_name = node_name
        super().__init__(
            partial(store._node_connection, node_name, None), store.node_client(node_name)
        )

    @property
    def node(self) -> str:
        return self._node_name

    async def recover(self) -> None:
        await self.reset()
        await self._store.refresh()


def _credentials(target: RedisTarget, socket_timeout: float) -> dict[str, Any]:
    options: dict[str, Any] = {
        "username": target.username,
        "password": target.password,
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": min(socket_timeout, 5.0),
        **connections.NO_MAINT_NOTIFICATIONS,
    }
    if target.tls:
        options |= {"ssl": True, "ssl_ca_certs": target.ca_certs}
    return options


def _xadd(pipe: Any, event: tuple[str, str, str], retention: int) -> None:
    topic, name, data = event
    pipe.xadd(
        keys.stream_key(topic), {"event": name, "data": data}, maxlen=retention, approximate=True
    )


def _reason(exc: BaseException) -> str:
    if isinstance(exc, REDIRECTED):
        return "the slot is moving between nodes"
    if isinstance(exc, NotReplicated):
        return "stored on the primary, not yet confirmed by enough replicas"
    if isinstance(exc, OutcomeUnknown):
        return "sent, but Redis did not confirm it in time: it may have been stored"
    return "Redis unreachable"


def _no_default_reader() -> redis.Redis:
    raise RuntimeError("a cluster reader is made per slot: use ClusterStore.reader(key)")
