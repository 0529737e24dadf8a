"""The hub's reads with the change feed: only the topics that got entries, from their positions.

The change feed (`service.delivery.changefeed`) names the stream keys that got entries; this
reader collects them and reads those keys alone, without blocking, in one XREAD per
node (per slot on a Cluster), at most once per `reader_coalesce_ms`, so what arrives
together is read together. Redis work per event then no longer grows with the number
of topics followed. A topic is read when it joins, every followed topic when a feed
connection (re)subscribes, and every one again at least once per `reader_block_ms`
(why: the module docstring of `service.delivery.changefeed`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections.abc import Iterable

from service.delivery.changefeed import ChangeFeed
from service.delivery.fanout import Topic, deliver
from service.errors import REDIRECTED, REDIS_DOWN
from service.metrics import Metrics
from service.settings import Settings
from service.storage.store import Arg, Store, StreamReader, XreadReply

log = logging.getLogger("herald")

_BACKOFF_FIRST = 0.05
_BACKOFF_MAX = 5.0


class FeedReader:
    """Reads the followed topics the change feed names; a `ChangeListener`."""

    def __init__(self, store: Store, settings: Settings, metrics: Metrics) -> None:
        self._store = store
        self._metrics = metrics
        self._count = settings.read_count
        self._chunk = settings.reader_chunk
        self._coalesce = settings.reader_coalesce_ms / 1000
        self._sweep = settings.reader_block_ms / 1000
        self.topics: dict[bytes, Topic] = {}
        self._changed: set[bytes] = set()
        self._wake = asyncio.Event()
        self._readers: dict[str, StreamReader] = {}
        self._failing_since: float | None = None
        self._subscribed: set[str] = set()
        self._feed = ChangeFeed(store.notification_nodes, self, self._nodes_moved)
        self._feed.reconcile()
        self._task = asyncio.create_task(self._run(), name="herald-feed-reader")

    @property
    def healthy(self) -> bool:
        return not self._task.done() and self._failing_since is None and self._feed.healthy

    def changed(self, key: bytes) -> None:
        if key in self.topics:
            self._changed.add(key)
            self._wake.set()

    def lost(self, node: str) -> None:
        if node in self._subscribed:
            # The feed of `node` came back after a failure (e.g. on a new primary).
            self._metrics.redis_reconnects.inc()
        self._subscribed.add(node)
        self._changed.update(self.topics)
        self._wake.set()

    def add(self, topic: Topic) -> None:
        self.topics[topic.key] = topic
        # Its position came from a command that may have run before the feed would have
        # told of what came next: read it once now.
        self.changed(topic.key)

    def remove(self, topic: Topic) -> None:
        self.topics.pop(topic.key, None)
        self._changed.discard(topic.key)

    async def stop(self) -> None:
        while not self._task.done():
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=0.1)
        await self._feed.stop()
        for reader in self._readers.values():
            await reader.reset()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        backoff = _BACKOFF_FIRST
        last_read = -math.inf
        next_sweep = loop.time() + self._sweep
        while True:
            now = loop.time()
            if now >= next_sweep:
                next_sweep = now + self._sweep
                self._feed.reconcile()
                self._changed.update(self.topics)
            if not self._changed:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(next_sweep - now):
                        await self._wake.wait()
                continue
            # Reads are paced, not delayed: the first change after a quiet spell is read
            # at once, and what comes during the pause after a read waits for the next.
            if (pause := last_read + self._coalesce - now) > 0:
                await asyncio.sleep(pause)
            last_read = loop.time()
            wanted, self._changed = self._changed, set()
            failure = await self._read(wanted)
            if failure is None:
                if self._failing_since is not None:
                    log.info("hub reader reconnected to Redis")
                    self._metrics.redis_reconnects.inc()
                    self._failing_since = None
                backoff = _BACKOFF_FIRST
                continue
            if self._failing_since is None:
                self._failing_since = time.monotonic()
                log.warning("hub reader lost Redis: %s; retrying with backoff", failure)
            self._metrics.reader_errors.inc()
            await asyncio.sleep(backoff * random.uniform(0.5, 1.5))
            backoff = min(backoff * 2, _BACKOFF_MAX)

    async def _read(self, wanted: Iterable[bytes]) -> Exception | None:
        """Read the `wanted` keys still followed, each node's in one write; what failed
        is wanted again. The first failure, if any."""
        by_node: dict[str, dict[int | None, list[Topic]]] = {}
        for key in wanted:
            topic = self.topics.get(key)
            if topic is None:
                continue
            node = by_node.setdefault(self._store.node_of(key), {})
            node.setdefault(self._store.group_of(key), []).append(topic)
        failures = await asyncio.gather(
            *(self._read_node(node, groups) for node, groups in by_node.items())
        )
        failure = next((f for f in failures if f is not None), None)
        if isinstance(failure, REDIRECTED):
            await self._nodes_moved()
        elif failure is not None:
            self._feed.reconcile()
        return failure

    async def _read_node(
        self, node: str, groups: dict[int | None, list[Topic]]
    ) -> Exception | None:
        reader = self._readers.get(node)
        if reader is None:
            reader = self._readers[node] = self._store.node_reader(node)
        batches = [
            topics[start : start + self._chunk]
            for topics in groups.values()
            for start in range(0, len(topics), self._chunk)
        ]
        args: list[tuple[list[Arg], list[Arg]]] = [
            ([t.key_arg for t in batch], [t.position_arg for t in batch]) for batch in batches
        ]
        try:
            replies = await reader.read_now(args, self._count)
        except REDIS_DOWN as exc:
            self._changed.update(t.key for batch in batches for t in batch)
            with contextlib.suppress(*REDIS_DOWN):
                await reader.recover()
            return exc
        failure: Exception | None = None
        for batch, reply in zip(batches, replies, strict=True):
            if isinstance(reply, Exception):
                self._changed.update(t.key for t in batch)
                failure = failure or reply
                continue
            await self._deliver(reader, reply)
        return failure

    async def _deliver(self, reader: StreamReader, reply: XreadReply) -> None:
        newest_ms = await deliver(reply, self.topics, self._metrics)
        for key, entries in reply:
            # A full page: there is more to read.
            if len(entries) >= self._count and key in self.topics:
                self._changed.add(key)
        if newest_ms:
            lag = max(time.time() - newest_ms / 1000, 0.0)
            self._metrics.reader_lag.labels(reader.node).set(lag)

    async def _nodes_moved(self) -> None:
        with contextlib.suppress(*REDIS_DOWN):
            await self._store.nodes_moved()
        self._feed.reconcile()
        for name in [n for n in self._readers if n not in self._store.notification_nodes()]:
            await self._readers.pop(name).reset()
