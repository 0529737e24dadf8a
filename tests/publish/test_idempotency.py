"""Retried publishes against a real redis-server: one append per Idempotency-Key."""

from __future__ import annotations

import asyncio

import httpx
import pytest
import redis.asyncio as aioredis

from service.storage.keys import stream_key
from tests.conftest import HeraldFactory

pytestmark = pytest.mark.integration


async def test_concurrent_retries_with_one_key_append_once_and_share_the_id(
    herald: HeraldFactory, redis_client: aioredis.Redis
) -> None:
    app = herald()
    body = {"topic": "payments", "event": "settled", "data": {"id": 42}}
    async with httpx.AsyncClient() as client:
        answers = await asyncio.gather(
            *(
                client.post(
                    f"{app.url}/publish", json=body, headers={"Idempotency-Key": "settle-42"}
                )
                for _ in range(20)
            )
        )
    assert {a.status_code for a in answers} == {200}
    assert len({a.json()["id"] for a in answers}) == 1
    entries = await redis_client.xrange(stream_key("payments"))
    assert [entry_id for entry_id, _ in entries] == [answers[0].json()["id"]]
