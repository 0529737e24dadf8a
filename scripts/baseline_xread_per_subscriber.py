#!/usr/bin/env python3
"""BASELINE for the benchmark, not Herald: the SSE service most Python users would write.

FastAPI + sse-starlette, where every subscriber runs its own `XREAD BLOCK` loop on
its own Redis connection and every event is encoded per subscriber. It speaks
Herald's API (`POST /publish`, `GET /events?topic=`, `Last-Event-ID`, the same
stream keys) so scripts/bench_vs_nchan.py can drive it with the same load.

    python scripts/baseline_xread_per_subscriber.py --port 8001 --redis-url redis://127.0.0.1:6379
"""

from __future__ import annotations

import argparse
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

import redis.asyncio as redis
import uvicorn
from fastapi import FastAPI, Header, Query, Request
from sse_starlette import EventSourceResponse, ServerSentEvent

BLOCK_MS = 15_000


def create_app(redis_url: str) -> FastAPI:
    app = FastAPI(title="baseline: one XREAD per subscriber")
    # One connection per blocked subscriber: redis-py's default pool is far smaller.
    client = redis.Redis.from_url(redis_url, max_connections=50_000)

    @app.post("/publish")
    async def publish(request: Request) -> Any:
        body = await request.json()
        events = body if isinstance(body, list) else [body]
        answers = []
        for event in events:
            data = event["data"]
            text = data if isinstance(data, str) else json.dumps(data)
            fields = {"event": event.get("event", "message"), "data": text}
            raw_id = await client.xadd(f"herald:stream:{event['topic']}", fields)  # type: ignore[arg-type]
            answers.append({"topic": event["topic"], "id": raw_id.decode()})
        return answers if isinstance(body, list) else answers[0]

    @app.get("/events")
    async def events(
        topic: Annotated[str, Query()],
        last_event_id: Annotated[str | None, Header()] = None,
    ) -> EventSourceResponse:
        async def stream() -> AsyncIterator[ServerSentEvent]:
            key = f"herald:stream:{topic}"
            position = last_event_id or "$"
            while True:
                reply = await client.xread({key: position}, count=100, block=BLOCK_MS)
                for _, entries in reply:
                    for raw_id, fields in entries:
                        position = raw_id.decode()
                        yield ServerSentEvent(
                            data=fields[b"data"].decode(),
                            event=fields[b"event"].decode(),
                            id=position,
                        )

        return EventSourceResponse(stream(), ping=15)

    @app.get("/readyz")
    async def readyz() -> dict[str, bool]:
        return {"ready": bool(await client.ping())}

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379")
    args = parser.parse_args()
    uvicorn.run(create_app(args.redis_url), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
