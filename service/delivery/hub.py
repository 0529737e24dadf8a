"""The hub: one process-wide reader of all active topics, fanning entries out to subscribers.

Redis work does not grow with subscribers: each topic is read by exactly one reader,
every entry is encoded to SSE bytes once (`service.delivery.fanout`), and the same bytes are
written to every subscriber's stream. The hub reads in one of two modes, chosen at the
first subscribe (`HERALD_CHANGE_FEED`):

- notifications: Redis keyspace notifications name the streams that got entries, and
  `FeedReader` reads only those (`service.delivery.changefeed`,
  `service.delivery.feedreader`): Redis work per event does not grow with the number of
  topics either;
- blocking: one XREAD BLOCK loop (`Reader`) per `reader_chunk` topics (per slot on a
  Cluster), for servers that will not send notifications.

The hub also sends the heartbeats and ends every stream when the server stops.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Mapping

from prometheus_client import Gauge

from service.delivery import changefeed, shutdown
from service.delivery.fanout import Topic, deliver
from service.delivery.feedreader import FeedReader
from service.delivery.subscriber import Ended, Subscriber
from service.encoding.cursor import StreamId
from service.encoding.sse import Encode, encode_entry
from service.errors import REDIS_DOWN
from service.metrics import Metrics
from service.settings import Settings
from service.storage import keys
from service.storage.store import Arg, Store, StreamReader, XreadReply

log = logging.getLogger("herald")

_BACKOFF_FIRST = 0.05
_BACKOFF_MAX = 5.0
# How often the hub checks for a shutdown; heartbeats go out every few ticks.
_TICK_SECONDS = 0.5


class Hub:
    def __init__(
        self,
        store: Store,
        settings: Settings,
        metrics: Metrics,
        encoders: Mapping[str, Encode] | None = None,
    ) -> None:
        self._store = store
        self._encoders = dict(encoders or {})
        """How entries of particular topics become frames; `encode_entry` for the rest."""
        self._settings = settings
        self._metrics = metrics
        self._topics: dict[str, Topic] = {}
        self._readers: list[Reader] = []
        # Which blocking reader reads each topic (none with the change feed).
        self._reader_of: dict[str, Reader] = {}
        self._subscribers: set[Subscriber] = set()
        # Subscribers whose token expires, and when (Unix time).
        self._expiring: dict[Subscriber, float] = {}
        self._join_lock = asyncio.Lock()
        self._joining = 0
        self.membership = 0
        """Counts subscribes and unsubscribes, so presence knows when counts changed."""
        self._ticker: asyncio.Task[None] | None = None
        self._stopping: set[asyncio.Task[None]] = set()
        self._feed: FeedReader | None = None
        self.mode: str | None = None
        """How the hub reads: "notifications" or "blocking"; None until the first subscribe."""

    async def stop(self) -> None:
        if self._ticker is not None:
            await _cancel(self._ticker)
        for reader in self._readers:
            await reader.stop()
        self._readers.clear()
        if self._feed is not None:
            await self._feed.stop()

    def end_all(self, why: Ended) -> None:
        for subscriber in list(self._subscribers):
            subscriber.end(why)

    @property
    def streams(self) -> int:
        """Subscribers registered or joining: what the connection limit counts."""
        return len(self._subscribers) + self._joining

    def counts(self) -> dict[str, int]:
        """Local subscribers per topic (Herald's own internal topics left out)."""
        return {
            name: len(topic.subscribers)
            for name, topic in self._topics.items()
            if not keys.internal(name)
        }

    @property
    def healthy(self) -> bool:
        """Every reader loop is running and its last read reached Redis."""
        feed_ok = self._feed is None or self._feed.healthy
        return feed_ok and all(reader.healthy for reader in self._readers)

    async def subscribe(self, subscriber: Subscriber) -> dict[str, StreamId]:
        """Register `subscriber`; it gets every entry after the returned positions."""
        if self._ticker is None:
            self._ticker = asyncio.create_task(self._tick(), name="herald-ticker")
        names = subscriber.topics
        if any(name not in self._topics for name in names):
            self._joining += 1
            try:
                async with self._join_lock:
                    if self.mode is None:
                        await self._choose_mode()
                    missing = [name for name in names if name not in self._topics]
                    if missing:
                        positions = await self._store.last_generated_ids(missing)
                        for name in missing:
                            self._add_topic(name, positions[name])
            finally:
                self._joining -= 1
        starts = {}
        for name in names:
            topic = self._topics[name]
            topic.subscribers.add(subscriber)
            starts[name] = topic.position
        self._subscribers.add(subscriber)
        if subscriber.expires_at is not None:
            self._expiring[subscriber] = subscriber.expires_at
        self._metrics.subscribers.inc()
        self.membership += 1
        return starts

    def unsubscribe(self, subscriber: Subscriber) -> None:
        if subscriber not in self._subscribers:
            return
        self._subscribers.discard(subscriber)
        self._expiring.pop(subscriber, None)
        for name in subscriber.topics:
            topic = self._topics.get(name)
            if topic is None:
                continue
            topic.subscribers.discard(subscriber)
            if not topic.subscribers:
                del self._topics[name]
                self._drop_topic(topic)
        self._metrics.subscribers.dec()
        self._metrics.topics.set(len(self._topics))
        self.membership += 1

    async def _tick(self) -> None:
        heartbeat_ticks = max(1, round(self._settings.heartbeat_seconds / 2 / _TICK_SECONDS))
        ticks = 0
        while True:
            await asyncio.sleep(min(_TICK_SECONDS, self._settings.heartbeat_seconds / 2))
            if shutdown.requested():
                self.end_all(Ended.SHUTDOWN)
            if self._expiring:
                now = time.time()
                for subscriber in [s for s, at in self._expiring.items() if at <= now]:
                    subscriber.end(Ended.EXPIRED)
            ticks += 1
            if ticks % heartbeat_ticks == 0:
                # Half the interval apart: no stream stays silent for a whole interval.
                for subscriber in self._subscribers:
                    subscriber.heartbeat()

    async def _choose_mode(self) -> None:
        """Read with the change feed where the setting and the server allow it."""
        setting = self._settings.change_feed
        mode = "blocking"
        if setting != "off":
            try:
                await changefeed.probe(self._store.notification_nodes())
                mode = "notifications"
            except changefeed.Unsupported as exc:
                if setting == "notifications" and not exc.known_off:
                    log.warning("%s; trusting that Redis sends keyspace notifications", exc)
                    mode = "notifications"
                else:
                    log.info("%s", exc)
        if mode == "notifications":
            self._feed = FeedReader(self._store, self._settings, self._metrics)
            log.info("hub reads the topics Redis keyspace notifications name (change feed)")
        else:
            log.info("hub reads every followed topic with XREAD BLOCK (no change feed)")
        self.mode = mode

    def _drop_topic(self, topic: Topic) -> None:
        reader = self._reader_of.pop(topic.name, None)
        if reader is None:
            assert self._feed is not None
            self._feed.remove(topic)
            return
        reader.remove(topic)
        # On a Cluster a reader serves one slot: an idle one would hold a connection for
        # every slot ever followed.
        if not reader.topics and reader.group is not None:
            self._readers.remove(reader)
            stopping = asyncio.create_task(reader.stop())
            self._stopping.add(stopping)
            stopping.add_done_callback(self._stopping.discard)

    def _add_topic(self, name: str, position: StreamId) -> None:
        encode = self._encoders.get(name, encode_entry)
        if self._feed is not None:
            topic = Topic(name, position, encode)
            self._topics[name] = topic
            self._feed.add(topic)
            self._metrics.topics.set(len(self._topics))
            return
        key = keys.stream_key(name)
        group = self._store.group_of(key)
        reader = next(
            (
                r
                for r in self._readers
                if r.group == group and len(r.topics) < self._settings.reader_chunk
            ),
            None,
        )
        if reader is None:
            reader = Reader(self._store.reader(key), group, self._settings, self._metrics)
            self._readers.append(reader)
        topic = Topic(name, position, encode)
        self._reader_of[name] = reader
        self._topics[name] = topic
        reader.add(topic)
        self._metrics.topics.set(len(self._topics))


class Reader:
    """One XREAD BLOCK loop over a chunk of topics, on its own connection."""

    def __init__(
        self,
        stream_reader: StreamReader,
        group: int | None,
        settings: Settings,
        metrics: Metrics,
    ) -> None:
        self._conn = stream_reader
        self._lag: Gauge | None = None
        self._lag_node = ""
        self.group = group
        """The Cluster slot its topics share, or None where any topics may be read together."""
        self._count = settings.read_count
        self._block_ms = settings.reader_block_ms
        self._coalesce = settings.reader_coalesce_ms / 1000
        self._metrics = metrics
        self.topics: dict[bytes, Topic] = {}
        # The read's keys and ids, in the same order; topic.slot indexes both.
        self._keys: list[Arg] | None = None
        self._ids: list[Arg] = []
        self._changed = asyncio.Event()
        self._reading = False
        self._stale = False
        self._waking: asyncio.Task[None] | None = None
        self._failing_since: float | None = None
        self._task = asyncio.create_task(self._run(), name="herald-reader")

    @property
    def healthy(self) -> bool:
        return not self._task.done() and self._failing_since is None

    def add(self, topic: Topic) -> None:
        self.topics[topic.key] = topic
        self._keys = None
        self._stale = True
        self._changed.set()
        if self._reading and (self._waking is None or self._waking.done()):
            self._waking = asyncio.create_task(self._wake())

    def remove(self, topic: Topic) -> None:
        # The read in flight may still return entries of it; dispatch ignores unknown keys.
        self.topics.pop(topic.key, None)
        self._keys = None

    async def stop(self) -> None:
        for task in (self._waking, self._task):
            if task is not None:
                await _cancel(task)
        await self._conn.reset()

    async def _wake(self) -> None:
        """Interrupt the blocked read so a new topic joins it now, not after the block time.

        The unblock travels on another connection and may overtake the XREAD it is
        meant for, so it is repeated until it lands or the read ends by itself.
        """
        try:
            while self._reading and self._stale:
                if await self._conn.unblock():
                    return
                await asyncio.sleep(0.002)
        except REDIS_DOWN as exc:
            log.debug("could not wake the reader: %s", exc)

    async def _run(self) -> None:
        backoff = _BACKOFF_FIRST
        while True:
            if not self.topics:
                self._changed.clear()
                await self._changed.wait()
                continue
            if self._keys is None:
                topics = list(self.topics.values())
                for slot, topic in enumerate(topics):
                    topic.slot = slot
                self._keys = [topic.key_arg for topic in topics]
                self._ids = [topic.position_arg for topic in topics]
            self._stale = False
            self._reading = True
            try:
                reply = await self._conn.read(self._keys, self._ids, self._count, self._block_ms)
            except REDIS_DOWN as exc:
                self._reading = False
                await self._failed(exc, backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX)
                continue
            self._reading = False
            if self._failing_since is not None:
                log.info("hub reader reconnected to Redis")
                self._metrics.redis_reconnects.inc()
                self._failing_since = None
            backoff = _BACKOFF_FIRST
            if reply:
                await self._dispatch(reply)
                # Each read names every topic of the chunk: at many quiet topics a read per
                # entry would cost Redis more than the entries. A short pause lets what
                # arrives meanwhile come in one read, unless a topic has a backlog already.
                if self._coalesce and all(len(entries) < self._count for _, entries in reply):
                    await asyncio.sleep(self._coalesce)

    async def _failed(self, exc: Exception, backoff: float) -> None:
        if self._failing_since is None:
            self._failing_since = time.monotonic()
            log.warning("hub reader lost Redis: %s; retrying with backoff", exc)
        self._metrics.reader_errors.inc()
        await self._conn.recover()
        # Jitter spreads the reconnects of many replicas after a Redis restart.
        await asyncio.sleep(backoff * random.uniform(0.5, 1.5))

    async def _dispatch(self, reply: XreadReply) -> None:
        newest_ms = await deliver(reply, self.topics, self._metrics)
        if self._keys is not None:
            for key, _ in reply:
                if (topic := self.topics.get(key)) is not None:
                    self._ids[topic.slot] = topic.position_arg
        if newest_ms:
            self._lag_gauge().set(max(time.time() - newest_ms / 1000, 0.0))

    def _lag_gauge(self) -> Gauge:
        """This reader's lag gauge, looked up again only when its node changed."""
        node = self._conn.node
        if self._lag is None or node != self._lag_node:
            self._lag_node, self._lag = node, self._metrics.reader_lag.labels(node)
        return self._lag


async def _cancel(task: asyncio.Task[None]) -> None:
    # Python 3.11's wait_for swallows a cancellation that races its result (fakeredis
    # waits that way), so one cancel() may not stop a read.
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=0.1)
    if not task.cancelled() and task.exception() is not None:
        log.debug("hub task ended with %r", task.exception())
