"""`HERALD_PUBLISH_REPLICAS`: every publish path waits (WAIT) for the replicas on the
connection that wrote, and says so when too few confirmed in time."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
import redis
import redis.asyncio as aioredis

from service.errors import NotReplicated
from service.settings import Settings
from service.storage.store import Store
from service.storage.stores import open_store
from tests.conftest import HeraldFactory, RedisServer, free_port, run_herald

pytestmark = pytest.mark.integration

SHORTFALL = "stored on the primary, but only 0 of 1 replicas confirmed it; retry with the same"
EVENTS = [("t", "message", "a"), ("t", "message", "b")]

Publish = Callable[[Store], Awaitable[list[str]]]


async def _single(store: Store) -> list[str]:
    return await store.publish(EVENTS[:1], retention=100)


async def _batch(store: Store) -> list[str]:
    return await store.publish(EVENTS, retention=100)


async def _once(store: Store) -> list[str]:
    _, _, ids = await store.publish_once("k", "fp", EVENTS, retention=100, window_seconds=60)
    return ids


async def _marked(store: Store) -> list[str]:
    return await store.publish_and_mark(EVENTS, 100, b"herald:worker:w:m", {"offset": "2"})


PATHS = {"single": _single, "batch": _batch, "idempotent": _once, "with a mark": _marked}


def _store(url: str, timeout_ms: int) -> Store:
    return open_store(
        Settings(redis_url=url, publish_replicas=1, publish_replicas_timeout_ms=timeout_ms)
    )


@pytest_asyncio.fixture
async def lonely(flushed_redis: RedisServer) -> AsyncIterator[Store]:
    """A store waiting for one replica, on a server that has none."""
    store = _store(flushed_redis.url, timeout_ms=50)
    yield store
    await store.close()


class Primary(RedisServer):
    def command(self) -> list[str]:
        # A replica's first sync otherwise waits 5 s for others to join it.
        return [*super().command(), "--repl-diskless-sync-delay", "0"]


@dataclass(kw_only=True)
class Replica(RedisServer):
    primary: RedisServer

    def command(self) -> list[str]:
        # Read at each start: the primary's first start may have moved it.
        return [*super().command(), "--replicaof", "127.0.0.1", str(self.primary.port)]


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[RedisServer, Replica]]:
    """A private primary and a replica that follows it."""
    (tmp_path / "primary").mkdir()
    (tmp_path / "replica").mkdir()
    primary = Primary(free_port(), tmp_path / "primary")
    replica = Replica(free_port(), tmp_path / "replica", primary=primary)
    try:
        primary.start()
        replica.start()
        client = redis.Redis(port=replica.port, decode_responses=True)
        deadline = time.monotonic() + 10
        while client.info("replication")["master_link_status"] != "up":
            assert time.monotonic() < deadline, "the replica did not sync"
            time.sleep(0.05)
        yield primary, replica
    finally:
        replica.kill()
        primary.kill()


@pytest.mark.parametrize("publish", PATHS.values(), ids=PATHS.keys())
async def test_an_unconfirmed_publish_is_refused_but_stored(
    lonely: Store, redis_client: aioredis.Redis, publish: Publish
) -> None:
    with pytest.raises(NotReplicated, match=SHORTFALL):
        await publish(lonely)
    assert await redis_client.xlen("herald:stream:t") > 0


async def test_a_retry_with_the_key_still_appends_once(
    lonely: Store, redis_client: aioredis.Redis
) -> None:
    for _ in range(2):
        with pytest.raises(NotReplicated):
            await _once(lonely)
    assert await redis_client.xlen("herald:stream:t") == len(EVENTS)


@pytest.mark.parametrize("publish", PATHS.values(), ids=PATHS.keys())
async def test_an_error_reply_is_not_taken_for_a_shortfall(
    lonely: Store, redis_client: aioredis.Redis, publish: Publish
) -> None:
    await redis_client.set("herald:stream:t", "not a stream")
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        await publish(lonely)


@pytest.mark.parametrize("publish", PATHS.values(), ids=PATHS.keys())
async def test_a_confirmed_publish_is_on_the_replica_when_it_is_answered(
    pair: tuple[RedisServer, Replica], publish: Publish
) -> None:
    primary, replica = pair
    store = _store(primary.url, timeout_ms=5000)
    try:
        ids = await publish(store)
    finally:
        await store.close()
    client = redis.Redis(port=replica.port, decode_responses=True)
    assert [entry_id for entry_id, _ in client.xrange("herald:stream:t")] == ids


async def test_publish_answers_503_saying_what_happened(herald: HeraldFactory) -> None:
    app = herald(HERALD_PUBLISH_REPLICAS=1, HERALD_PUBLISH_REPLICAS_TIMEOUT_MS=50)
    async with httpx.AsyncClient(timeout=10) as client:
        answer = await client.post(f"{app.url}/publish", json={"topic": "t", "data": "x"})
    assert answer.status_code == 503
    assert answer.headers["retry-after"] == "1"
    assert answer.json()["detail"].startswith(SHORTFALL)


def test_serve_refuses_replicas_without_redis() -> None:
    done = run_herald("serve", "--publish-replicas", "1")
    assert done.returncode == 2
    assert "--publish-replicas needs HERALD_REDIS_URL" in done.stderr
