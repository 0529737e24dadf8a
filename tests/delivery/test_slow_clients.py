"""A thousand clients that stop reading: released, memory bounded, everyone else served."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import Herald, HeraldFactory, metric
from tests.sse import SSEStream

pytestmark = pytest.mark.integration

SLOW_CLIENTS = 1000
EVENTS = 400
EVENT_BYTES = 2000


def rss_bytes(app: Herald) -> int:
    for line in Path(f"/proc/{app.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def stalled_client(app: Herald) -> socket.socket:
    """Subscribes, then never reads; its tiny receive buffer makes the server notice soon."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", app.port))
    await asyncio.get_running_loop().sock_sendall(
        sock, b"GET /events?topic=flood HTTP/1.1\r\nHost: herald\r\n\r\n"
    )
    return sock


async def subscribers(client: httpx.AsyncClient, app: Herald) -> float:
    return metric((await client.get(f"{app.url}/metrics")).text, "herald_subscribers")


async def test_a_thousand_stalled_clients_are_released_with_memory_bounded(
    herald: HeraldFactory,
) -> None:
    app = herald(HERALD_SUBSCRIBER_BUFFER=50, HERALD_SEND_TIMEOUT_SECONDS=2)
    stalled = [await stalled_client(app) for _ in range(SLOW_CLIENTS)]
    try:
        async with (
            httpx.AsyncClient(timeout=30) as client,
            SSEStream(client, f"{app.url}/events", params={"topic": "flood"}) as healthy,
        ):
            deadline = time.monotonic() + 30
            while await subscribers(client, app) < SLOW_CLIENTS + 1:
                assert time.monotonic() < deadline, "the stalled clients never all subscribed"
                await asyncio.sleep(0.2)
            rss_before = rss_bytes(app)
            peak = rss_before
            payload = "x" * EVENT_BYTES
            for n in range(EVENTS):
                await client.post(f"{app.url}/publish", json={"topic": "flood", "data": payload})
                if n % 50 == 0:
                    peak = max(peak, rss_bytes(app))
            got = [await healthy.next_event(timeout=30) for _ in range(EVENTS)]
            deadline = time.monotonic() + 60
            while await subscribers(client, app) > 1:
                peak = max(peak, rss_bytes(app))
                assert time.monotonic() < deadline, "stalled clients were never released"
                await asyncio.sleep(0.5)
        # Each stalled client may hold its buffer limit (50 events of 2 KB) plus the
        # transport's 64 KiB before it is cut off: under 200 KB apiece.
        assert peak - rss_before < SLOW_CLIENTS * 200_000
        assert len(got) == EVENTS and len({e.id for e in got}) == EVENTS
    finally:
        for sock in stalled:
            sock.close()
