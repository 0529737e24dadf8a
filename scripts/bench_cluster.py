#!/usr/bin/env python3
"""What Herald asks of Redis on one server and on a three-primary Cluster, for the
capacity model (docs/scaling.md).

    .venv/bin/python scripts/bench_cluster.py --topics 1000 --subscribers 2000 --rate 1000

For each deployment it starts Redis and one `herald serve` process, opens the
subscribers (one topic each, topics round robin), publishes `--rate` events a second in
batches for `--seconds`, and prints: events published and delivered, Redis commands per
published event (INFO commandstats over all nodes), Redis client connections, and
Herald's CPU time per published event and per delivery.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import redis

ROOT = Path(__file__).resolve().parent.parent
BATCH = 50


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--topics", type=int, default=1000)
    parser.add_argument("--subscribers", type=int, default=2000)
    parser.add_argument("--rate", type=int, default=1000, help="events published a second")
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    rows = []
    for deployment in ("one server", "cluster, 3 primaries"):
        with tempfile.TemporaryDirectory(prefix="herald-bench-") as work:
            ports = start_redis(Path(work), cluster=deployment.startswith("cluster"))
            url = (
                f"redis://127.0.0.1:{ports[0]}"
                if len(ports) == 1
                else "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in ports)
            )
            rows.append((deployment, asyncio.run(measure(url, ports, args))))
    print(
        f"\n{args.topics} topics, {args.subscribers} subscribers (one topic each), "
        f"{args.rate} events/s for {args.seconds:g} s, batches of {BATCH}\n"
    )
    header = (
        "deployment",
        "published",
        "delivered",
        "Redis cmds/event",
        "Redis conns",
        "Herald CPU µs/event",
        "µs/delivery",
    )
    print(" | ".join(header))
    for deployment, r in rows:
        print(
            f"{deployment} | {r['published']} | {r['delivered']} | "
            f"{r['commands'] / r['published']:.2f} | {r['connections']} | "
            f"{r['cpu'] / r['published'] * 1e6:.0f} | {r['cpu'] / max(r['delivered'], 1) * 1e6:.1f}"
        )


def start_redis(work: Path, cluster: bool) -> list[int]:
    ports = [bus_free_port() for _ in range(3 if cluster else 1)]
    for port in ports:
        options = ["--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf"]
        subprocess.run(
            [
                "redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", str(work), "--daemonize", "yes",
                "--logfile", str(work / f"redis-{port}.log"),
                *(options if cluster else []),
            ],
            check=True,
        )  # fmt: skip
    for port in ports:
        wait_for(lambda p=port: ping(p), f"redis-server :{port}")
    if cluster:
        subprocess.run(
            ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports),
             "--cluster-yes"],
            check=True,
            capture_output=True,
        )  # fmt: skip
        wait_for(lambda: all(cluster_ok(p) for p in ports), "cluster_state:ok")
    return ports


async def measure(url: str, ports: list[int], args: argparse.Namespace) -> dict[str, float]:
    topics = [f"bench.{i}" for i in range(args.topics)]
    try:
        with herald(url) as (base, pid):
            counts = [0] * args.subscribers
            readers = [
                asyncio.create_task(subscribe(base, topics[i % len(topics)], counts, i))
                for i in range(args.subscribers)
            ]
            await wait_subscribed(base, args.subscribers)
            commands, cpu = redis_commands(ports), cpu_seconds(pid)
            published = await publish(base, topics, args.rate, args.seconds)
            await asyncio.sleep(1.0)  # the last deliveries
            result = {
                "published": published,
                "delivered": sum(counts),
                "commands": redis_commands(ports) - commands,
                "connections": sum(connected_clients(p) for p in ports),
                "cpu": cpu_seconds(pid) - cpu,
            }
            for reader in readers:
                reader.cancel()
            await asyncio.gather(*readers, return_exceptions=True)
            return result
    finally:
        for port in ports:
            with redis.Redis(port=port) as client:
                client.shutdown(nosave=True)


@contextmanager
def herald(url: str) -> Iterator[tuple[str, int]]:
    port = bus_free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
    env |= {"HERALD_REDIS_URL": url, "HERALD_MAX_STREAMS": "100000", "HERALD_LOG_LEVEL": "warning"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "service", "serve", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: ready(base), "herald /readyz")
        yield base, proc.pid
    finally:
        proc.terminate()
        proc.wait(20)


async def subscribe(base: str, topic: str, counts: list[int], index: int) -> None:
    """Holds one stream and counts its events, reading raw bytes to stay cheap."""
    host, port = base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(f"GET /events?topic={topic} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
    tail = b""
    while data := await reader.read(65536):
        chunk = tail + data
        counts[index] += chunk.count(b"event: seq\n")
        tail = chunk[-16:]
        counts[index] -= tail.count(b"event: seq\n")


async def wait_subscribed(base: str, subscribers: int) -> None:
    async with httpx.AsyncClient() as client:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            metrics = (await client.get(f"{base}/metrics")).text
            line = next(m for m in metrics.splitlines() if m.startswith("herald_subscribers "))
            if float(line.split()[1]) >= subscribers:
                return
            await asyncio.sleep(0.2)
    raise SystemExit("the subscribers did not all connect")


async def publish(base: str, topics: list[str], rate: int, seconds: float) -> int:
    published = 0
    interval = BATCH / rate
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        start = time.monotonic()
        next_at = start
        while time.monotonic() - start < seconds:
            batch = [
                {"topic": random.choice(topics), "event": "seq", "data": published + i}
                for i in range(BATCH)
            ]
            answer = await client.post("/publish", json=batch)
            answer.raise_for_status()
            published += BATCH
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
    return published


def redis_commands(ports: list[int]) -> int:
    total = 0
    for port in ports:
        with redis.Redis(port=port) as client:
            for name, stats in client.info("commandstats").items():
                if name not in ("cmdstat_info", "cmdstat_cluster"):
                    total += int(stats["calls"])
    return total


def connected_clients(port: int) -> int:
    with redis.Redis(port=port) as client:
        return int(client.info("clients")["connected_clients"]) - 1


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bus_free_port() -> int:
    """A free port whose cluster bus port (10,000 higher) is free too."""
    while True:
        port = random.randint(20_000, 55_535)
        with socket.socket() as a, socket.socket() as b:
            try:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 10_000))
            except OSError:
                continue
            return port


def ping(port: int) -> bool:
    try:
        with redis.Redis(port=port, socket_timeout=1) as client:
            return bool(client.ping())
    except redis.RedisError:
        return False


def cluster_ok(port: int) -> bool:
    with redis.Redis(port=port, decode_responses=True) as client:
        return "cluster_state:ok" in client.execute_command("CLUSTER", "INFO")


def ready(base: str) -> bool:
    try:
        return httpx.get(f"{base}/readyz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def wait_for(condition: object, what: str, timeout: float = 30) -> None:
    assert callable(condition)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise SystemExit(f"bench: {what} not ready within {timeout} s")


if __name__ == "__main__":
    if shutil.which("redis-cli") is None:
        raise SystemExit("bench: redis-server and redis-cli are needed")
    main()
