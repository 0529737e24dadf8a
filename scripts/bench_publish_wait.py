#!/usr/bin/env python3
"""What HERALD_PUBLISH_REPLICAS costs a publish: latency and throughput, with and without WAIT.

A primary and a replica (redis-server, loopback, no persistence) and one Herald process
on the primary, started once per setting. Latency: POST /publish from httpx, one request
at a time. Throughput: the C load generator (scripts/benchlib/loadgen.c) with
`--concurrency` requests in flight on keep-alive connections.

    .venv/bin/python scripts/bench_publish_wait.py [--requests 2000] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
from benchlib.build import build_loadgen
from benchlib.loadgen import publish as loadgen_publish
from benchlib.procs import BenchError, Process, free_port, wait_http

REPO = Path(__file__).resolve().parent.parent


def redis_server(workdir: Path, *options: str) -> tuple[Process, int]:
    port = free_port()
    directory = workdir / f"redis-{port}"
    directory.mkdir()
    cmd = [
        "redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
        "--appendonly", "no", "--dir", str(directory), "--repl-diskless-sync-delay", "0",
        *options,
    ]  # fmt: skip
    process = Process("redis-server", cmd, directory / "log")
    deadline = time.monotonic() + 10
    while not _answers(port, b"PING", b"+PONG"):
        process.check_alive()
        if time.monotonic() > deadline:
            raise BenchError(f"redis-server :{port} did not answer PING")
        time.sleep(0.05)
    return process, port


def _answers(port: int, command: bytes, expected: bytes) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"*1\r\n$%d\r\n%s\r\n" % (len(command), command))
            return expected in sock.recv(4096)
    except OSError:
        return False


def wait_replica_online(primary: int) -> None:
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", primary), timeout=1) as sock:
                sock.sendall(b"*2\r\n$4\r\nINFO\r\n$11\r\nreplication\r\n")
                if b"state=online" in sock.recv(4096):
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise BenchError("the replica did not come online")
        time.sleep(0.05)


def herald(workdir: Path, redis_port: int, replicas: int) -> tuple[Process, int]:
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("HERALD_")},
        "HERALD_REDIS_URL": f"redis://127.0.0.1:{redis_port}",
        "HERALD_PUBLISH_REPLICAS": str(replicas),
        "HERALD_LOG_LEVEL": "warning",
    }
    cmd = [sys.executable, "-m", "service", "serve", "--port", str(port)]
    process = Process("herald", cmd, workdir / f"herald-{port}.log", cwd=REPO, env=env)
    wait_http(process, f"http://127.0.0.1:{port}/readyz", {200})
    return process, port


async def publish(client: httpx.AsyncClient, url: str, n: int) -> float:
    start = time.perf_counter()
    answer = await client.post(f"{url}/publish", json={"topic": "bench", "data": n})
    if answer.status_code != 200:
        raise BenchError(f"publish answered {answer.status_code}: {answer.text}")
    return time.perf_counter() - start


async def latencies(url: str, requests: int) -> list[float]:
    """Seconds each of `requests` publishes took, one at a time (after a warm-up)."""
    async with httpx.AsyncClient(timeout=10) as client:
        for n in range(200):
            await publish(client, url, n)
        return [await publish(client, url, n) for n in range(requests)]


def _ms(seconds: float) -> float:
    return seconds * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    if shutil.which("redis-server") is None:
        raise SystemExit("bench: redis-server is not installed (apt-get install redis-server)")
    with tempfile.TemporaryDirectory(prefix="herald-wait-") as tmp:
        workdir = Path(tmp)
        loadgen = build_loadgen(workdir)
        primary, primary_port = redis_server(workdir)
        replica, _ = redis_server(workdir, "--replicaof", "127.0.0.1", str(primary_port))
        try:
            wait_replica_online(primary_port)
            print(
                "HERALD_PUBLISH_REPLICAS  latency p50    p90    p99"
                f"  | events/s, {args.concurrency} in flight"
            )
            for replicas in (0, 1):
                process, port = herald(workdir, primary_port, replicas)
                try:
                    taken = asyncio.run(latencies(f"http://127.0.0.1:{port}", args.requests))
                    report = loadgen_publish(
                        loadgen, port, "herald", args.requests * 5, concurrency=args.concurrency
                    )
                finally:
                    process.stop()
                if report["errors"]:
                    raise BenchError(f"{report['errors']} publishes failed: {report}")
                p = statistics.quantiles(taken, n=100)
                print(
                    f"{replicas:>23}  {_ms(p[49]):>8.2f} ms {_ms(p[89]):>4.2f} ms "
                    f"{_ms(p[98]):>4.2f} ms  | {report['achieved_rate']:>8.0f}"
                )
        finally:
            replica.stop()
            primary.stop()


if __name__ == "__main__":
    main()
