"""All Redis access: publishing, positions, replay pages and the hub's blocking reads."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NewType, Protocol

import redis.asyncio as redis
from redis.asyncio.client import Pipeline
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service.encoding.cursor import ZERO, StreamId, format_stream_id, next_stream_id, stream_id_of
from service.errors import NotReplicated, OutcomeUnknown
from service.storage import connections, keys
from service.storage.expiry import TopicExpiry

log = logging.getLogger("herald")

Entry = tuple[bytes, dict[bytes, bytes]]
"""A stream entry as Redis returns it: id and fields."""

XreadReply = list[tuple[bytes, list[Entry]]]

Arg = NewType("Arg", bytes)
"""A command argument already in its wire form, so a read over thousands of streams
costs a join, not an encoding of every key and id each time."""


class _Expiring(Protocol):
    """Where appends queue their streams' expiry refreshes: a pipeline or `Packed`."""

    def pexpire(self, name: bytes, time: int) -> Any: ...


# Check-and-publish in one step, so that two retries racing each other append once:
# KEYS = idempotency key, then one stream per event; ARGV = fingerprint, retention,
# window in seconds, stream expiry in ms (0: none), then event and data of each event.
_PUBLISH_ONCE = """
local stored = redis.call('GET', KEYS[1])
if stored then return {0, stored} end
local ids = {}
for i = 2, #KEYS do
  local at = 5 + 2 * (i - 2)
  ids[i - 1] = redis.call('XADD', KEYS[i], 'MAXLEN', '~', ARGV[2], '*',
                          'event', ARGV[at], 'data', ARGV[at + 1])
  if ARGV[4] ~= '0' then redis.call('PEXPIRE', KEYS[i], ARGV[4]) end
end
local answer = ARGV[1] .. ' ' .. table.concat(ids, ' ')
redis.call('SET', KEYS[1], answer, 'EX', ARGV[3])
return {1, answer}
"""


# Append the next lines of a streaming publish under its idempotency key, unless another
# request with the key got there first. KEYS = the key's hash, then one stream per event;
# ARGV = lines published before these, fingerprint after them, retention, window in
# seconds, stream expiry in ms (0: none), then event and data of each event. The hash
# holds `n` (lines published), `fp` (their fingerprint) and each stream's last id.
_APPEND_LINES = """
local n = tonumber(redis.call('HGET', KEYS[1], 'n') or '0')
if n ~= tonumber(ARGV[1]) then return {0, n} end
local ids = {}
for i = 2, #KEYS do
  local at = 6 + 2 * (i - 2)
  ids[i - 1] = redis.call('XADD', KEYS[i], 'MAXLEN', '~', ARGV[3], '*',
                          'event', ARGV[at], 'data', ARGV[at + 1])
  if ARGV[5] ~= '0' then redis.call('PEXPIRE', KEYS[i], ARGV[5]) end
  redis.call('HSET', KEYS[1], KEYS[i], ids[i - 1])
end
redis.call('HSET', KEYS[1], 'n', n + #KEYS - 1, 'fp', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[4])
return {1, ids}
"""


# Append a Mercure update and keep the index of publishers' ids trimmed with the stream.
# KEYS = the Mercure stream, the id index (hash), its order (sorted set by millisecond);
# ARGV = retention, expiry in ms (0: none), the publisher's id ('' for none), then the
# entry's fields and values. Trimming comes before recording, so a reused id whose first
# update was trimmed away points at the new one; otherwise the earliest keeps it.
_MERCURE_PUBLISH = """
local fields = {}
for i = 4, #ARGV do fields[#fields + 1] = ARGV[i] end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', unpack(fields))
local oldest = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)[1]
if oldest then
  local before = '(' .. string.match(oldest[1], '^%d+')
  local gone = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', before, 'LIMIT', 0, 1000)
  if #gone > 0 then
    redis.call('HDEL', KEYS[2], unpack(gone))
    redis.call('ZREM', KEYS[3], unpack(gone))
  end
end
if ARGV[3] ~= '' and redis.call('HSETNX', KEYS[2], ARGV[3], id) == 1 then
  redis.call('ZADD', KEYS[3], string.match(id, '^%d+'), ARGV[3])
end
if ARGV[2] ~= '0' then
  for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], ARGV[2]) end
end
return id
"""


_Add = tuple[Sequence[tuple[str, str, str]], int, asyncio.Future[list[Any]]]
"""Appends queued for the next round trip: events, retention, and who awaits their replies."""


@dataclass(frozen=True, slots=True)
class LinesState:
    """How far streaming publishes under one idempotency key got."""

    published: int
    fingerprint: str
    last: dict[str, str]
    """Each topic's last id among them."""


@dataclass(frozen=True, slots=True)
class StreamInfo:
    """What a replay needs to know about a stream's retained history."""

    length: int
    entries_added: int
    first_id: StreamId | None
    last_generated_id: StreamId
    max_deleted_id: StreamId

    @classmethod
    def missing(cls) -> StreamInfo:
        return cls(0, 0, None, ZERO, ZERO)


@dataclass(frozen=True, slots=True)
class ReplayPage:
    info: StreamInfo
    entries: list[Entry]


class Store:
    """Herald's one door to Redis.

    Commands never retry by themselves: a retried XADD could append an event twice,
    so a failure reaches the caller. Writes tell the two failures apart (`send`):
    nothing sent (503) and sent without an answer (`OutcomeUnknown`, 504).
    """

    def __init__(
        self,
        client: redis.Redis,
        reader_factory: connections.ClientFactory,
        embedded: bool,
        replicas: int = 0,
        replicas_timeout_ms: int = 1000,
        expiry: TopicExpiry | None = None,
    ):
        self._client = client
        self._new_reader_client = reader_factory
        self.embedded = embedded
        self.expiry = expiry or TopicExpiry(0)
        self._replicas = replicas
        """Replicas that must confirm a publish (WAIT) before it is acknowledged."""
        self._replicas_timeout_ms = replicas_timeout_ms
        self._adds: list[_Add] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        """The loop appends run on, looked up once: on Python 3.11 every lookup asks the
        OS for the process id, a system call."""
        self.on_append_round_trip: Callable[[], None] = lambda: None
        """Called for each pipeline of appends the store sends (the app counts them)."""

    async def start(self) -> None:
        """Whatever must happen before commands run concurrently (nothing, for one server)."""

    async def close(self) -> None:
        await self._client.aclose()

    async def ping(self) -> bool:
        return bool(await self._client.ping())

    async def publish(self, events: Sequence[tuple[str, str, str]], retention: int) -> list[str]:
        """XADD each (topic, event, data); a batch lands all together or not at all."""
        if len(events) == 1:
            (reply,) = await self._append_soon(events, retention)
            if isinstance(reply, Exception):
                raise reply
            return [_text(reply)]
        replies = await self._commit(self._appending(events, retention), self._client)
        return [_text(raw) for raw in replies[: len(events)]]

    async def append(
        self, events: Sequence[tuple[str, str, str]], retention: int
    ) -> tuple[list[str], BaseException | None]:
        """XADD each (topic, event, data) in the pipeline this loop iteration shares, in
        order but not as one transaction: the ids stored up to the first failure, and it.

        Lines of streaming publishes take no connection of their own this way, however
        many requests append at once.
        """
        try:
            replies = await self._append_soon(events, retention)
        except Exception as exc:  # the whole pipeline failed
            return [], exc
        ids: list[str] = []
        for reply in replies:
            if isinstance(reply, Exception):
                return ids, reply
            ids.append(_text(reply))
        return ids, None

    def _appending(self, events: Sequence[tuple[str, str, str]], retention: int) -> Packed:
        """A transaction that XADDs each (topic, event, data), for `_commit` to end and send."""
        packed = Packed()
        packed.command(b"MULTI")
        streams = [keys.stream_key(topic) for topic, _, _ in events]
        for stream, (_, event, data) in zip(streams, events, strict=True):
            packed.xadd(stream, event, data, retention)
        self._expire(packed, streams)
        return packed

    def _expire(self, commands: _Expiring, streams: Iterable[bytes]) -> None:
        """Queue, after the appends, the expiry refreshes that `streams` are due."""
        for stream in self.expiry.due(streams):
            commands.pexpire(stream, self.expiry.expire_ms)

    async def _commit(self, packed: Packed, client: redis.Redis) -> list[Any]:
        """End and run a transaction from `_appending`: the replies of its commands."""
        packed.command(b"EXEC")
        # Inside MULTI, WAIT does not wait: it follows EXEC on the same connection.
        self._wait(packed)
        replies = await send_packed(client, packed)
        shortfall = self._shortfall(replies) if self._replicas else None
        *queued, done = replies
        # The first error, as redis-py's transactions raise it: queuing's, then EXEC's.
        for reply in [*queued, done, *([] if isinstance(done, Exception) else done)]:
            if isinstance(reply, Exception):
                raise reply
        if shortfall is not None:
            raise shortfall
        return list(done)

    def _wait(self, packed: Packed) -> None:
        """Queue WAIT when replicas must confirm the writes before it (see `_shortfall`)."""
        if self._replicas:
            packed.command(b"WAIT", b"%d" % self._replicas, b"%d" % self._replicas_timeout_ms)

    def _shortfall(self, replies: list[Any]) -> NotReplicated | None:
        """Takes WAIT's reply off the end of `replies`: what is missing when fewer replicas
        than required confirmed the writes before it."""
        confirmed = replies.pop()
        # WAIT itself fails on a server that is no longer a primary: none confirmed.
        count = confirmed if isinstance(confirmed, int) else 0
        if count >= self._replicas:
            return None
        return NotReplicated(count, self._replicas)

    async def _waiting(self, pipe: Pipeline) -> tuple[list[Any], NotReplicated | None]:
        """Run `pipe` followed by WAIT on the same connection: its replies (errors in
        place), and what is missing when fewer replicas than required confirmed them."""
        pipe.execute_command("WAIT", self._replicas, self._replicas_timeout_ms)
        replies = await send(pipe, raise_on_error=False)
        return replies, self._shortfall(replies)

    async def _confirmed(self, pipe: Pipeline) -> Any:
        """The reply of a pipeline of one keyed write, once as many replicas as required
        confirmed it. An answer found under the key is waited for too: the first call
        may have stored it on a primary that lost its replicas."""
        if not self._replicas:
            (reply,) = await send(pipe)
            return reply
        (reply,), shortfall = await self._waiting(pipe)
        if isinstance(reply, Exception):
            raise reply
        if shortfall is not None:
            raise shortfall
        return reply

    async def publish_once(
        self,
        key: str,
        fingerprint: str,
        events: Sequence[tuple[str, str, str]],
        retention: int,
        window_seconds: int,
    ) -> tuple[bool, str, list[str]]:
        """Publish under an idempotency key, unless it was already.

        Returns whether this call published, and the fingerprint and ids stored
        under the key, by this call or the first one within the window.
        """
        streams = [keys.stream_key(topic) for topic, _, _ in events]
        fields = [value for _, event, data in events for value in (event, data)]
        script_keys = [keys.idempotency_key(key), *streams]
        args: list[str | int] = [
            fingerprint,
            retention,
            window_seconds,
            self.expiry.expire_ms,
            *fields,
        ]
        # EVAL rather than a registered script's EVALSHA: redis-py would load it with
        # commands of their own, outside `send`'s account of what was sent.
        pipe = self._client.pipeline(transaction=False)
        pipe.eval(_PUBLISH_ONCE, len(script_keys), *script_keys, *args)
        fresh, answer = await self._confirmed(pipe)
        stored_fingerprint, *ids = _text(answer).split(" ")
        return bool(fresh), stored_fingerprint, ids

    async def lines_state(self, state_key: bytes) -> LinesState:
        """What streaming publishes under `state_key` (`keys.stream_idempotency_key`) stored."""
        raw = {
            _text(k): _text(v)
            for k, v in (await self._client_for(state_key).hgetall(state_key)).items()
        }
        prefix = keys.STREAM_PREFIX
        last = {k.removeprefix(prefix): v for k, v in raw.items() if k.startswith(prefix)}
        return LinesState(int(raw.get("n", 0)), raw.get("fp", ""), last)

    async def append_lines(
        self,
        state_key: bytes,
        published: int,
        fingerprint: str,
        events: Sequence[tuple[str, str, str]],
        retention: int,
        window_seconds: int,
    ) -> list[str] | None:
        """Append the lines after the first `published` of a keyed streaming publish, and
        record them; None when the key's record is not at `published` (another request
        with the key is publishing too)."""
        streams = [keys.stream_key(topic) for topic, _, _ in events]
        fields = [value for _, event, data in events for value in (event, data)]
        pipe = self._client_for(state_key).pipeline(transaction=False)
        pipe.eval(
            _APPEND_LINES,
            1 + len(streams),
            state_key,
            *streams,
            published,
            fingerprint,
            retention,
            window_seconds,
            self.expiry.expire_ms,
            *fields,
        )
        done, ids = await self._confirmed(pipe)
        return [_text(i) for i in ids] if done else None

    async def publish_mercure(
        self, fields: Mapping[str, str], publisher_id: str | None, retention: int
    ) -> str:
        """Append a Mercure update (its entry `fields`) and index `publisher_id`: its entry id."""
        stream = keys.stream_key(keys.MERCURE_TOPIC)
        pipe = self._client_for(stream).pipeline(transaction=False)
        pipe.eval(
            _MERCURE_PUBLISH,
            3,
            stream,
            keys.MERCURE_IDS,
            keys.MERCURE_ORDER,
            retention,
            self.expiry.expire_ms,
            publisher_id or "",
            *[part for pair in fields.items() for part in pair],
        )
        return _text(await self._confirmed(pipe))

    async def mercure_position(self, publisher_id: str) -> StreamId | None:
        """The entry of the earliest retained update a publisher gave `publisher_id`."""
        raw = await self._client_for(keys.MERCURE_IDS).hget(keys.MERCURE_IDS, publisher_id)
        return stream_id_of(raw.encode() if isinstance(raw, str) else raw) if raw else None

    async def add_mercure_subscriptions(
        self, replica: str, documents: Mapping[str, str], ttl_seconds: float
    ) -> None:
        key = keys.mercure_subscriptions(replica)
        pipe = self._client_for(key).pipeline(transaction=True)
        pipe.hset(key, mapping=_hash(documents))
        self._keep_reporting(pipe, replica, ttl_seconds)
        await pipe.execute()

    async def remove_mercure_subscriptions(self, replica: str, ids: Sequence[str]) -> None:
        key = keys.mercure_subscriptions(replica)
        await self._client_for(key).hdel(key, *ids)

    async def report_mercure_subscriptions(
        self, replica: str, documents: Mapping[str, str], ttl_seconds: float
    ) -> None:
        """Replace this replica's subscriptions; they vanish after `ttl_seconds` unless
        reported again."""
        key = keys.mercure_subscriptions(replica)
        pipe = self._client_for(key).pipeline(transaction=True)
        pipe.delete(key)
        if documents:
            pipe.hset(key, mapping=_hash(documents))
        self._keep_reporting(pipe, replica, ttl_seconds)
        await pipe.execute()

    def _keep_reporting(self, pipe: Pipeline, replica: str, ttl_seconds: float) -> None:
        pipe.pexpire(keys.mercure_subscriptions(replica), max(1, int(ttl_seconds * 1000)))
        pipe.zadd(keys.MERCURE_SUBSCRIBERS, {replica: time.time() + ttl_seconds})

    async def withdraw_mercure_subscriptions(self, replica: str) -> None:
        key = keys.mercure_subscriptions(replica)
        pipe = self._client_for(key).pipeline(transaction=True)
        pipe.delete(key)
        pipe.zrem(keys.MERCURE_SUBSCRIBERS, replica)
        await pipe.execute()

    async def mercure_subscriptions(self) -> list[str]:
        """The JSON documents of every replica's active Mercure subscriptions."""
        client = self._client_for(keys.MERCURE_SUBSCRIBERS)
        pipe = client.pipeline(transaction=True)
        pipe.zremrangebyscore(keys.MERCURE_SUBSCRIBERS, "-inf", time.time())
        pipe.zrange(keys.MERCURE_SUBSCRIBERS, 0, -1)
        _, replicas = await pipe.execute()
        if not replicas:
            return []
        pipe = client.pipeline(transaction=False)
        for replica in replicas:
            pipe.hvals(keys.mercure_subscriptions(_text(replica)))
        return [_text(document) for values in await pipe.execute() for document in values]

    async def publish_and_mark(
        self,
        events: Sequence[tuple[str, str, str]],
        retention: int,
        mark_key: bytes,
        mark: Mapping[str, str],
    ) -> list[str]:
        """Publish and record how far a producer got, in one transaction: both or neither."""
        packed = self._appending(events, retention)
        fields = [part.encode() for field in mark.items() for part in field]
        packed.command(b"HSET", mark_key, *fields)
        replies = await self._commit(packed, self._client_for(mark_key))
        return [_text(raw) for raw in replies[: len(events)]]

    def _client_for(self, key: bytes) -> redis.Redis:
        """The client a transaction on `key` (and keys of its slot) goes through."""
        return self._client

    async def read_mark(self, mark_key: bytes) -> dict[str, str]:
        """A producer's recorded progress (empty when it never recorded any)."""
        raw = await self._client.hgetall(mark_key)
        return {_text(k): _text(v) for k, v in raw.items()}

    async def write_mark(self, mark_key: bytes, mark: Mapping[str, str]) -> None:
        await self._client.hset(mark_key, mapping=_hash(mark))

    async def stream_info(self, topic: str) -> StreamInfo:
        reply = (await self._infos([topic]))[0]
        return _stream_info(reply)

    async def _infos(self, topics: Sequence[str]) -> list[Any]:
        pipe = self._client.pipeline(transaction=False)
        for topic in topics:
            pipe.xinfo_stream(keys.stream_key(topic))
        return list(await pipe.execute(raise_on_error=False))

    async def report_presence(
        self, replica: str, counts: Mapping[str, int], ttl_seconds: float
    ) -> None:
        """Replace this replica's counts; they vanish after `ttl_seconds` unless reported again."""
        key = keys.presence(replica)
        pipe = self._client.pipeline(transaction=True)
        pipe.delete(key)
        if counts:
            pipe.hset(key, mapping=_hash({topic: str(n) for topic, n in counts.items()}))
        pipe.pexpire(key, max(1, int(ttl_seconds * 1000)))
        pipe.zadd(keys.PRESENCE_REPLICAS, {replica: time.time() + ttl_seconds})
        await pipe.execute()

    async def withdraw_presence(self, replica: str) -> None:
        pipe = self._client.pipeline(transaction=True)
        pipe.delete(keys.presence(replica))
        pipe.zrem(keys.PRESENCE_REPLICAS, replica)
        await pipe.execute()

    async def online(self) -> dict[str, int]:
        """Subscribers per topic, summed over every replica whose report has not expired."""
        pipe = self._client.pipeline(transaction=True)
        pipe.zremrangebyscore(keys.PRESENCE_REPLICAS, "-inf", time.time())
        pipe.zrange(keys.PRESENCE_REPLICAS, 0, -1)
        _, replicas = await pipe.execute()
        if not replicas:
            return {}
        pipe = self._client.pipeline(transaction=False)
        for replica in replicas:
            pipe.hgetall(keys.presence(_text(replica)))
        totals: dict[str, int] = {}
        for counts in await pipe.execute():
            for topic, n in counts.items():
                name = _text(topic)
                totals[name] = totals.get(name, 0) + int(n)
        return totals

    def _append_soon(
        self, events: Sequence[tuple[str, str, str]], retention: int
    ) -> asyncio.Future[list[Any]]:
        """Queue an XADD of each (topic, event, data): those queued in the same loop
        iteration go in one round trip. The future gets each one's reply, errors in place.

        Concurrent publishes then share a write and a read on the connection, which
        costs a fraction of a command apiece (redis-py spends ~90 µs on a lone XADD).
        """
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._adds.append((events, retention, future))
        if len(self._adds) == 1:
            loop.call_soon(self._send_adds, loop)
        return future

    def _send_adds(self, loop: asyncio.AbstractEventLoop) -> None:
        adds, self._adds = self._adds, []
        packed = Packed()
        streams = []
        for events, retention, _ in adds:
            for topic, event, data in events:
                stream = keys.stream_key(topic)
                streams.append(stream)
                packed.xadd(stream, event, data, retention)
        self._expire(packed, streams)
        self._wait(packed)
        self.on_append_round_trip()
        loop.create_task(self._round_trip(adds, packed))

    async def _round_trip(self, adds: list[_Add], packed: Packed) -> None:
        """Send the queued appends, then hand each its replies (an XADD too few replicas
        confirmed gets the shortfall in place of its id), or the round trip's failure."""
        try:
            replies = await send_packed(self._client, packed)
        except BaseException as exc:
            for _, _, future in adds:
                if future.done():
                    continue
                if isinstance(exc, Exception):
                    future.set_exception(exc)
                else:
                    future.cancel()
            if not isinstance(exc, Exception):
                raise
            return
        shortfall = self._shortfall(replies) if self._replicas else None
        if shortfall is not None:
            replies = [reply if isinstance(reply, Exception) else shortfall for reply in replies]
        start = 0
        for events, _, future in adds:
            end = start + len(events)
            if not future.done():
                future.set_result(replies[start:end])
            start = end

    async def last_generated_ids(self, topics: Iterable[str]) -> dict[str, StreamId]:
        """Each topic's newest position: live delivery starts after it."""
        names = list(topics)
        replies = await self._infos(names)
        return {
            topic: _stream_info(reply).last_generated_id
            for topic, reply in zip(names, replies, strict=True)
        }

    async def replay_page(
        self, topic: str, after: StreamId, until: StreamId, count: int
    ) -> ReplayPage:
        """Entries in (after, until] and, from the same instant, the stream's history bounds."""
        key = keys.stream_key(topic)
        start = next_stream_id(after)
        pipe = self._client.pipeline(transaction=True)
        pipe.xinfo_stream(key)
        if start is not None:
            pipe.xrange(key, format_stream_id(start), format_stream_id(until), count=count)
        info, *entries = await pipe.execute(raise_on_error=False)
        for reply in entries:
            if isinstance(reply, Exception):
                raise reply
        return ReplayPage(_stream_info(info), entries[0] if entries else [])

    def group_of(self, key: bytes) -> int | None:
        """Streams one XREAD may read together: any (None), or on a Cluster those of a slot."""
        return None

    def reader(self, key: bytes) -> StreamReader:
        """A blocking-read connection for the group of stream `key`."""
        return StreamReader(self._new_reader_client, self._client)

    def notification_nodes(self) -> dict[str, connections.ClientFactory]:
        """The nodes whose writes the change feed hears of, each with a factory of
        single connections to it (through Sentinel: cut off when the primary moves)."""
        return {"redis": self._new_reader_client}

    def node_of(self, key: bytes) -> str:
        """The name `notification_nodes` gives the node that holds stream `key`."""
        return "redis"

    def node_reader(self, node: str) -> StreamReader:
        """A connection for the change feed's reads (`StreamReader.read_now`) on `node`."""
        return StreamReader(self._new_reader_client, self._client)

    async def nodes_moved(self) -> None:
        """A read failed or was redirected: learn again which node holds what."""


async def send(pipe: Pipeline, raise_on_error: bool = True) -> list[Any]:
    """Run a pipeline of writes on a connection opened beforehand.

    A failure to open it leaves the error as it is: nothing reached Redis. A failure
    after that (a timeout, a broken connection) leaves the writes' fate unknown, since
    Redis may have run them, and raises `OutcomeUnknown`.
    """
    pipe.connection = await pipe.connection_pool.get_connection()  # type: ignore[no-untyped-call]
    try:
        return list(await pipe.execute(raise_on_error=raise_on_error))
    except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
        raise OutcomeUnknown() from exc


async def send_packed(client: redis.Redis, packed: Packed) -> list[Any]:
    """Like `send`, for commands already in their wire form, written at once: the reply
    of each, errors in place. Redis answers them in order on the one connection."""
    pool = client.connection_pool
    connection = await pool.get_connection()  # type: ignore[no-untyped-call]
    try:
        return await _exchange(connection, packed)
    except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
        # A TimeoutError too: it is an OSError.
        raise OutcomeUnknown() from exc
    finally:
        await pool.release(connection)


async def _exchange(connection: Any, packed: Packed) -> list[Any]:
    """Write `packed` on `connection` and read the reply to each command, errors in place.

    redis-py writes through a task of its own (`wait_for`) and arms a timer for each
    reply, which cost more than packing and parsing the commands: a plain connection
    is written and read directly, under one deadline. Connections that read their own
    way (Sentinel's turns READONLY into a reconnection, fakeredis' has no parser) go
    through redis-py's methods.
    """
    if type(connection).read_response is not AbstractConnection.read_response:
        await connection.send_packed_command(packed.parts, check_health=False)
        return [await _reply(connection) for _ in range(packed.count)]
    try:
        async with asyncio.timeout(connection.socket_timeout):
            connection._writer.writelines(packed.parts)
            await connection._writer.drain()
            parser = connection._parser
            return [await parser.read_response() for _ in range(packed.count)]
    except BaseException:
        # Replies left unread would be taken for those of the connection's next commands.
        await connection.disconnect(nowait=True)
        raise


async def _reply(connection: Any) -> Any:
    try:
        return await connection.read_response()
    except ResponseError as error:
        return error


def encode_arg(value: bytes) -> Arg:
    """`value` as a RESP bulk string."""
    return Arg(b"$%d\r\n%s\r\n" % (len(value), value))


class Packed:
    """Commands in Redis's wire form, for `send_packed`.

    redis-py's pipeline spent more on packing each XADD and parsing its reply than
    Redis spends running it; writes are packed here instead, as the hub packs XREAD.
    """

    __slots__ = ("count", "parts")

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.count = 0

    def command(self, *args: bytes) -> None:
        self.parts.append(b"*%d\r\n" % len(args))
        self.parts += map(encode_arg, args)
        self.count += 1

    def xadd(self, stream: bytes, event: str, data: str, retention: int) -> None:
        """XADD `stream` MAXLEN ~ `retention` * event `event` data `data`."""
        self.parts += (
            _XADD,
            encode_arg(stream),
            _maxlen(retention),
            encode_arg(event.encode()),
            _DATA,
            encode_arg(data.encode()),
        )
        self.count += 1

    def pexpire(self, name: bytes, time: int) -> None:
        self.command(b"PEXPIRE", name, b"%d" % time)


_XADD = b"*10\r\n$4\r\nXADD\r\n"
_DATA = encode_arg(b"data")


@functools.cache
def _maxlen(retention: int) -> bytes:
    """XADD's arguments between the stream and the event type."""
    return b"".join(encode_arg(arg) for arg in (b"MAXLEN", b"~", b"%d" % retention, b"*", b"event"))


class StreamReader:
    """A dedicated connection for XREAD BLOCK, which another connection can interrupt."""

    def __init__(self, factory: connections.ClientFactory, control: redis.Redis) -> None:
        self._factory = factory
        self._control = control
        self._client: redis.Redis | None = None
        self._client_id: int | None = None
        self._keys: Sequence[Arg] = ()
        self._joined_keys = b""

    async def read(
        self, keys: Sequence[Arg], ids: Sequence[Arg], count: int, block_ms: int
    ) -> XreadReply | None:
        """XREAD COUNT `count` BLOCK `block_ms` STREAMS `keys` `ids`; None when nothing came.

        `keys` change only when topics come and go, so the same list is joined once.
        """
        if keys is not self._keys:
            self._keys, self._joined_keys = keys, b"".join(keys)
        connection = await self._connection()
        head = b"*%d\r\n$5\r\nXREAD\r\n$5\r\nCOUNT\r\n%s$5\r\nBLOCK\r\n%s$7\r\nSTREAMS\r\n" % (
            6 + 2 * len(keys),
            encode_arg(b"%d" % count),
            encode_arg(b"%d" % block_ms),
        )
        await connection.send_packed_command([head, self._joined_keys, b"".join(ids)], False)
        reply: Any = await connection.read_response()
        if not reply:
            return None
        if isinstance(reply, dict):  # RESP3
            reply = reply.items()
        return [
            (key, [(entry_id, _fields(values)) for entry_id, values in entries])
            for key, entries in reply
        ]

    async def read_now(
        self, groups: Sequence[tuple[Sequence[Arg], Sequence[Arg]]], count: int
    ) -> list[XreadReply | ResponseError]:
        """One XREAD COUNT `count` STREAMS (no BLOCK) per (keys, ids) group, sent in one
        write: each group's entries, or the error Redis answered for it (a Cluster's
        MOVED for a slot that left the node)."""
        connection = await self._connection()
        packed = [
            b"*%d\r\n$5\r\nXREAD\r\n$5\r\nCOUNT\r\n%s$7\r\nSTREAMS\r\n%s%s"
            % (4 + 2 * len(keys), encode_arg(b"%d" % count), b"".join(keys), b"".join(ids))
            for keys, ids in groups
        ]
        await connection.send_packed_command(packed, False)
        replies: list[XreadReply | ResponseError] = []
        for _ in groups:
            try:
                reply: Any = await connection.read_response()
            except ResponseError as exc:
                replies.append(exc)
                continue
            if isinstance(reply, dict):  # RESP3
                reply = reply.items()
            replies.append(
                [
                    (key, [(entry_id, _fields(values)) for entry_id, values in entries])
                    for key, entries in reply or ()
                ]
            )
        return replies

    async def _connection(self) -> Any:
        # A connection redis-py reopened by itself would have a new client id, which
        # `unblock` would not know: start over with a fresh client instead.
        client = self._client
        if client is not None and client.connection is not None and client.connection.is_connected:
            return client.connection
        await self.reset()
        client = self._factory()
        try:
            self._client_id = int(await client.client_id())
        except BaseException:
            await client.aclose()
            raise
        self._client = client
        return client.connection

    @property
    def node(self) -> str:
        """The Redis node this reader reads from, for metrics."""
        return "redis"

    async def recover(self) -> None:
        """After a failure: drop the connection (a Cluster reader also reloads the slot map)."""
        await self.reset()

    async def unblock(self) -> bool:
        """End a read in progress early; False when none was blocked."""
        if self._client_id is None:
            return False
        return bool(await self._control.client_unblock(self._client_id))

    async def reset(self) -> None:
        """Drop the connection after a failure; the next read opens a fresh one."""
        client, self._client, self._client_id = self._client, None, None
        if client is not None:
            try:
                await client.aclose()
            except Exception as exc:
                log.debug("closing a broken reader connection failed: %s", exc)


def _fields(values: list[bytes] | None) -> dict[bytes, bytes]:
    if not values:
        return {}
    return dict(zip(values[::2], values[1::2], strict=True))


def _hash(fields: Mapping[str, str]) -> dict[Any, str]:
    # redis-py's key type is a union that a str-keyed dict does not match (dicts are invariant).
    return dict(fields)


def _text(raw: bytes | str) -> str:
    return raw if isinstance(raw, str) else raw.decode()


def _stream_info(reply: Any) -> StreamInfo:
    if isinstance(reply, ResponseError):
        return StreamInfo.missing()
    if isinstance(reply, Exception):
        raise reply
    first = reply.get("first-entry")
    return StreamInfo(
        length=int(reply["length"]),
        entries_added=int(reply.get("entries-added", reply["length"])),
        first_id=stream_id_of(first[0]) if first else None,
        last_generated_id=stream_id_of(reply["last-generated-id"]),
        max_deleted_id=stream_id_of(reply.get("max-deleted-entry-id", b"0-0")),
    )
