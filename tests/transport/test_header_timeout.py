"""Slowloris: connections that never finish their request headers are closed, nothing else is."""

from __future__ import annotations

import asyncio
import contextlib
import json

import httpx
import pytest

from tests.conftest import Herald, HeraldFactory
from tests.sse import SSEStream

pytestmark = pytest.mark.integration

HEADER_TIMEOUT = 2
TRICKLERS = 300
TRICKLE_EVERY = 1.0
# Far beyond HEADER_TIMEOUT, yet short of the 10 s default, so that a timeout that did
# not reach the serving process fails as well as none at all.
CLOSED_WITHIN = 8.0

Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def connect(app: Herald) -> Connection:
    return await asyncio.open_connection("127.0.0.1", app.port)


async def trickle(connection: Connection, within: float = CLOSED_WITHIN) -> bytes | None:
    """Send a request line, then one header line a second, never ending the headers.

    What the server sent before it closed the connection (b"" for a reset), or None if
    the connection was still open after `within` s.
    """
    reader, writer = connection
    loop = asyncio.get_running_loop()
    answer = asyncio.ensure_future(reader.read())
    deadline = loop.time() + within
    writer.write(b"GET /events?topic=calm HTTP/1.1\r\n")
    lines = 0
    try:
        while loop.time() < deadline:
            done, _ = await asyncio.wait({answer}, timeout=TRICKLE_EVERY)
            if done:
                try:
                    return answer.result()
                except ConnectionResetError:
                    return b""
            writer.write(b"X-Trickle-%d: still coming\r\n" % lines)
            lines += 1
        return None
    finally:
        answer.cancel()
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def closed_as_expected(answer: bytes | None) -> bool:
    """Closed by the server, with at most a 408 that asks for no further request."""
    if answer is None:
        return False
    if answer == b"":
        return True
    head = answer.split(b"\r\n\r\n", 1)[0].lower()
    return answer.startswith(b"HTTP/1.1 408 ") and b"\r\nconnection: close" in head


async def publish_and_receive(client: httpx.AsyncClient, app: Herald, stream: SSEStream) -> None:
    published = await client.post(f"{app.url}/publish", json={"topic": "calm", "data": "ok"})
    assert published.status_code == 200, published.text
    event = await stream.next_event(timeout=5)
    assert (event.id, event.data) == (published.json()["id"], "ok")


async def test_trickling_connections_are_closed_while_everyone_else_is_served(
    herald: HeraldFactory,
) -> None:
    app = herald(HERALD_HEADER_TIMEOUT_SECONDS=HEADER_TIMEOUT)
    async with (
        httpx.AsyncClient(timeout=10) as client,
        SSEStream(client, f"{app.url}/events", params={"topic": "calm"}) as bystander,
    ):
        connections = await asyncio.gather(*(connect(app) for _ in range(TRICKLERS)))
        tricklers = [asyncio.create_task(trickle(c)) for c in connections]
        await publish_and_receive(client, app, bystander)
        async with SSEStream(client, f"{app.url}/events", params={"topic": "calm"}) as newcomer:
            published = await client.post(f"{app.url}/publish", json={"topic": "calm"})
            assert (await newcomer.next_event(timeout=5)).id == published.json()["id"]
            assert (await bystander.next_event(timeout=5)).id == published.json()["id"]
        answers = await asyncio.gather(*tricklers)
        still_open = answers.count(None)
        assert still_open == 0, f"{still_open} of {TRICKLERS} still open after {CLOSED_WITHIN} s"
        assert all(map(closed_as_expected, answers)), {a[:80] for a in answers if a}
        await publish_and_receive(client, app, bystander)
    assert "Traceback" not in app.logs()


async def test_a_kept_alive_connection_trickling_its_second_request_is_closed(
    herald: HeraldFactory,
) -> None:
    app = herald(HERALD_HEADER_TIMEOUT_SECONDS=HEADER_TIMEOUT)
    reader, writer = connection = await connect(app)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 200 ")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.lower().split(b"\r\n")
        if line.startswith(b"content-length:")
    )
    await asyncio.wait_for(reader.readexactly(length), 10)
    assert closed_as_expected(await trickle(connection))


async def test_a_stalled_request_gets_a_408_and_a_silent_connection_is_just_closed(
    herald: HeraldFactory,
) -> None:
    app = herald(HERALD_HEADER_TIMEOUT_SECONDS=HEADER_TIMEOUT)
    (stalled_reader, stalled_writer), (silent_reader, silent_writer) = await asyncio.gather(
        connect(app), connect(app)
    )
    stalled_writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    stalled, silent = await asyncio.wait_for(
        asyncio.gather(stalled_reader.read(), silent_reader.read()), CLOSED_WITHIN
    )
    stalled_writer.close()
    silent_writer.close()
    assert stalled.startswith(b"HTTP/1.1 408 ") and closed_as_expected(stalled), stalled
    detail = json.loads(stalled.split(b"\r\n\r\n", 1)[1])["detail"]
    assert detail == f"request headers not complete within {HEADER_TIMEOUT} s"
    assert silent == b""


async def test_streams_and_slow_bodies_outlive_the_header_timeout(herald: HeraldFactory) -> None:
    app = herald(HERALD_HEADER_TIMEOUT_SECONDS=1)
    async with (
        httpx.AsyncClient(timeout=10) as client,
        SSEStream(client, f"{app.url}/events", params={"topic": "calm"}) as stream,
    ):
        # Headers at once, then the body in three pieces over three header timeouts.
        body = json.dumps({"topic": "calm", "data": "slow"}).encode()
        reader, writer = await connect(app)
        writer.write(
            b"POST /publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)
        )
        third = len(body) // 3 + 1
        for start in range(0, len(body), third):
            await asyncio.sleep(1)
            writer.write(body[start : start + third])
        status = await asyncio.wait_for(reader.readline(), 10)
        writer.close()
        assert status.startswith(b"HTTP/1.1 200 "), status
        event = await stream.next_event(timeout=5)
        assert event.data == "slow"
        await publish_and_receive(client, app, stream)
        assert not stream.closed


async def test_the_header_timeout_holds_in_every_worker_process(herald: HeraldFactory) -> None:
    app = herald(HERALD_HEADER_TIMEOUT_SECONDS=HEADER_TIMEOUT, HERALD_WORKERS=2)
    connections = await asyncio.gather(*(connect(app) for _ in range(4)))
    answers = await asyncio.gather(*(trickle(c) for c in connections))
    assert all(map(closed_as_expected, answers)), answers
