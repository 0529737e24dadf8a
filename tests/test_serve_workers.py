"""`herald serve --workers N`: N processes, each a whole Herald, behind one listening socket.

Real redis-server, real `herald serve --workers 2` and real sockets; which worker process
holds a connection is read from /proc, so each test makes sure both of them serve.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import httpx
import pytest

from tests.conftest import Herald, HeraldFactory, metric, run_herald, wait_until
from tests.sse import SSEStream

pytestmark = pytest.mark.integration

WORKERS = 2
# Whichever process accepts first takes a connection; a few have always reached both here.
MAX_STREAMS = 60
ESTABLISHED = "01"


def worker_pids(app: Herald) -> set[int]:
    """The processes `herald serve` started (uvicorn's workers, multiprocessing's helper)."""
    children = Path(f"/proc/{app.proc.pid}/task/{app.proc.pid}/children")
    return {int(pid) for pid in children.read_text().split()}


def is_uvicorn_worker(pid: int) -> bool:
    """Whether `pid` is a live worker process (not multiprocessing's resource tracker)."""
    try:
        return b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def gone_or_zombie(pid: int) -> bool:
    """Whether `pid` has exited (a zombie has, though its parent has not reaped it yet)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rindex(")") + 2] == "Z"


def serving_pid(app: Herald, stream: SSEStream) -> int:
    """The process holding the server's end of `stream`'s connection."""
    _, client_port = stream.response.extensions["network_stream"].get_extra_info("client_addr")
    inode = None
    for row in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = row.split()
        local, remote = (int(f.rsplit(":", 1)[1], 16) for f in fields[1:3])
        if fields[3] == ESTABLISHED and (local, remote) == (app.port, client_port):
            inode = f"socket:[{fields[9]}]"
    assert inode is not None, f"no server socket for client port {client_port}"
    for pid in worker_pids(app):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                if os.readlink(fd) == inode:
                    return pid
            except OSError:
                continue
    raise AssertionError(f"no worker process of {app.proc.pid} holds {inode}")


@asynccontextmanager
async def streams_on_every_worker(
    client: httpx.AsyncClient, app: Herald, topic: str
) -> AsyncIterator[dict[int, list[SSEStream]]]:
    """Subscriptions to `topic` from its start, opened until each worker serves some."""
    by_pid: dict[int, list[SSEStream]] = {}
    async with AsyncExitStack() as stack:
        for _ in range(MAX_STREAMS):
            stream = await stack.enter_async_context(
                SSEStream(client, f"{app.url}/events", params={"topic": topic},
                          headers={"Last-Event-ID": "0-0"})
            )  # fmt: skip
            assert stream.response.status_code == 200, stream.response.text
            by_pid.setdefault(serving_pid(app, stream), []).append(stream)
            if len(by_pid) == WORKERS:
                break
        assert len(by_pid) == WORKERS, f"{MAX_STREAMS} connections all reached {set(by_pid)}"
        yield by_pid


async def publish_each_on_a_new_connection(app: Herald, topic: str, count: int) -> list[str]:
    """Publish `count` events, each over its own connection, so that every worker takes some."""
    ids = []
    for n in range(count):
        async with httpx.AsyncClient(timeout=10) as fresh:
            answer = await fresh.post(f"{app.url}/publish", json={"topic": topic, "data": n})
        assert answer.status_code == 200, answer.text
        ids.append(answer.json()["id"])
    return ids


async def scrape(client: httpx.AsyncClient, app: Herald) -> str:
    # A new connection each time: a scrape may reach either process.
    answer = await client.get(f"{app.url}/metrics", headers={"Connection": "close"})
    assert answer.status_code == 200, answer.text
    return answer.text


async def test_subscribers_on_every_worker_process_receive_every_publish(
    herald: HeraldFactory,
) -> None:
    app = herald(HERALD_WORKERS=WORKERS)
    async with (
        httpx.AsyncClient(timeout=10) as client,
        streams_on_every_worker(client, app, "fanout") as by_pid,
    ):
        ids = await publish_each_on_a_new_connection(app, "fanout", 6)
        for streams in by_pid.values():
            for stream in streams:
                events = await stream.collect(len(ids))
                assert [e.id for e in events] == ids
                assert [e.data for e in events] == [str(n) for n in range(len(ids))]


async def test_online_counts_sum_the_subscribers_of_every_worker_process(
    herald: HeraldFactory,
) -> None:
    app = herald(HERALD_WORKERS=WORKERS, HERALD_PRESENCE_SECONDS=0.5)
    async with (
        httpx.AsyncClient(timeout=10) as client,
        streams_on_every_worker(client, app, "room") as by_pid,
    ):
        total = sum(map(len, by_pid.values()))

        async def counted() -> bool:
            answer = await client.get(f"{app.url}/topics/room", headers={"Connection": "close"})
            return bool(answer.json()["count"] == total)

        await wait_until(counted, f"/topics/room counting all {total} subscribers")


async def test_metrics_describe_the_whole_server_whichever_process_answers(
    herald: HeraldFactory,
) -> None:
    app = herald(HERALD_WORKERS=WORKERS)
    async with httpx.AsyncClient(timeout=10) as client:
        async with streams_on_every_worker(client, app, "scraped") as by_pid:
            total = sum(map(len, by_pid.values()))
            await publish_each_on_a_new_connection(app, "scraped", 5)
            for streams in by_pid.values():
                for stream in streams:
                    await stream.collect(5)
            for _ in range(6):
                text = await scrape(client, app)
                assert metric(text, "herald_subscribers") == total
                assert metric(text, "herald_published_events_total") == 5
                assert metric(text, "herald_deliveries_total") == 5 * total
                # Each process's hub follows the topic for its own subscribers.
                assert metric(text, "herald_topics") == WORKERS

        async def none_left() -> bool:
            return metric(await scrape(client, app), "herald_subscribers") == 0

        await wait_until(none_left, "herald_subscribers back to 0 after the streams closed")


async def test_a_killed_worker_s_streams_leave_the_count_and_its_counts_stay(
    herald: HeraldFactory,
) -> None:
    app = herald(HERALD_WORKERS=WORKERS)
    async with (
        httpx.AsyncClient(timeout=10) as client,
        streams_on_every_worker(client, app, "crash") as by_pid,
    ):
        await publish_each_on_a_new_connection(app, "crash", 3)
        victim, survivor = sorted(by_pid)
        os.kill(victim, signal.SIGKILL)
        for stream in by_pid[victim]:
            await stream.wait_closed(timeout=10)

        async def only_the_survivor_s() -> bool:
            text = await scrape(client, app)
            return metric(text, "herald_subscribers") == len(by_pid[survivor])

        await wait_until(only_the_survivor_s, "the killed worker's subscribers leaving the count")

        async def replaced() -> bool:
            workers = {pid for pid in worker_pids(app) if is_uvicorn_worker(pid)}
            return len(workers - {victim}) == WORKERS

        await wait_until(replaced, "the parent starting a worker in the killed one's place")
        # Counters are totals since the server started, the dead process's included.
        assert metric(await scrape(client, app), "herald_published_events_total") == 3


async def test_sigterm_ends_every_worker_s_streams_and_the_process_tree_exits(
    herald: HeraldFactory,
) -> None:
    app = herald(HERALD_WORKERS=WORKERS, HERALD_SHUTDOWN_TIMEOUT_SECONDS=10)
    async with (
        httpx.AsyncClient(timeout=10) as client,
        streams_on_every_worker(client, app, "bye") as by_pid,
    ):
        children = worker_pids(app)
        started = time.monotonic()
        app.proc.send_signal(signal.SIGTERM)
        for streams in by_pid.values():
            for stream in streams:
                await stream.wait_closed(timeout=10)
                assert stream.error is None, f"a stream was cut, not ended: {stream.error!r}"
        code = await asyncio.to_thread(app.proc.wait, max(10 - (time.monotonic() - started), 1))
    assert code == 0, app.logs()

    async def all_gone() -> bool:
        return all(gone_or_zombie(pid) for pid in children)

    # multiprocessing's resource tracker leaves when it sees its parent's pipe close.
    await wait_until(all_gone, f"the processes of {app.proc.pid} exiting", within=5)


def test_the_embedded_mode_refuses_more_than_one_worker() -> None:
    ran = run_herald("serve", "--workers", "2", "--port", "0")
    assert ran.returncode == 2
    assert "--workers 2 needs HERALD_REDIS_URL" in ran.stderr
    assert "Traceback" not in ran.stderr
    assert "Uvicorn running" not in ran.stderr


async def test_demo_producers_run_once_beside_the_worker_processes(
    herald: HeraldFactory,
) -> None:
    # Fast answers: two typewriters on one topic would interleave their tokens.
    app = herald(
        HERALD_WORKERS=WORKERS,
        HERALD_DEMO="true",
        HERALD_TYPEWRITER_TOKENS_PER_SECOND=200,
        HERALD_TYPEWRITER_PAUSE_SECONDS=0,
    )
    async with (
        httpx.AsyncClient(timeout=10) as client,
        SSEStream(client, f"{app.url}/events", params={"topic": "chat.demo"}) as stream,
    ):
        answers: list[str] = []
        tokens: list[tuple[str, int]] = []
        while len(answers) < 3:
            event = await stream.next_event(timeout=20)
            data = json.loads(event.data)
            if event.event == "token":
                tokens.append((data["answer"], data["index"]))
            elif event.event == "done":
                answers.append(data["answer"])
    # From the first whole answer on, each answer's tokens come in one run, in order.
    first = next(i for i, (_, index) in enumerate(tokens) if index == 0)
    runs: list[list[int]] = []
    previous = None
    for answer, index in tokens[first:]:
        if answer != previous:
            runs.append([])
            previous = answer
        runs[-1].append(index)
    assert all(run == list(range(len(run))) for run in runs), runs
    assert len(runs) == len({a for a, _ in tokens[first:]}), "answers interleaved"
