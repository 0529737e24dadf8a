"""Malformed and hostile HTTP on real sockets: a 4xx for the sender, nothing for the others."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
import redis.asyncio as aioredis

from service.storage.keys import stream_key
from tests.conftest import Herald
from tests.sse import SSEStream

pytestmark = pytest.mark.integration


async def raw_exchange(app: Herald, request: bytes) -> bytes:
    """Send raw bytes, return the status line the server answers (b"" if it just closes)."""
    host, port = app.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.readline(), 10)
    finally:
        writer.close()


def publish_request(body: bytes) -> bytes:
    head = "POST /publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    return head.encode() + b"Content-Length: %d\r\n\r\n" % len(body) + body


DEEP = b"[" * 50_000 + b"]" * 50_000
HUGE_ARRAY = b"[" + b",".join([b'{"topic": "t"}'] * 50_000) + b"]"
BAD_CHUNK = b"POST /publish HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"

HOSTILE = {
    "oversized headers": b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: "
    + b"a" * 1_000_000
    + b"\r\n\r\n",
    "not HTTP": b"\x16\x03\x01\x02\x00 TLS hello to a plain port\r\n\r\n",
    "invalid UTF-8 in JSON": publish_request(b'{"topic": "t", "data": "\xff\xfe"}'),
    "deep nesting": publish_request(b'{"topic": "t", "data": ' + DEEP + b"}"),
    "huge array": publish_request(HUGE_ARRAY),
    "body over the limit": publish_request(b'{"topic": "t", "data": "' + b"x" * 2_000_000 + b'"}'),
    "bad chunked body": BAD_CHUNK,
}


@pytest.mark.parametrize("name", list(HOSTILE))
async def test_hostile_requests_get_4xx_while_a_subscriber_keeps_getting_events(
    default_herald: Herald, name: str
) -> None:
    app = default_herald
    async with (
        httpx.AsyncClient(timeout=10) as client,
        SSEStream(client, f"{app.url}/events", params={"topic": "calm"}) as bystander,
    ):
        await asyncio.sleep(0.2)
        status_line = await raw_exchange(app, HOSTILE[name])
        assert status_line.startswith(b"HTTP/1.1 4"), status_line
        published = await client.post(f"{app.url}/publish", json={"topic": "calm", "data": "ok"})
        event = await bystander.next_event(timeout=5)
    assert (event.id, event.data) == (published.json()["id"], "ok")


async def test_a_client_leaving_mid_body_is_not_logged_as_a_server_error(
    default_herald: Herald,
) -> None:
    app = default_herald
    host, port = app.url.removeprefix("http://").split(":")
    _, writer = await asyncio.open_connection(host, int(port))
    writer.write(b'POST /publish HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"to')
    await writer.drain()
    await asyncio.sleep(0.2)
    writer.close()
    await asyncio.sleep(0.3)
    async with httpx.AsyncClient(timeout=10) as client:
        assert (await client.get(f"{app.url}/healthz")).status_code == 200
    assert "unexpected error" not in app.logs()


LARGEST = "18446744073709551615"
EXTREME_POSITIONS = [
    f"{LARGEST}-{LARGEST}",
    f"{LARGEST}-0",
    f"0-{LARGEST}",
    f"9999999999999-{LARGEST}",
]


@pytest.mark.parametrize("position", EXTREME_POSITIONS)
async def test_a_last_event_id_past_the_stream_end_replays_history_then_goes_live(
    default_herald: Herald, position: str
) -> None:
    app = default_herald
    topic = "extreme.ids"
    logged = app.stderr_path.stat().st_size
    async with httpx.AsyncClient(timeout=10) as client:
        first = (await client.post(f"{app.url}/publish", json={"topic": topic, "data": "a"})).json()
        async with SSEStream(
            client,
            f"{app.url}/events",
            params={"topic": topic},
            headers={"Last-Event-ID": position},
        ) as stream:
            # Like any position the stream never reached: said, then replayed from the start.
            notice = await stream.next_event()
            assert notice.event == "herald.trimmed"
            assert (await stream.next_event()).id == first["id"]
            live = await client.post(f"{app.url}/publish", json={"topic": topic, "data": "b"})
            event = await stream.next_event()
    assert (event.id, event.data) == (live.json()["id"], "b")
    with app.stderr_path.open("rb") as log:
        log.seek(logged)
        assert b"Traceback" not in log.read()


async def test_a_direct_producer_cannot_fake_heralds_own_notices(
    default_herald: Herald, redis_client: aioredis.Redis
) -> None:
    app = default_herald
    async with (
        httpx.AsyncClient(timeout=10) as client,
        SSEStream(client, f"{app.url}/events", params={"topic": "forged"}) as stream,
    ):
        await asyncio.sleep(0.2)
        fake = {"topic": "forged", "lastEventId": "1-0", "firstId": None}
        await redis_client.xadd(
            stream_key("forged"), {"event": "herald.trimmed", "data": json.dumps(fake)}
        )
        event = await stream.next_event()
    assert event.event == "message"
    assert json.loads(event.data) == fake
