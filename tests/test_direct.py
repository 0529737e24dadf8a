"""Direct socket writes under a real uvicorn (httptools) server, and the fallback elsewhere."""

from __future__ import annotations

import asyncio
import socket

import httpx
import uvicorn
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.direct import DirectWriter, chunk


async def get_from_uvicorn(app: ASGIApp, headers: dict[str, str] | None = None) -> httpx.Response:
    """GET / from `app` served by a real uvicorn with httptools on a free port."""
    # Bound here, on port 0, so that no other process can take the port first.
    with socket.create_server(("127.0.0.1", 0)) as listening:
        port = listening.getsockname()[1]
        config = uvicorn.Config(app, http="httptools", loop="asyncio", log_level="error")
        server = uvicorn.Server(config)
        serving = asyncio.create_task(server.serve(sockets=[listening]))
        try:
            while not server.started:  # noqa: ASYNC110 - uvicorn offers a flag, not an event
                await asyncio.sleep(0.01)
            async with httpx.AsyncClient() as client:
                return await client.get(f"http://127.0.0.1:{port}/", headers=headers)
        finally:
            server.should_exit = True
            await serving


async def test_frames_written_directly_reach_a_real_client_between_asgi_sends() -> None:
    found: list[bool] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"first ", "more_body": True})
        writer = DirectWriter.of(send)
        found.append(writer is not None)
        assert writer is not None
        assert writer.write(chunk(b"direct ")) is True
        await send({"type": "http.response.body", "body": b"last", "more_body": False})

    answer = await get_from_uvicorn(app)

    assert found == [True]
    assert answer.headers["transfer-encoding"] == "chunked"
    assert answer.content == b"first direct last"


async def test_the_direct_path_survives_starlettes_cors_middleware() -> None:
    found: list[bool] = []

    async def inner(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        writer = DirectWriter.of(send)
        found.append(writer is not None and writer.write(chunk(b"direct")))
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    app = CORSMiddleware(inner, allow_origins=["https://app.example"])
    answer = await get_from_uvicorn(app, {"Origin": "https://app.example"})

    assert found == [True]
    assert answer.headers["access-control-allow-origin"] == "https://app.example"
    assert answer.content == b"direct"


async def test_any_other_send_gets_no_direct_writer() -> None:
    async def send(message: Message) -> None:
        pass

    assert DirectWriter.of(send) is None
