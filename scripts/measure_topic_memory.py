#!/usr/bin/env python3
"""What one-answer topics cost Redis, and what HERALD_TOPIC_TTL gives back.

Starts a redis-server and a Herald on it with `HERALD_TOPIC_TTL=--ttl`, publishes
`--topics` topics of `--events` events each (batches of 1,000 over HTTP), then waits for
the topics to expire. Prints Redis's `used_memory` and key count at each step.

    .venv/bin/python scripts/measure_topic_memory.py [--topics 100000] [--events 1] [--ttl 20]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import httpx
from benchlib.procs import BenchError
from benchlib.redis_server import RedisServer
from benchlib.servers import running_server

BATCH = 1000


def used_memory(redis: RedisServer) -> int:
    info = redis.command("INFO", "memory").decode()
    return int(info.split("used_memory:", 1)[1].split("\r\n", 1)[0])


def keys(redis: RedisServer) -> int:
    return int(redis.command("DBSIZE").lstrip(b":"))


def publish_answers(url: str, topics: int, events: int) -> None:
    """`topics` topics `answer.<n>` of `events` token events each, in batches."""
    batch: list[dict[str, object]] = []
    with httpx.Client(base_url=url, timeout=60) as client:
        for n in range(topics):
            for i in range(events):
                batch.append({"topic": f"answer.{n}", "event": "token", "data": f" token {i}"})
                if len(batch) == BATCH:
                    _post(client, batch)
                    batch = []
        if batch:
            _post(client, batch)


def _post(client: httpx.Client, batch: list[dict[str, object]]) -> None:
    answer = client.post("/publish", json=batch)
    if answer.status_code != 200:
        raise BenchError(f"publish answered {answer.status_code}: {answer.text[:200]}")


def _mb(n: int) -> str:
    return f"{n / 1e6:8.1f} MB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--topics", type=int, default=100_000)
    parser.add_argument("--events", type=int, default=1, help="events per topic")
    parser.add_argument("--ttl", type=int, default=20, help="HERALD_TOPIC_TTL in seconds")
    args = parser.parse_args()
    # running_server passes the environment on to Herald.
    os.environ["HERALD_TOPIC_TTL"] = str(args.ttl)
    with (
        tempfile.TemporaryDirectory(prefix="herald-memory-") as tmp,
        running_server("herald", Path(tmp), None, None) as server,
    ):
        redis = server.redis
        assert redis is not None
        url = f"http://127.0.0.1:{server.port}"
        empty, own_keys = used_memory(redis), keys(redis)
        print(f"{args.topics} topics x {args.events} events, HERALD_TOPIC_TTL={args.ttl}")
        print(f"empty:           {_mb(empty)}  {own_keys:>7} keys (Herald's own)")
        started = time.monotonic()
        publish_answers(url, args.topics, args.events)
        published = time.monotonic()
        full = used_memory(redis)
        print(
            f"published:       {_mb(full)}  {keys(redis):>7} keys  "
            f"({(full - empty) / args.topics:.0f} B a topic, {published - started:.0f} s)"
        )
        deadline = published + args.ttl * 1.01 + 60 + 30
        while keys(redis) > own_keys and time.monotonic() < deadline:
            time.sleep(1)
        gone = time.monotonic() - published
        left = keys(redis) - own_keys
        if left:
            print(f"after {gone:.0f} s:    {_mb(used_memory(redis))}  {left:>7} topics left")
        else:
            print(
                f"after expiry:    {_mb(used_memory(redis))}  {keys(redis):>7} keys  "
                f"(every topic gone {gone:.0f} s after the last publish)"
            )


if __name__ == "__main__":
    main()
