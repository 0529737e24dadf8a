"""The publisher client: ids a subscriber receives, retries that never duplicate, clear errors."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import struct
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import jwt
import pytest
import redis.asyncio as aioredis
from pydantic import ValidationError

from service.client.publisher import AsyncPublisher, LineRejected, Publisher, Rejected, Unavailable
from service.models import PublishEvent, StreamPublished
from service.storage.keys import idempotency_key, stream_key
from tests.conftest import Herald, HeraldFactory, free_port
from tests.ports import refused_port
from tests.sse import SSEStream

integration = pytest.mark.integration


# --------------------------------------------------------------------------- helpers


class LossyProxy:
    """A TCP proxy to Herald that loses the answer on its first connection.

    Herald answers only once Redis stored the event, so the lost answer is a publish
    that happened while the client saw a failure: `"reset"` resets the client's
    connection as the answer arrives, `"stall"` holds it past the client's timeout.
    Every later connection passes through.
    """

    def __init__(self, upstream_port: int, mode: str, hold: float = 0) -> None:
        self._upstream_port = upstream_port
        self._mode = mode
        self._hold = hold
        self._server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._server.getsockname()[1]}"
        self.connections = 0
        self.lost: list[bytes] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._server.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            self.connections += 1
            lose = self.connections == 1
            threading.Thread(target=self._serve, args=(client, lose), daemon=True).start()

    def _serve(self, client: socket.socket, lose: bool) -> None:
        upstream = socket.create_connection(("127.0.0.1", self._upstream_port))
        threading.Thread(target=_pump, args=(client, upstream), daemon=True).start()
        if not lose:
            _pump(upstream, client)
            return
        self.lost.append(_read_answer(upstream))
        time.sleep(self._hold)
        with contextlib.suppress(OSError):  # in "stall" the client may have left already
            if self._mode == "reset":
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            # Wakes the pump reading the client, which then closes both sockets.
            client.shutdown(socket.SHUT_RD)


class CuttingProxy:
    """A TCP proxy to Herald that cuts its first connection in the middle of a streaming
    publish, once `lines` event lines of the body went through; later ones pass."""

    def __init__(self, upstream_port: int, lines: int) -> None:
        self._upstream_port = upstream_port
        self._lines = lines
        self._server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._server.getsockname()[1]}"
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._server.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            self.connections += 1
            cut = self.connections == 1
            threading.Thread(target=self._serve, args=(client, cut), daemon=True).start()

    def _serve(self, client: socket.socket, cut: bool) -> None:
        upstream = socket.create_connection(("127.0.0.1", self._upstream_port))
        threading.Thread(target=_pump, args=(upstream, client), daemon=True).start()
        if not cut:
            _pump(client, upstream)
            return
        body = b""
        while body.count(b"}\n") < self._lines and (chunk := client.recv(65536)):
            upstream.sendall(chunk)
            body += chunk
        # Both ends see the connection reset; waking the pump from Herald closes both.
        for sock in (client, upstream):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        upstream.shutdown(socket.SHUT_RDWR)


def _read_answer(sock: socket.socket) -> bytes:
    """One whole HTTP answer with a Content-Length body."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = re.search(rb"(?im)^content-length: *(\d+)", head)
    assert length is not None, head
    while len(body) < int(length[1]):
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while chunk := source.recv(65536):
            sink.sendall(chunk)
    except OSError:
        pass
    finally:
        for sock in (source, sink):
            sock.close()


@pytest.fixture
def lossy_proxy() -> Iterator[Callable[..., LossyProxy]]:
    proxies: list[LossyProxy] = []

    def make(app: Herald, mode: str, hold: float = 0) -> LossyProxy:
        proxies.append(LossyProxy(app.port, mode, hold))
        return proxies[-1]

    yield make
    for proxy in proxies:
        proxy.close()


@pytest.fixture
def cutting_proxy() -> Iterator[Callable[[Herald, int], CuttingProxy]]:
    proxies: list[CuttingProxy] = []

    def make(app: Herald, lines: int) -> CuttingProxy:
        proxies.append(CuttingProxy(app.port, lines))
        return proxies[-1]

    yield make
    for proxy in proxies:
        proxy.close()


def scripted(
    answers: list[httpx.Response | Exception], seen: list[httpx.Request]
) -> httpx.MockTransport:
    """A transport answering each request with the next of `answers` (simulated Herald)."""

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    return httpx.MockTransport(handle)


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The waits the sync publisher asks for, recorded instead of slept."""
    recorded: list[float] = []
    monkeypatch.setattr(time, "sleep", recorded.append)
    return recorded


# --------------------------------------------------------------------------- delivery


@integration
async def test_publish_returns_the_id_a_subscriber_receives(default_herald: Herald) -> None:
    async with (
        httpx.AsyncClient() as http,
        SSEStream(http, f"{default_herald.url}/events", params={"topic": "stocks.AAPL"}) as stream,
    ):

        def publish() -> str:
            with Publisher(default_herald.url) as herald:
                first = herald.publish("stocks.AAPL", {"price": 189.2}, event="tick")
                second = herald.publish("stocks.AAPL", "line 1\nline 2")
            return f"{first.id} {second.id}"

        ids = (await asyncio.to_thread(publish)).split()
        events = await stream.collect(2)
    assert [(e.id, e.event, e.data) for e in events] == [
        (ids[0], "tick", '{"price":189.2}'),
        (ids[1], "message", "line 1\nline 2"),
    ]


@integration
async def test_an_async_batch_block_publishes_in_order_when_it_ends(
    default_herald: Herald,
) -> None:
    async with (
        httpx.AsyncClient() as http,
        SSEStream(http, f"{default_herald.url}/events", params={"topic": "logs.api"}) as stream,
        AsyncPublisher(default_herald.url) as herald,
    ):
        async with herald.batch() as batch:
            batch.add("logs.api", "GET / 200", event="log")
            batch.add("logs.api", "GET /x 404", event="log")
            with pytest.raises(RuntimeError, match="when its block ends"):
                _ = batch.published
            await stream.expect_silence(0.3)
        events = await stream.collect(2)
    assert [p.id for p in batch.published] == [e.id for e in events]
    assert [e.data for e in events] == ["GET / 200", "GET /x 404"]


@integration
async def test_a_batch_over_1000_events_is_split_and_a_retry_of_it_appends_nothing(
    default_herald: Herald, redis_client: aioredis.Redis
) -> None:
    events = [PublishEvent(topic="ticks", data=str(n)) for n in range(2500)]
    async with (
        httpx.AsyncClient() as http,
        SSEStream(http, f"{default_herald.url}/events", params={"topic": "ticks"}) as stream,
        AsyncPublisher(default_herald.url) as herald,
    ):
        published = await herald.publish_batch(events, idempotency_key="ticks-batch")
        received = await stream.collect(2500)
        again = await herald.publish_batch(events, idempotency_key="ticks-batch")
        await stream.expect_silence(0.3)
    assert [p.id for p in published] == [e.id for e in received]
    assert [e.data for e in received] == [str(n) for n in range(2500)]
    assert again == published
    assert await redis_client.xlen(stream_key("ticks")) == 2500
    chunk_keys = [idempotency_key(f"ticks-batch:{n}") for n in range(3)]
    assert await redis_client.exists(*chunk_keys) == 3


# --------------------------------------------------------------------------- retries


@integration
@pytest.mark.parametrize("mode", ["reset", "stall"])
async def test_a_publish_whose_answer_was_lost_is_retried_and_appends_once(
    default_herald: Herald,
    redis_client: aioredis.Redis,
    lossy_proxy: Callable[..., LossyProxy],
    mode: str,
) -> None:
    proxy = lossy_proxy(default_herald, mode, hold=1.5 if mode == "stall" else 0)
    async with (
        httpx.AsyncClient() as http,
        SSEStream(http, f"{default_herald.url}/events", params={"topic": "payments"}) as stream,
    ):

        def publish() -> str:
            with Publisher(proxy.url, timeout=0.5, backoff=0.05) as herald:
                return herald.publish("payments", {"settled": 42}).id

        published_id = await asyncio.to_thread(publish)
        (event,) = await stream.collect(1)
        await stream.expect_silence(0.5)
    (lost,) = proxy.lost
    assert lost.startswith(b"HTTP/1.1 200") and published_id.encode() in lost
    assert proxy.connections == 2
    assert event.id == published_id
    entries = await redis_client.xrange(stream_key("payments"))
    assert [entry_id for entry_id, _ in entries] == [published_id]


@integration
async def test_an_async_batch_whose_answer_was_lost_appends_once(
    default_herald: Herald, redis_client: aioredis.Redis, lossy_proxy: Callable[..., LossyProxy]
) -> None:
    proxy = lossy_proxy(default_herald, "reset")
    async with AsyncPublisher(proxy.url, backoff=0.05) as herald, herald.batch() as batch:
        for n in range(3):
            batch.add("orders", str(n))
    entries = await redis_client.xrange(stream_key("orders"))
    assert [entry_id for entry_id, _ in entries] == [p.id for p in batch.published]
    assert proxy.connections == 2


@integration
async def test_a_rate_limited_publish_waits_for_retry_after_and_lands(
    herald: HeraldFactory, redis_client: aioredis.Redis
) -> None:
    app = herald(HERALD_PUBLISH_RATE=1, HERALD_PUBLISH_BURST=1000)
    async with AsyncPublisher(app.url) as publisher:
        await publisher.publish_batch([PublishEvent(topic="t", data="x")] * 1000)
        started = time.monotonic()
        published = await publisher.publish("t", "over the rate")
        waited = time.monotonic() - started
    assert waited >= 1, "Herald's Retry-After: 1 was not honoured"
    (last,) = await redis_client.xrevrange(stream_key("t"), count=1)
    assert last == (published.id, {"event": "message", "data": "over the rate"})
    assert await redis_client.xlen(stream_key("t")) == 1001


def test_503_and_429_are_retried_with_the_same_key_after_retry_after(
    sleeps: list[float],
) -> None:
    in_3_s = format_datetime(datetime.now(UTC) + timedelta(seconds=3), usegmt=True)
    seen: list[httpx.Request] = []
    answers: list[httpx.Response | Exception] = [
        httpx.Response(503, headers={"Retry-After": "2"}, json={"detail": "Redis is down"}),
        httpx.Response(429, headers={"Retry-After": in_3_s}, json={"detail": "slow down"}),
        httpx.Response(502, text="<html>bad gateway</html>"),
        httpx.ReadTimeout("no answer"),
        httpx.Response(200, json={"topic": "t", "id": "7-0"}),
    ]
    with Publisher("http://herald", backoff=0.01, transport=scripted(answers, seen)) as herald:
        assert herald.publish("t", "x").id == "7-0"
    assert len({r.headers["Idempotency-Key"] for r in seen}) == 1
    assert len({r.content for r in seen}) == 1, "a retry must send the same body"
    assert sleeps[0] == 2
    assert 1.5 < sleeps[1] <= 3
    assert all(s < 0.1 for s in sleeps[2:])


def test_backoff_doubles_with_jitter_up_to_a_cap_then_unavailable(sleeps: list[float]) -> None:
    seen: list[httpx.Request] = []
    answers: list[httpx.Response | Exception] = [httpx.ConnectError("refused")] * 9
    transport = scripted(answers, seen)
    with (
        Publisher("http://herald", retries=8, backoff=1, transport=transport) as herald,
        pytest.raises(Unavailable) as raised,
    ):
        herald.publish("t", "x")
    ceilings = [1, 2, 4, 5, 5, 5, 5, 5]
    assert all(c / 2 <= s <= c for s, c in zip(sleeps, ceilings, strict=True)), sleeps
    assert len(set(sleeps)) > 1, "no jitter"
    assert raised.value.attempts == 9 == len(seen)
    assert raised.value.cause == "could not connect"
    assert str(raised.value) == (
        "Herald at http://herald is unavailable after 9 attempts: could not connect"
    )


async def test_the_async_publisher_retries_with_the_same_key() -> None:
    seen: list[httpx.Request] = []
    answers: list[httpx.Response | Exception] = [
        httpx.RemoteProtocolError("server disconnected"),
        httpx.Response(504, headers={"Retry-After": "0"}),
        httpx.Response(200, json={"topic": "t", "id": "8-0"}),
    ]
    transport = scripted(answers, seen)
    async with AsyncPublisher("http://herald", backoff=0.01, transport=transport) as herald:
        assert (await herald.publish("t", "x", idempotency_key="mine")).id == "8-0"
    assert [r.headers["Idempotency-Key"] for r in seen] == ["mine"] * 3


@pytest.mark.parametrize("status", [400, 401, 403, 413, 422, 500])
def test_other_errors_raise_at_once(sleeps: list[float], status: int) -> None:
    seen: list[httpx.Request] = []
    answers: list[httpx.Response | Exception] = [httpx.Response(status, json={"detail": "no"})]
    with (
        Publisher("http://herald", transport=scripted(answers, seen)) as herald,
        pytest.raises(Rejected) as raised,
    ):
        herald.publish("t", "x")
    assert (raised.value.status, raised.value.detail, len(seen), sleeps) == (status, "no", 1, [])


# --------------------------------------------------------------------------- streaming


@integration
async def test_a_stream_reaches_subscribers_while_its_block_is_still_open(
    default_herald: Herald, redis_client: aioredis.Redis
) -> None:
    async with (
        httpx.AsyncClient() as http,
        SSEStream(http, f"{default_herald.url}/events", params={"topic": "answer.1"}) as sse,
        AsyncPublisher(default_herald.url) as herald,
    ):
        async with herald.stream() as stream:
            await stream.send("answer.1", 0, event="token")
            # Sent as it is produced, not held until the block ends.
            first = await sse.next_event()
            for n in range(1, 100):
                await asyncio.sleep(0.005)
                await stream.send("answer.1", n, event="token")
            with pytest.raises(RuntimeError, match="once the stream has ended"):
                _ = stream.result
        events = [first, *await sse.collect(99)]
    entries = await redis_client.xrange(stream_key("answer.1"))
    assert [e.data for e in events] == [str(n) for n in range(100)]
    assert [e.id for e in events] == [entry_id for entry_id, _ in entries]
    assert stream.result == StreamPublished(count=100, last={"answer.1": events[-1].id})


@integration
async def test_a_stream_cut_midway_is_sent_again_and_publishes_each_event_once(
    default_herald: Herald,
    redis_client: aioredis.Redis,
    cutting_proxy: Callable[[Herald, int], CuttingProxy],
) -> None:
    proxy = cutting_proxy(default_herald, 5)

    async def answer() -> AsyncIterator[PublishEvent]:
        for n in range(20):
            yield PublishEvent(topic="answer.2", event="token", data=n)
            await asyncio.sleep(0.02)

    async with AsyncPublisher(proxy.url, backoff=0.05) as herald:
        published = await herald.publish_stream(answer())
    entries = await redis_client.xrange(stream_key("answer.2"))
    assert [fields["data"] for _, fields in entries] == [str(n) for n in range(20)]
    assert published == StreamPublished(count=20, last={"answer.2": entries[-1][0]})
    assert proxy.connections >= 2


@integration
async def test_a_line_herald_refuses_raises_line_rejected_with_its_number(
    herald: HeraldFactory, redis_client: aioredis.Redis
) -> None:
    secret = "a-secret-long-enough-for-hs256-keys"
    app = herald(HERALD_JWT_KEY=secret)
    token = jwt.encode({"herald": {"publish": ["chat.*"]}, "exp": time.time() + 60}, secret)
    async with AsyncPublisher(app.url, token=token) as publisher:
        with pytest.raises(LineRejected) as raised:
            async with publisher.stream() as stream:
                for topic, data in [("chat.1", "a"), ("chat.1", "b"), ("logs.x", "c")]:
                    await stream.send(topic, data)
                await stream.send("chat.1", "after the refused line")
    entries = await redis_client.xrange(stream_key("chat.1"))
    assert [fields["data"] for _, fields in entries] == ["a", "b"]
    assert (raised.value.status, raised.value.line, raised.value.count) == (403, 3, 2)
    assert str(raised.value) == (
        "Herald rejected line 3 (403): the token may not publish to: logs.x; "
        "2 events before it published"
    )


@integration
async def test_a_stream_that_found_no_herald_can_end_again_once_herald_is_up(
    herald: HeraldFactory, redis_client: aioredis.Redis
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    async with (
        AsyncPublisher(url, retries=1, backoff=0.01) as publisher,
        publisher.stream() as stream,
    ):
        await stream.send("orders", "1")
        await stream.send("orders", "2")
        with pytest.raises(Unavailable, match="could not connect"):
            await stream.end()
        herald(port=port)
        await stream.end()
    entries = await redis_client.xrange(stream_key("orders"))
    assert [fields["data"] for _, fields in entries] == ["1", "2"]
    assert stream.result == StreamPublished(count=2, last={"orders": entries[-1][0]})


@integration
async def test_a_bad_event_is_refused_by_send_and_the_stream_goes_on(
    default_herald: Herald, redis_client: aioredis.Redis
) -> None:
    async with AsyncPublisher(default_herald.url) as publisher, publisher.stream() as stream:
        with pytest.raises(ValidationError, match="topic"):
            await stream.send("no spaces allowed", "x")
        await stream.send("t", "fine")
    assert stream.result.count == 1


# --------------------------------------------------------------------------- errors


@integration
def test_a_key_reused_for_another_body_raises_rejected_with_the_detail(
    default_herald: Herald,
) -> None:
    with Publisher(default_herald.url) as herald:
        herald.publish("t", "first", idempotency_key="k-1")
        with pytest.raises(Rejected) as raised:
            herald.publish("t", "second", idempotency_key="k-1")
    assert raised.value.status == 422
    assert raised.value.detail == "this Idempotency-Key was used for another body"
    assert str(raised.value) == (
        "Herald rejected the request (422): this Idempotency-Key was used for another body"
    )


@integration
def test_unavailable_after_the_retries_against_a_closed_port() -> None:
    with refused_port() as port:
        url = f"http://127.0.0.1:{port}"
        with (
            Publisher(url, retries=2, backoff=0.01) as herald,
            pytest.raises(Unavailable) as raised,
        ):
            herald.publish("t", "x")
    assert raised.value.attempts == 3
    assert (
        str(raised.value) == f"Herald at {url} is unavailable after 3 attempts: could not connect"
    )
    assert isinstance(raised.value.__context__, httpx.ConnectError)


@integration
def test_the_token_is_sent_as_a_bearer_header(herald: HeraldFactory) -> None:
    secret = "a-secret-long-enough-for-hs256-keys"
    app = herald(HERALD_JWT_KEY=secret)
    token = jwt.encode({"herald": {"publish": ["stocks.*"]}, "exp": time.time() + 60}, secret)
    with Publisher(app.url, token=token) as with_token:
        assert with_token.publish("stocks.AAPL", "x").topic == "stocks.AAPL"
        with pytest.raises(Rejected) as forbidden:
            with_token.publish("logs.api", "x")
    with Publisher(app.url) as without, pytest.raises(Rejected) as missing:
        without.publish("stocks.AAPL", "x")
    assert (forbidden.value.status, missing.value.status) == (403, 401)


def test_a_bad_event_fails_before_any_request() -> None:
    seen: list[httpx.Request] = []
    with Publisher("http://herald", transport=scripted([], seen)) as herald:
        with pytest.raises(ValidationError, match="topic"):
            herald.publish("no spaces allowed", "x")
        with pytest.raises(ValidationError, match="reserved"):
            herald.publish("t", "x", event="herald.trimmed")
        with pytest.raises(ValidationError), herald.batch() as batch:
            batch.add("t", "fine")
            batch.add("t", float("nan"))
    assert seen == []


def test_an_exception_in_a_batch_block_publishes_nothing() -> None:
    seen: list[httpx.Request] = []
    with Publisher("http://herald", transport=scripted([], seen)) as herald:
        with pytest.raises(KeyError), herald.batch() as batch:
            batch.add("t", "x")
            raise KeyError("the caller's own failure")
        with herald.batch() as empty:
            pass
    assert seen == [] and empty.published == []


def test_a_url_without_scheme_is_refused() -> None:
    with pytest.raises(ValueError, match="must start with http:// or https://"):
        Publisher("localhost:8000")
