"""Running a worker as its own process: `herald worker NAME`, outages, SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import redis

from tests.conftest import ROOT, HeraldFactory, RedisServer, metric

WorkerFactory = Callable[..., subprocess.Popen[bytes]]


@pytest.fixture
def worker(tmp_path: Path) -> Iterator[WorkerFactory]:
    """Factory: `worker("stocks", HERALD_X=...)` runs `herald worker stocks` until the end."""
    started: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(name: str, **env: str) -> subprocess.Popen[bytes]:
        child_env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
        log_path = tmp_path / f"{name}-{len(started)}.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "service", "worker", name],
                cwd=ROOT,
                env=child_env | env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        started.append((proc, log_path))
        return proc

    yield start
    for proc, log_path in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        print(log_path.read_text(errors="replace"))


def wait_for(condition: Callable[[], bool], what: str, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {within} s")
        time.sleep(0.05)


def ticks(url: str) -> int:
    with redis.Redis.from_url(url) as client:
        return int(client.xlen("herald:stream:stocks.AAPL"))


@pytest.mark.integration
def test_a_worker_waits_out_a_redis_outage_and_stops_cleanly_on_sigterm(
    worker: WorkerFactory, flushed_redis: RedisServer, tmp_path: Path
) -> None:
    proc = worker(
        "stocks",
        HERALD_REDIS_URL=flushed_redis.url,
        HERALD_STOCKS_SYMBOLS="AAPL=100",
        HERALD_STOCKS_RATE="20",
    )
    wait_for(lambda: ticks(flushed_redis.url) >= 5, "first ticks")
    flushed_redis.stop()
    time.sleep(1.5)
    assert proc.poll() is None, "the worker died with Redis"
    flushed_redis.start()  # no persistence: an empty Redis, so new ticks start a new stream
    wait_for(lambda: ticks(flushed_redis.url) >= 5, "ticks after Redis came back")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(5) == 0
    log = (tmp_path / "stocks-0.log").read_text()
    assert "retrying with backoff" in log
    assert "works again" in log


@pytest.mark.integration
def test_with_herald_url_a_worker_publishes_over_http(
    worker: WorkerFactory, herald: HeraldFactory, flushed_redis: RedisServer
) -> None:
    app = herald()
    proc = worker(
        "stocks", HERALD_URL=app.url, HERALD_STOCKS_SYMBOLS="AAPL=100", HERALD_STOCKS_RATE="20"
    )
    wait_for(lambda: ticks(flushed_redis.url) >= 5, "ticks published through Herald")
    with httpx.Client() as client:
        metrics = client.get(f"{app.url}/metrics").text
    assert metric(metrics, "herald_published_events_total") >= 5
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(5) == 0


def test_a_worker_with_nowhere_to_publish_says_what_to_set(
    worker: WorkerFactory, tmp_path: Path
) -> None:
    proc = worker("typewriter")
    assert proc.wait(10) == 1
    assert "set HERALD_REDIS_URL" in (tmp_path / "typewriter-0.log").read_text()


def test_an_unknown_worker_is_a_usage_error(worker: WorkerFactory) -> None:
    proc = worker("nope")
    assert proc.wait(10) == 2
