"""JWT auth: who may publish to and read which topics; tokens that fail answer 401/403."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fastapi.testclient import TestClient

from service.settings import Settings
from service.storage.keys import stream_key
from service.web.app import create_app
from tests.conftest import HeraldFactory, run_herald
from tests.sse import SSEStream

SECRET = "test-secret-that-is-long-enough-for-hs256"
OTHER_SECRET = "another-secret-that-is-long-enough-too"


def token(claims: dict[str, Any], key: Any = SECRET, algorithm: str = "HS256") -> str:
    return jwt.encode(claims, key, algorithm=algorithm)


def grant(
    publish: list[str] | None = None, subscribe: list[str] | None = None, **extra: Any
) -> str:
    herald: dict[str, list[str]] = {}
    if publish is not None:
        herald["publish"] = publish
    if subscribe is not None:
        herald["subscribe"] = subscribe
    return token({"herald": herald, "exp": time.time() + 60, **extra})


def forged_hs256(claims: dict[str, Any], secret: bytes) -> str:
    """An HS256 token whose HMAC key is `secret`; PyJWT refuses to make one from a PEM key."""
    header = base64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = base64url(json.dumps(claims).encode())
    signature = hmac.new(secret, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{base64url(signature)}"


def base64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


@pytest.fixture
def client() -> Iterator[TestClient]:
    with TestClient(create_app(Settings(jwt_key=SECRET))) as c:
        yield c


def stored(client: TestClient, topic: str) -> int:
    store = client.app.state.herald.store  # type: ignore[attr-defined]
    return len(client.portal.call(store._client.xrange, stream_key(topic)))  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({}, "a token is required"),
        (bearer("not-a-jwt"), "not valid"),
        (
            bearer(token({"herald": {"publish": ["*"]}}, key=OTHER_SECRET)),
            "not valid",
        ),
        (bearer(token({"herald": {"publish": ["*"]}, "exp": time.time() - 5})), "expired"),
        (bearer(token({"sub": "no herald claim"})), "no herald claim"),
        ({"Authorization": f"Basic {grant(publish=['*'])}"}, "a token is required"),
    ],
)
def test_publishing_without_a_valid_token_gets_401(
    client: TestClient, headers: dict[str, str], reason: str
) -> None:
    answer = client.post("/publish", json={"topic": "t", "data": 1}, headers=headers)
    assert answer.status_code == 401
    assert answer.headers["www-authenticate"] == "Bearer"
    assert reason in answer.json()["detail"]
    assert stored(client, "t") == 0


def test_a_token_signed_with_another_algorithm_is_refused(client: TestClient) -> None:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = token({"herald": {"publish": ["*"]}}, key=private, algorithm="RS256")
    assert client.post("/publish", json={"topic": "t"}, headers=bearer(forged)).status_code == 401


def test_publishing_is_limited_to_the_tokens_patterns(client: TestClient) -> None:
    headers = bearer(grant(publish=["stocks.*", "news"]))
    for topic in ("stocks.AAPL", "stocks.x.y", "news"):
        assert client.post("/publish", json={"topic": topic}, headers=headers).status_code == 200
    for topic in ("stocks", "stocksX", "other.stocks.A", "news.eu"):
        answer = client.post("/publish", json={"topic": topic}, headers=headers)
        assert answer.status_code == 403, topic
        assert topic in answer.json()["detail"]
        assert stored(client, topic) == 0


def test_a_batch_with_one_forbidden_topic_publishes_nothing(client: TestClient) -> None:
    body = [{"topic": "ok.1", "data": 1}, {"topic": "secret", "data": 2}]
    answer = client.post("/publish", json=body, headers=bearer(grant(publish=["ok.*"])))
    assert answer.status_code == 403
    assert stored(client, "ok.1") == 0


def test_a_subscribe_only_token_may_not_publish(client: TestClient) -> None:
    headers = bearer(grant(subscribe=["*"]))
    assert client.post("/publish", json={"topic": "t"}, headers=headers).status_code == 403


@pytest.mark.parametrize("source", ["header", "cookie", "query"])
def test_subscribing_outside_the_token_gets_403_whatever_carries_it(
    client: TestClient, source: str
) -> None:
    value = grant(subscribe=["user.42.*"])
    params = [("topic", "user.42.inbox"), ("topic", "user.43.inbox")]
    if source == "header":
        answer = client.get("/events", params=params, headers=bearer(value))
    elif source == "cookie":
        client.cookies.set("herald_token", value)
        answer = client.get("/events", params=params)
    else:
        answer = client.get("/events", params=[*params, ("access_token", value)])
    assert answer.status_code == 403
    assert answer.json()["detail"] == "the token may not subscribe to: user.43.inbox"


def test_subscribing_without_a_token_gets_401(client: TestClient) -> None:
    answer = client.get("/events", params={"topic": "t"})
    assert answer.status_code == 401
    assert answer.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize("algorithm", ["RS256", "ES256"])
def test_public_key_algorithms_verify_with_the_public_key(algorithm: str) -> None:
    if algorithm == "RS256":
        private: Any = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    else:
        private = ec.generate_private_key(ec.SECP256R1())
    public = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    settings = Settings(jwt_key=public.decode(), jwt_algorithm=algorithm)
    signed = token({"herald": {"publish": ["t"]}}, key=private, algorithm=algorithm)
    # The classic confusion: HS256 signed with the public key, which anyone has.
    confused = forged_hs256({"herald": {"publish": ["t"]}}, public)
    with TestClient(create_app(settings)) as client:
        accepted = client.post("/publish", json={"topic": "t"}, headers=bearer(signed))
        refused = client.post("/publish", json={"topic": "t"}, headers=bearer(confused))
    assert accepted.status_code == 200
    assert refused.status_code == 401


def test_the_publish_rate_limit_counts_each_token_subject_apart() -> None:
    settings = Settings(jwt_key=SECRET, publish_rate=0.5, publish_burst=1, max_batch=1)
    alice = bearer(grant(publish=["*"], sub="alice"))
    bob = bearer(grant(publish=["*"], sub="bob"))
    with TestClient(create_app(settings)) as client:
        first = client.post("/publish", json={"topic": "t"}, headers=alice)
        second = client.post("/publish", json={"topic": "t"}, headers=alice)
        other = client.post("/publish", json={"topic": "t"}, headers=bob)
    assert [first.status_code, second.status_code, other.status_code] == [200, 429, 200]


# ------------------------------------------------------------------ over real processes


@pytest.mark.integration
@pytest.mark.parametrize("source", ["header", "cookie", "query"])
async def test_a_valid_token_from_any_source_opens_the_stream_and_events_arrive(
    herald: HeraldFactory, source: str
) -> None:
    app = herald(HERALD_JWT_KEY=SECRET)
    reader = grant(subscribe=["room.*"])
    params: list[tuple[str, str]] = [("topic", "room.1")]
    headers: dict[str, str] = {}
    cookies: dict[str, str] = {}
    if source == "header":
        headers = bearer(reader)
    elif source == "cookie":
        cookies = {"herald_token": reader}
    else:
        params.append(("access_token", reader))
    url = f"{app.url}/events"
    async with (
        httpx.AsyncClient(cookies=cookies) as client,
        SSEStream(client, url, params=params, headers=headers) as stream,
    ):
        assert stream.response.status_code == 200
        await asyncio.sleep(0.3)
        published = await client.post(
            f"{app.url}/publish",
            json={"topic": "room.1", "data": "hi"},
            headers=bearer(grant(publish=["room.*"])),
        )
        event = await stream.next_event(timeout=5)
    assert (event.id, event.data) == (published.json()["id"], "hi")


@pytest.mark.integration
async def test_a_stream_ends_when_its_token_expires(herald: HeraldFactory) -> None:
    app = herald(HERALD_JWT_KEY=SECRET)
    short = token({"herald": {"subscribe": ["t"]}, "exp": int(time.time()) + 2})
    url = f"{app.url}/events"
    async with (
        httpx.AsyncClient() as client,
        SSEStream(client, url, params={"topic": "t"}, headers=bearer(short)) as stream,
    ):
        assert stream.response.status_code == 200
        await stream.wait_closed(timeout=6)
    assert stream.error is None, f"the stream was cut, not ended: {stream.error!r}"


def test_a_broad_grant_cannot_fake_online_counts(client: TestClient) -> None:
    broad = bearer(grant(publish=["*"], subscribe=["*"]))
    online = bearer(grant(publish=["presence.*"]))
    faked = client.post("/publish", json={"topic": "presence.chat.1", "data": 99}, headers=broad)
    counted = client.post("/publish", json={"topic": "presence.chat.1", "data": 2}, headers=online)
    mixed = client.post(
        "/publish",
        json=[{"topic": "chat.1"}, {"topic": "presence.chat.1", "data": 99}],
        headers=broad,
    )
    assert faked.status_code == 403
    assert "presence." in faked.json()["detail"]
    assert counted.status_code == 200
    assert mixed.status_code == 403
    assert stored(client, "presence.chat.1") == 1
    assert stored(client, "chat.1") == 0
    # Reading them stays as open as the token says.
    assert client.get("/topics/presence.chat.1", headers=broad).status_code == 200


@pytest.mark.parametrize(
    ("key", "algorithm", "says"),
    [
        ("weak-key", "HS256", "needs at least 32"),
        ("w" * 31, "HS256", "needs at least 32"),
        ("not a pem key", "RS256", "not a PEM key"),
    ],
)
def test_herald_refuses_to_start_with_a_key_too_weak_or_unusable(
    key: str, algorithm: str, says: str
) -> None:
    ran = run_herald("serve", "--jwt-key", key, "--jwt-algorithm", algorithm, timeout=30)
    assert ran.returncode == 2
    assert says in ran.stderr
    if algorithm == "HS256":
        assert "openssl rand -base64 32" in ran.stderr
    # The settings error never echoes the secret it refused.
    assert key not in ran.stderr.replace("HERALD_JWT_KEY", "")


@pytest.mark.integration
async def test_publishers_idempotency_keys_are_their_own(herald: HeraldFactory) -> None:
    app = herald(HERALD_JWT_KEY=SECRET)
    alice = bearer(grant(publish=["*"], sub="alice"))
    bob = bearer(grant(publish=["*"], sub="bob"))
    # No `sub`: the token itself is the publisher.
    anonymous = bearer(grant(publish=["*"], jti="one"))
    other_anonymous = bearer(grant(publish=["*"], jti="two"))
    key = {"Idempotency-Key": "order-1"}

    async def post(data: str, who: dict[str, str]) -> httpx.Response:
        return await client.post(
            f"{app.url}/publish", json={"topic": "orders", "data": data}, headers=who | key
        )

    async with httpx.AsyncClient(timeout=10) as client:
        first = await post("alice's", alice)
        squatted = await post("bob's", bob)
        retried = await post("alice's", alice)
        reused = await post("alice's other", alice)
        anonymous_first = await post("anonymous", anonymous)
        anonymous_other = await post("another anonymous", other_anonymous)
    assert [first.status_code, squatted.status_code, retried.status_code] == [200, 200, 200]
    assert squatted.json()["id"] != first.json()["id"]
    assert retried.json()["id"] == first.json()["id"]
    assert reused.status_code == 422
    assert anonymous_first.status_code == anonymous_other.status_code == 200
    assert anonymous_first.json()["id"] != anonymous_other.json()["id"]


@pytest.mark.integration
async def test_metrics_want_their_token_and_the_docs_can_be_hidden(herald: HeraldFactory) -> None:
    app = herald(
        HERALD_JWT_KEY=SECRET, HERALD_METRICS_TOKEN="scrape-secret", HERALD_API_DOCS="false"
    )
    async with httpx.AsyncClient(timeout=10) as client:
        anonymous = await client.get(f"{app.url}/metrics")
        wrong = await client.get(f"{app.url}/metrics", headers=bearer("guess"))
        # A publisher's token is no scrape token.
        publisher = await client.get(f"{app.url}/metrics", headers=bearer(grant(publish=["*"])))
        scraped = await client.get(f"{app.url}/metrics", headers=bearer("scrape-secret"))
        hidden = [(await client.get(f"{app.url}{path}")).status_code for path in DOCS]
    assert [anonymous.status_code, wrong.status_code, publisher.status_code] == [401] * 3
    assert anonymous.headers["www-authenticate"] == "Bearer"
    assert scraped.status_code == 200
    assert "herald_subscribers" in scraped.text
    assert hidden == [404] * len(DOCS)


DOCS = ["/docs", "/redoc", "/openapi.json"]


def test_the_docs_are_served_by_default(client: TestClient) -> None:
    assert [client.get(path).status_code for path in DOCS] == [200] * len(DOCS)
    assert client.get("/metrics").status_code == 200
