"""The change feed: the hub reads only the topics Redis says got entries, and loses none.

Each hub here reads with a sweep interval (`reader_block_ms`) of a minute, so an entry
that arrives within the tests' five seconds was read because a notification named it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from service.delivery.changefeed import missing_flags
from service.delivery.hub import Hub
from service.metrics import Metrics
from service.settings import Settings
from service.storage.keys import stream_key
from service.storage.store import Store
from service.storage.stores import open_store
from tests import ports
from tests.conftest import RedisServer, wait_until
from tests.delivery.test_hub import Stream, xadd
from tests.sse import Event

pytestmark = pytest.mark.integration

_QUIET_MS = 60_000


class LockedRedis(RedisServer):
    """A redis-server started with extra options (a managed Redis' restrictions)."""

    extra: tuple[str, ...] = ()

    def command(self) -> list[str]:
        return [*super().command(), *self.extra]


@pytest.fixture
def locked_redis(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LockedRedis]:
    server = LockedRedis(ports.free_port(), tmp_path)
    server.extra = tuple(request.param)
    server.start()
    yield server
    server.kill()


async def open_hub(url: str, **overrides: object) -> tuple[Hub, Store]:
    options: dict[str, object] = {"reader_block_ms": _QUIET_MS, **overrides}
    settings = Settings(redis_url=url, **options)  # type: ignore[arg-type]
    store = open_store(settings)
    return Hub(store, settings, Metrics()), store


@pytest.fixture
async def hub_and_store(flushed_redis: RedisServer) -> AsyncIterator[tuple[Hub, Store]]:
    hub, store = await open_hub(flushed_redis.url)
    yield hub, store
    await hub.stop()
    await store.close()


@pytest.mark.parametrize(
    ("flags", "missing"),
    [("", "Et"), ("Ex", "t"), ("Kt", "E"), ("AKE", ""), ("gxE", "t"), ("tE", "")],
)
def test_only_the_flags_an_xadd_event_needs_are_added(flags: str, missing: str) -> None:
    assert missing_flags(flags) == missing


async def test_the_flags_already_set_are_kept_and_stream_events_added(
    hub_and_store: tuple[Hub, Store], redis_client: aioredis.Redis
) -> None:
    hub, _ = hub_and_store
    await redis_client.config_set("notify-keyspace-events", "Kg")
    await Stream(["t"]).join(hub)

    flags = (await redis_client.config_get("notify-keyspace-events"))["notify-keyspace-events"]
    assert hub.mode == "notifications"
    assert set(flags) >= set("KgEt")


async def test_an_entry_another_producer_xadds_directly_is_delivered(
    hub_and_store: tuple[Hub, Store], redis_client: aioredis.Redis
) -> None:
    hub, _ = hub_and_store
    stream = Stream(["logs.app"])
    await stream.join(hub)
    key = stream_key("logs.app")
    first = await redis_client.xadd(key, {"event": "log", "data": "up"})
    await stream.events(1)  # from here on, only a notification makes the hub read again
    second = await redis_client.xadd(key, {"event": "log", "data": "still up"})

    assert await stream.events(2) == [Event(first, "log", "up"), Event(second, "log", "still up")]
    assert hub.mode == "notifications"


async def test_only_the_topics_that_got_entries_are_read(
    hub_and_store: tuple[Hub, Store], redis_client: aioredis.Redis
) -> None:
    hub, store = hub_and_store
    quiet = [Stream([f"quiet.{n}"]) for n in range(200)]
    for stream in quiet:
        await stream.join(hub)
    busy = Stream(["busy"])
    await busy.join(hub)
    await asyncio.sleep(0.2)  # the joins' own reads are done
    # Every command from now on goes to the slow log, with its arguments.
    await redis_client.config_set("slowlog-log-slower-than", 0)
    await redis_client.slowlog_reset()
    try:
        for n in range(20):
            await xadd(store, "busy", str(n))
            await busy.events(n + 1)
        log = await redis_client.slowlog_get(1000)
    finally:
        await redis_client.config_set("slowlog-log-slower-than", 10_000)

    reads = [entry["command"].split() for entry in log if entry["command"].startswith(b"XREAD")]
    assert 1 <= len(reads) <= 20
    # Each read names the changed stream alone, none of the 200 quiet ones.
    assert all(read[3:] == [b"STREAMS", stream_key("busy"), read[-1]] for read in reads)
    assert all(not stream.chunks for stream in quiet)


async def test_entries_written_while_the_feed_was_cut_arrive_after_it_reconnects(
    hub_and_store: tuple[Hub, Store], redis_client: aioredis.Redis
) -> None:
    hub, store = hub_and_store
    stream = Stream(["chat"])
    await stream.join(hub)
    before = [await xadd(store, "chat", f"before {n}") for n in range(3)]
    await stream.events(3)

    killed = await redis_client.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
    during = [await xadd(store, "chat", f"during {n}") for n in range(5)]
    await wait_until(lambda: _subscribed(redis_client), "the change feed subscribed again")
    after = [await xadd(store, "chat", f"after {n}") for n in range(3)]

    last = await xadd(store, "chat", "last")

    got = await stream.events(12)
    assert killed >= 1
    # No gap, no duplicate: exactly these, once each, in order.
    assert [e.id for e in got] == [*before, *during, *after, last]


async def _subscribed(client: aioredis.Redis) -> bool:
    return bool(await client.execute_command("CLIENT", "LIST", "TYPE", "pubsub"))


async def test_a_topic_joining_is_read_from_where_it_started(
    hub_and_store: tuple[Hub, Store],
) -> None:
    hub, store = hub_and_store
    await Stream(["first"]).join(hub)
    late = Stream(["second"])
    await late.join(hub)
    entry = await xadd(store, "second", "hello")

    assert await late.events(1) == [Event(entry, "message", "hello")]


@pytest.mark.parametrize(
    "locked_redis",
    [["--rename-command", "CONFIG", ""]],
    indirect=True,
)
async def test_where_config_is_refused_the_hub_reads_with_xread_block(
    locked_redis: LockedRedis,
) -> None:
    hub, store = await open_hub(locked_redis.url, reader_block_ms=5000)
    try:
        stream = Stream(["t"])
        await stream.join(hub)
        client = aioredis.Redis.from_url(locked_redis.url)
        entry = (await client.xadd(stream_key("t"), {"data": "x"})).decode()
        await client.aclose()

        assert await stream.events(1) == [Event(entry, "message", "x")]
        assert hub.mode == "blocking"
    finally:
        await hub.stop()
        await store.close()


async def test_a_user_whom_acl_denies_config_gets_the_blocking_reads(
    flushed_redis: RedisServer, redis_client: aioredis.Redis
) -> None:
    await redis_client.config_set("notify-keyspace-events", "")
    await redis_client.acl_setuser(
        "noconfig",
        enabled=True,
        passwords=["+secret"],
        keys=["*"],
        channels=["*"],
        commands=["+@all", "-config"],
    )
    url = f"redis://noconfig:secret@127.0.0.1:{flushed_redis.port}/0"
    hub, store = await open_hub(url, reader_block_ms=5000)
    try:
        stream = Stream(["t"])
        await stream.join(hub)
        entry = await xadd(store, "t", "x")

        assert await stream.events(1) == [Event(entry, "message", "x")]
        assert hub.mode == "blocking"
    finally:
        await hub.stop()
        await store.close()
        await redis_client.acl_deluser("noconfig")


@pytest.mark.parametrize(
    "locked_redis",
    [["--rename-command", "CONFIG", "", "--notify-keyspace-events", "Et"]],
    indirect=True,
)
async def test_forced_notifications_trust_a_server_that_hides_its_config(
    locked_redis: LockedRedis,
) -> None:
    hub, store = await open_hub(locked_redis.url, change_feed="notifications")
    try:
        stream = Stream(["t"])
        await stream.join(hub)
        entry = await xadd(store, "t", "x")

        assert await stream.events(1) == [Event(entry, "message", "x")]
        assert hub.mode == "notifications"
    finally:
        await hub.stop()
        await store.close()


async def test_change_feed_off_reads_with_xread_block(flushed_redis: RedisServer) -> None:
    hub, store = await open_hub(flushed_redis.url, change_feed="off", reader_block_ms=5000)
    try:
        stream = Stream(["t"])
        await stream.join(hub)
        entry = await xadd(store, "t", "x")

        assert await stream.events(1) == [Event(entry, "message", "x")]
        assert hub.mode == "blocking"
    finally:
        await hub.stop()
        await store.close()
