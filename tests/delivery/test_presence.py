"""Online counts: per-replica counts in Redis, summed across replicas, expiring with a replica.

Real redis-server, real `herald serve` replicas and a real `herald worker online`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import AsyncExitStack
from pathlib import Path

import httpx
import jwt
import pytest
from fastapi.testclient import TestClient

from service.settings import Settings
from service.web.app import create_app
from tests.conftest import ROOT, Herald, HeraldFactory, RedisServer, wait_until
from tests.sse import SSEStream

PRESENCE_SECONDS = 0.5
SECRET = "presence-test-secret-long-enough-for-hs256"


async def count(client: httpx.AsyncClient, app: Herald, topic: str) -> int:
    answer = await client.get(f"{app.url}/topics/{topic}")
    assert answer.status_code == 200, answer.text
    n: int = answer.json()["count"]
    return n


async def count_is(client: httpx.AsyncClient, app: Herald, topic: str, expected: int) -> None:
    async def holds() -> bool:
        return await count(client, app, topic) == expected

    await wait_until(holds, f"{topic} counted {expected} on :{app.port}")


async def online_event(presence: SSEStream, expected: int) -> None:
    """Read `online` events until one says `expected` (the worker may see counts on the way)."""
    while True:
        event = await presence.next_event()
        assert event.event == "online"
        data = json.loads(event.data)
        assert data["topic"] == "room.1"
        if data["count"] == expected:
            return


@pytest.fixture
def online_worker(flushed_redis: RedisServer, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
    env |= {"HERALD_REDIS_URL": flushed_redis.url, "HERALD_ONLINE_INTERVAL_SECONDS": "0.2"}
    with (tmp_path / "online.log").open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "service", "worker", "online"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    yield proc
    proc.terminate()
    assert proc.wait(10) == 0, (tmp_path / "online.log").read_text()


@pytest.mark.integration
async def test_counts_are_summed_across_replicas_and_a_dead_replicas_counts_expire(
    herald: HeraldFactory, online_worker: subprocess.Popen[bytes]
) -> None:
    a = herald(HERALD_PRESENCE_SECONDS=PRESENCE_SECONDS)
    b = herald(HERALD_PRESENCE_SECONDS=PRESENCE_SECONDS)
    async with httpx.AsyncClient(timeout=10) as client, AsyncExitStack() as streams:
        presence = await streams.enter_async_context(
            SSEStream(client, f"{a.url}/events", params={"topic": "presence.room.1"})
        )
        for app, topics in ((a, ["room.1"]), (a, ["room.1"]), (b, ["room.1", "room.2"])):
            await streams.enter_async_context(
                SSEStream(client, f"{app.url}/events", params={"topic": topics})
            )
        await count_is(client, a, "room.1", 3)
        await count_is(client, b, "room.2", 1)
        await online_event(presence, 3)

        b.proc.kill()  # no goodbye: its report has to expire
        b.proc.wait(5)
        await count_is(client, a, "room.1", 2)
        await count_is(client, a, "room.2", 0)
        await online_event(presence, 2)


@pytest.mark.integration
async def test_a_replica_that_stops_cleanly_takes_its_counts_out_at_once(
    herald: HeraldFactory,
) -> None:
    # Reports live 90 s here, so only the withdrawal on shutdown can explain the drop.
    a = herald(HERALD_PRESENCE_SECONDS=30)
    b = herald(HERALD_PRESENCE_SECONDS=30)
    async with (
        httpx.AsyncClient(timeout=10) as client,
        SSEStream(client, f"{b.url}/events", params={"topic": "room.9"}),
    ):
        await count_is(client, a, "room.9", 1)
        assert b.terminate() == 0
        await count_is(client, a, "room.9", 0)


@pytest.mark.integration
async def test_a_topic_answers_its_stream_length_and_last_id(herald: HeraldFactory) -> None:
    app = herald()
    async with httpx.AsyncClient(timeout=10) as client:
        empty = await client.get(f"{app.url}/topics/news.1")
        assert empty.json() == {"topic": "news.1", "count": 0, "length": 0, "last_id": None}
        ids = [
            (await client.post(f"{app.url}/publish", json={"topic": "news.1", "data": n})).json()
            for n in range(3)
        ]
        answer = await client.get(f"{app.url}/topics/news.1")
        assert answer.json() == {
            "topic": "news.1",
            "count": 0,
            "length": 3,
            "last_id": ids[-1]["id"],
        }


def test_a_bad_topic_is_refused_with_its_location() -> None:
    with TestClient(create_app(Settings())) as client:
        answer = client.get("/topics/-nope")
    assert answer.status_code == 422
    assert answer.json()["detail"][0]["loc"] == ["path", "topic"]


def test_with_auth_a_topics_status_needs_a_token_that_may_subscribe_to_it() -> None:
    def bearer(patterns: list[str]) -> dict[str, str]:
        token = jwt.encode({"herald": {"subscribe": patterns}}, SECRET, algorithm="HS256")
        return {"Authorization": f"Bearer {token}"}

    with TestClient(create_app(Settings(jwt_key=SECRET))) as client:
        assert client.get("/topics/room.1").status_code == 401
        assert client.get("/topics/room.1", headers=bearer(["other.*"])).status_code == 403
        allowed = client.get("/topics/room.1", headers=bearer(["room.*"]))
    assert allowed.status_code == 200
    assert allowed.json()["count"] == 0
