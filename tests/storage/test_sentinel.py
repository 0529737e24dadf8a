"""Herald behind Redis Sentinel, on real processes: a primary, its replicas and three
sentinels from Debian's `redis-server`, and Herald processes with
`HERALD_REDIS_URL=redis+sentinel://…/herald`.

As docs/operations/redis.md advises, Herald waits for every replica
(`HERALD_PUBLISH_REPLICAS`) and the servers take writes only while every replica
follows them (`min-replicas-to-write`): a primary cut off by a failover then refuses
writes rather than storing events that the failover discards.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis
import redis.asyncio as aioredis

from tests.conftest import Herald, HeraldLauncher, RedisServer, _test_failed, free_port, metric
from tests.sse import Following, SSEStream

pytestmark = pytest.mark.integration

SERVICE = "herald"
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 5000
SETTLE_TIMEOUT = 20.0
PUBLISH_EVERY_SECONDS = 0.02


@dataclass(kw_only=True)
class ReplicatedRedis(RedisServer):
    """A redis-server that takes writes only while `replicas` replicas follow it, itself a
    replica of `follows` when given."""

    replicas: int = 1
    follows: RedisServer | None = None

    def command(self) -> list[str]:
        command = [
            *super().command(),
            "--min-replicas-to-write", str(self.replicas),
            "--repl-diskless-sync-delay", "0",
        ]  # fmt: skip
        if self.follows is not None:
            # Read at each start: the primary's first start may have moved it.
            command += ["--replicaof", "127.0.0.1", str(self.follows.port)]
        return command

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, decode_responses=True, socket_timeout=5)


@dataclass(kw_only=True)
class SentinelServer(RedisServer):
    """`redis-server sentinel.conf --sentinel`, monitoring `primary` as SERVICE."""

    primary: RedisServer

    def command(self) -> list[str]:
        config = self.directory / "sentinel.conf"
        config.write_text(
            f"port {self.port}\n"
            "bind 127.0.0.1\n"
            f"dir {self.directory}\n"
            f"sentinel monitor {SERVICE} 127.0.0.1 {self.primary.port} 2\n"
            f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {SERVICE} {FAILOVER_TIMEOUT_MS}\n"
        )
        return ["redis-server", str(config), "--sentinel"]

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, decode_responses=True, socket_timeout=5)


@dataclass
class SentinelSetup:
    primary: ReplicatedRedis
    replicas: list[ReplicatedRedis]
    sentinels: list[SentinelServer]

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{SERVICE}"

    def servers(self) -> list[RedisServer]:
        return [self.primary, *self.replicas, *self.sentinels]

    async def primary_now(self) -> ReplicatedRedis:
        """The server the first sentinel names as the primary."""
        client = aioredis.Redis(port=self.sentinels[0].port, decode_responses=True)
        try:
            _, port = await client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)
        finally:
            await client.aclose()
        (server,) = [s for s in [self.primary, *self.replicas] if s.port == int(port)]
        return server

    def logs(self) -> str:
        return "\n".join(
            f"--- {s.directory.name} ---\n{s.log_path.read_text(errors='replace')[-3000:]}"
            for s in self.servers()
            if s.log_path.exists()
        )


def _cannot_start(message: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(message + "; under CI=true this is a failure, not a skip")
    pytest.skip(message)


def _settle(check: Callable[[], bool], what: str, setup: SentinelSetup) -> None:
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while True:
        try:
            if check():
                return
        except redis.RedisError:
            pass
        if time.monotonic() > deadline:
            _cannot_start(f"{what} within {SETTLE_TIMEOUT} s\n{setup.logs()}")
        time.sleep(0.05)


def _replicas_linked(setup: SentinelSetup) -> bool:
    return all(r.client().info("replication")["master_link_status"] == "up" for r in setup.replicas)


def _sentinels_see_everyone(setup: SentinelSetup) -> bool:
    """Every sentinel sees the other two and healthy replicas it could promote."""
    for sentinel in setup.sentinels:
        client = sentinel.client()
        healthy = {
            r["port"]
            for r in client.sentinel_slaves(SERVICE)
            if not (r["is_sdown"] or r["is_odown"] or r["is_disconnected"])
            and r["master-link-status"] == "ok"
        }
        if healthy != {r.port for r in setup.replicas}:
            return False
        if len(client.sentinel_sentinels(SERVICE)) != len(setup.sentinels) - 1:
            return False
    return True


@pytest.fixture
def sentinel_setup(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[SentinelSetup]:
    """A primary, its replicas (one, or `request.param`) and three sentinels that see them
    all, on free loopback ports."""
    if shutil.which("redis-server") is None:
        _cannot_start("redis-server is not on PATH (apt-get install redis-server)")
    count = getattr(request, "param", 1)
    primary = ReplicatedRedis(free_port(), _directory(tmp_path, "primary"), replicas=count)
    replicas = [
        ReplicatedRedis(
            free_port(), _directory(tmp_path, f"replica-{n}"), replicas=count, follows=primary
        )
        for n in range(count)
    ]
    sentinels = [
        SentinelServer(free_port(), _directory(tmp_path, f"sentinel-{n}"), primary=primary)
        for n in range(3)
    ]
    setup = SentinelSetup(primary, replicas, sentinels)
    try:
        try:
            for server in [primary, *replicas]:
                server.start()
            # Sentinels learn of replicas from the primary's INFO: start them once it has them.
            _settle(lambda: _replicas_linked(setup), "the replicas did not sync", setup)
            for sentinel in sentinels:
                sentinel.start()
        except pytest.fail.Exception as exc:
            _cannot_start(str(exc))
        _settle(lambda: _sentinels_see_everyone(setup), "the sentinels did not settle", setup)
        yield setup
    finally:
        if _test_failed(request):
            print(setup.logs())
        for server in setup.servers():
            server.kill()


def _directory(tmp_path: Path, name: str) -> Path:
    directory = tmp_path / name
    directory.mkdir()
    return directory


@pytest.fixture
def launcher(
    sentinel_setup: SentinelSetup, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[HeraldLauncher]:
    """Herald processes on `sentinel_setup`, each acknowledging once the replica has it."""
    herald = HeraldLauncher(sentinel_setup.url, tmp_path)
    try:
        yield herald
    finally:
        herald.stop_all(show_logs=_test_failed(request))


async def test_herald_behind_sentinel_serves_publishes_and_subscribes(
    sentinel_setup: SentinelSetup, launcher: HeraldLauncher
) -> None:
    app = launcher(HERALD_PUBLISH_REPLICAS=1)
    async with (
        httpx.AsyncClient(timeout=10) as client,
        SSEStream(client, f"{app.url}/events", params={"topic": "t"}) as stream,
    ):
        await _live(stream)
        one = await client.post(f"{app.url}/publish", json={"topic": "t", "data": "one"})
        batch = await client.post(
            f"{app.url}/publish", json=[{"topic": "t", "data": "two"}, {"topic": "t", "data": 3}]
        )
        keyed = [
            await client.post(
                f"{app.url}/publish",
                json={"topic": "t", "data": "four"},
                headers={"Idempotency-Key": "k4"},
            )
            for _ in range(2)
        ]
        events = await stream.collect(4, timeout=10)
        ready = await client.get(f"{app.url}/readyz")
    for answer in [one, batch, *keyed]:
        assert answer.status_code == 200, answer.text
    ids = [one.json()["id"], *(a["id"] for a in batch.json()), keyed[0].json()["id"]]
    assert keyed[1].json()["id"] == ids[-1], "a retry with the key appended again"
    assert [e.id for e in events] == ids
    assert [e.data for e in events] == ["one", "two", "3", "four"]
    assert ready.status_code == 200
    # Acknowledged means the replica has it too (WAIT 1).
    assert entry_ids(sentinel_setup.replicas[0], "t") == ids


def entry_ids(server: ReplicatedRedis, topic: str) -> list[str]:
    return [entry_id for entry_id, _ in server.client().xrange(f"herald:stream:{topic}")]


async def _live(stream: SSEStream) -> None:
    """Wait for the stream's opening position: from then on it gets every new event."""
    deadline = time.monotonic() + 10
    while stream.last_id is None:
        assert time.monotonic() < deadline, "the stream never sent its position"
        await asyncio.sleep(0.02)


@dataclass
class Answer:
    at: float
    """Seconds since the failover was asked for (negative: before)."""
    status: int
    retry_after: str | None


class Publisher:
    """Publishes 0, 1, 2… to topic t every PUBLISH_EVERY_SECONDS, alternating between
    Herald processes; each event is retried with its Idempotency-Key until acknowledged."""

    def __init__(self, client: httpx.AsyncClient, apps: list[Herald]) -> None:
        self._client = client
        self._apps = apps
        self.failover_at = float("inf")
        self.answers: list[Answer] = []
        self.acknowledged: list[tuple[str, str]] = []
        """(id, data) of every acknowledged event, in order."""
        self.acknowledged_at: list[float] = []
        self._stopping = False
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        for n in itertools.count():
            if self._stopping:
                return
            app = self._apps[n % len(self._apps)]
            while True:
                answer = await self._client.post(
                    f"{app.url}/publish",
                    json={"topic": "t", "data": n},
                    headers={"Idempotency-Key": f"event-{n}"},
                )
                self.answers.append(
                    Answer(
                        time.monotonic() - self.failover_at,
                        answer.status_code,
                        answer.headers.get("retry-after"),
                    )
                )
                if answer.status_code == 200:
                    self.acknowledged.append((answer.json()["id"], str(n)))
                    self.acknowledged_at.append(self.answers[-1].at)
                    break
                # 503: nothing was stored; 504: a write cut off by the failover may have
                # been. Either way the same key settles it without a duplicate.
                if answer.status_code not in (503, 504):
                    return
                await asyncio.sleep(0.05)
            await asyncio.sleep(PUBLISH_EVERY_SECONDS)

    async def until_acknowledged(self, count: int, within: float) -> None:
        target = len(self.acknowledged) + count
        deadline = time.monotonic() + within
        while len(self.acknowledged) < target:
            assert not self._task.done(), f"publisher stopped: {self.answers[-1]}"
            assert time.monotonic() < deadline, f"{count} acknowledgements took over {within} s"
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        """Stop between two events, so every event sent has its answer."""
        self._stopping = True
        await asyncio.wait_for(self._task, timeout=30)


async def _ask_for_failover(sentinel: SentinelServer) -> None:
    client = aioredis.Redis(port=sentinel.port, decode_responses=True)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                await client.execute_command("SENTINEL", "FAILOVER", SERVICE)
                return
            except redis.ResponseError as exc:  # NOGOODSLAVE while a sentinel lags behind
                assert time.monotonic() < deadline, f"SENTINEL FAILOVER refused: {exc}"
                await asyncio.sleep(0.2)
    finally:
        await client.aclose()


async def _settled_after_failover(setup: SentinelSetup) -> tuple[ReplicatedRedis, float]:
    """Wait until a replica was promoted and every other server follows it: the new
    primary, and the seconds that took from now."""
    start = time.monotonic()
    while True:
        new = await setup.primary_now()
        if new is not setup.primary and await _followed_by_all(new, setup):
            return new, time.monotonic() - start
        assert time.monotonic() - start < 30, "the failover did not settle within 30 s"
        await asyncio.sleep(0.1)


async def _followed_by_all(new: ReplicatedRedis, setup: SentinelSetup) -> bool:
    others = [s for s in [setup.primary, *setup.replicas] if s is not new]
    client = aioredis.Redis(port=new.port, decode_responses=True)
    try:
        info = await client.info("replication")
    except redis.RedisError:
        return False
    finally:
        await client.aclose()
    return bool(info["role"] == "master" and info["connected_slaves"] == len(others))


@pytest.mark.parametrize("sentinel_setup", [1, 2], indirect=True, ids=["1-replica", "2-replicas"])
async def test_a_sentinel_failover_loses_no_acknowledged_event(
    sentinel_setup: SentinelSetup, launcher: HeraldLauncher
) -> None:
    replicas = len(sentinel_setup.replicas)
    apps = [launcher(HERALD_PUBLISH_REPLICAS=replicas) for _ in range(2)]
    async with httpx.AsyncClient(timeout=10) as client:
        followers = [Following(client, f"{app.url}/events", {"topic": "t"}) for app in apps]
        for follower in followers:
            await follower.until_positioned(within=10)
        publisher = Publisher(client, apps)
        try:
            await publisher.until_acknowledged(40, within=10)
            publisher.failover_at = time.monotonic()
            await _ask_for_failover(sentinel_setup.sentinels[0])
            new_primary, settled = await _settled_after_failover(sentinel_setup)
            await publisher.until_acknowledged(40, within=15)
        finally:
            await publisher.stop()
        acknowledged = publisher.acknowledged
        for follower in followers:
            await follower.until_received({i for i, _ in acknowledged}, within=15)
        reconnects = [
            metric((await client.get(f"{app.url}/metrics")).text, "herald_redis_reconnects_total")
            for app in apps
        ]
        for follower in followers:
            await follower.aclose()

    refused = [a for a in publisher.answers if a.status != 200]
    print(
        f"\n{replicas} replicas: 503/504s from "
        f"+{min(a.at for a in refused):.2f} s to +{max(a.at for a in refused):.2f} s "
        f"({len(refused)} answers), settled after +{settled:.2f} s, "
        f"hub reader reconnects {reconnects}, streams resumed {[f.resumes for f in followers]}"
    )
    assert {(a.status, a.retry_after) for a in refused} <= {(503, "1"), (504, "1")}
    assert min(a.at for a in refused) >= 0, "refusals before the failover"
    # Refusals stop once the new primary has a replica and Herald is on it.
    last_refused = max(a.at for a in refused)
    assert last_refused < settled + 3
    assert sum(at > last_refused for at in publisher.acknowledged_at) >= 40
    assert all(r >= 1 for r in reconnects)
    # Publishing goes on on the new primary, which holds every acknowledged event.
    assert set(entry_ids(new_primary, "t")) >= {i for i, _ in acknowledged}
    for follower in followers:
        assert [(e.id, e.data) for e in follower.events] == acknowledged
