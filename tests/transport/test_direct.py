"""Direct socket writes under a real uvicorn (httptools) server, and the fallback elsewhere:
frames of a chunked stream, and whole answers in one write."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import httpx
import uvicorn
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.transport import direct
from service.transport.direct import DirectWriter, chunk

ANSWER = b'{"topic":"t1","id":"1-0"}'
ANSWER_HEADERS = [(b"content-length", b"%d" % len(ANSWER)), (b"content-type", b"application/json")]


async def get_from_uvicorn(app: ASGIApp, headers: dict[str, str] | None = None) -> httpx.Response:
    """GET / from `app` served by a real uvicorn with httptools on a free port."""
    async with uvicorn_serving(app) as port, httpx.AsyncClient() as client:
        return await client.get(f"http://127.0.0.1:{port}/", headers=headers)


async def exchange_with_uvicorn(
    app: ASGIApp, requests: list[bytes], access_log: bool = False
) -> bytes:
    """What a real uvicorn serving `app` sends back on one connection: `requests` go one
    after the other once the answers to all before them came (each request may hold
    several); the bytes until the last answer, or until uvicorn closed the connection."""
    async with uvicorn_serving(app, access_log) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        received = b""
        try:
            async with asyncio.timeout(30):
                for request in requests:
                    expected = received.count(ANSWER) + request.count(b" HTTP/1.")
                    writer.write(request)
                    while received.count(ANSWER) < expected:
                        if not (chunk := await reader.read(65536)):
                            return received
                        received += chunk
        finally:
            writer.close()
            await writer.wait_closed()
        return received


@contextlib.asynccontextmanager
async def uvicorn_serving(app: ASGIApp, access_log: bool = False) -> AsyncIterator[int]:
    """`app` served by a real uvicorn with httptools; its port."""
    # Bound here, on port 0, so that no other process can take the port first.
    with socket.create_server(("127.0.0.1", 0)) as listening:
        config = uvicorn.Config(
            app, http="httptools", loop="asyncio", log_level="error", access_log=access_log
        )
        server = uvicorn.Server(config)
        serving = asyncio.create_task(server.serve(sockets=[listening]))
        try:
            while not server.started:  # noqa: ASYNC110 - uvicorn offers a flag, not an event
                await asyncio.sleep(0.01)
            yield listening.getsockname()[1]
        finally:
            server.should_exit = True
            await serving


def answering_app(answered: list[bool]) -> ASGIApp:
    """Answers every request with ANSWER in one write where it can, through `send` where
    not; `answered` records which."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        answered.append(direct.answer(send, 200, ANSWER_HEADERS, ANSWER))
        if not answered[-1]:
            await send({"type": "http.response.start", "status": 200, "headers": ANSWER_HEADERS})
            await send({"type": "http.response.body", "body": ANSWER})

    return app


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


async def test_whole_answers_in_one_write_keep_pipelined_requests_in_order_and_alive() -> None:
    answered: list[bool] = []
    request = b"POST /publish HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"

    # Three pipelined in one write, then one more on the connection kept alive.
    received = await exchange_with_uvicorn(answering_app(answered), [request * 3, request])

    assert answered == [True, True, True, True]
    answers = received.split(b"HTTP/1.1 200 OK\r\n")[1:]
    assert len(answers) == 4
    for answer in answers:
        head, _, body = answer.partition(b"\r\n\r\n")
        assert body == ANSWER
        names = [line.split(b":")[0] for line in head.split(b"\r\n")]
        assert names == [b"date", b"server", b"content-length", b"content-type"]


async def test_a_whole_answer_closes_the_connection_when_the_client_asked() -> None:
    answered: list[bool] = []
    app = answering_app(answered)
    for request in (
        b"GET / HTTP/1.0\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    ):
        # A second request after the first answer finds the connection closed.
        received = await exchange_with_uvicorn(app, [request, request])

        assert b"\r\nconnection: close\r\n" in received
        assert received.endswith(ANSWER) and received.count(ANSWER) == 1
    assert answered == [True, True]


async def test_a_whole_answer_goes_through_send_behind_cors_and_with_the_access_log() -> None:
    answered: list[bool] = []
    cors = CORSMiddleware(answering_app(answered), allow_origins=["https://app.example"])
    request = b"GET / HTTP/1.1\r\nHost: x\r\nOrigin: https://app.example\r\n\r\n"

    behind_cors = await exchange_with_uvicorn(cors, [request])
    logged = await exchange_with_uvicorn(answering_app(answered), [request], access_log=True)

    assert answered == [False, False]
    assert b"\r\naccess-control-allow-origin: https://app.example\r\n" in behind_cors
    assert behind_cors.endswith(ANSWER)
    assert logged.endswith(ANSWER)
