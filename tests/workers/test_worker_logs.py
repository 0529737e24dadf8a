"""The log lines worker: lines cut from any chunks alike, and files followed like `tail -F`
into a real redis-server (and through a real Herald), across rotation, truncation,
restarts, a crash between publish and mark, and a Redis outage."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pytest
import pytest_asyncio
import redis.asyncio as aioredis
from hypothesis import example, given
from hypothesis import strategies as st
from redis.exceptions import ConnectionError as RedisConnectionError

from service.models import PublishEvent
from service.settings import Settings
from service.storage.keys import stream_key, worker_mark
from service.storage.store import Store
from service.storage.stores import open_store
from tests.conftest import HeraldFactory, RedisServer
from workers.lines import MIN_LIMIT, Line, LineSplitter
from workers.logs import Limits, Source, parse_files, run
from workers.runtime import Runtime, run_until_stopped
from workers.sink import HttpSink, Sink, StoreSink

POLL_SECONDS = 0.02
WAIT_SECONDS = 15.0

# --------------------------------------------------------------------------- lines


def split(chunks: list[bytes], limit: int = MIN_LIMIT, offset: int = 0) -> list[Line]:
    """Every line of a file that holds `chunks` and will not grow again."""
    splitter = LineSplitter(offset, limit)
    lines = [line for chunk in chunks for line in splitter.feed(chunk)]
    return lines + list(splitter.finish())


def texts(lines: list[Line]) -> list[str]:
    return [line.text for line in lines]


def test_a_line_ends_at_lf_or_crlf_and_a_lone_cr_stays_in_it() -> None:
    lines = split([b"unix\ndos\r\nold\rmac\n\r\n"], limit=100)
    assert [(line.text, line.end) for line in lines] == [
        ("unix", 5),
        ("dos", 10),
        ("old\rmac", 18),
        ("", 20),
    ]


def test_a_partial_line_waits_for_its_end() -> None:
    splitter = LineSplitter(0, 100)
    assert texts(list(splitter.feed(b"first\nhal"))) == ["first"]
    assert splitter.offset == 6
    assert texts(list(splitter.feed(b"f"))) == []
    assert texts(list(splitter.feed(b"\r"))) == []
    assert [(line.text, line.end) for line in splitter.feed(b"\n")] == [("half", 12)]


def test_a_file_that_is_done_gives_its_unterminated_last_line() -> None:
    assert texts(split([b"one\ntw", b"o"])) == ["one", "two"]


def test_bytes_that_are_not_utf8_become_replacement_characters() -> None:
    assert texts(split([b"caf\xe9 \xff\xfe ok \xe2\x82\n"], limit=100)) == [
        "caf\ufffd \ufffd\ufffd ok \ufffd"
    ]


def test_a_long_line_is_split_where_characters_start_not_dropped() -> None:
    line = "é" * 20 + "x"  # 41 bytes: "é" is two
    lines = split([line.encode() + b"\n"], limit=MIN_LIMIT)
    assert "".join(texts(lines)) == line
    assert all(len(text.encode()) <= MIN_LIMIT for text in texts(lines))
    assert "\ufffd" not in "".join(texts(lines))
    assert lines[-1].end == len(line.encode()) + 1


# Line endings, multi-byte characters, bytes that are not UTF-8 and a control byte, mixed.
LOG_BYTES = [b"a", b"bc", b"\n", b"\r", b"\r\n", "é".encode(), "€".encode(), "😀".encode()]
LOG_BYTES += [b"\xff", b"\xe2\x82", b"\x80", b"\x01"]
file_bytes = st.one_of(
    st.lists(st.sampled_from(LOG_BYTES), max_size=120).map(b"".join),
    st.binary(max_size=200),
)


@st.composite
def chunked(draw: st.DrawFn) -> tuple[bytes, list[bytes]]:
    """File bytes and the same bytes cut at arbitrary places, as reads might see them."""
    data = draw(file_bytes)
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=12)))
    bounds = [0, *cuts, len(data)]
    return data, [data[a:b] for a, b in itertools.pairwise(bounds)]


@given(chunked())
def test_any_chunking_of_a_file_yields_the_same_lines(file: tuple[bytes, list[bytes]]) -> None:
    data, chunks = file
    assert split(chunks) == split([data])


@given(file_bytes)
def test_every_byte_lands_in_exactly_one_line_of_at_most_the_limit(data: bytes) -> None:
    start = 0
    for line in split([data]):
        raw = data[start : line.end]
        content = raw.removesuffix(b"\n")
        if content != raw:
            content = content.removesuffix(b"\r")
        assert len(content) <= MIN_LIMIT
        assert line.text == content.decode("utf-8", "replace")
        start = line.end
    assert start == len(data)


@given(file_bytes, st.data())
def test_a_range_between_two_line_ends_read_again_gives_the_same_lines(
    data: bytes, draw: st.DataObject
) -> None:
    # What a restart relies on to publish a pending batch again, byte for byte.
    lines = split([data])
    ends = [0, *(line.end for line in lines)]
    first = draw.draw(st.integers(0, len(lines)))
    last = draw.draw(st.integers(first, len(lines)))
    again = split([data[ends[first] : ends[last]]], offset=ends[first])
    assert again == lines[first:last]


@given(st.binary(max_size=3000), st.integers(min_value=107, max_value=2000))
@example(b"\x01" * 3000, 107)  # each byte JSON-escaped into six
def test_every_event_fits_max_event_bytes(data: bytes, max_event_bytes: int) -> None:
    limits = Limits.of(Settings(max_event_bytes=max_event_bytes))
    source = Source("app", Path("app.log"))
    for line in split([data], limit=limits.line_bytes):
        assert len(source.event(line).text.encode()) <= max_event_bytes


def test_files_are_named_name_equals_path() -> None:
    assert parse_files(" api=/var/log/api.log, web = /srv/web.log ,") == [
        Source("api", Path("/var/log/api.log")),
        Source("web", Path("/srv/web.log")),
    ]
    for bad in ("", "api", "=/x", "api=", "a b=/x", "api=/x,api=/y"):
        with pytest.raises(ValueError):
            parse_files(bad)


# --------------------------------------------------------------------------- following


@dataclass
class Worker:
    runtime: Runtime
    task: asyncio.Task[None]

    async def stop(self) -> None:
        self.runtime.stopping.set()
        await asyncio.wait_for(self.task, WAIT_SECONDS)


class StartWorker(Protocol):
    def __call__(
        self,
        files: str,
        *,
        redis: bool = True,
        url: str | None = None,
        wrap: Callable[[Sink], Sink] | None = None,
        **settings: Any,
    ) -> Awaitable[Worker]: ...


@pytest_asyncio.fixture
async def start_worker(flushed_redis: RedisServer) -> AsyncIterator[StartWorker]:
    """Starts the worker as a task: into Redis, or over HTTP to `url` (with Redis or not)."""
    workers: list[tuple[Worker, Store | None]] = []

    async def start(
        files: str,
        *,
        redis: bool = True,
        url: str | None = None,
        wrap: Callable[[Sink], Sink] | None = None,
        **settings: Any,
    ) -> Worker:
        config = Settings(
            redis_url=flushed_redis.url if redis else None,
            url=url,
            logs_files=files,
            logs_poll_seconds=POLL_SECONDS,
            **settings,
        )
        store = open_store(config) if redis else None
        if url is None:
            assert store is not None, "a worker needs Redis or Herald's URL"
            sink: Sink = StoreSink(store, config)
        else:
            sink = HttpSink(url, None)
        if wrap is not None:
            sink = wrap(sink)
        runtime = Runtime("logs", config, sink, store)
        worker = Worker(runtime, asyncio.create_task(run_until_stopped(run, runtime)))
        workers.append((worker, store))
        return worker

    yield start
    for worker, store in workers:
        worker.runtime.stopping.set()
        await asyncio.gather(worker.task, return_exceptions=True)
        await worker.runtime.sink.close()
        if store is not None:
            await store.close()


async def published(client: aioredis.Redis, name: str) -> list[str]:
    """The lines in topic logs.`name`, in stream order."""
    entries = await client.xrange(stream_key(f"logs.{name}"))
    assert {fields["event"] for _, fields in entries} <= {"log"}
    return [json.loads(fields["data"])["line"] for _, fields in entries]


async def eventually(check: Callable[[], Awaitable[object]], what: str) -> None:
    deadline = asyncio.get_running_loop().time() + WAIT_SECONDS
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"not within {WAIT_SECONDS} s: {what}")
        await asyncio.sleep(POLL_SECONDS)


async def wait_for_lines(client: aioredis.Redis, name: str, count: int) -> list[str]:
    """The lines of logs.`name` once there are at least `count`."""
    lines: list[str] = []

    async def enough() -> bool:
        nonlocal lines
        lines = await published(client, name)
        return len(lines) >= count

    try:
        await eventually(enough, f"{count} lines in logs.{name}")
    except pytest.fail.Exception:
        pytest.fail(f"logs.{name} holds {lines}, expected {count} lines")
    return lines


async def positioned(client: aioredis.Redis, name: str) -> None:
    """Wait until the worker knows where it reads `name` (it has recorded a mark)."""
    await eventually(
        lambda: client.exists(worker_mark("logs", name, topic=f"logs.{name}")), f"a mark for {name}"
    )


async def logged(caplog: pytest.LogCaptureFixture, text: str) -> None:
    await eventually(_async(lambda: text in caplog.text), f"{text!r} in the log")


def _async(check: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    async def checked() -> bool:
        return check()

    return checked


def append(path: Path, data: bytes) -> None:
    with path.open("ab") as file:
        file.write(data)


def rotate(path: Path) -> Path:
    """Rename the log away, as logrotate does; the next write creates a new file."""
    return path.rename(path.with_name(path.name + ".1"))


@pytest.fixture
def log_file(tmp_path: Path) -> Path:
    """An empty log file: a first start reads it from the start, which is its end."""
    path = tmp_path / "app.log"
    path.touch()
    return path


@pytest.mark.integration
async def test_a_first_start_begins_after_the_last_complete_line(
    start_worker: StartWorker, redis_client: aioredis.Redis, log_file: Path
) -> None:
    append(log_file, b"old\nolder\nhal")
    worker = await start_worker(f"app={log_file}")
    await positioned(redis_client, "app")
    append(log_file, b"f\nnew\n")
    await wait_for_lines(redis_client, "app", 2)
    await worker.stop()
    assert await published(redis_client, "app") == ["half", "new"]


@pytest.mark.integration
async def test_a_partial_line_is_published_once_it_is_complete(
    start_worker: StartWorker, redis_client: aioredis.Redis, log_file: Path
) -> None:
    worker = await start_worker(f"app={log_file}")
    await positioned(redis_client, "app")
    append(log_file, b"first\nhal")
    assert await wait_for_lines(redis_client, "app", 1) == ["first"]
    append(log_file, b"f\n")
    await wait_for_lines(redis_client, "app", 2)
    await worker.stop()
    assert await published(redis_client, "app") == ["first", "half"]


@pytest.mark.integration
async def test_line_endings_and_bytes_that_are_not_utf8_arrive_as_text(
    start_worker: StartWorker, redis_client: aioredis.Redis, log_file: Path
) -> None:
    worker = await start_worker(f"app={log_file}")
    await positioned(redis_client, "app")
    append(log_file, b"dos\r\nline\r\n\r\nlone\rcr\ncaf\xe9 \xff\xfe\n")
    await wait_for_lines(redis_client, "app", 5)
    await worker.stop()
    assert await published(redis_client, "app") == [
        "dos",
        "line",
        "",
        "lone\rcr",
        "caf\ufffd \ufffd\ufffd",
    ]


@pytest.mark.integration
async def test_a_line_longer_than_an_event_arrives_in_pieces(
    start_worker: StartWorker, redis_client: aioredis.Redis, log_file: Path
) -> None:
    worker = await start_worker(f"app={log_file}", max_event_bytes=400)
    await positioned(redis_client, "app")
    long = "é" * 100 + "\x01" * 50 + "end"
    append(log_file, long.encode() + b"\nshort\n")
    await eventually(lambda: _ends_with(redis_client, "short"), "the short line")
    await worker.stop()
    lines = await published(redis_client, "app")
    assert lines[-1] == "short"
    assert "".join(lines[:-1]) == long
    entries = await redis_client.xrange(stream_key("logs.app"))
    assert max(len(fields["data"].encode()) for _, fields in entries) <= 400


async def _ends_with(client: aioredis.Redis, last: str) -> bool:
    lines = await published(client, "app")
    return bool(lines) and lines[-1] == last


@pytest.mark.integration
async def test_rotation_finishes_the_old_file_then_reads_the_new_one_from_the_start(
    start_worker: StartWorker, redis_client: aioredis.Redis, log_file: Path
) -> None:
    worker = await start_worker(f"app={log_file}")
    await positioned(redis_client, "app")
    append(log_file, b"one\n")
    await wait_for_lines(redis_client, "app", 1)
    # All before the worker's next poll: it runs on this very event loop.
    append(log_file, b"two\n")
    rotated = rotate(log_file)
    append(rotated, b"three\nlast, unterminated")  # the writer still had the old file open
    append(log_file, b"four\n")
    await wait_for_lines(redis_client, "app", 5)
    append(log_file, b"five\n")
    await wait_for_lines(redis_client, "app", 6)
    await worker.stop()
    assert await published(redis_client, "app") == [
        "one",
        "two",
        "three",
        "last, unterminated",
        "four",
        "five",
    ]


@pytest.mark.integration
async def test_a_truncated_file_is_read_again_from_the_start_and_the_log_says_so(
    start_worker: StartWorker,
    redis_client: aioredis.Redis,
    log_file: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    worker = await start_worker(f"app={log_file}")
    await positioned(redis_client, "app")
    append(log_file, b"alpha\nbeta\n")
    await wait_for_lines(redis_client, "app", 2)
    shutil.copy(log_file, log_file.with_name("app.log.1"))  # logrotate's copytruncate
    os.truncate(log_file, 0)
    append(log_file, b"gamma\n")
    await wait_for_lines(redis_client, "app", 3)
    await worker.stop()
    assert await published(redis_client, "app") == ["alpha", "beta", "gamma"]
    assert "was truncated" in caplog.text


@pytest.mark.integration
async def test_a_missing_file_is_waited_for_and_so_is_one_that_disappears(
    start_worker: StartWorker,
    redis_client: aioredis.Redis,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    path = tmp_path / "later.log"
    worker = await start_worker(f"app={path}")
    await logged(caplog, f"waiting for {path}")
    append(path, b"born\n")
    await wait_for_lines(redis_client, "app", 1)
    path.unlink()
    caplog.clear()
    await logged(caplog, f"waiting for {path}")
    append(path, b"reborn\n")
    await wait_for_lines(redis_client, "app", 2)
    await worker.stop()
    assert await published(redis_client, "app") == ["born", "reborn"]


@pytest.mark.integration
async def test_a_restart_mid_file_neither_repeats_nor_skips_a_line(
    start_worker: StartWorker, redis_client: aioredis.Redis, log_file: Path
) -> None:
    first = await start_worker(f"app={log_file}")
    await positioned(redis_client, "app")
    append(log_file, b"1\n2\npar")
    await wait_for_lines(redis_client, "app", 2)
    await first.stop()
    append(log_file, b"tial\n3\n")
    second = await start_worker(f"app={log_file}")
    await wait_for_lines(redis_client, "app", 4)
    await second.stop()
    assert await published(redis_client, "app") == ["1", "2", "partial", "3"]


@pytest.mark.integration
async def test_a_file_rotated_while_the_worker_was_away_is_finished_first(
    start_worker: StartWorker, redis_client: aioredis.Redis, log_file: Path
) -> None:
    first = await start_worker(f"app={log_file}")
    await positioned(redis_client, "app")
    append(log_file, b"1\n")
    await wait_for_lines(redis_client, "app", 1)
    await first.stop()
    append(log_file, b"2\n")
    rotate(log_file)
    append(log_file, b"3\n")
    second = await start_worker(f"app={log_file}")
    await wait_for_lines(redis_client, "app", 3)
    await second.stop()
    assert await published(redis_client, "app") == ["1", "2", "3"]


@pytest.mark.integration
async def test_lines_written_while_redis_is_down_arrive_once_when_it_is_back(
    start_worker: StartWorker,
    flushed_redis: RedisServer,
    redis_client: aioredis.Redis,
    log_file: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    worker = await start_worker(f"app={log_file}")
    await positioned(redis_client, "app")
    append(log_file, b"before\n")
    await wait_for_lines(redis_client, "app", 1)
    flushed_redis.stop()
    append(log_file, b"during 1\nduring 2\n")
    await logged(caplog, "retrying with backoff")
    flushed_redis.start()  # empty: this redis-server keeps nothing on disk
    await redis_client.connection_pool.disconnect()  # the test's own, broken connections
    await wait_for_lines(redis_client, "app", 2)
    append(log_file, b"after\n")
    await wait_for_lines(redis_client, "app", 3)
    await worker.stop()
    assert await published(redis_client, "app") == ["during 1", "during 2", "after"]


@pytest.mark.integration
async def test_a_transaction_whose_answer_was_lost_is_not_published_again(
    start_worker: StartWorker,
    redis_client: aioredis.Redis,
    log_file: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    publish_and_mark = Store.publish_and_mark
    lost: list[list[str]] = []

    async def answer_lost_once(self: Store, *args: Any, **kwargs: Any) -> list[str]:
        ids = await publish_and_mark(self, *args, **kwargs)
        if not lost:
            lost.append(ids)
            raise RedisConnectionError("the connection broke before the answer came")
        return ids

    monkeypatch.setattr(Store, "publish_and_mark", answer_lost_once)
    worker = await start_worker(f"app={log_file}")
    await positioned(redis_client, "app")
    append(log_file, b"a\nb\n")
    await wait_for_lines(redis_client, "app", 2)
    append(log_file, b"c\n")
    await wait_for_lines(redis_client, "app", 3)
    await worker.stop()
    assert lost
    assert await published(redis_client, "app") == ["a", "b", "c"]


class Crash(Exception):
    """The worker process dying at the worst moment."""


class CrashingSink:
    """Dies on its first publish, after it went through or before it was sent."""

    def __init__(self, sink: Sink, after_publishing: bool) -> None:
        self._sink = sink
        self._after_publishing = after_publishing

    async def publish(
        self, events: Sequence[PublishEvent], idempotency_key: str | None = None
    ) -> list[str]:
        if self._after_publishing:
            await self._sink.publish(events, idempotency_key)
        raise Crash

    async def close(self) -> None:
        await self._sink.close()


@pytest.mark.integration
@pytest.mark.parametrize("after_publishing", [True, False], ids=["published", "not-published"])
async def test_a_crash_between_publish_and_mark_over_http_neither_repeats_nor_skips(
    start_worker: StartWorker,
    herald: HeraldFactory,
    redis_client: aioredis.Redis,
    log_file: Path,
    after_publishing: bool,
) -> None:
    url = herald().url
    crashing = await start_worker(
        f"app={log_file}", url=url, wrap=lambda sink: CrashingSink(sink, after_publishing)
    )
    await positioned(redis_client, "app")
    append(log_file, b"a\nb\n")
    with pytest.raises(ExceptionGroup) as crashed:
        await asyncio.wait_for(crashing.task, WAIT_SECONDS)
    assert crashed.group_contains(Crash)
    assert await published(redis_client, "app") == (["a", "b"] if after_publishing else [])
    append(log_file, b"c\n")
    worker = await start_worker(f"app={log_file}", url=url)
    await wait_for_lines(redis_client, "app", 3)
    await worker.stop()
    assert await published(redis_client, "app") == ["a", "b", "c"]


@pytest.mark.integration
async def test_a_burst_larger_than_a_request_body_goes_over_http_in_several(
    start_worker: StartWorker,
    herald: HeraldFactory,
    redis_client: aioredis.Redis,
    log_file: Path,
) -> None:
    worker = await start_worker(f"app={log_file}", url=herald().url)
    await positioned(redis_client, "app")
    lines = [f"{n:04} " + "x" * 10_000 for n in range(150)]  # 1.5 MB, the body limit is 1 MiB
    append(log_file, "".join(line + "\n" for line in lines).encode())
    await wait_for_lines(redis_client, "app", len(lines))
    await worker.stop()
    assert await published(redis_client, "app") == lines


@pytest.mark.integration
async def test_over_http_without_redis_lines_arrive_and_the_log_warns_about_restarts(
    start_worker: StartWorker,
    herald: HeraldFactory,
    redis_client: aioredis.Redis,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    path = tmp_path / "app.log"
    worker = await start_worker(f"app={path}", redis=False, url=herald().url)
    await logged(caplog, f"waiting for {path}")
    append(path, b"a\nb\n")
    await wait_for_lines(redis_client, "app", 2)
    await worker.stop()
    assert await published(redis_client, "app") == ["a", "b"]
    assert "positions are kept in memory only" in caplog.text
