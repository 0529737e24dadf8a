"""The change feed: which streams got entries, from Redis keyspace notifications.

Redis publishes `__keyevent@<db>__:xadd` with the key's name for every XADD once its
`notify-keyspace-events` flags hold `E` (key-event channel) and `t` (stream commands).
One pub/sub connection per process and node (each primary of a Cluster: notifications
are node-local) hears of every entry, Herald's publishes and those other producers XADD
directly alike, and tells a `ChangeListener` the key; the hub then reads only those
streams, from its positions (`service.delivery.feedreader`).

Why no entry is lost, although pub/sub is not durable:

- A listener keeps, for each stream it follows, the position up to which it delivered,
  and reads from there; a notification only says *when* to read. A spurious or repeated
  notification costs an empty read; only a missing one could delay an entry.
- When a node's connection is subscribed (Redis answered SUBSCRIBE), the listener is
  told `lost(node)` and reads every stream it follows from its position. Redis runs one
  command at a time: an entry that read does not return was appended after the read ran,
  so after the subscription, and its notification is on its way. Entries appended while
  the connection was down or not yet subscribed are in that read. This holds for every
  (re)connection, the first one included, and for a node first followed after a Cluster
  failover or resharding (the feed follows the primaries of the current slot map).
- The flags are set (added to those already set) before subscribing, on every
  connection: a failed-over Redis or one restarted without them gets them again before
  the catch-up read.
- A stream a listener starts following is read once when it joins: its position came
  from a command that may have run before its notifications were wanted.
- The connection PINGs when quiet; one that does not answer is dropped and reconnected,
  with a catch-up, so a half-open connection cannot silence the feed.
- What no connection can see — an operator who turns the flags off while Herald runs,
  or a Cluster failover that leaves the old primary up and subscribed — is bounded by a
  sweep: the listener reads every stream it follows at least once per
  `reader_block_ms`, the latency the blocking reads have without notifications.

Interface: `changed(key)` names a stream key and nothing else, so a listener can match
it against any rule of its own (followed topics today; topic patterns later) without
Redis work per subscriber.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import redis.asyncio as redis
from redis.exceptions import ResponseError

from service.errors import REDIS_DOWN
from service.storage import connections, keys

log = logging.getLogger("herald")

NOTIFY_CONFIG = "notify-keyspace-events"
# Silence after which the connection is asked for a PONG; no PONG in as long again: dead.
_PING_SECONDS = 5.0
_BACKOFF_FIRST = 0.05
_BACKOFF_MAX = 5.0
_STREAM_PREFIX = keys.STREAM_PREFIX.encode()


class Unsupported(Exception):
    """The server will not say, or cannot be made to say, which streams got entries."""

    def __init__(self, message: str, known_off: bool) -> None:
        super().__init__(message)
        self.known_off = known_off
        """The flags were read and lack what is needed (else CONFIG itself was refused)."""


class ChangeListener(Protocol):
    def changed(self, key: bytes) -> None:
        """Stream `key` got at least one entry (perhaps one already read)."""

    def lost(self, node: str) -> None:
        """Notifications of `node` may have been missed: read every stream it holds."""


def missing_flags(flags: str) -> str:
    """The `notify-keyspace-events` flags to add to `flags` for XADD key-event messages."""
    missing = "" if "E" in flags else "E"
    # `A` stands for every class of event, streams' `t` among them.
    if "t" not in flags and "A" not in flags:
        missing += "t"
    return missing


async def enable(client: redis.Redis) -> str:
    """Make `client`'s server announce every XADD, keeping the flags it has: the flags
    now set. Raises `Unsupported` when CONFIG is refused or unknown."""
    try:
        reply: Mapping[Any, Any] = await client.config_get(NOTIFY_CONFIG)
    except ResponseError as exc:
        raise Unsupported(f"CONFIG GET {NOTIFY_CONFIG} refused: {exc}", False) from exc
    flags = _text(next(iter(reply.values()), ""))
    missing = missing_flags(flags)
    if missing:
        try:
            await client.config_set(NOTIFY_CONFIG, flags + missing)
        except ResponseError as exc:
            raise Unsupported(
                f"{NOTIFY_CONFIG} is {flags!r}, without {missing!r}, "
                f"and CONFIG SET was refused: {exc}",
                True,
            ) from exc
    return flags + missing


class NodeFeed:
    """One pub/sub connection to one node, telling a listener of every stream XADDed to."""

    def __init__(
        self,
        node: str,
        factory: connections.ClientFactory,
        listener: ChangeListener,
        on_failure: Callable[[], Any],
    ) -> None:
        self.node = node
        self._factory = factory
        self._listener = listener
        self._on_failure = on_failure
        self.failing = False
        """The last connection failed and the next is not subscribed yet."""
        self._task = asyncio.create_task(self._run(), name=f"herald-feed-{node}")

    @property
    def healthy(self) -> bool:
        return not self._task.done() and not self.failing

    async def stop(self) -> None:
        while not self._task.done():
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=0.1)

    async def _run(self) -> None:
        backoff = _BACKOFF_FIRST
        while True:
            client = self._factory()
            try:
                await self._listen(client)
            except (*REDIS_DOWN, Unsupported) as exc:
                if not self.failing:
                    log.warning("change feed of %s lost: %s; reconnecting", self.node, exc)
                self.failing = True
            finally:
                await _close(client)
            try:
                await self._on_failure()
            except REDIS_DOWN as exc:
                log.debug("change feed of %s: the topology is unknown for now: %s", self.node, exc)
            await asyncio.sleep(backoff * random.uniform(0.5, 1.5))
            backoff = min(backoff * 2, _BACKOFF_MAX)

    async def _listen(self, client: redis.Redis) -> None:
        try:
            await enable(client)
        except Unsupported as exc:
            # Chosen before (`probe`): a node that refuses now is trusted to have them.
            log.debug("change feed of %s: %s", self.node, exc)
        db = int(client.connection_pool.connection_kwargs.get("db", 0))
        connection: Any = client.connection
        await connection.send_command("SUBSCRIBE", b"__keyevent@%d__:xadd" % db)
        # push_request: on RESP3 (and hiredis' push type) a message is a push reply,
        # which redis-py would otherwise hand to a handler and drop.
        await connection.read_response(push_request=True)
        if self.failing:
            log.info("change feed of %s reconnected", self.node)
        self.failing = False
        self._listener.lost(self.node)
        pinged = False
        changed = self._listener.changed
        while True:
            message = await connection.read_response(
                timeout=_PING_SECONDS, disconnect_on_error=False, push_request=True
            )
            if message is None:
                if pinged:
                    raise TimeoutError(f"no answer to PING in {2 * _PING_SECONDS:.0f} s")
                await connection.send_command("PING")
                pinged = True
            elif isinstance(message, list) and message[0] == b"message":
                key = message[2]
                if key.startswith(_STREAM_PREFIX):
                    changed(key)
            else:  # the PONG: ["pong", ""] on RESP2, PONG on RESP3
                pinged = False


class ChangeFeed:
    """A `NodeFeed` for every node that takes writes, as `nodes()` names them."""

    def __init__(
        self,
        nodes: Callable[[], Mapping[str, connections.ClientFactory]],
        listener: ChangeListener,
        on_failure: Callable[[], Any],
    ) -> None:
        self._nodes = nodes
        self._listener = listener
        self._on_failure = on_failure
        self._feeds: dict[str, NodeFeed] = {}
        self._stopping: set[asyncio.Task[None]] = set()

    @property
    def healthy(self) -> bool:
        return all(feed.healthy for feed in self._feeds.values())

    def reconcile(self) -> None:
        """Follow the nodes `nodes()` names now, and only those."""
        nodes = self._nodes()
        for name in [n for n in self._feeds if n not in nodes]:
            stopping = asyncio.create_task(self._feeds.pop(name).stop())
            self._stopping.add(stopping)
            stopping.add_done_callback(self._stopping.discard)
        for name, factory in nodes.items():
            if name not in self._feeds:
                self._feeds[name] = NodeFeed(name, factory, self._listener, self._failed)

    async def _failed(self) -> None:
        await self._on_failure()
        self.reconcile()

    async def stop(self) -> None:
        for feed in self._feeds.values():
            await feed.stop()
        self._feeds.clear()


async def probe(nodes: Mapping[str, connections.ClientFactory]) -> None:
    """Enable the flags on every node; `Unsupported` when one refuses (REDIS_DOWN when
    one cannot be reached)."""
    for factory in nodes.values():
        client = factory()
        try:
            await enable(client)
        finally:
            await _close(client)


async def _close(client: redis.Redis) -> None:
    try:
        await client.aclose()
    except Exception as exc:
        log.debug("closing a change feed connection failed: %s", exc)


def _text(raw: bytes | str) -> str:
    return raw if isinstance(raw, str) else raw.decode()
