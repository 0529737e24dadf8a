"""`herald check`: publish one event and read it back over SSE, end to end.

For operators after a deploy, and for the Helm chart's `helm test` hook. It subscribes
to a fresh topic `check.<random hex>`, waits until the stream is live (the `id:` line
alone that opens a live start), publishes one event, and reads it back:

    print(round_trip("http://127.0.0.1:8000"))
    # ok: published check.5f0c9a1e 1795299730554-0 and received it over SSE in 3.1 ms

Each run leaves its topic's one-entry stream in Redis, trimmed like any other.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx

from service.client.publisher import AsyncPublisher, ClientError, Rejected, checked_url, describe
from service.client.sse_parser import Event, SSEParser

__all__ = ["DEFAULT_TIMEOUT", "CheckFailed", "Checked", "round_trip"]

DEFAULT_TIMEOUT = 10.0
"""Seconds the whole round trip may take."""
EVENT = "check"


class CheckFailed(Exception):
    """The round trip did not complete; the message says which step failed, and why."""


@dataclass(frozen=True)
class Checked:
    """A completed round trip."""

    topic: str
    id: str
    seconds: float
    """From sending the publish request to the event's arrival over SSE."""

    def __str__(self) -> str:
        return (
            f"ok: published {self.topic} {self.id} and received it over SSE "
            f"in {self.seconds * 1000:.1f} ms"
        )


def round_trip(url: str, *, token: str | None = None, timeout: float = DEFAULT_TIMEOUT) -> Checked:
    """Check Herald at `url` within `timeout` seconds: `CheckFailed` when it does not pass.

    `token` is sent with both requests; it must allow publishing and subscribing to
    `check.*`. A URL that is not http(s) raises `ValueError`.
    """
    return asyncio.run(_RoundTrip(checked_url(url), token, timeout).run())


class _RoundTrip:
    def __init__(self, url: str, token: str | None, timeout: float) -> None:
        self._url = url
        self._token = token
        self._timeout = timeout
        self._topic = f"check.{secrets.token_hex(4)}"
        self._data = secrets.token_hex(8)
        self._step = "opening the stream"
        """What the check is doing: the failure line says where it stopped."""

    async def run(self) -> Checked:
        try:
            async with asyncio.timeout(self._timeout):
                return await self._steps()
        except TimeoutError:
            raise CheckFailed(f"no answer within {self._timeout:g} s while {self._step}") from None
        except httpx.TransportError as exc:
            raise CheckFailed(f"{describe(exc)} while {self._step} at {self._url}") from None

    async def _steps(self) -> Checked:
        headers = {"Accept": "text/event-stream"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        # The deadline in `run` bounds every step, so the stream has no timeout of its
        # own. No retries: a smoke check reports the first failure instead of hiding it.
        async with (
            httpx.AsyncClient(base_url=self._url, headers=headers, timeout=None) as http,
            AsyncPublisher(self._url, token=self._token, timeout=self._timeout, retries=0) as pub,
            http.stream("GET", "/events", params={"topic": self._topic}) as response,
        ):
            if response.status_code != 200:
                await response.aread()
                raise CheckFailed(f"subscribing to {self._topic}: {Rejected.of(response)}")
            parser = SSEParser()
            chunks = response.aiter_bytes()
            received: list[Event] = []
            self._step = "waiting for the stream to go live"
            while parser.last_event_id is None:
                received += await self._next(chunks, parser)
            self._step = "publishing"
            started = time.perf_counter()
            try:
                published = await pub.publish(self._topic, self._data, EVENT)
            except ClientError as exc:
                raise CheckFailed(f"publishing to {self._topic}: {exc}") from None
            self._step = f"waiting for {published.id} over SSE"
            while not received:
                received += await self._next(chunks, parser)
            seconds = time.perf_counter() - started
        expected = Event(id=published.id, event=EVENT, data=self._data)
        if received[0] != expected:
            raise CheckFailed(f"received {received[0]} instead of {expected}")
        return Checked(self._topic, published.id, seconds)

    async def _next(self, chunks: AsyncIterator[bytes], parser: SSEParser) -> list[Event]:
        """The events completed by the stream's next chunk (often none)."""
        chunk = await anext(chunks, None)
        if chunk is None:
            raise CheckFailed(f"the stream ended while {self._step}")
        return parser.feed(chunk)
