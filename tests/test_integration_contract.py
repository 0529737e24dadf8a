"""The product contract (shared/DESIGN.md), end to end: a real Herald process, a real
redis-server, real sockets. Each test asserts what a publisher or an EventSource user
would notice.

Fresh subscriptions without a position start live, and the moment they are live is not
observable from outside; `live_stream` therefore publishes `probe` events until each
stream has received one, then a `fence` per topic, and hands the stream over once the
fences arrived. Everything published after that must reach the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import signal
import socket
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx
import pytest
import pytest_asyncio
import redis.asyncio as aioredis

from tests.conftest import Herald, HeraldFactory, wait_until
from tests.sse import Event, SSEParser, SSEStream

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

STREAM_PREFIX = "herald:stream:"
TRIMMED = "herald.trimmed"


# --------------------------------------------------------------------------- helpers


@pytest_asyncio.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    limits = httpx.Limits(max_connections=300, max_keepalive_connections=300)
    async with httpx.AsyncClient(timeout=httpx.Timeout(15.0), limits=limits) as http:
        yield http


def topic_params(topics: Sequence[str], **extra: str) -> list[tuple[str, str]]:
    return [("topic", t) for t in topics] + list(extra.items())


async def publish(
    client: httpx.AsyncClient, app: Herald, topic: str, data: Any, event: str | None = None
) -> str:
    """Publish one event; the stream entry id Herald answered."""
    body: dict[str, Any] = {"topic": topic, "data": data}
    if event is not None:
        body["event"] = event
    answer = await client.post(f"{app.url}/publish", json=body)
    assert answer.status_code == 200, answer.text
    payload = answer.json()
    assert payload["topic"] == topic, payload
    assert isinstance(payload["id"], str), payload
    return str(payload["id"])


async def publish_batch(
    client: httpx.AsyncClient, app: Herald, events: Sequence[dict[str, Any]]
) -> list[str]:
    """Publish a batch (JSON array); the ids Herald answered, in order."""
    answer = await client.post(f"{app.url}/publish", json=list(events))
    assert answer.status_code == 200, answer.text
    payload = answer.json()
    assert isinstance(payload, list), payload
    assert [p["topic"] for p in payload] == [e["topic"] for e in events]
    return [str(p["id"]) for p in payload]


async def xrange_ids(redis: aioredis.Redis, topic: str, after: str | None = None) -> list[str]:
    start = f"({after}" if after else "-"
    return [entry_id for entry_id, _ in await redis.xrange(STREAM_PREFIX + topic, start, "+")]


def topic_of(event: Event) -> str:
    return str(json.loads(event.data)["topic"])


def per_topic(events: Sequence[Event]) -> dict[str, list[int]]:
    """The `n` of each event's JSON data, grouped by the `topic` in it, in arrival order."""
    grouped: dict[str, list[int]] = {}
    for event in events:
        data = json.loads(event.data)
        grouped.setdefault(data["topic"], []).append(data["n"])
    return grouped


async def sync_live(
    client: httpx.AsyncClient,
    app: Herald,
    streams: Sequence[SSEStream],
    topics: Sequence[str],
    within: float = 30.0,
) -> None:
    """Return once every stream provably receives everything published to `topics` from now.

    Also proves that fresh subscriptions start live: nothing but probes and fences may
    arrive on them.
    """
    deadline = time.monotonic() + within
    seen: list[set[str]] = [set() for _ in streams]
    round_no = 0

    def take(stream: SSEStream, index: int) -> None:
        for event in stream.take_pending():
            assert event.event in ("probe", "fence"), (
                f"a subscription without position delivered an older event: {event!r}"
            )
            if event.event == "probe":
                seen[index].add(topic_of(event))

    while True:
        for index, stream in enumerate(streams):
            take(stream, index)
        missing = {t for t in topics if any(t not in s for s in seen)}
        if not missing:
            break
        assert time.monotonic() < deadline, (
            f"streams not live within {within} s; topics still missing: {sorted(missing)}"
        )
        for topic in sorted(missing):
            await publish(client, app, topic, {"topic": topic, "n": round_no}, event="probe")
        round_no += 1
        await asyncio.sleep(0.2)

    for topic in topics:
        await publish(client, app, topic, {"topic": topic, "n": -1}, event="fence")

    async def until_fences(stream: SSEStream) -> None:
        fences: set[str] = set()
        while fences != set(topics):
            remaining = max(deadline - time.monotonic(), 1.0)
            event = await stream.next_event(remaining)
            assert event.event in ("probe", "fence"), f"unexpected event while syncing: {event!r}"
            if event.event == "fence":
                fences.add(topic_of(event))

    await asyncio.gather(*(until_fences(stream) for stream in streams))


@contextlib.asynccontextmanager
async def live_stream(
    client: httpx.AsyncClient, app: Herald, topics: Sequence[str]
) -> AsyncIterator[SSEStream]:
    """A subscription without position, returned once it is provably live."""
    async with SSEStream(client, f"{app.url}/events", params=topic_params(topics)) as stream:
        assert stream.response.status_code == 200, stream.response.text
        await sync_live(client, app, [stream], topics)
        yield stream


async def read_call_count(redis: aioredis.Redis) -> int:
    """How many stream reads (XREAD, XRANGE, XREVRANGE) the server has executed so far."""
    stats = await redis.info("commandstats")
    commands = ("cmdstat_xread", "cmdstat_xrange", "cmdstat_xrevrange")
    return sum(int(stats.get(name, {}).get("calls", 0)) for name in commands)


async def error_of(
    client: httpx.AsyncClient,
    url: str,
    params: Any = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    """Status and JSON body of a GET that must fail; never reads an event stream."""

    async def attempt() -> tuple[int, Any]:
        async with client.stream("GET", url, params=params, headers=headers) as answer:
            if answer.status_code == 200:
                return 200, None
            body = await answer.aread()
            try:
                return answer.status_code, json.loads(body)
            except ValueError:
                return answer.status_code, body.decode(errors="replace")

    return await asyncio.wait_for(attempt(), 15)


def assert_detail(status: int, body: Any, expected: int) -> None:
    assert status == expected, (status, body)
    assert isinstance(body, dict) and "detail" in body, body


# --------------------------------------------------------------------------- a. delivery


async def test_events_arrive_named_with_the_redis_ids_and_compact_json(
    herald: HeraldFactory, client: httpx.AsyncClient, redis_client: aioredis.Redis
) -> None:
    app = herald()
    topic = "stocks.AAPL"
    cases: list[tuple[str | None, Any, str, str]] = [
        ("tick", {"price": 189.2}, "tick", '{"price":189.2}'),
        (None, "plain text", "message", "plain text"),
        ("count", 42, "count", "42"),
        ("list.v1", [1, "a", None, True, 2.5], "list.v1", '[1,"a",null,true,2.5]'),
        ("nested_x-y", {"a": {"b": [1, {}]}, "c": ""}, "nested_x-y", '{"a":{"b":[1,{}]},"c":""}'),
    ]
    async with live_stream(client, app, [topic]) as stream:
        fence = stream.last_id
        assert fence is not None
        ids = [await publish(client, app, topic, data, event) for event, data, _, _ in cases]
        events = await stream.collect(len(cases))

    assert [e.id for e in events] == ids
    assert await xrange_ids(redis_client, topic, after=fence) == ids
    assert [(e.event, e.data) for e in events] == [(name, wire) for _, _, name, wire in cases]
    entries = await redis_client.xrange(STREAM_PREFIX + topic, f"({fence}", "+")
    assert [fields for _, fields in entries] == [
        {"event": name, "data": wire} for _, _, name, wire in cases
    ]


@pytest.mark.parametrize(
    ("sent", "received"),
    [
        ("héllo\nwörld 🌍\r\nline three\rfour", "héllo\nwörld 🌍\nline three\nfour"),
        ("ends with a line break\n", "ends with a line break\n"),
        ("\n\nstarts with two", "\n\nstarts with two"),
        ("  two leading spaces", "  two leading spaces"),
        ("data: not a field\n: not a comment\n\nid: 0-1\nevent: x", None),
        ('{"json": "as a string"}', None),
        ("", ""),
    ],
    ids=["unicode-multiline", "trailing-lf", "leading-lf", "spaces", "injection", "json", "empty"],
)
async def test_string_data_round_trips_as_eventsource_joins_it(
    herald: HeraldFactory,
    client: httpx.AsyncClient,
    redis_client: aioredis.Redis,
    sent: str,
    received: str | None,
) -> None:
    expected = sent if received is None else received
    app = herald()
    async with live_stream(client, app, ["text"]) as stream:
        entry_id = await publish(client, app, "text", sent, event="line")
        event = await stream.next_event()
        await stream.expect_silence(0.3)
    assert event == Event(id=entry_id, event="line", data=expected)
    [(_, fields)] = await redis_client.xrange(STREAM_PREFIX + "text", entry_id, entry_id)
    assert fields["data"] == expected


async def test_stream_headers_and_retry_field_come_first(
    herald: HeraldFactory, client: httpx.AsyncClient
) -> None:
    app = herald(HERALD_RETRY_MS=1234)
    async with live_stream(client, app, ["headers"]) as stream:
        headers = stream.response.headers
        assert headers["content-type"].startswith("text/event-stream")
        assert "charset=utf-8" in headers["content-type"].lower().replace(" ", "")
        assert "no-cache" in headers["cache-control"].lower()
        assert headers["x-accel-buffering"].lower() == "no"
        assert stream.parser.retry == 1234
        assert stream.parser.events_before_retry == 0, "retry: must precede the first event"


async def test_a_subscription_without_position_starts_live(
    herald: HeraldFactory, client: httpx.AsyncClient
) -> None:
    app = herald()
    await publish(client, app, "live", {"topic": "live", "n": 0}, event="old")
    # live_stream fails if anything but its own probes and fences arrives first.
    async with live_stream(client, app, ["live"]) as stream:
        new_id = await publish(client, app, "live", "new", event="new")
        assert await stream.next_event() == Event(new_id, "new", "new")


@pytest.mark.parametrize("topics", [["opening.one"], ["opening.a", "opening.b"]])
async def test_a_live_start_gives_its_position_so_a_drop_before_any_event_misses_nothing(
    herald: HeraldFactory, client: httpx.AsyncClient, topics: list[str]
) -> None:
    app = herald()
    await publish(client, app, topics[0], "before the subscription", event="old")
    url = f"{app.url}/events"
    async with SSEStream(client, url, params=topic_params(topics)) as stream:

        async def positioned() -> bool:
            return stream.last_id is not None

        await wait_until(positioned, "the opening id: line")
        assert stream.events == [], "the position alone dispatches no event"
        position = stream.last_id
    assert position is not None
    # Dropped before its first event: what is published now must not be lost.
    missed = [f"after, on {topic}" for topic in topics]
    for topic, data in zip(topics, missed, strict=True):
        await publish(client, app, topic, data, event="new")
    headers = {"Last-Event-ID": position}
    async with SSEStream(client, url, params=topic_params(topics), headers=headers) as resumed:
        assert [e.data for e in await resumed.collect(len(missed))] == missed
        await resumed.expect_silence(0.3)


# --------------------------------------------------------------------------- b. resume


@pytest.mark.parametrize("via", ["header", "query"])
async def test_resume_with_last_event_id_replays_exactly_the_missed_events(
    herald: HeraldFactory, client: httpx.AsyncClient, via: str
) -> None:
    app = herald()
    topic = "resume.one"
    async with live_stream(client, app, [topic]) as stream:
        seen = [await publish(client, app, topic, {"n": n}, event="seq") for n in range(3)]
        assert [e.id for e in await stream.collect(3)] == seen
        last = stream.last_id
    assert last == seen[-1]

    missed = [await publish(client, app, topic, {"n": n}, event="seq") for n in range(3, 8)]

    headers = {"Last-Event-ID": last} if via == "header" else {}
    params = topic_params([topic]) if via == "header" else topic_params([topic], lastEventId=last)
    async with SSEStream(client, f"{app.url}/events", params=params, headers=headers) as stream:
        assert stream.response.status_code == 200
        replayed = await stream.collect(len(missed))
        assert [e.id for e in replayed] == missed
        assert [json.loads(e.data)["n"] for e in replayed] == list(range(3, 8))
        assert {e.event for e in replayed} == {"seq"}

        live = [await publish(client, app, topic, {"n": n}, event="seq") for n in range(8, 10)]
        assert [e.id for e in await stream.collect(2)] == live
        await stream.expect_silence(0.5)


async def test_last_event_id_header_wins_over_the_query_parameter(
    herald: HeraldFactory, client: httpx.AsyncClient
) -> None:
    app = herald()
    ids = [await publish(client, app, "wins", {"n": n}) for n in range(6)]
    params = topic_params(["wins"], lastEventId=ids[0])
    headers = {"Last-Event-ID": ids[3]}
    async with SSEStream(client, f"{app.url}/events", params=params, headers=headers) as stream:
        assert [e.id for e in await stream.collect(2)] == ids[4:]
        await stream.expect_silence(0.5)


async def test_multi_topic_resume_replays_the_missed_events_of_every_topic(
    herald: HeraldFactory, client: httpx.AsyncClient
) -> None:
    app = herald()
    topics = ["multi.a", "multi.b"]

    async def put(topic: str, n: int) -> str:
        return await publish(client, app, topic, {"topic": topic, "n": n}, event="seq")

    async with live_stream(client, app, topics) as stream:
        for n in range(2):
            for topic in topics:
                await put(topic, n)
        received = await stream.collect(4)
        cursor = stream.last_id
    assert per_topic(received) == {"multi.a": [0, 1], "multi.b": [0, 1]}
    assert cursor is not None and cursor == received[-1].id

    for n in range(2, 5):
        for topic in topics:
            await put(topic, n)

    headers = {"Last-Event-ID": cursor}
    async with SSEStream(
        client, f"{app.url}/events", params=topic_params(topics), headers=headers
    ) as stream:
        assert stream.response.status_code == 200
        replayed = await stream.collect(6)
        assert per_topic(replayed) == {"multi.a": [2, 3, 4], "multi.b": [2, 3, 4]}

        await put("multi.b", 5)
        await put("multi.a", 5)
        live = await stream.collect(2)
        assert per_topic(live) == {"multi.b": [5], "multi.a": [5]}
        await stream.expect_silence(0.5)


async def test_multi_topic_cursor_of_any_event_resumes_right_after_it(
    herald: HeraldFactory, client: httpx.AsyncClient
) -> None:
    app = herald()
    topics = ["mid.a", "mid.b", "mid.c"]
    async with live_stream(client, app, topics) as stream:
        for n in range(3):
            for topic in topics:
                await publish(client, app, topic, {"topic": topic, "n": n})
        received = await stream.collect(9)

    # Resuming from the cursor of the 4th event must give exactly the 5th to 9th again,
    # each topic in order (the interleaving across topics may differ).
    cursor = received[3].id
    assert cursor is not None
    headers = {"Last-Event-ID": cursor}
    async with SSEStream(
        client, f"{app.url}/events", params=topic_params(topics), headers=headers
    ) as stream:
        replayed = await stream.collect(5)
        await stream.expect_silence(0.5)
    assert per_topic(replayed) == per_topic(received[4:])


async def test_a_client_may_resume_on_another_replica(
    herald: HeraldFactory, client: httpx.AsyncClient
) -> None:
    first, second = herald(), herald()
    async with live_stream(client, first, ["replica"]) as stream:
        seen = await publish(client, second, "replica", {"n": 0})
        assert (await stream.next_event()).id == seen  # published on one, delivered by other
    missed = [await publish(client, first, "replica", {"n": n}) for n in range(1, 4)]
    headers = {"Last-Event-ID": seen}
    async with SSEStream(
        client, f"{second.url}/events", params=topic_params(["replica"]), headers=headers
    ) as stream:
        assert [e.id for e in await stream.collect(3)] == missed
        await stream.expect_silence(0.5)


# --------------------------------------------------------------------------- c. trimmed


async def test_resume_older_than_retained_history_announces_trimmed_then_replays(
    herald: HeraldFactory, client: httpx.AsyncClient, redis_client: aioredis.Redis
) -> None:
    app = herald(HERALD_RETENTION=10)
    topic = "trim.me"
    ids = await publish_batch(client, app, [{"topic": topic, "data": {"n": n}} for n in range(30)])
    # Herald trims approximately (MAXLEN ~); trim exactly so the test is deterministic.
    await redis_client.xtrim(STREAM_PREFIX + topic, maxlen=10, approximate=False)
    assert await xrange_ids(redis_client, topic) == ids[20:]

    headers = {"Last-Event-ID": ids[4]}
    async with SSEStream(
        client, f"{app.url}/events", params=topic_params([topic]), headers=headers
    ) as stream:
        assert stream.response.status_code == 200
        notice = await stream.next_event()
        assert notice.event == TRIMMED, notice
        assert notice.id is None, "the trimmed notice carries no id: field"
        info = json.loads(notice.data)
        assert info["topic"] == topic
        assert info["lastEventId"] == ids[4]
        assert info["firstId"] == ids[20]

        replayed = await stream.collect(10)
        assert [e.id for e in replayed] == ids[20:]
        assert [json.loads(e.data)["n"] for e in replayed] == list(range(20, 30))

        live = await publish(client, app, topic, {"n": 30})
        assert (await stream.next_event()).id == live
        await stream.expect_silence(0.3)


@pytest.mark.parametrize("position", [20, 25], ids=["oldest-retained", "mid-history"])
async def test_resume_from_a_retained_position_gets_no_trimmed_notice(
    herald: HeraldFactory,
    client: httpx.AsyncClient,
    redis_client: aioredis.Redis,
    position: int,
) -> None:
    app = herald(HERALD_RETENTION=10)
    topic = "trim.kept"
    ids = await publish_batch(client, app, [{"topic": topic, "data": {"n": n}} for n in range(30)])
    await redis_client.xtrim(STREAM_PREFIX + topic, maxlen=10, approximate=False)

    headers = {"Last-Event-ID": ids[position]}
    async with SSEStream(
        client, f"{app.url}/events", params=topic_params([topic]), headers=headers
    ) as stream:
        replayed = await stream.collect(29 - position)
        await stream.expect_silence(0.5)
    assert TRIMMED not in {e.event for e in replayed}
    assert [e.id for e in replayed] == ids[position + 1 :]


# --------------------------------------------------------------------------- d. heartbeats


async def test_idle_stream_gets_a_comment_heartbeat_every_interval(
    herald: HeraldFactory, client: httpx.AsyncClient
) -> None:
    app = herald(HERALD_HEARTBEAT_SECONDS=1)
    async with SSEStream(client, f"{app.url}/events", params=topic_params(["idle"])) as stream:
        assert stream.response.status_code == 200
        await asyncio.sleep(4.5)
        assert stream.events == []
        assert not stream.closed, stream.error
        times = [stream.opened_at] + [c.at for c in stream.comments]
    assert len(times) - 1 >= 3, f"only {len(times) - 1} comments in 4.5 s"
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert max(gaps) < 2.5, f"heartbeat gaps {gaps}"


# --------------------------------------------------------------------------- e. fan-out


async def fan_out(
    app: Herald,
    client: httpx.AsyncClient,
    redis: aioredis.Redis,
    topic: str,
    subscribers: int,
    events: int = 100,
) -> int:
    """Deliver `events` to `subscribers` live streams; the Redis stream reads it took."""
    async with contextlib.AsyncExitStack() as stack:
        streams = [
            SSEStream(client, f"{app.url}/events", params=topic_params([topic]))
            for _ in range(subscribers)
        ]
        opened = await asyncio.gather(
            *(stack.enter_async_context(s) for s in streams), return_exceptions=True
        )
        failures = [o for o in opened if isinstance(o, BaseException)]
        assert not failures, f"{len(failures)} of {subscribers} subscribers failed: {failures[0]!r}"
        assert {s.response.status_code for s in streams} == {200}
        await sync_live(client, app, streams, [topic])

        before = await read_call_count(redis)
        batch = [{"topic": topic, "event": "fan", "data": {"n": n}} for n in range(events)]
        ids = await publish_batch(client, app, batch)
        received = await asyncio.gather(*(s.collect(events, timeout=90) for s in streams))
        after = await read_call_count(redis)

        for got in received:
            assert [e.id for e in got] == ids
            assert [e.data for e in got] == [f'{{"n":{n}}}' for n in range(events)]
    return after - before


async def test_fan_out_delivers_everything_to_every_subscriber_with_constant_redis_reads(
    herald: HeraldFactory, client: httpx.AsyncClient, redis_client: aioredis.Redis
) -> None:
    app = herald()
    small = await fan_out(app, client, redis_client, "fan.small", 20)
    large = await fan_out(app, client, redis_client, "fan.large", 200)
    assert large < 100, f"{large} stream reads to serve 200 subscribers: one per subscriber?"
    assert large <= small + 20, f"reads grew with subscribers: 20 -> {small}, 200 -> {large}"


# --------------------------------------------------------------------------- f. slow subscriber


def dechunk(body: bytes) -> bytes:
    """The payload of an HTTP/1.1 chunked body, tolerating a cut-off end."""
    out = bytearray()
    pos = 0
    while True:
        line_end = body.find(b"\r\n", pos)
        if line_end < 0:
            return bytes(out)
        size = int(body[pos:line_end].split(b";")[0] or b"0", 16)
        if size == 0:
            return bytes(out)
        start = line_end + 2
        out += body[start : start + size]
        pos = start + size + 2
        if pos > len(body):
            return bytes(out)


async def open_raw_subscriber(
    app: Herald, topic: str, last_event_id: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    """A GET /events on a socket with a tiny receive buffer; reads only the response head."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: small window
    sock.setblocking(False)
    try:
        await asyncio.wait_for(
            asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", app.port)), 10
        )
    except BaseException:
        sock.close()
        raise
    reader, writer = await asyncio.open_connection(sock=sock, limit=16 * 1024)
    request = (
        f"GET /events?topic={topic} HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{app.port}\r\n"
        "Accept: text/event-stream\r\n"
        f"Last-Event-ID: {last_event_id}\r\n\r\n"
    )
    writer.write(request.encode())
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    return reader, writer, head


async def drain_to_eof(reader: asyncio.StreamReader, within: float) -> bytes:
    """Everything left on the connection; `AssertionError` if it is still open after `within` s."""
    data = bytearray()
    deadline = time.monotonic() + within
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"connection still open after {within} s ({len(data)} B read)")
        try:
            chunk = await asyncio.wait_for(reader.read(256 * 1024), remaining)
        except TimeoutError:
            continue
        except ConnectionError:
            return bytes(data)
        if not chunk:
            return bytes(data)
        data += chunk


async def test_slow_subscriber_is_disconnected_and_resumes_losslessly(
    herald: HeraldFactory, client: httpx.AsyncClient
) -> None:
    app = herald(
        HERALD_SUBSCRIBER_BUFFER=20,
        HERALD_SEND_TIMEOUT_SECONDS=2,
        HERALD_RETENTION=100_000,
        HERALD_MAX_EVENT_BYTES=64 * 1024,
    )
    topic = "slow"
    total, batch_size, pad = 3000, 5, "x" * (8 * 1024 - 7)
    anchor = await publish(client, app, topic, "anchor")
    reader, writer, head = await open_raw_subscriber(app, topic, anchor)
    try:
        assert head.startswith(b"HTTP/1.1 200"), head
        # From here on the raw subscriber reads nothing until it is told to drain.
        url, params = f"{app.url}/events", topic_params([topic])
        async with SSEStream(client, url, params=params, headers={"Last-Event-ID": anchor}) as fast:
            published: list[str] = []
            for start in range(0, total, batch_size):
                batch = [
                    {"topic": topic, "event": "big", "data": f"{n:06d}:{pad}"}
                    for n in range(start, start + batch_size)
                ]
                published += await publish_batch(client, app, batch)
            got = await fast.collect(total, timeout=120)
            assert [e.id for e in got] == published, "the fast subscriber lost or reordered"
            assert fast.error is None and not fast.closed, "the fast subscriber was disconnected"

        await asyncio.sleep(4)  # > HERALD_SEND_TIMEOUT_SECONDS
        rest = await drain_to_eof(reader, within=30)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()

    body = dechunk(rest) if b"chunked" in head.lower() else rest
    parser = SSEParser()
    slow_events = parser.feed(body)
    slow_ids = [e.id for e in slow_events]
    received = len(slow_ids)
    assert received < total, "the slow subscriber was never disconnected"
    assert slow_ids == published[:received], "what the slow subscriber got is not a clean prefix"

    position = slow_ids[-1] if slow_ids else anchor
    assert position is not None
    headers = {"Last-Event-ID": position}
    async with SSEStream(client, url, params=params, headers=headers) as resumed:
        replayed = await resumed.collect(total - received, timeout=120)
        await resumed.expect_silence(0.5)
    assert [e.id for e in replayed] == published[received:]
    assert all(e.data.endswith(pad) for e in replayed)


# --------------------------------------------------------------------------- g. bad input


@pytest.mark.parametrize(
    "body",
    [
        {"data": 1},
        {"topic": "bad topic!", "data": 1},
        {"topic": "-starts-with-dash", "data": 1},
        {"topic": "t" * 129, "data": 1},
        {"topic": "", "data": 1},
        {"topic": 5, "data": 1},
        {"topic": "ok", "event": "1abc", "data": 1},
        {"topic": "ok", "event": "has space", "data": 1},
        {"topic": "ok", "event": "a\nb", "data": 1},
        {"topic": "ok", "event": "e" * 65, "data": 1},
        {"topic": "ok", "event": "herald.trimmed", "data": 1},
        [],
        "just a string",
    ],
    ids=[
        "missing-topic",
        "topic-with-space",
        "topic-starts-with-dash",
        "topic-129-chars",
        "empty-topic",
        "topic-not-string",
        "event-starts-with-digit",
        "event-with-space",
        "event-with-newline",
        "event-65-chars",
        "event-reserved",
        "empty-batch",
        "not-an-object",
    ],
)
async def test_publish_rejects_invalid_bodies_with_422(
    default_herald: Herald, client: httpx.AsyncClient, body: Any
) -> None:
    answer = await client.post(f"{default_herald.url}/publish", json=body)
    assert_detail(answer.status_code, answer.json(), 422)


async def test_publish_rejects_invalid_json_with_422(
    default_herald: Herald, client: httpx.AsyncClient
) -> None:
    answer = await client.post(
        f"{default_herald.url}/publish",
        content=b'{"topic": "x", "data": ',
        headers={"content-type": "application/json"},
    )
    assert_detail(answer.status_code, answer.json(), 422)


async def test_publish_accepts_names_at_the_limits(
    default_herald: Herald, client: httpx.AsyncClient
) -> None:
    for topic, event in [("t" * 128, "e" * 64), ("0a:b.c_d-e", "A.b_c-9"), ("x", "y")]:
        await publish(client, default_herald, topic, 1, event)


async def test_batch_answers_every_id_in_order(
    default_herald: Herald, client: httpx.AsyncClient, redis_client: aioredis.Redis
) -> None:
    events = [
        {"topic": "batch.a", "data": 1},
        {"topic": "batch.b", "event": "x", "data": "two"},
        {"topic": "batch.a", "data": [3]},
    ]
    ids = await publish_batch(client, default_herald, events)
    assert await xrange_ids(redis_client, "batch.a") == [ids[0], ids[2]]
    assert await xrange_ids(redis_client, "batch.b") == [ids[1]]


async def test_batch_with_one_invalid_event_publishes_nothing(
    default_herald: Herald, client: httpx.AsyncClient, redis_client: aioredis.Redis
) -> None:
    body = [{"topic": "whole", "data": 1}, {"topic": "bad topic!", "data": 2}]
    answer = await client.post(f"{default_herald.url}/publish", json=body)
    assert_detail(answer.status_code, answer.json(), 422)
    assert await redis_client.xlen(STREAM_PREFIX + "whole") == 0


async def test_publish_rejects_oversized_events_and_bodies_with_413(
    herald: HeraldFactory, client: httpx.AsyncClient, redis_client: aioredis.Redis
) -> None:
    app = herald(HERALD_MAX_EVENT_BYTES=1024, HERALD_MAX_BODY_BYTES=4096)
    url = f"{app.url}/publish"

    await publish(client, app, "size", "x" * 900)  # under both limits

    answer = await client.post(url, json={"topic": "size", "data": "x" * 2000})
    assert_detail(answer.status_code, answer.json(), 413)

    batch = [{"topic": "size", "data": "x" * 800} for _ in range(6)]  # ~5 KB body
    answer = await client.post(url, json=batch)
    assert_detail(answer.status_code, answer.json(), 413)

    async def chunked_body() -> AsyncIterator[bytes]:  # no Content-Length to trust
        yield b'{"topic": "size", "data": "'
        for _ in range(8):
            yield b"y" * 1024
        yield b'"}'

    answer = await client.post(
        url, content=chunked_body(), headers={"content-type": "application/json"}
    )
    assert_detail(answer.status_code, answer.json(), 413)

    assert await redis_client.xlen(STREAM_PREFIX + "size") == 1


async def test_publish_rejects_a_body_over_the_default_limit_with_413(
    default_herald: Herald, client: httpx.AsyncClient
) -> None:
    many = [{"topic": "big", "data": "z" * 500} for _ in range(2200)]  # ~1.2 MB, 1 MiB default
    answer = await client.post(f"{default_herald.url}/publish", json=many)
    assert_detail(answer.status_code, answer.json(), 413)


@pytest.mark.parametrize(
    ("params", "status"),
    [
        ([], 422),
        ([("topic", "bad topic!")], 422),
        ([("topic", "-dash")], 422),
        ([("topic", "t" * 129)], 422),
        ([("topic", f"t{i}") for i in range(33)], 400),
    ],
    ids=["no-topic", "topic-with-space", "topic-starts-with-dash", "topic-129-chars", "33-topics"],
)
async def test_subscribe_rejects_bad_topics(
    default_herald: Herald, client: httpx.AsyncClient, params: list[tuple[str, str]], status: int
) -> None:
    assert_detail(*await error_of(client, f"{default_herald.url}/events", params), status)


async def test_subscribe_accepts_the_maximum_number_of_topics(
    default_herald: Herald, client: httpx.AsyncClient
) -> None:
    params = [("topic", f"t{i}") for i in range(32)]
    async with SSEStream(client, f"{default_herald.url}/events", params=params) as stream:
        assert stream.response.status_code == 200


@pytest.mark.parametrize("position", ["abc", "1-2-3", "-1-0", "1-", "99999999999999999999999-0"])
@pytest.mark.parametrize("via", ["header", "query"])
async def test_subscribe_rejects_a_malformed_last_event_id_with_400(
    default_herald: Herald, client: httpx.AsyncClient, position: str, via: str
) -> None:
    if via == "header":
        params, headers = topic_params(["one"]), {"Last-Event-ID": position}
    else:
        params, headers = topic_params(["one"], lastEventId=position), {}
    answer = await error_of(client, f"{default_herald.url}/events", params, headers)
    assert_detail(*answer, 400)


@pytest.mark.parametrize("position", ["abc", "not a cursor", "1-0.2-0"])
async def test_multi_topic_subscribe_rejects_an_invalid_cursor_with_400(
    default_herald: Herald, client: httpx.AsyncClient, position: str
) -> None:
    params = topic_params(["one", "two"])
    answer = await error_of(
        client, f"{default_herald.url}/events", params, {"Last-Event-ID": position}
    )
    assert_detail(*answer, 400)


# --------------------------------------------------------------------------- h. operations


async def test_health_readiness_and_metrics_answer(
    default_herald: Herald, client: httpx.AsyncClient
) -> None:
    assert (await client.get(f"{default_herald.url}/healthz")).status_code == 200
    assert (await client.get(f"{default_herald.url}/readyz")).status_code == 200
    metrics = await client.get(f"{default_herald.url}/metrics")
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain")
    assert "# TYPE" in metrics.text


@pytest.mark.parametrize("access_log", ["false", "true"])
async def test_requests_are_logged_only_when_asked(
    herald: HeraldFactory, client: httpx.AsyncClient, access_log: str
) -> None:
    app = herald(HERALD_ACCESS_LOG=access_log)
    await publish(client, app, "logged", "x")
    await asyncio.sleep(0.2)
    logged = '"POST /publish HTTP/1.1" 200' in app.stdout_path.read_text()
    assert logged == (access_log == "true")


# --------------------------------------------------------------------------- i. shutdown


async def test_sigterm_ends_open_streams_and_exits_cleanly(
    herald: HeraldFactory, client: httpx.AsyncClient
) -> None:
    app = herald()
    async with live_stream(client, app, ["bye"]) as stream:
        started = time.monotonic()
        app.proc.send_signal(signal.SIGTERM)
        await stream.wait_closed(timeout=10)
        assert stream.error is None, f"the stream was cut, not ended: {stream.error!r}"
        code = await asyncio.to_thread(app.proc.wait, max(10 - (time.monotonic() - started), 1))
    assert code == 0, app.logs()
