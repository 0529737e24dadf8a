"""The HTTP contract at the edge: publish answers, and a status plus JSON `detail` for bad input."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from service.delivery.subscriber import Subscriber
from service.settings import Settings
from service.storage.keys import stream_key
from service.web.app import create_app
from tests.ports import refused_port


def make_client(**overrides: object) -> TestClient:
    return TestClient(create_app(Settings(**overrides)))


@pytest.fixture
def client() -> Iterator[TestClient]:
    with make_client(max_event_bytes=1024, max_body_bytes=4096, max_batch=5) as c:
        yield c


def stream(client: TestClient, topic: str) -> list[tuple[bytes, dict[bytes, bytes]]]:
    store = client.app.state.herald.store  # type: ignore[attr-defined]
    return client.portal.call(store._client.xrange, stream_key(topic))  # type: ignore[union-attr]


def test_publish_answers_the_stream_entry_id(client: TestClient) -> None:
    answer = client.post(
        "/publish", json={"topic": "stocks.AAPL", "event": "tick", "data": {"p": 1.5}}
    )
    assert answer.status_code == 200
    ((raw_id, fields),) = stream(client, "stocks.AAPL")
    assert answer.json() == {"topic": "stocks.AAPL", "id": raw_id.decode()}
    assert fields == {b"event": b"tick", b"data": b'{"p":1.5}'}


def test_string_data_is_stored_verbatim_with_line_breaks_normalised(client: TestClient) -> None:
    client.post("/publish", json={"topic": "t", "data": "a\r\nb\rc\nd é"})
    ((_, fields),) = stream(client, "t")
    assert fields == {b"event": b"message", b"data": "a\nb\nc\nd é".encode()}


def test_batch_answers_ids_in_order(client: TestClient) -> None:
    body = [{"topic": "a", "data": 1}, {"topic": "b", "data": 2}, {"topic": "a", "data": 3}]
    answer = client.post("/publish", json=body)
    assert answer.status_code == 200
    assert [a["topic"] for a in answer.json()] == ["a", "b", "a"]
    assert [i.decode() for i, _ in stream(client, "a")] == [
        answer.json()[0]["id"],
        answer.json()[2]["id"],
    ]


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b'{"topic": "t", "data": NaN}',
        b'{"topic": "t", "data": 1e999}',
        b'{"data": 1}',
        b'{"topic": "bad topic!"}',
        b'{"topic": "-dash"}',
        b'{"topic": "' + b"x" * 129 + b'"}',
        b'{"topic": "t", "event": "1abc"}',
        b'{"topic": "t", "event": "has space"}',
        b'{"topic": "t", "event": "a\\nb"}',
        b'{"topic": "t", "event": "herald.trimmed"}',
        b'{"topic": "t", "unknown": 1}',
        b"[]",
        b'"just a string"',
        b'{"topic": "t", "data": "\xff\xfe"}',
    ],
)
def test_invalid_bodies_get_422_with_detail_and_publish_nothing(
    client: TestClient, body: bytes
) -> None:
    answer = client.post("/publish", content=body, headers={"content-type": "application/json"})
    assert answer.status_code == 422
    assert answer.json()["detail"]
    assert stream(client, "t") == []


def test_an_event_over_the_size_limit_gets_413(client: TestClient) -> None:
    answer = client.post("/publish", json={"topic": "t", "data": "x" * 1025})
    assert answer.status_code == 413
    assert "1025 bytes" in answer.json()["detail"]


def test_a_batch_with_one_oversized_event_publishes_none_of_it(client: TestClient) -> None:
    answer = client.post(
        "/publish", json=[{"topic": "t", "data": "ok"}, {"topic": "t", "data": "x" * 2000}]
    )
    assert answer.status_code == 413
    assert "event 1" in answer.json()["detail"]
    assert stream(client, "t") == []


def test_a_body_over_the_limit_gets_413(client: TestClient) -> None:
    answer = client.post("/publish", content=b"[" + b" " * 5000 + b"]")
    assert answer.status_code == 413
    assert "limit" in answer.json()["detail"]


def test_too_many_events_in_a_batch_gets_413(client: TestClient) -> None:
    answer = client.post("/publish", json=[{"topic": "t", "data": i} for i in range(6)])
    assert answer.status_code == 413


@pytest.mark.parametrize(
    ("query", "headers", "status"),
    [
        ("", {}, 422),
        ("?topic=bad%20topic", {}, 422),
        ("?" + "&".join(f"topic=t{i}" for i in range(33)), {}, 400),
        ("?topic=a", {"Last-Event-ID": "abc"}, 400),
        ("?topic=a", {"Last-Event-ID": "1-2-3"}, 400),
        ("?topic=a&lastEventId=nope", {}, 400),
        ("?topic=a&topic=b", {"Last-Event-ID": "1732200000000-0"}, 400),
    ],
)
def test_bad_subscriptions_get_their_status_and_detail(
    client: TestClient, query: str, headers: dict[str, str], status: int
) -> None:
    answer = client.get("/events" + query, headers=headers)
    assert answer.status_code == status
    assert answer.json()["detail"]


def test_operations_endpoints_answer(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json()["ready"] is True
    client.post("/publish", json={"topic": "t"})
    metrics = client.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    assert "herald_published_events_total 1.0" in metrics.text
    assert "EventSource" in client.get("/").text


def test_redis_unreachable_gets_503_with_retry_after_and_readyz_fails() -> None:
    with (
        refused_port() as port,
        make_client(redis_url=f"redis://127.0.0.1:{port}/0", redis_timeout_seconds=1) as client,
    ):
        answer = client.post("/publish", json={"topic": "t", "data": 1})
        assert answer.status_code == 503
        assert answer.headers["retry-after"] == "1"
        assert "Redis" in answer.json()["detail"]
        assert client.get("/events?topic=t").status_code == 503
        assert client.get("/readyz").status_code == 503


def test_the_openapi_schema_documents_publish_and_events(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    publish = schema["paths"]["/publish"]["post"]
    body = publish["requestBody"]["content"]["application/json"]["schema"]
    assert body["anyOf"][0] == {"$ref": "#/components/schemas/PublishEvent"}
    assert set(publish["responses"]) == {"200", "413", "422", "503"}
    events = schema["paths"]["/events"]["get"]
    assert [p["name"] for p in events["parameters"]] == ["topic", "lastEventId", "Last-Event-ID"]
    assert "text/event-stream" in events["responses"]["200"]["content"]
    assert "PublishEvent" in schema["components"]["schemas"]


def test_the_wrong_method_on_publish_or_events_gets_405(client: TestClient) -> None:
    assert client.get("/publish").status_code == 405
    answer = client.post("/events?topic=t")
    assert answer.status_code == 405
    assert answer.headers["allow"] == "GET"


def test_an_invalid_topic_is_reported_where_it_is(client: TestClient) -> None:
    answer = client.get("/events?topic=ok&topic=bad%20one")
    assert answer.status_code == 422
    (error,) = answer.json()["detail"]
    assert error["loc"] == ["query", "topic", 1]


def test_a_subscription_past_the_stream_limit_gets_503_with_retry_after() -> None:
    with make_client(max_streams=1) as client:
        ctx = client.app.state.herald  # type: ignore[attr-defined]

        async def hold() -> Subscriber:
            holder = Subscriber(("held",), 10, 1)
            await ctx.hub.subscribe(holder)
            return holder

        holder = client.portal.call(hold)
        answer = client.get("/events?topic=other")
        assert answer.status_code == 503
        assert answer.headers["retry-after"] == "1"
        assert "limit of 1 streams" in answer.json()["detail"]
        client.portal.call(ctx.hub.unsubscribe, holder)
        assert client.get("/events?topic=t", headers={"Last-Event-ID": "x"}).status_code == 400


def test_a_retried_publish_with_its_idempotency_key_returns_the_first_id(
    client: TestClient,
) -> None:
    body = {"topic": "orders", "event": "paid", "data": {"order": 7}}
    headers = {"Idempotency-Key": "order-7-paid"}
    first = client.post("/publish", json=body, headers=headers)
    again = client.post("/publish", json=body, headers=headers)
    assert first.status_code == again.status_code == 200
    assert again.json() == first.json()
    assert len(stream(client, "orders")) == 1
    assert client.post("/publish", json=body).json()["id"] != first.json()["id"]


def test_a_retried_batch_is_published_once_with_the_same_ids(client: TestClient) -> None:
    body = [{"topic": "a", "data": 1}, {"topic": "b", "data": 2}]
    first = client.post("/publish", json=body, headers={"Idempotency-Key": "batch-1"})
    again = client.post("/publish", json=body, headers={"Idempotency-Key": "batch-1"})
    assert again.json() == first.json()
    assert [len(stream(client, t)) for t in ("a", "b")] == [1, 1]


def test_an_idempotency_key_reused_for_another_body_gets_422(client: TestClient) -> None:
    key = {"Idempotency-Key": "k"}
    client.post("/publish", json={"topic": "t", "data": 1}, headers=key)
    answer = client.post("/publish", json={"topic": "t", "data": 2}, headers=key)
    assert answer.status_code == 422
    assert "another body" in answer.json()["detail"]
    assert len(stream(client, "t")) == 1


@pytest.mark.parametrize("key", ["", "has space", "x" * 201, "tab\there"])
def test_a_malformed_idempotency_key_gets_400(client: TestClient, key: str) -> None:
    answer = client.post("/publish", json={"topic": "t"}, headers={"Idempotency-Key": key})
    assert answer.status_code == 400
    assert stream(client, "t") == []


def test_an_idempotency_key_is_forgotten_after_its_window() -> None:
    with make_client(idempotency_seconds=1) as client:
        headers = {"Idempotency-Key": "short-lived"}
        first = client.post("/publish", json={"topic": "t"}, headers=headers).json()
        time.sleep(1.2)
        later = client.post("/publish", json={"topic": "t"}, headers=headers).json()
    assert later["id"] != first["id"]


def test_a_client_past_its_publish_rate_gets_429_and_publishes_nothing() -> None:
    with make_client(publish_rate=0.5, publish_burst=2, max_batch=2) as client:
        for _ in range(2):
            assert client.post("/publish", json={"topic": "t"}).status_code == 200
        answer = client.post("/publish", json={"topic": "t"})
        assert answer.status_code == 429
        assert answer.headers["retry-after"] == "2"
        assert "0.5 events/s" in answer.json()["detail"]
        assert len(stream(client, "t")) == 2


def test_cors_preflight_allows_the_sse_and_auth_headers_for_a_configured_origin() -> None:
    with make_client(cors_origins=["https://app.example"]) as client:
        preflight = client.options(
            "/publish",
            headers={
                "Origin": "https://app.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type, idempotency-key",
            },
        )
        stranger = client.options(
            "/publish",
            headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
        )
        published = client.post(
            "/publish", json={"topic": "t"}, headers={"Origin": "https://app.example"}
        )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "https://app.example"
    assert preflight.headers["access-control-allow-credentials"] == "true"
    allowed = preflight.headers["access-control-allow-headers"].lower()
    assert {"authorization", "last-event-id", "idempotency-key"} <= set(allowed.split(", "))
    assert stranger.status_code == 400
    assert published.headers["access-control-allow-origin"] == "https://app.example"


def test_any_origin_is_allowed_without_credentials_and_no_cors_by_default() -> None:
    with make_client(cors_origins=["*"]) as client:
        answer = client.get("/healthz", headers={"Origin": "https://x.example"})
    assert answer.headers["access-control-allow-origin"] == "*"
    assert "access-control-allow-credentials" not in answer.headers
    with make_client() as client:
        answer = client.get("/healthz", headers={"Origin": "https://x.example"})
    assert "access-control-allow-origin" not in answer.headers
