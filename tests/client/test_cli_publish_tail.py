"""`herald publish` and `herald tail` as a user runs them: real processes, real sockets."""

from __future__ import annotations

import asyncio
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import jwt
import pytest
import redis

from service.storage.keys import stream_key
from tests.conftest import ROOT, Herald, HeraldFactory, RedisServer, metric
from tests.sse import SSEStream

pytestmark = pytest.mark.integration

HERALD = [sys.executable, "-m", "service"]
WAIT = 15.0
"""Seconds any single expected line may take."""


def herald_cli(*args: str, stdin: str = "", **env: str) -> subprocess.CompletedProcess[str]:
    """Run `herald ARGS…` to completion; `env` adds `HERALD_*` variables."""
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")} | env
    return subprocess.run(
        [*HERALD, *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=child_env,
        timeout=60,
    )


class TailProcess:
    """A running `herald tail`, its stdout read line by line in the background."""

    def __init__(self, args: list[str], stderr_path: Path) -> None:
        self.stderr_path = stderr_path
        env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
        with stderr_path.open("w") as stderr:
            self.proc = subprocess.Popen(
                [*HERALD, "tail", *args],
                stdout=subprocess.PIPE,
                stderr=stderr,
                stdin=subprocess.DEVNULL,
                text=True,
                cwd=ROOT,
                env=env,
            )
        self._lines: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line.rstrip("\n"))

    def lines(self, n: int, timeout: float = WAIT) -> list[str]:
        """The next `n` lines, all within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        got: list[str] = []
        while len(got) < n:
            try:
                got.append(self._lines.get(timeout=max(deadline - time.monotonic(), 0.01)))
            except queue.Empty:
                raise AssertionError(
                    f"got {len(got)} of {n} lines: {got!r}; stderr: {self.stderr()!r}"
                ) from None
        return got

    def expect_silence(self, seconds: float) -> None:
        time.sleep(seconds)
        extra = [self._lines.get_nowait() for _ in range(self._lines.qsize())]
        assert extra == [], f"unexpected lines: {extra!r}"

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(WAIT)

    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def close(self) -> None:
        """Kill it if it still runs, and release its pipe."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(WAIT)
        self._reader.join(WAIT)
        assert self.proc.stdout is not None
        self.proc.stdout.close()


@pytest.fixture
def tail(tmp_path: Path) -> Iterator[Callable[..., TailProcess]]:
    """Factory: `tail("topic", "--url", url)` starts `herald tail`; all are killed at teardown."""
    started: list[TailProcess] = []

    def start(*args: str) -> TailProcess:
        started.append(TailProcess(list(args), tmp_path / f"tail-{len(started)}.stderr"))
        return started[-1]

    yield start
    for process in started:
        process.close()


def subscribers(app: Herald) -> float:
    return metric(httpx.get(f"{app.url}/metrics").text, "herald_subscribers")


def wait_for_subscribers(app: Herald, count: float) -> None:
    """Until `count` streams are open on `app`, so that live events reach them."""
    deadline = time.monotonic() + WAIT
    while subscribers(app) < count:
        assert time.monotonic() < deadline, f"not {count} subscribers within {WAIT} s"
        time.sleep(0.05)


def publish(app: Herald, topic: str, data: str, event: str = "message") -> str:
    answer = httpx.post(f"{app.url}/publish", json={"topic": topic, "event": event, "data": data})
    answer.raise_for_status()
    return str(answer.json()["id"])


# --------------------------------------------------------------------------- publish


async def test_publish_prints_the_id_a_subscriber_receives(default_herald: Herald) -> None:
    async with (
        httpx.AsyncClient() as http,
        SSEStream(http, f"{default_herald.url}/events", params={"topic": "alerts"}) as stream,
    ):
        done = herald_cli(
            "publish", "alerts", "disk full", "--event", "alert", "--url", default_herald.url
        )
        (event,) = await stream.collect(1)
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert done.stdout == json.dumps(answer) + "\n", "one JSON line"
    assert answer == {"topic": "alerts", "id": event.id}
    assert (event.event, event.data) == ("alert", "disk full")


def test_publish_reads_stdin_and_json_and_herald_url(
    default_herald: Herald, flushed_redis: RedisServer
) -> None:
    env = {"HERALD_URL": default_herald.url}
    text = herald_cli("publish", "logs.api", "-", stdin="GET /\n200 OK\n", **env)
    value = herald_cli("publish", "stocks.AAPL", "-", "--json", stdin='{"price": 189.2}', **env)
    assert (text.returncode, value.returncode) == (0, 0), text.stderr + value.stderr
    store = redis.Redis.from_url(flushed_redis.url, decode_responses=True)
    with store:
        (logged,) = store.xrange(stream_key("logs.api"))
        (ticked,) = store.xrange(stream_key("stocks.AAPL"))
    assert logged == (json.loads(text.stdout)["id"], {"event": "message", "data": "GET /\n200 OK"})
    assert ticked[1]["data"] == '{"price":189.2}'


def test_publish_invalid_json_exits_1_and_sends_nothing(
    default_herald: Herald, flushed_redis: RedisServer
) -> None:
    done = herald_cli("publish", "t", "{price: 1}", "--json", "--url", default_herald.url)
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr.startswith("herald publish: DATA is not valid JSON: ")
    assert done.stderr.count("\n") == 1
    with redis.Redis.from_url(flushed_redis.url) as store:
        assert store.exists(stream_key("t")) == 0


def test_an_event_refused_before_sending_exits_1_like_one_herald_refuses(
    default_herald: Herald,
) -> None:
    done = herald_cli("publish", "bad topic", "x", "--url", default_herald.url)
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr.startswith("herald publish: invalid event: topic: String should match")
    assert done.stderr.count("\n") == 1


def test_a_usage_error_exits_2() -> None:
    missing = herald_cli("publish", "only-a-topic")
    assert (missing.returncode, missing.stdout) == (2, "")
    assert missing.stderr == "herald publish: TOPIC and DATA are required (or --ndjson)\n"
    unknown = herald_cli("publish", "t", "x", "--colour", "red")
    assert unknown.returncode == 2
    assert "unrecognized arguments: --colour red" in unknown.stderr


def test_publish_rejected_exits_1_with_one_line(default_herald: Herald) -> None:
    url = ["--url", default_herald.url, "--idempotency-key", "order-7"]
    assert herald_cli("publish", "orders", "first", *url).returncode == 0
    done = herald_cli("publish", "orders", "second", *url)
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == (
        "herald publish: Herald rejected the request (422): "
        "this Idempotency-Key was used for another body\n"
    )


PRODUCER = """
import json, sys
for n in range(5):
    print(json.dumps({"topic": "build.7", "event": "log", "data": f"step {n}"}), flush=True)
    if n == 0:
        sys.stdin.readline()  # the rest comes once the test saw the first line arrive
"""


async def test_publish_ndjson_streams_each_line_as_the_producer_writes_it(
    default_herald: Herald,
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
    pipe_out, pipe_in = os.pipe()
    async with (
        httpx.AsyncClient() as http,
        SSEStream(http, f"{default_herald.url}/events", params={"topic": "build.7"}) as stream,
    ):
        # some-producer | herald publish --ndjson
        producer = await asyncio.create_subprocess_exec(
            sys.executable, "-c", PRODUCER, stdin=subprocess.PIPE, stdout=pipe_in
        )
        publisher = await asyncio.create_subprocess_exec(
            *HERALD,
            "publish",
            "--ndjson",
            "--url",
            default_herald.url,
            stdin=pipe_out,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=ROOT,
            env=env,
        )
        os.close(pipe_out)
        os.close(pipe_in)
        assert producer.stdin is not None
        try:
            first = await stream.next_event(timeout=WAIT)
            producer.stdin.write(b"go\n")
            producer.stdin.close()
            out, err = await asyncio.wait_for(publisher.communicate(), WAIT)
            rest = await stream.collect(4)
        finally:
            for proc in (producer, publisher):
                if proc.returncode is None:
                    proc.kill()
                await proc.wait()
    events = [first, *rest]
    assert publisher.returncode == 0, err
    assert [(e.event, e.data) for e in events] == [("log", f"step {n}") for n in range(5)]
    assert out.decode() == json.dumps({"count": 5, "last": {"build.7": events[-1].id}}) + "\n"


def test_publish_ndjson_stops_at_a_line_that_is_not_an_event_and_names_it(
    default_herald: Herald, flushed_redis: RedisServer
) -> None:
    lines = '{"topic": "t", "data": 1}\n\n{"topic": "t", "data": \n{"topic": "t", "data": 3}\n'
    done = herald_cli("publish", "--ndjson", "--url", default_herald.url, stdin=lines)
    usage = herald_cli("publish", "t", "--ndjson", "--url", default_herald.url)
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr.startswith("herald publish: line 3 is not a valid event: Invalid JSON")
    assert done.stderr.endswith("; 1 event before it published\n")
    assert done.stderr.count("\n") == 1
    with redis.Redis.from_url(flushed_redis.url, decode_responses=True) as store:
        assert [fields["data"] for _, fields in store.xrange(stream_key("t"))] == ["1"]
    assert usage.returncode == 2
    assert (
        usage.stderr
        == "herald publish: with --ndjson each line is a whole event: no TOPIC or DATA\n"
    )


def test_publish_ndjson_names_the_input_line_herald_refused(herald: HeraldFactory) -> None:
    secret = "a-secret-long-enough-for-hs256-keys"
    app = herald(HERALD_JWT_KEY=secret)
    token = jwt.encode({"herald": {"publish": ["chat.*"]}}, secret)
    lines = '\n{"topic": "chat.1", "data": "a"}\n\n{"topic": "logs.x", "data": "b"}\n'
    done = herald_cli("publish", "--ndjson", stdin=lines, HERALD_URL=app.url, HERALD_TOKEN=token)
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == (
        "herald publish: Herald rejected line 4 (403): the token may not publish to: logs.x; "
        "1 event before it published\n"
    )


# --------------------------------------------------------------------------- tail


def test_tail_prints_events_as_they_arrive_and_stops_quietly(
    default_herald: Herald, tail: Callable[..., TailProcess]
) -> None:
    url = ["--url", default_herald.url]
    already = subscribers(default_herald)
    plain = tail("chat", *url)
    as_json = tail("chat", "--json", *url)
    wait_for_subscribers(default_herald, already + 2)
    first = publish(default_herald, "chat", "hello\nworld", event="token")
    second = publish(default_herald, "chat", '{"n": 1}')
    assert plain.lines(2) == [f"{first} token hello\\nworld", f'{second} message {{"n": 1}}']
    assert [json.loads(line) for line in as_json.lines(2)] == [
        {"id": first, "event": "token", "data": "hello\nworld"},
        {"id": second, "event": "message", "data": '{"n": 1}'},
    ]
    assert (plain.stop(signal.SIGTERM), as_json.stop(signal.SIGINT)) == (0, 0)
    assert (plain.stderr(), as_json.stderr()) == ("", "")


def test_tail_resumes_after_herald_restarts_with_no_gap_and_no_duplicate(
    herald: HeraldFactory, flushed_redis: RedisServer, tail: Callable[..., TailProcess]
) -> None:
    settings = {"HERALD_RETRY_MS": 200}
    app = herald(**settings)
    follower = tail("orders", "--url", app.url)
    wait_for_subscribers(app, 1)
    before = [publish(app, "orders", f"before {n}") for n in range(2)]
    assert [line.split()[0] for line in follower.lines(2)] == before

    app.proc.kill()
    app.proc.wait(WAIT)
    # Meanwhile a producer writes straight into Redis, as the contract allows.
    with redis.Redis.from_url(flushed_redis.url, decode_responses=True) as store:
        missed = [
            store.xadd(stream_key("orders"), {"event": "message", "data": f"missed {n}"})
            for n in range(2)
        ]
    restarted = herald(port=app.port, **settings)
    wait_for_subscribers(restarted, 1)
    after = publish(restarted, "orders", "after")

    assert follower.lines(3) == [
        f"{missed[0]} message missed 0",
        f"{missed[1]} message missed 1",
        f"{after} message after",
    ]
    follower.expect_silence(0.5)
    assert "reconnecting in" in follower.stderr()
    assert follower.stop() == 0


def test_tail_from_start_prints_retained_history_then_live_events(
    default_herald: Herald, tail: Callable[..., TailProcess]
) -> None:
    url = ["--url", default_herald.url]
    history = [publish(default_herald, topic, topic) for topic in ("a", "b", "a")]
    one = tail("a", "--from-start", *url)
    both = tail("a", "b", "--from-start", *url)
    assert one.lines(2) == [f"{history[0]} message a", f"{history[2]} message a"]
    assert [line.split(" ", 1)[1] for line in both.lines(3)] == [
        "message a",
        "message b",
        "message a",
    ]
    publish(default_herald, "b", "live")
    assert both.lines(1)[0].endswith(" message live")
    one.expect_silence(0.3)
    assert [one.stop(), both.stop()] == [0, 0]


def test_tail_last_event_id_resumes_after_it(
    default_herald: Herald, tail: Callable[..., TailProcess]
) -> None:
    ids = [publish(default_herald, "t", str(n)) for n in range(3)]
    follower = tail("t", "--last-event-id", ids[0], "--url", default_herald.url)
    assert follower.lines(2) == [f"{ids[1]} message 1", f"{ids[2]} message 2"]
    assert follower.stop() == 0


def test_tail_refused_subscription_exits_1_with_one_line(default_herald: Herald) -> None:
    done = herald_cli("tail", "t", "--last-event-id", "yesterday", "--url", default_herald.url)
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr.startswith("herald tail: Herald rejected the request (400): ")
    assert done.stderr.count("\n") == 1
