"""Herald on a real Redis Cluster: three primaries with a replica each, from Debian's
redis-server, made into a cluster by `redis-cli --cluster create` on loopback ports.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from redis.crc import key_slot

from service.client.publisher import AsyncPublisher
from service.models import PublishEvent
from service.storage.keys import MERCURE_IDS, MERCURE_ORDER
from tests import ports
from tests.conftest import ROOT, HeraldLauncher, RedisServer, metric
from tests.mercure.test_mercure import HUB, PUBLISHER, SETTINGS
from tests.sse import SSEStream

pytestmark = pytest.mark.integration

NODE_TIMEOUT_MS = 2000
START_TIMEOUT = 20.0


class ClusterNode(RedisServer):
    """A cluster-enabled redis-server; its cluster bus listens 10,000 above its port."""

    def command(self) -> list[str]:
        return [
            *super().command(),
            "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
        ]  # fmt: skip

    def pick_port(self) -> int:
        return ports.cluster_port()

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=2, decode_responses=True)


@dataclass
class Cluster:
    nodes: list[ClusterNode]
    killed: list[ClusterNode] = field(default_factory=list)

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes[:3])

    def live(self) -> list[ClusterNode]:
        return [n for n in self.nodes if n not in self.killed]

    def primaries(self) -> dict[int, list[tuple[int, int]]]:
        """Port of each primary -> its slot ranges, as the cluster says now."""
        with self.live()[0].client() as client:
            slots = client.execute_command("CLUSTER", "SLOTS")
        ranges: dict[int, list[tuple[int, int]]] = defaultdict(list)
        for entry in slots:
            ranges[int(entry[2][1])].append((int(entry[0]), int(entry[1])))
        return ranges

    def primary_of(self, topic: str) -> int:
        slot = key_slot(f"herald:stream:{topic}".encode())
        for port, ranges in self.primaries().items():
            if any(first <= slot <= last for first, last in ranges):
                return port
        raise AssertionError(f"no primary serves slot {slot}")

    def flush(self) -> None:
        for port in self.primaries():
            with redis.Redis(port=port, socket_timeout=2) as client:
                client.flushall()

    def wait_ok(self, replicated: bool = True) -> None:
        """Until every live node says the cluster is ok, three primaries serve the slots,
        and (when `replicated`) each primary has a replica in sync."""
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            try:
                if self._ok(replicated):
                    return
            except redis.RedisError:
                pass
            time.sleep(0.1)
        pytest.fail("the cluster did not become ok")

    def _ok(self, replicated: bool) -> bool:
        for node in self.live():
            with node.client() as client:
                if "cluster_state:ok" not in client.execute_command("CLUSTER", "INFO"):
                    return False
        primaries = self.primaries()
        if len(primaries) != 3 or any(p in (n.port for n in self.killed) for p in primaries):
            return False
        if not replicated:
            return True
        for port in primaries:
            with redis.Redis(port=port, socket_timeout=2, decode_responses=True) as client:
                info = client.info("replication")
            replicas = [v for k, v in info.items() if k.startswith("slave") and k[5:].isdigit()]
            if not any(r.get("state") == "online" for r in replicas):
                return False
        return True

    def restart(self, port: int) -> None:
        """Start a killed node again: it rejoins as a replica of whoever took its slots."""
        node = next(n for n in self.killed if n.port == port)
        self.killed.remove(node)
        node.start()

    def kill(self, port: int) -> None:
        node = next(n for n in self.nodes if n.port == port)
        assert node.proc is not None
        node.proc.kill()
        node.proc.wait(5)
        self.killed.append(node)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        message = "redis-server and redis-cli are needed (apt-get install redis-server)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    root = tmp_path_factory.mktemp("cluster")
    nodes: list[ClusterNode] = []
    try:
        for n in range(6):
            # Picked once the nodes before it hold their ports, so it cannot pick theirs.
            nodes.append(ClusterNode(ports.cluster_port(), root / f"node-{n}"))
            nodes[-1].directory.mkdir()
            nodes[-1].start()
        made = subprocess.run(
            [
                "redis-cli", "--cluster", "create",
                *(f"127.0.0.1:{n.port}" for n in nodes),
                "--cluster-replicas", "1", "--cluster-yes",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )  # fmt: skip
        assert made.returncode == 0, made.stdout + made.stderr
        built = Cluster(nodes)
        built.wait_ok()
        yield built
    finally:
        for node in nodes:
            node.kill()


def test_a_node_whose_cluster_bus_port_was_taken_starts_on_other_ports(
    monkeypatch: pytest.MonkeyPatch, redis_server: RedisServer, tmp_path: Path
) -> None:
    # `redis_server` only for its check that redis-server is installed.
    with socket.create_server(("127.0.0.1", 0)) as bus:
        taken = int(bus.getsockname()[1]) - 10_000
        real = ports.cluster_port
        picks = iter([taken])
        monkeypatch.setattr(ports, "cluster_port", lambda: next(picks, None) or real())
        node = ClusterNode(ports.cluster_port(), tmp_path)
        try:
            node.start()
            assert node.port != taken
            with node.client() as client:
                assert client.ping()
        finally:
            node.kill()


@pytest.fixture
def heralds(cluster: Cluster, tmp_path: Path) -> Iterator[HeraldLauncher]:
    cluster.flush()
    launcher = HeraldLauncher(cluster.url, tmp_path)
    yield launcher
    launcher.stop_all(show_logs=True)  # pytest shows them only when the test failed


@asynccontextmanager
async def live(
    client: httpx.AsyncClient, url: str, topics: list[str], **headers: str
) -> AsyncIterator[SSEStream]:
    """A subscription, once Herald has registered it (its opening id has arrived)."""
    params = [("topic", t) for t in topics]
    async with SSEStream(client, f"{url}/events", params=params, headers=headers) as stream:
        assert stream.response.status_code == 200
        deadline = time.monotonic() + 10
        while stream.last_id is None:
            assert time.monotonic() < deadline, "no opening id"
            await asyncio.sleep(0.01)
        yield stream


def by_topic(events: list[Any]) -> dict[str, list[int]]:
    seen: dict[str, list[int]] = defaultdict(list)
    for event in events:
        data = json.loads(event.data)
        seen[data["topic"]].append(data["n"])
    return seen


async def test_500_topics_over_every_shard_reach_subscribers_on_two_replicas_in_order(
    cluster: Cluster, heralds: HeraldLauncher
) -> None:
    topics = [f"t.{i}" for i in range(500)]
    assert {cluster.primary_of(t) for t in topics} == set(cluster.primaries())
    a = heralds(HERALD_MAX_TOPICS=100)
    b = heralds(HERALD_MAX_TOPICS=100)
    rounds = 4
    async with httpx.AsyncClient(timeout=30) as client, AsyncExitStack() as stack:
        streams = [
            await stack.enter_async_context(live(client, app.url, topics[i : i + 100]))
            for app in (a, b)
            for i in range(0, 500, 100)
        ]
        for n in range(rounds):
            batch = [{"topic": t, "event": "seq", "data": {"topic": t, "n": n}} for t in topics]
            for start in range(0, 500, 250):
                target = (a, b)[start // 250]
                answer = await client.post(f"{target.url}/publish", json=batch[start : start + 250])
                assert answer.status_code == 200, answer.text
        for stream in streams:
            received = by_topic(await stream.collect(100 * rounds, timeout=30))
            assert all(ns == list(range(rounds)) for ns in received.values()), received
            assert len(received) == 100
        metrics = (await client.get(f"{a.url}/metrics")).text
    # One blocking read per slot: as many as the topics' distinct slots, not subscribers.
    slots = {key_slot(f"herald:stream:{t}".encode()) for t in topics}
    assert metric(metrics, "herald_topics") == 500
    assert metric(metrics, "herald_subscribers") == 5
    assert len(slots) > 450


async def test_resume_across_shards_with_a_multi_topic_cursor_is_exact(
    cluster: Cluster, heralds: HeraldLauncher
) -> None:
    # One topic per primary.
    topics: dict[int, str] = {}
    for i in range(100):
        topics.setdefault(cluster.primary_of(f"r.{i}"), f"r.{i}")
    names = sorted(topics.values())
    assert len(names) == 3
    app = heralds()

    async def publish(client: httpx.AsyncClient, n: int) -> None:
        batch = [{"topic": t, "event": "seq", "data": {"topic": t, "n": n}} for t in names]
        assert (await client.post(f"{app.url}/publish", json=batch)).status_code == 200

    async with httpx.AsyncClient(timeout=30) as client:
        async with live(client, app.url, names) as stream:
            await publish(client, 0)
            first = await stream.collect(3)
            cursor = stream.last_id
        assert cursor is not None and by_topic(first) == {t: [0] for t in names}
        for n in (1, 2):
            await publish(client, n)
        async with live(client, app.url, names, **{"Last-Event-ID": cursor}) as resumed:
            missed = by_topic(await resumed.collect(6))
            assert missed == {t: [1, 2] for t in names}
            await publish(client, 3)
            assert by_topic(await resumed.collect(3)) == {t: [3] for t in names}
            await resumed.expect_silence(0.3)


async def test_a_killed_primary_fails_over_and_no_acknowledged_event_is_lost(
    cluster: Cluster, heralds: HeraldLauncher
) -> None:
    topics: dict[int, str] = {}
    for i in range(100):
        topics.setdefault(cluster.primary_of(f"k.{i}"), f"k.{i}")
    names = sorted(topics.values())
    victim = cluster.primary_of(names[0])
    settings = {"HERALD_PUBLISH_REPLICAS": 1, "HERALD_PUBLISH_REPLICAS_TIMEOUT_MS": 500}
    a = heralds(**settings)
    b = heralds(**settings)
    acknowledged: dict[str, list[int]] = defaultdict(list)
    stop = asyncio.Event()

    async def publish_steadily(publisher: AsyncPublisher) -> None:
        n = 0
        while not stop.is_set():
            events = [PublishEvent(topic=t, event="seq", data={"topic": t, "n": n}) for t in names]
            await publisher.publish_batch(events)
            for t in names:
                acknowledged[t].append(n)
            n += 1
            await asyncio.sleep(0.02)

    async with (
        httpx.AsyncClient(timeout=30) as client,
        AsyncPublisher(a.url, retries=40, backoff=0.05) as publisher,
        live(client, a.url, names) as on_a,
        live(client, b.url, names) as on_b,
    ):
        publishing = asyncio.create_task(publish_steadily(publisher))
        await asyncio.sleep(0.5)
        cluster.kill(victim)
        await asyncio.to_thread(cluster.wait_ok, False)  # the victim's replica took over
        assert victim not in cluster.primaries()
        # With one replica required, that shard acknowledges again once it has a replica.
        cluster.restart(victim)
        await asyncio.to_thread(cluster.wait_ok)
        await asyncio.sleep(1.0)
        stop.set()
        await publishing
        total = sum(len(ns) for ns in acknowledged.values())
        for stream in (on_a, on_b):
            received = by_topic(await stream.collect(total, timeout=30))
            assert received == acknowledged
            await stream.expect_silence(0.3)
        metrics = (await client.get(f"{a.url}/metrics")).text
    assert metric(metrics, "herald_topology_refreshes_total") >= 1


def migrate_slot(cluster: Cluster, topic: str) -> tuple[int, int]:
    """Move the slot of `topic`'s stream to another primary, keys and all, as
    `redis-cli --cluster reshard` does; the ports it moved from and to."""
    key = f"herald:stream:{topic}"
    slot = key_slot(key.encode())
    source = cluster.primary_of(topic)
    target = next(port for port in cluster.primaries() if port != source)
    ids = {}
    for port in (source, target):
        with redis.Redis(port=port, decode_responses=True) as client:
            ids[port] = client.execute_command("CLUSTER", "MYID")
    with redis.Redis(port=target) as to, redis.Redis(port=source, decode_responses=True) as src:
        to.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", ids[source])
        src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", ids[target])
        keys_in_slot = src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 1000)
        if keys_in_slot:
            src.execute_command("MIGRATE", "127.0.0.1", target, "", 0, 5000, "KEYS", *keys_in_slot)
    for port in cluster.primaries():
        with redis.Redis(port=port) as client:
            client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", ids[target])
    # Replicas learn the new owner by gossip: wait until the node the test asks agrees.
    deadline = time.monotonic() + 30
    while cluster.primary_of(topic) != target:
        assert time.monotonic() < deadline, f"slot {slot} never showed on {target}"
        time.sleep(0.05)
    return source, target


async def test_a_topic_whose_slot_migrates_keeps_streaming_with_no_gap(
    cluster: Cluster, heralds: HeraldLauncher
) -> None:
    topic = "moving.1"
    app = heralds()
    async with (
        httpx.AsyncClient(timeout=30) as client,
        AsyncPublisher(app.url, retries=20, backoff=0.05) as publisher,
        live(client, app.url, [topic]) as stream,
    ):
        for n in range(3):
            await publisher.publish(topic, {"topic": topic, "n": n}, event="seq")
        assert by_topic(await stream.collect(3)) == {topic: [0, 1, 2]}
        source, target = await asyncio.to_thread(migrate_slot, cluster, topic)
        assert cluster.primary_of(topic) == target != source
        for n in range(3, 6):
            await publisher.publish(topic, {"topic": topic, "n": n}, event="seq")
        assert by_topic(await stream.collect(3)) == {topic: [3, 4, 5]}
        await stream.expect_silence(0.3)
        metrics = (await client.get(f"{app.url}/metrics")).text
    assert metric(metrics, "herald_topology_refreshes_total") >= 1


def test_the_log_worker_publishes_and_keeps_its_position_on_a_cluster(
    cluster: Cluster, heralds: HeraldLauncher, tmp_path: Path
) -> None:
    log_file = tmp_path / "app.log"
    log_file.write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
    env |= {
        "HERALD_REDIS_URL": cluster.url,
        "HERALD_LOGS_FILES": f"app={log_file}",
        "HERALD_LOGS_POLL_SECONDS": "0.05",
    }
    with (tmp_path / "worker.log").open("wb") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "service", "worker", "logs"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        stream = "herald:stream:logs.app"
        with redis.RedisCluster(
            host="127.0.0.1", port=cluster.live()[0].port, decode_responses=True
        ) as client:
            deadline = time.monotonic() + 10
            mark = f"herald:worker:logs:app:{{{stream}}}"
            while not client.exists(mark):
                assert time.monotonic() < deadline, (tmp_path / "worker.log").read_text()
                time.sleep(0.05)
            with log_file.open("a") as f:
                f.write("one\ntwo\n")
            while client.xlen(stream) < 2:
                assert time.monotonic() < deadline, (tmp_path / "worker.log").read_text()
                time.sleep(0.05)
            lines = [json.loads(fields["data"])["line"] for _, fields in client.xrange(stream)]
            assert lines == ["one", "two"]
            assert int(client.hget(mark, "offset") or 0) == len("one\ntwo\n")
    finally:
        worker.send_signal(signal.SIGTERM)
        stopped = worker.wait(10)
    assert stopped == 0, (tmp_path / "worker.log").read_text()


async def test_a_batch_across_shards_with_one_shard_down_answers_each_event_s_fate(
    cluster: Cluster, heralds: HeraldLauncher
) -> None:
    topics: dict[int, str] = {}
    for i in range(100):
        topics.setdefault(cluster.primary_of(f"b.{i}"), f"b.{i}")
    names = sorted(topics.values())
    down = cluster.primary_of(names[1])
    app = heralds()
    batch = [{"topic": t, "event": "seq", "data": {"topic": t, "n": 0}} for t in names]
    headers = {"Idempotency-Key": "batch-1"}
    async with httpx.AsyncClient(timeout=30) as client:
        cluster.kill(down)
        try:
            answer = await client.post(f"{app.url}/publish", json=batch, headers=headers)
            assert answer.status_code == 503
            assert answer.headers["retry-after"]
            results = answer.json()["results"]
            assert [r["topic"] for r in results] == names
            assert [("error" in r) for r in results] == [t == names[1] for t in names]
            landed = {r["topic"]: r["id"] for r in results if "id" in r}
        finally:
            await asyncio.to_thread(cluster.wait_ok, False)
            cluster.restart(down)
            await asyncio.to_thread(cluster.wait_ok)
        # The retry, same key, same body: the landed events keep their ids, the missing
        # one is appended, nothing twice.
        deadline = time.monotonic() + 20
        while (
            retry := await client.post(f"{app.url}/publish", json=batch, headers=headers)
        ).status_code == 503:
            assert time.monotonic() < deadline, retry.text
            await asyncio.sleep(0.2)
        assert retry.status_code == 200, retry.text
        ids = {r["topic"]: r["id"] for r in retry.json()}
        assert {t: ids[t] for t in landed} == landed
        for topic in names:
            status = (await client.get(f"{app.url}/topics/{topic}")).json()
            assert status["length"] == 1


async def test_streaming_publishes_and_topic_expiry_work_on_every_shard(
    cluster: Cluster, heralds: HeraldLauncher
) -> None:
    topics = [f"s.{i}" for i in range(30)]
    assert {cluster.primary_of(t) for t in topics} == set(cluster.primaries())
    app = heralds(HERALD_TOPIC_TTL=600)
    ndjson = {"Content-Type": "application/x-ndjson"}
    body = b"".join(
        json.dumps({"topic": t, "event": "seq", "data": {"topic": t, "n": n}}).encode() + b"\n"
        for n in range(3)
        for t in topics
    )
    other_slot = next(
        t
        for t in topics
        if key_slot(b"herald:stream:" + t.encode()) != key_slot(b"herald:stream:s.0")
    )
    keyed = b"".join(json.dumps({"topic": "s.0", "data": n}).encode() + b"\n" for n in range(5))
    async with httpx.AsyncClient(timeout=30) as client:
        async with live(client, app.url, topics) as stream:
            answer = await client.post(f"{app.url}/publish", content=body, headers=ndjson)
            received = by_topic(await stream.collect(90, timeout=30))
        once = await client.post(
            f"{app.url}/publish", content=keyed, headers=ndjson | {"Idempotency-Key": "k"}
        )
        twice = await client.post(
            f"{app.url}/publish", content=keyed, headers=ndjson | {"Idempotency-Key": "k"}
        )
        spread = await client.post(
            f"{app.url}/publish",
            content=keyed + json.dumps({"topic": other_slot}).encode() + b"\n",
            headers=ndjson | {"Idempotency-Key": "k2"},
        )
    assert answer.status_code == 200, answer.text
    assert answer.json()["count"] == 90
    assert all(ns == [0, 1, 2] for ns in received.values()) and len(received) == 30
    assert once.status_code == twice.status_code == 200
    assert twice.json() == once.json()
    assert (spread.status_code, spread.json()["line"], spread.json()["count"]) == (422, 6, 5)
    for topic in topics:
        with redis.Redis(port=cluster.primary_of(topic)) as node:
            assert 0 < node.pttl(f"herald:stream:{topic}") <= 606_000
    with redis.Redis(port=cluster.primary_of("s.0")) as node:
        assert node.xlen("herald:stream:s.0") == 3 + 5 + 5


async def test_entries_xadded_directly_on_every_shard_arrive_through_the_change_feed(
    cluster: Cluster, heralds: HeraldLauncher
) -> None:
    topics: dict[int, str] = {}
    for i in range(100):
        topics.setdefault(cluster.primary_of(f"d.{i}"), f"d.{i}")
    names = sorted(topics.values())
    victim = cluster.primary_of(names[0])
    # Only a notification makes the hub read within the test: its sweep waits a minute.
    app = heralds(HERALD_READER_BLOCK_MS=60_000)
    producer = redis.RedisCluster(host="127.0.0.1", port=cluster.live()[0].port, socket_timeout=2)

    def xadd_all(n: int) -> None:
        for topic in names:
            data = json.dumps({"topic": topic, "n": n})
            producer.xadd(f"herald:stream:{topic}", {"event": "seq", "data": data})

    async with httpx.AsyncClient(timeout=30) as client, live(client, app.url, names) as stream:
        xadd_all(0)
        assert by_topic(await stream.collect(3, timeout=30)) == {t: [0] for t in names}
        xadd_all(1)
        assert by_topic(await stream.collect(3, timeout=30)) == {t: [1] for t in names}
        # A failover: the change feed follows the new primary, and misses nothing there.
        cluster.kill(victim)
        await asyncio.to_thread(cluster.wait_ok, False)
        producer.nodes_manager.initialize()
        xadd_all(2)
        assert by_topic(await stream.collect(3, timeout=30)) == {t: [2] for t in names}
        cluster.restart(victim)
        await asyncio.to_thread(cluster.wait_ok)
    producer.close()
    assert "keyspace notifications" in app.logs()


async def test_mercure_updates_and_their_id_index_live_on_one_slot_of_a_cluster(
    cluster: Cluster, heralds: HeraldLauncher
) -> None:
    slots = {key_slot(key) for key in (b"herald:stream:{mercure}", MERCURE_IDS, MERCURE_ORDER)}
    assert len(slots) == 1
    a = heralds(**SETTINGS)
    b = heralds(**SETTINGS)
    form = {"Authorization": f"Bearer {PUBLISHER}"}
    async with httpx.AsyncClient(timeout=30) as client:
        params = {"match_urlpattern": "https://example.com/books/:id"}
        async with SSEStream(client, f"{b.url}{HUB}", params=params) as stream:
            for n in range(3):
                answer = await client.post(
                    f"{a.url}{HUB}",
                    data={
                        "topic": f"https://example.com/books/{n}",
                        "data": str(n),
                        "id": f"c-{n}",
                    },
                    headers=form,
                )
                assert answer.status_code == 200, answer.text
            assert [e.id for e in await stream.collect(3)] == ["c-0", "c-1", "c-2"]
        resume = {"Last-Event-ID": "c-0"}
        async with SSEStream(client, f"{a.url}{HUB}", params=params, headers=resume) as stream:
            assert stream.response.headers["mercure-last-event-id"] == "c-0"
            assert [e.data for e in await stream.collect(2)] == ["1", "2"]
