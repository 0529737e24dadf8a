#!/usr/bin/env python3
"""Broadcast throughput: N subscribers on one topic, a burst of events, deliveries per second.

Starts its own redis-server and `herald serve` (one worker) on loopback ports, opens N
SSE connections with a lean asyncio client, publishes a burst of events in one batch
and measures the time until every subscriber holds every event. Each run checks that
every subscriber got every id, in order, once.

    python scripts/bench_fanout.py --subscribers 1 1000 --events 100 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

try:
    import uvloop
except ImportError:  # pragma: no cover - uvicorn[standard] brings it
    uvloop = None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{url} never became ready")


class Subscriber(asyncio.Protocol):
    """Counts `id:` lines; keeps the ids to check order and completeness."""

    def __init__(self, expected: int, done: asyncio.Future[None] | None) -> None:
        self.buffer = b""
        self.ids: list[bytes] = []
        self.expected = expected
        self.done = done
        self.headers_seen = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.headers_seen.done() and b"retry:" in self.buffer:
            self.headers_seen.set_result(None)
        *lines, self.buffer = self.buffer.split(b"\n")
        for line in lines:
            if line.startswith(b"id: "):
                self.ids.append(line[4:].rstrip(b"\r"))
        if self.done and len(self.ids) >= self.expected and not self.done.done():
            self.done.set_result(None)


async def run_round(
    port: int, subscribers: int, events: int, topic: str, one_by_one: bool
) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    request = (
        f"GET /events?topic={topic} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Accept: text/event-stream\r\n\r\n"
    ).encode()
    protocols: list[Subscriber] = []
    transports = []
    dones = [loop.create_future() for _ in range(subscribers)]
    for i in range(0, subscribers, 200):
        batch = []
        for done in dones[i : i + 200]:
            transport, protocol = await loop.create_connection(
                lambda d=done: Subscriber(events, d), "127.0.0.1", port
            )
            transport.write(request)
            transports.append(transport)
            protocols.append(protocol)
            batch.append(protocol.headers_seen)
        await asyncio.wait_for(asyncio.gather(*batch), 30)
    payload = [{"topic": topic, "event": "tick", "data": {"n": n}} for n in range(events)]
    cpu0 = time.process_time()
    started = time.perf_counter()
    ids = await loop.run_in_executor(None, publish, port, payload, one_by_one)
    await asyncio.wait_for(asyncio.gather(*dones), 120)
    elapsed = time.perf_counter() - started
    client_cpu = time.process_time() - cpu0
    for transport in transports:
        transport.close()
    expected = [i.encode() for i in ids]
    bad = sum(1 for p in protocols if p.ids != expected)
    if bad:
        raise SystemExit(f"{bad} subscribers did not get exactly the published ids in order")
    return {
        "deliveries_per_s": subscribers * events / elapsed,
        "elapsed_s": elapsed,
        "client_cpu_share": client_cpu / elapsed,
    }


def publish(port: int, payload: list[dict[str, object]], one_by_one: bool) -> list[str]:
    """One batch POST, or one POST per event back to back on a kept-alive connection."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Content-Type": "application/json"}
    bodies = [json.dumps(e) for e in payload] if one_by_one else [json.dumps(payload)]
    ids = []
    for body in bodies:
        connection.request("POST", "/publish", body, headers)
        answer = json.load(connection.getresponse())
        ids.extend(item["id"] for item in (answer if isinstance(answer, list) else [answer]))
    connection.close()
    return ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, nargs="+", default=[1, 1000])
    parser.add_argument("--events", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--publish",
        choices=["batch", "one-by-one"],
        default="one-by-one",
        help="one POST with all events, or one POST per event back to back",
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    redis_server = shutil.which("redis-server")
    if redis_server is None:
        raise SystemExit("redis-server is not installed (scripts/install installs it)")

    workdir = Path(tempfile.mkdtemp(prefix="herald-bench-"))
    redis_port, herald_port = free_port(), free_port()
    redis_proc = subprocess.Popen(
        [
            redis_server,
            "--port",
            str(redis_port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        stdout=subprocess.DEVNULL,
    )
    env = dict(
        os.environ, HERALD_REDIS_URL=f"redis://127.0.0.1:{redis_port}/0", HERALD_LOG_LEVEL="warning"
    )
    herald = subprocess.Popen(
        [sys.executable, "-m", "service", "serve", "--port", str(herald_port)],
        env=env,
        stderr=(workdir / "herald.log").open("wb"),
    )
    results = []
    try:
        wait_http(f"http://127.0.0.1:{herald_port}/readyz")
        run = uvloop.run if uvloop else asyncio.run
        for n in args.subscribers:
            rounds = [
                run(
                    run_round(
                        herald_port, n, args.events, f"bench.{n}.{r}", args.publish == "one-by-one"
                    )
                )
                for r in range(args.rounds)
            ]
            best = max(rounds, key=lambda r: r["deliveries_per_s"])
            results.append(
                {
                    "publish": args.publish,
                    "subscribers": n,
                    "events": args.events,
                    "deliveries_per_s_median": statistics.median(
                        r["deliveries_per_s"] for r in rounds
                    ),
                    "deliveries_per_s_best": best["deliveries_per_s"],
                    "burst_seconds_median": statistics.median(r["elapsed_s"] for r in rounds),
                    "client_cpu_share": statistics.median(r["client_cpu_share"] for r in rounds),
                }
            )
    finally:
        herald.terminate()
        herald.wait(15)
        redis_proc.terminate()
        redis_proc.wait(5)

    print(f"publish: {args.publish}")
    print(
        f"{'subscribers':>11} {'events':>6} {'deliveries/s (median)':>22} "
        f"{'best':>10} {'burst s':>8} {'client CPU':>10}"
    )
    for r in results:
        print(
            f"{r['subscribers']:>11} {r['events']:>6} {r['deliveries_per_s_median']:>22,.0f} "
            f"{r['deliveries_per_s_best']:>10,.0f} {r['burst_seconds_median']:>8.3f} "
            f"{r['client_cpu_share']:>10.0%}"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
