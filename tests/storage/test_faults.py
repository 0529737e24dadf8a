"""Faults survived on real processes: Redis going away and coming back, with and without data."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from service.client.publisher import Publisher
from service.models import Published
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
        # Redis without persistence loses what the hub had not read yet when it died: the
        # live client must have both before the crash for the rest to be checked.
        live_events = [(await live.next_event(timeout=5)).data for _ in range(2)]

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
        live_events += [(await live.next_event(timeout=5)).data for _ in range(2)]

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


@contextlib.contextmanager
def frozen(redis: RedisServer) -> Iterator[None]:
    """Redis stops answering (SIGSTOP) and resumes at the end (SIGCONT): a stalled server."""
    assert redis.proc is not None
    os.kill(redis.proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(redis.proc.pid, signal.SIGCONT)


ONE = {"topic": "frozen", "data": "once"}
BATCH = [{"topic": "frozen", "data": "once"}, {"topic": "frozen.too", "data": "once"}]


@pytest.mark.parametrize("body", [ONE, BATCH], ids=["one", "batch"])
@pytest.mark.parametrize("keyed", [False, True], ids=["plain", "keyed"])
async def test_a_write_redis_never_answered_gets_504_and_its_keyed_retry_appends_once(
    stack: Stack, body: Any, keyed: bool
) -> None:
    redis, launcher = stack(RedisServer)
    app = launcher(**FAST_FAILING)
    headers = {"Idempotency-Key": "frozen-1"} if keyed else {}
    async with httpx.AsyncClient(timeout=10) as client:
        assert (await publish(client, app, "warm", "up")).status_code == 200
        with frozen(redis):
            unknown = await client.post(f"{app.url}/publish", json=body, headers=headers)
        # The event was sent: Redis stores it once it runs again. A 503 would say it was not.
        assert unknown.status_code == 504, unknown.text
        assert "may have been stored" in unknown.json()["detail"]
        assert "Idempotency-Key" in unknown.json()["detail"]
        assert unknown.headers["retry-after"] == "1"
        retried = await client.post(
            f"{app.url}/publish", json=body, headers={"Idempotency-Key": "frozen-1"}
        )
    assert retried.status_code == 200, retried.text
    stored = redis_entries(redis, "frozen")
    if keyed:
        # The first attempt landed after its 504; the keyed retry answers its ids.
        assert len(stored) == 1
        ids = retried.json() if isinstance(body, list) else [retried.json()]
        assert ids[0]["id"] == stored[0]
    else:
        # Without a key the first attempt and the retry are two publishes.
        assert len(stored) == 2


async def test_the_publisher_client_retries_a_504_with_its_key_and_publishes_once(
    stack: Stack,
) -> None:
    redis, launcher = stack(RedisServer)
    app = launcher(**FAST_FAILING)
    with Publisher(app.url, retries=8) as warm:
        warm.publish("warm", "up")
    with frozen(redis):
        publishing = asyncio.create_task(
            asyncio.to_thread(_publish_with_client, app.url, "frozen", "exactly once")
        )
        await asyncio.sleep(2.5)
    published = await asyncio.wait_for(publishing, 30)
    assert redis_entries(redis, "frozen") == [published.id]


def _publish_with_client(url: str, topic: str, data: str) -> Published:
    with Publisher(url, retries=8) as herald:
        return herald.publish(topic, data)


def redis_entries(redis: RedisServer, topic: str) -> list[str]:
    """The ids the topic's stream holds, read with redis-cli."""
    out = subprocess.run(
        ["redis-cli", "-p", str(redis.port), "--raw", "XRANGE", f"herald:stream:{topic}", "-", "+"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return [word for word in out if "-" in word and word.split("-")[0].isdigit()]


async def test_redis_at_maxmemory_refuses_publishes_with_503_and_streams_carry_on(
    stack: Stack,
) -> None:
    redis, launcher = stack(RedisServer)
    app = launcher(**FAST_FAILING)
    control = aioredis.Redis(port=redis.port)
    try:
        async with (
            httpx.AsyncClient(timeout=10) as client,
            SSEStream(client, f"{app.url}/events", params={"topic": "mem"}) as stream,
        ):
            await asyncio.sleep(0.3)
            await control.config_set("maxmemory-policy", "noeviction")
            await control.config_set("maxmemory", 1)
            refused = [
                await client.post(f"{app.url}/publish", json=ONE),
                await client.post(f"{app.url}/publish", json=BATCH),
                await client.post(
                    f"{app.url}/publish", json=BATCH, headers={"Idempotency-Key": "mem-1"}
                ),
            ]
            await asyncio.sleep(1.5)
            assert not stream.closed
            comments = len(stream.comments)
            await control.config_set("maxmemory", 0)
            published = await publish_when_back(client, app, "mem", "after")
            event = await stream.next_event(timeout=10)
            assert len(stream.comments) >= comments
    finally:
        await control.aclose()
    for answer in refused:
        assert answer.status_code == 503, answer.text
        assert "out of memory" in answer.json()["detail"]
        assert answer.headers["retry-after"] == "1"
    assert (event.id, event.data) == (published, "after")
    assert redis_entries(redis, "frozen") == [] and redis_entries(redis, "frozen.too") == []
    assert "Traceback" not in app.logs()


async def test_a_burst_of_batches_and_streams_while_redis_stalls_waits_instead_of_503(
    stack: Stack,
) -> None:
    redis, launcher = stack(RedisServer)
    app = launcher()
    ndjson = {"Content-Type": "application/x-ndjson"}
    lines = b"".join(b'{"topic": "burst.lines", "data": %d}\n' % n for n in range(3))
    limits = httpx.Limits(max_connections=400, max_keepalive_connections=400)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        assert (await publish(client, app, "warm", "up")).status_code == 200
        with frozen(redis):
            posts = [
                asyncio.create_task(client.post(f"{app.url}/publish", json=BATCH))
                for _ in range(150)
            ] + [
                asyncio.create_task(
                    client.post(f"{app.url}/publish", content=lines, headers=ndjson)
                )
                for _ in range(150)
            ]
            await asyncio.sleep(0.5)
        answers = await asyncio.gather(*posts)
    assert [a.status_code for a in answers] == [200] * 300
    assert len(redis_entries(redis, "frozen")) == len(redis_entries(redis, "frozen.too")) == 150
    assert len(redis_entries(redis, "burst.lines")) == 450
