"""Faults survived on real processes: Redis going away and coming back, with and without data."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import Herald, HeraldLauncher, RedisServer, free_port, metric
from tests.sse import SSEStream

pytestmark = pytest.mark.integration

FAST_FAILING = {
    "HERALD_HEARTBEAT_SECONDS": 1,
    "HERALD_REDIS_TIMEOUT_SECONDS": 1,
    "HERALD_READER_BLOCK_MS": 500,
}


Stack = Callable[[type[RedisServer]], tuple[RedisServer, HeraldLauncher]]


class PersistentRedis(RedisServer):
    """A redis-server that writes every command to its AOF before answering."""

    def command(self) -> list[str]:
        return [*super().command(), "--appendonly", "yes", "--appendfsync", "always"]


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    """Factory: a private redis-server of `kind` and a launcher of Herald processes on it.

    Everything it started is stopped at teardown.
    """
    servers: list[RedisServer] = []
    launchers: list[HeraldLauncher] = []

    def make(kind: type[RedisServer]) -> tuple[RedisServer, HeraldLauncher]:
        directory = tmp_path / f"redis-{kind.__name__}"
        directory.mkdir()
        server = kind(free_port(), directory)
        server.start()
        servers.append(server)
        launchers.append(HeraldLauncher(server.url, tmp_path))
        return server, launchers[-1]

    yield make
    for launcher in launchers:
        launcher.stop_all(show_logs=False)
    for server in servers:
        server.kill()


async def publish(client: httpx.AsyncClient, app: Herald, topic: str, data: str) -> httpx.Response:
    return await client.post(f"{app.url}/publish", json={"topic": topic, "data": data})


async def publish_when_back(
    client: httpx.AsyncClient, app: Herald, topic: str, data: str, within: float = 15
) -> str:
    """Retry a publish until Redis takes it, as a backend would after a 503."""
    deadline = time.monotonic() + within
    while True:
        answer = await publish(client, app, topic, data)
        if answer.status_code == 200:
            return str(answer.json()["id"])
        assert answer.status_code == 503, answer.text
        assert time.monotonic() < deadline, "Redis never came back for publishing"
        await asyncio.sleep(0.2)


async def reader_errors(client: httpx.AsyncClient, app: Herald) -> float:
    return metric((await client.get(f"{app.url}/metrics")).text, "herald_reader_errors_total")


def cpu_seconds(app: Herald) -> float:
    """User and system CPU the Herald process used so far."""
    fields = Path(f"/proc/{app.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def readyz(client: httpx.AsyncClient, app: Herald) -> int:
    return (await client.get(f"{app.url}/readyz")).status_code


async def until_ready_is(client: httpx.AsyncClient, app: Herald, status: int) -> None:
    deadline = time.monotonic() + 15
    while await readyz(client, app) != status:
        assert time.monotonic() < deadline, f"/readyz never answered {status}"
        await asyncio.sleep(0.2)


async def test_redis_down_then_back_with_its_data(stack: Stack) -> None:
    redis, launcher = stack(PersistentRedis)
    app = launcher(**FAST_FAILING)
    async with (
        httpx.AsyncClient(timeout=10) as client,
        SSEStream(client, f"{app.url}/events", params={"topic": "t"}) as stream,
    ):
        await asyncio.sleep(0.3)
        first = (await publish(client, app, "t", "before")).json()["id"]
        assert (await stream.next_event(timeout=5)).id == first

        redis.kill()
        refused = await publish(client, app, "t", "while down")
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "1"
        await until_ready_is(client, app, 503)
        comments_before = len(stream.comments)
        errors_before = await reader_errors(client, app)
        cpu_before = cpu_seconds(app)
        await asyncio.sleep(2.5)
        assert not stream.closed
        assert len(stream.comments) >= comments_before + 2, "no heartbeats while down"
        # Backing off, not spinning: a handful of attempts and little CPU.
        assert 1 <= await reader_errors(client, app) - errors_before <= 15
        assert cpu_seconds(app) - cpu_before < 0.5

        redis.start()
        second = await publish_when_back(client, app, "t", "after")
        event = await stream.next_event(timeout=10)
        await until_ready_is(client, app, 200)
        async with SSEStream(
            client, f"{app.url}/events", params={"topic": "t"}, headers={"Last-Event-ID": first}
        ) as resumed:
            replayed = await resumed.next_event(timeout=5)
    assert (event.id, event.data) == (second, "after")
    assert [e.data for e in stream.events] == ["before", "after"]
    # A client resuming after the restart finds its position kept: no trimmed alarm.
    assert (replayed.event, replayed.id) == ("message", second)


async def test_redis_restarted_empty_tells_a_resuming_client_and_no_one_else(
    stack: Stack,
) -> None:
    redis, launcher = stack(RedisServer)
    app = launcher(**FAST_FAILING)
    url = f"{app.url}/events"
    async with (
        httpx.AsyncClient(timeout=10) as client,
        SSEStream(client, url, params={"topic": "t"}) as live,
    ):
        await asyncio.sleep(0.3)
        seen = (await publish(client, app, "t", "seen")).json()["id"]
        await publish(client, app, "t", "unseen by the resuming client")

        redis.kill()
        redis.start()  # no persistence: every stream is gone
        fresh = await publish_when_back(client, app, "t", "after the loss")

        async with SSEStream(
            client, url, params={"topic": "t"}, headers={"Last-Event-ID": seen}
        ) as resumed:
            announced = await resumed.next_event(timeout=5)
            replayed = await resumed.next_event(timeout=5)
        async with SSEStream(
            client, url, params={"topic": "t"}, headers={"Last-Event-ID": fresh}
        ) as current:
            await asyncio.sleep(0.3)
            newest = await publish_when_back(client, app, "t", "newest")
            nothing_missed = await current.next_event(timeout=5)
        live_events = [(await live.next_event(timeout=5)).data for _ in range(4)]

    assert announced.event == "herald.trimmed"
    assert announced.id is None or announced.id == seen
    assert (replayed.id, replayed.data) == (fresh, "after the loss")
    assert (nothing_missed.event, nothing_missed.id) == ("message", newest)
    assert live_events == ["seen", "unseen by the resuming client", "after the loss", "newest"]


async def test_clients_of_a_killed_replica_resume_on_the_other_and_miss_nothing(
    stack: Stack,
) -> None:
    _, launcher = stack(RedisServer)
    doomed, survivor = launcher(), launcher()
    async with httpx.AsyncClient(timeout=10) as client:
        async with SSEStream(client, f"{doomed.url}/events", params={"topic": "t"}) as first:
            await asyncio.sleep(0.3)
            for n in range(3):
                await publish(client, survivor, "t", f"e{n}")
            got = [await first.next_event(timeout=5) for _ in range(3)]
            doomed.proc.kill()
            await first.wait_closed(timeout=10)
        # Published while the client has no connection at all.
        for n in range(3, 6):
            await publish(client, survivor, "t", f"e{n}")
        async with SSEStream(
            client,
            f"{survivor.url}/events",
            params={"topic": "t"},
            headers={"Last-Event-ID": got[-1].id or ""},
        ) as second:
            rest = [await second.next_event(timeout=5) for _ in range(3)]
            await publish(client, survivor, "t", "e6")
            live = await second.next_event(timeout=5)
    assert [e.data for e in [*got, *rest, live]] == [f"e{n}" for n in range(7)]
    assert first.error is not None, "a SIGKILLed replica cannot end its streams cleanly"
