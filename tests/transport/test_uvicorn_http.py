"""What Herald relies on in uvicorn's internals (`service.transport.uvicorn_http`), checked
one by one against a real uvicorn server running Herald's protocol: a uvicorn upgrade that
changes any of it fails here, by name, instead of quietly slowing or breaking streams."""

from __future__ import annotations

import asyncio
import importlib.metadata
import re
import socket
import tomllib
from typing import Any

import httpx
import uvicorn
from packaging.requirements import Requirement
from starlette.types import Receive, Scope, Send

from service.transport.direct import DirectWriter, answer, chunk
from service.transport.header_timeout import HeaderTimeoutProtocol
from service.transport.send_now import send_now
from service.transport.uvicorn_http import (
    ANSWER_ATTRIBUTES,
    CYCLE_ATTRIBUTES,
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
    answer_cycle,
    response_cycle,
)
from tests.conftest import ROOT

seen: dict[str, Any] = {}
"""What the app and the protocol found, for the test to check."""
connections: list[HeaderTimeoutProtocol] = []


class RecordingProtocol(HeaderTimeoutProtocol):
    """Herald's protocol, keeping each connection's instance for the test to inspect."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        connections.append(self)


async def serve_once(app: Any) -> httpx.Response:
    """GET / from `app` under a real uvicorn with Herald's protocol, on a free port."""
    connections.clear()
    with socket.create_server(("127.0.0.1", 0)) as listening:
        port = listening.getsockname()[1]
        # As `herald serve` runs it: without the access log (HERALD_ACCESS_LOG).
        config = uvicorn.Config(app, http=RecordingProtocol, log_level="error", access_log=False)
        server = uvicorn.Server(config)
        serving = asyncio.create_task(server.serve(sockets=[listening]))
        try:
            while not server.started:  # noqa: ASYNC110 - uvicorn offers a flag, not an event
                await asyncio.sleep(0.01)
            async with httpx.AsyncClient() as client:
                answer = await client.get(f"http://127.0.0.1:{port}/")
                # The response is complete and the connection kept alive: waiting for a request.
                (protocol,) = connections
                seen["keep-alive task"] = protocol.timeout_keep_alive_task
                return answer
        finally:
            server.should_exit = True
            await serving


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    cycle = response_cycle(send)
    seen["cycle"] = cycle
    if cycle is not None:
        seen["attributes"] = {name: getattr(cycle, name, "missing") for name in CYCLE_ATTRIBUTES}
        seen["write_paused"] = cycle.flow.write_paused
    seen["sent at once"] = send_now(
        send, {"type": "http.response.body", "body": b"asgi ", "more_body": True}
    )
    writer = DirectWriter.of(send)
    seen["direct"] = writer is not None and writer.write(chunk(b"direct "))
    await send({"type": "http.response.body", "body": b"end", "more_body": False})


async def test_uvicorn_still_offers_what_herald_relies_on() -> None:
    seen.clear()
    answer = await serve_once(app)

    assert answer.content == b"asgi direct end"
    assert type(seen["cycle"]) is RequestResponseCycle, (
        "the ASGI send is no longer a bound method of uvicorn's RequestResponseCycle: "
        "service.transport.direct finds no connection and every stream takes the slow path"
    )
    attributes = seen["attributes"]
    assert "missing" not in attributes.values(), f"the response cycle lacks: {attributes}"
    assert attributes["chunked_encoding"] is True
    assert attributes["disconnected"] is False
    assert attributes["response_complete"] is False
    transport = attributes["transport"]
    assert all(hasattr(transport, m) for m in ("write", "is_closing", "get_extra_info"))
    assert seen["write_paused"] is False
    assert seen["sent at once"] is None, (
        "uvicorn's send suspended with an unpaused transport: service.transport.send_now "
        "now wakes a task for every delivery"
    )
    assert seen["direct"] is True
    assert seen["keep-alive task"] is not None, (
        "timeout_keep_alive_task is not set while a kept-alive connection waits: "
        "service.transport.header_timeout no longer arms its deadline between requests"
    )


async def test_the_protocol_keeps_the_hooks_and_state_herald_s_subclass_uses() -> None:
    for hook in (
        "connection_made",
        "on_message_begin",
        "on_headers_complete",
        "on_response_complete",
        "connection_lost",
    ):
        assert hook in vars(HttpToolsProtocol), f"HttpToolsProtocol.{hook} is gone"
    seen.clear()
    await serve_once(app)
    (protocol,) = connections
    assert isinstance(protocol.loop, asyncio.AbstractEventLoop)
    assert protocol.transport is not None
    headers = protocol.server_state.default_headers
    assert all(isinstance(n, bytes) and isinstance(v, bytes) for n, v in headers)
    assert STATUS_LINE[408] == b"HTTP/1.1 408 Request Timeout\r\n"


def test_the_installed_uvicorn_is_within_the_range_pyproject_pins() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    (pinned,) = [Requirement(d) for d in project["dependencies"] if re.match(r"uvicorn\b", d)]
    upper = [s for s in pinned.specifier if s.operator == "<"]
    assert upper, "uvicorn needs an upper bound: its internals change between releases"
    installed = importlib.metadata.version("uvicorn")
    assert pinned.specifier.contains(installed), f"uvicorn {installed} is not {pinned.specifier}"


async def answering_app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    cycle = answer_cycle(send)
    seen["answer cycle"] = cycle
    if cycle is not None:
        seen["answer attributes"] = {
            name: getattr(cycle, name, "missing") for name in ANSWER_ATTRIBUTES
        }
    seen["answered"] = answer(send, 201, [(b"content-length", b"2")], b"ok")
    if not seen["answered"]:
        await send({"type": "http.response.start", "status": 500, "headers": []})
        await send({"type": "http.response.body", "body": b"the slow path"})


async def test_a_publish_answer_is_still_one_write_uvicorn_accepts() -> None:
    seen.clear()
    response = await serve_once(answering_app)

    assert type(seen["answer cycle"]) is RequestResponseCycle
    attributes = seen["answer attributes"]
    assert "missing" not in attributes.values(), f"the response cycle lacks: {attributes}"
    assert seen["answered"] is True, "service.transport.direct.answer fell back to uvicorn's send"
    assert (response.status_code, response.content) == (201, b"ok")
    # uvicorn's default headers are written as its own send would.
    assert "date" in response.headers and "server" in response.headers
