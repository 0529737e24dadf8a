"""Relaying an OpenAI-compatible streaming answer: a fake upstream on a real socket, Redis,
`herald serve`, `herald worker typewriter`, and the docs' backend recipe, all real.

The fake upstream speaks HTTP/1.1 by hand so that it can do what real ones do on a bad
day: send the stream in pieces cut anywhere (mid-line, mid-character), answer 401 or 500,
put an error chunk in the stream, drop the connection, or go quiet.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any, Literal

import httpx
import pytest
import pytest_asyncio
import redis.asyncio as aioredis

from service.settings import Settings
from service.storage.stores import open_store
from tests.conftest import ROOT, HeraldFactory, RedisServer, free_port, run_herald, wait_until
from tests.sse import Event, SSEStream
from workers.openai_stream import ChatMessage, Upstream
from workers.relay import relay_answer
from workers.sink import StoreSink

MODEL = "test-model-7b"
KEY = "sk-test-relay-key"
MESSAGES = [
    ChatMessage(role="system", content="Answer briefly."),
    ChatMessage(role="user", content="What is SSE?"),
]
DELTAS = [
    "Server",
    "-Sent",
    " Events",
    " stream",
    " text",
    " over",
    " plain",
    " HTTP",
    ".\n\n",
    "Ünï",
    "cödé",
    " and",
    " emoji",
    " 🎉",
    " arrive",
    " whole",
    ".",
]
BAD_KEY = {
    "error": {
        "message": "Incorrect API key provided: sk-wrong.",
        "type": "invalid_request_error",
        "param": None,
        "code": "invalid_api_key",
    }
}


# --------------------------------------------------------------------------- the fake upstream


@dataclass
class Script:
    """How the fake upstream answers: a status, a body in pieces, and how the body ends."""

    status: int = 200
    content_type: str = "text/event-stream"
    pieces: list[bytes] = field(default_factory=list)
    """Each piece is sent as its own TCP write (one HTTP chunk)."""
    end: Literal["complete", "drop", "stall"] = "complete"
    """complete: the last chunk; drop: the connection closes mid-body; stall: nothing more."""


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    """Lower-cased names."""
    body: Any


class FakeUpstream:
    """`POST /v1/chat/completions` on 127.0.0.1, served from a thread of its own, so that
    the test's event loop and other processes can both reach it."""

    def __init__(self) -> None:
        self.script = Script()
        self.received: list[Received] = []
        self.port = 0
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._stop = asyncio.Event()
        self._thread = threading.Thread(target=self._loop.run_until_complete, args=(self._serve(),))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def upstream(self, **options: Any) -> Upstream:
        return Upstream(url=self.url, model=MODEL, **options)

    def start(self) -> None:
        self._thread.start()
        assert self._ready.wait(10), "the fake upstream did not start"

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
        self._loop.close()

    async def _serve(self) -> None:
        server = await asyncio.start_server(self._answer, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        await self._stop.wait()
        server.close()
        await server.wait_closed()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # The client may hang up first: after a timeout, or when its worker stops.
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            request_line, *header_lines = head.split("\r\n")[:-2]
            headers = {
                name.strip().lower(): value.strip()
                for name, _, value in (line.partition(":") for line in header_lines)
            }
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            self.received.append(Received(request_line.split()[1], headers, json.loads(body)))
            await self._send(writer, self.script)
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def _send(self, writer: asyncio.StreamWriter, script: Script) -> None:
        reason = HTTPStatus(script.status).phrase
        writer.write(
            f"HTTP/1.1 {script.status} {reason}\r\nContent-Type: {script.content_type}\r\n"
            "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n".encode()
        )
        await writer.drain()
        for piece in script.pieces:
            writer.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            await writer.drain()
            # A moment between writes, so the pieces reach the client as separate reads.
            await asyncio.sleep(0.002)
        if script.end == "complete":
            writer.write(b"0\r\n\r\n")
            await writer.drain()
        elif script.end == "stall":
            await self._stop.wait()


def chunk(content: str | None = None, finish_reason: str | None = None) -> str:
    """A `chat.completion.chunk` as OpenAI sends it."""
    delta = {"role": "assistant", "content": ""} if content is None else {"content": content}
    return json.dumps(
        {
            "id": "chatcmpl-relay",
            "object": "chat.completion.chunk",
            "created": 1767225600,
            "model": MODEL,
            "choices": [
                {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            ],
        },
        ensure_ascii=False,
    )


def opening(deltas: list[str]) -> list[str]:
    """The data of the first events of an answer: the role, then `deltas`."""
    return [chunk(), *(chunk(text) for text in deltas)]


def complete(deltas: list[str]) -> list[str]:
    """The data of every event of a whole answer, usage chunk and `[DONE]` included."""
    usage = {"id": "chatcmpl-relay", "object": "chat.completion.chunk", "choices": []}
    return [*opening(deltas), chunk(finish_reason="stop"), json.dumps(usage), "[DONE]"]


def event_stream(datas: list[str], newline: str = "\n") -> bytes:
    """The event stream of those data, with a comment first as some proxies send."""
    lines = [": processing", *(f"data: {data}{newline}" for data in datas)]
    return newline.join(lines).encode() + newline.encode()


def cut(stream: bytes, size: int = 23) -> list[bytes]:
    """`stream` in pieces of `size` bytes: cut mid-line, mid-field, mid-character."""
    return [stream[i : i + size] for i in range(0, len(stream), size)]


@pytest.fixture
def fake_upstream() -> Iterator[FakeUpstream]:
    upstream = FakeUpstream()
    upstream.start()
    try:
        yield upstream
    finally:
        upstream.stop()


# --------------------------------------------------------------------------- relay_answer


Entries = list[tuple[str, dict[str, Any]]]
"""A topic's stream entries: (event, data) in order."""
Relay = Callable[[str, Upstream], Awaitable[Entries]]


@pytest_asyncio.fixture
async def relay_to_redis(
    flushed_redis: RedisServer, redis_client: aioredis.Redis
) -> AsyncIterator[Relay]:
    """`await relay(topic, upstream)`: relay_answer into the real Redis; the topic's entries."""
    settings = Settings(redis_url=flushed_redis.url)
    store = open_store(settings)

    async def relay(topic: str, upstream: Upstream) -> Entries:
        publish = StoreSink(store, settings).publish
        await asyncio.wait_for(relay_answer(publish, topic, MESSAGES, upstream), 20)
        entries = await redis_client.xrange(f"herald:stream:{topic}")
        return [(fields["event"], json.loads(fields["data"])) for _, fields in entries]

    try:
        yield relay
    finally:
        await store.close()


def text_of(events: Entries) -> str:
    return "".join(data["text"] for kind, data in events if kind == "token")


@pytest.mark.integration
@pytest.mark.parametrize("newline", ["\n", "\r\n"], ids=["lf", "crlf"])
async def test_a_whole_answer_is_relayed_as_tokens_then_done(
    fake_upstream: FakeUpstream, relay_to_redis: Relay, newline: str
) -> None:
    fake_upstream.script = Script(pieces=cut(event_stream(complete(DELTAS), newline)))
    events = await relay_to_redis("chat.r1", fake_upstream.upstream(api_key=KEY))

    assert [kind for kind, _ in events] == ["token"] * len(DELTAS) + ["done"]
    assert text_of(events) == "".join(DELTAS)
    tokens = [data for kind, data in events if kind == "token"]
    assert [t["index"] for t in tokens] == list(range(len(DELTAS)))
    (answer,) = {data["answer"] for _, data in events}
    assert events[-1][1] == {"answer": answer, "tokens": len(DELTAS), "finish_reason": "stop"}

    (request,) = fake_upstream.received
    assert request.path == "/v1/chat/completions"
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert request.body == {
        "model": MODEL,
        "messages": [m.model_dump() for m in MESSAGES],
        "stream": True,
    }


@pytest.mark.integration
async def test_without_a_key_no_authorization_is_sent(
    fake_upstream: FakeUpstream, relay_to_redis: Relay
) -> None:
    fake_upstream.script = Script(pieces=[event_stream(complete(["Hi"]))])
    events = await relay_to_redis("chat.r2", fake_upstream.upstream())
    assert [kind for kind, _ in events] == ["token", "done"]
    assert "authorization" not in fake_upstream.received[0].headers


@pytest.mark.integration
@pytest.mark.parametrize(
    ("script", "detail"),
    [
        pytest.param(
            Script(
                pieces=cut(
                    event_stream(
                        [
                            *opening(DELTAS[:5]),
                            json.dumps({"error": {"message": "The model is overloaded."}}),
                            "[DONE]",
                        ]
                    )
                )
            ),
            "upstream error: The model is overloaded.",
            id="error-chunk",
        ),
        pytest.param(
            Script(pieces=cut(event_stream(opening(DELTAS[:5]))), end="drop"),
            "upstream: the server closed the connection",
            id="dropped",
        ),
        pytest.param(
            Script(pieces=cut(event_stream(opening(DELTAS[:5])))),
            "upstream: the stream ended before [DONE]",
            id="ended-without-done",
        ),
        pytest.param(
            Script(pieces=cut(event_stream(opening(DELTAS[:5]))), end="stall"),
            "upstream: nothing received in time",
            id="silent",
        ),
    ],
)
async def test_an_answer_cut_short_ends_with_failed_after_the_tokens_relayed(
    fake_upstream: FakeUpstream, relay_to_redis: Relay, script: Script, detail: str
) -> None:
    fake_upstream.script = script
    events = await relay_to_redis("chat.r3", fake_upstream.upstream(timeout=1.0))

    assert [kind for kind, _ in events] == ["token"] * 5 + ["failed"]
    assert text_of(events) == "".join(DELTAS[:5])
    (answer,) = {data["answer"] for _, data in events}
    assert events[-1][1] == {"answer": answer, "tokens": 5, "detail": detail}


@pytest.mark.integration
@pytest.mark.parametrize(
    ("script", "detail"),
    [
        pytest.param(
            Script(401, "application/json", [json.dumps(BAD_KEY).encode()]),
            "upstream answered 401: Incorrect API key provided: sk-wrong.",
            id="401",
        ),
        pytest.param(
            Script(500, "text/plain", [b"Internal Server Error\n"]),
            "upstream answered 500: Internal Server Error",
            id="500",
        ),
        pytest.param(
            Script(200, "text/event-stream", [b'data: {"choices": "no list"}\n\n']),
            'upstream sent a chunk that is not a chat completion chunk: {"choices": "no list"}',
            id="not-a-chunk",
        ),
    ],
)
async def test_a_refused_answer_ends_with_failed_and_no_token(
    fake_upstream: FakeUpstream, relay_to_redis: Relay, script: Script, detail: str
) -> None:
    fake_upstream.script = script
    events = await relay_to_redis("chat.r4", fake_upstream.upstream(api_key="sk-wrong"))
    assert [kind for kind, _ in events] == ["failed"]
    assert events[0][1]["tokens"] == 0
    assert events[0][1]["detail"] == detail


@pytest.mark.integration
async def test_an_upstream_that_cannot_be_reached_ends_with_failed(relay_to_redis: Relay) -> None:
    nobody = Upstream(url=f"http://127.0.0.1:{free_port()}/v1", model=MODEL)
    events = await relay_to_redis("chat.r5", nobody)
    assert events == [
        (
            "failed",
            {
                "answer": events[0][1]["answer"],
                "tokens": 0,
                "detail": "upstream: could not connect",
            },
        )
    ]


# --------------------------------------------------------------------------- end to end


def start_worker(tmp_path: Path, **env: str) -> subprocess.Popen[bytes]:
    """`herald worker typewriter` with only `env` of the HERALD_ variables; log in tmp_path."""
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
    with (tmp_path / "typewriter.log").open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "service", "worker", "typewriter"],
            cwd=ROOT,
            env=child_env | env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def relay_env(herald_url: str, upstream: FakeUpstream, topic: str) -> dict[str, str]:
    return {
        "HERALD_URL": herald_url,
        "HERALD_TYPEWRITER_UPSTREAM_URL": upstream.url,
        "HERALD_TYPEWRITER_MODEL": MODEL,
        "HERALD_TYPEWRITER_API_KEY": KEY,
        "HERALD_TYPEWRITER_TEXT": "What is SSE?",
        "HERALD_TYPEWRITER_TOPIC": topic,
        "HERALD_TYPEWRITER_PAUSE_SECONDS": "600",
    }


async def until_the_answer_ends(stream: SSEStream) -> list[Event]:
    events = [await stream.next_event()]
    while events[-1].event not in ("done", "failed"):
        events.append(await stream.next_event())
    return events


def answer_text(events: list[Event]) -> str:
    return "".join(json.loads(e.data)["text"] for e in events if e.event == "token")


@pytest.mark.integration
async def test_the_typewriter_relays_an_upstream_answer_to_a_subscriber(
    herald: HeraldFactory, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    app = herald()
    fake_upstream.script = Script(pieces=cut(event_stream(complete(DELTAS), "\r\n")))
    params = {"topic": "chat.e2e", "lastEventId": "0-0"}
    async with (
        httpx.AsyncClient() as client,
        SSEStream(client, f"{app.url}/events", params=params) as stream,
    ):
        worker = start_worker(tmp_path, **relay_env(app.url, fake_upstream, "chat.e2e"))
        try:
            events = await until_the_answer_ends(stream)
        finally:
            worker.send_signal(signal.SIGTERM)
            assert worker.wait(10) == 0, (tmp_path / "typewriter.log").read_text()

    assert answer_text(events) == "".join(DELTAS)
    assert [e.event for e in events] == ["token"] * len(DELTAS) + ["done"]
    assert json.loads(events[-1].data)["finish_reason"] == "stop"
    (request,) = fake_upstream.received
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert request.body["messages"] == [{"role": "user", "content": "What is SSE?"}]


@pytest.mark.integration
async def test_a_worker_stopped_mid_answer_ends_it_with_failed(
    herald: HeraldFactory, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    app = herald()
    fake_upstream.script = Script(pieces=cut(event_stream(opening(DELTAS[:3]))), end="stall")
    params = {"topic": "chat.stop", "lastEventId": "0-0"}
    async with (
        httpx.AsyncClient() as client,
        SSEStream(client, f"{app.url}/events", params=params) as stream,
    ):
        worker = start_worker(tmp_path, **relay_env(app.url, fake_upstream, "chat.stop"))
        stopped = False
        try:
            first = await stream.collect(3)
            worker.send_signal(signal.SIGTERM)
            stopped = True
            events = first + await until_the_answer_ends(stream)
        finally:
            # One SIGTERM only: a second one, landing while the worker exits, would kill it.
            if not stopped:
                worker.send_signal(signal.SIGTERM)
            assert worker.wait(10) == 0, (tmp_path / "typewriter.log").read_text()

    assert [e.event for e in events] == ["token"] * 3 + ["failed"]
    assert answer_text(events) == "".join(DELTAS[:3])
    failed = json.loads(events[-1].data)
    assert (failed["tokens"], failed["detail"]) == (3, "the relay was stopped")


def test_an_upstream_without_a_model_says_what_to_set() -> None:
    done = run_herald(
        "worker",
        "typewriter",
        "--url",
        "http://127.0.0.1:9",
        "--typewriter-upstream-url",
        "http://127.0.0.1:9/v1",
    )
    assert done.returncode == 1
    assert "HERALD_TYPEWRITER_UPSTREAM_URL needs HERALD_TYPEWRITER_MODEL" in done.stderr


# --------------------------------------------------------------------------- the docs' recipe


def docs_recipe() -> str:
    """The Python block of the docs' "Relay an LLM answer from your backend"."""
    page = (ROOT / "docs" / "guide" / "workers.md").read_text(encoding="utf-8")
    section = page.split("## Relay an LLM answer from your backend", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match is not None
    return match.group(1)


def start_backend(directory: Path, port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """The recipe, saved as `backend.py` in `directory`, under uvicorn on `port`."""
    (directory / "backend.py").write_text(docs_recipe(), encoding="utf-8")
    with (directory / "backend.log").open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "backend:app", "--port", str(port)],
            cwd=directory,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


@pytest.mark.integration
async def test_the_readme_backend_recipe_relays_an_answer_to_the_page(
    herald: HeraldFactory, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    app = herald()
    fake_upstream.script = Script(pieces=cut(event_stream(complete(DELTAS))))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HERALD_", "OPENAI_"))}
    env |= {
        "HERALD_URL": app.url,
        "OPENAI_BASE_URL": fake_upstream.url,
        "OPENAI_MODEL": MODEL,
        "OPENAI_API_KEY": KEY,
    }
    backend = start_backend(tmp_path, port, env)
    try:
        async with httpx.AsyncClient(timeout=10) as client:

            async def listening() -> bool:
                assert backend.poll() is None, "the backend exited"
                try:
                    await client.get(f"http://127.0.0.1:{port}/docs")
                except httpx.TransportError:
                    return False
                return True

            await wait_until(listening, "the backend listening")
            asked = await client.post(f"http://127.0.0.1:{port}/ask", json={"prompt": "SSE?"})
            assert asked.status_code == 200, asked.text
            topic = asked.json()["topic"]
            params = {"topic": topic, "lastEventId": "0-0"}
            async with SSEStream(client, f"{app.url}/events", params=params) as stream:
                events = await until_the_answer_ends(stream)
    finally:
        backend.terminate()
        backend.wait(10)
        print((tmp_path / "backend.log").read_text())

    assert answer_text(events) == "".join(DELTAS)
    assert events[-1].event == "done"
    assert fake_upstream.received[0].body["messages"] == [{"role": "user", "content": "SSE?"}]
