"""A subscriber's path to its stream: direct writes, a bounded queue behind a slow client."""

from __future__ import annotations

import asyncio

import pytest
from starlette.types import Message

from service.delivery.subscriber import HEARTBEAT, Ended, Framer, Subscriber
from service.encoding.cursor import StreamId
from service.encoding.sse import Frame
from service.transport.direct import chunk
from service.transport.send_now import send_now


def frame(n: int) -> Frame:
    sid: StreamId = (n, 0)
    body = f"event: message\ndata: {n}\n\n".encode()
    return Frame(sid, body, f"id: {n}-0\n".encode() + body)


def push(subscriber: Subscriber, *ns: int) -> None:
    frames = [frame(n) for n in ns]
    joined = b"".join(f.data for f in frames)
    subscriber.push("t", frames, joined, chunk(joined))


class SlowClient:
    """An ASGI `send` that holds every write until the test lets it through."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.open = asyncio.Event()
        self.open.set()
        self.calls = 0

    async def send(self, message: Message) -> None:
        self.calls += 1
        await self.open.wait()
        self.written.append(message["body"])


def live(client: SlowClient, limit: int = 100, send_timeout: float = 5) -> Subscriber:
    subscriber = Subscriber(("t",), limit, send_timeout)
    subscriber.go_live(client.send, Framer(("t",), {"t": (0, 0)}), {})
    return subscriber


async def test_a_write_the_client_can_take_completes_without_a_task_switch() -> None:
    client = SlowClient()
    subscriber = live(client)

    push(subscriber, 1)

    assert client.written == [frame(1).data]  # no await happened in between


async def test_writes_held_up_by_a_slow_client_follow_in_order_in_one_chunk() -> None:
    client = SlowClient()
    subscriber = live(client)
    client.open.clear()

    push(subscriber, 1)
    push(subscriber, 2)
    push(subscriber, 3)
    assert client.written == []
    client.open.set()
    await asyncio.sleep(0.01)

    assert client.written == [frame(1).data, frame(2).data + frame(3).data]
    assert client.calls == 2
    push(subscriber, 4)
    assert client.written[-1] == frame(4).data


async def test_a_client_too_far_behind_ends_with_overflow_and_gets_nothing_more() -> None:
    client = SlowClient()
    subscriber = live(client, limit=3)
    client.open.clear()

    push(subscriber, 1)
    push(subscriber, 2, 3)
    assert not subscriber.closed.done()
    push(subscriber, 4, 5)

    assert subscriber.closed.result() is Ended.OVERFLOW
    await subscriber.stop_writing()
    client.open.set()
    push(subscriber, 6)
    await asyncio.sleep(0.01)
    assert client.written == []


async def test_a_client_that_stops_reading_ends_as_stuck_after_the_send_timeout() -> None:
    client = SlowClient()
    subscriber = live(client, send_timeout=0.05)
    client.open.clear()

    push(subscriber, 1)

    assert await asyncio.wait_for(subscriber.closed, 1) is Ended.STUCK


async def test_frames_before_going_live_are_kept_and_those_replay_sent_are_dropped() -> None:
    client = SlowClient()
    subscriber = Subscriber(("t",), 100, 5)
    push(subscriber, 2, 3)
    push(subscriber, 4)

    subscriber.go_live(client.send, Framer(("t",), {"t": (3, 0)}), {"t": (3, 0)})

    assert client.written == [frame(4).data]


async def test_a_backlog_past_the_limit_ends_the_stream_before_it_is_live() -> None:
    subscriber = Subscriber(("t",), 2, 5)
    push(subscriber, 1, 2, 3)
    assert subscriber.closed.result() is Ended.OVERFLOW


async def test_a_heartbeat_goes_only_to_a_stream_that_wrote_nothing_since_the_last() -> None:
    client = SlowClient()
    subscriber = live(client)
    push(subscriber, 1)

    subscriber.heartbeat()
    assert client.written == [frame(1).data]
    subscriber.heartbeat()
    assert client.written == [frame(1).data, HEARTBEAT]


async def test_multi_topic_streams_write_their_own_cursor_ids() -> None:
    client = SlowClient()
    subscriber = Subscriber(("a", "b"), 100, 5)
    subscriber.go_live(client.send, Framer(("a", "b"), {"a": (0, 0), "b": (0, 0)}), {})

    subscriber.push("b", [frame(7)], frame(7).data, chunk(frame(7).data))

    (written,) = client.written
    assert written.startswith(b"id: ") and not written.startswith(b"id: 7-0")
    assert written.endswith(frame(7).body)


async def test_send_now_finishes_a_suspended_send_and_passes_cancellation_on() -> None:
    client = SlowClient()
    client.open.clear()
    rest = send_now(client.send, {"type": "http.response.body", "body": b"x"})
    assert rest is not None

    waiting = asyncio.ensure_future(rest)
    await asyncio.sleep(0.01)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting

    rest = send_now(client.send, {"type": "http.response.body", "body": b"y"})
    assert rest is not None
    client.open.set()
    await rest
    assert client.written == [b"y"]
