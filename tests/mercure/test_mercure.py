"""Herald as a Mercure hub: `/.well-known/mercure` against real Herald processes and Redis.

The behaviour the official conformance suites check (publish answers, matchers of both
protocol versions, private updates), and what they do not: tokens and their errors,
reconnection with every kind of id, heartbeats, shutdown, CORS, and two replicas.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import quote, urlencode

import httpx
import jwt
import pytest
import redis.asyncio as aioredis

from service.mercure.auth import DETAIL_TYPE
from tests.conftest import (
    CHROMIUM,
    CHROMIUM_FLAGS,
    Herald,
    HeraldLauncher,
    RedisServer,
    metric,
    need_chromium,
    wait_until,
)
from tests.sse import SSEStream, parse

pytestmark = pytest.mark.integration

KEY = "mercure-tests-key-long-enough-for-hs256"
HUB = "/.well-known/mercure"
SETTINGS = {"HERALD_JWT_KEY": KEY, "HERALD_MERCURE_ANONYMOUS": "true"}


def token(publish: Sequence[str] = (), subscribe: Sequence[str] = (), **claims: Any) -> str:
    """A current (at+jwt) token granting exact or `*` matchers."""
    details = []
    if publish:
        topics = [{"match": m} for m in publish]
        details.append({"type": DETAIL_TYPE, "actions": ["publish"], "topics": topics})
    if subscribe:
        topics = [{"match": m} for m in subscribe]
        details.append({"type": DETAIL_TYPE, "actions": ["subscribe"], "topics": topics})
    body = {"exp": int(time.time()) + 600, "authorization_details": details} | claims
    return jwt.encode(body, KEY, algorithm="HS256", headers={"typ": "at+jwt"})


def v0_token(publish: Sequence[str] = (), subscribe: Sequence[str] = ()) -> str:
    return jwt.encode({"mercure": {"publish": list(publish), "subscribe": list(subscribe)}}, KEY)


PUBLISHER = token(publish=["*"])


def topic() -> str:
    return f"https://example.com/books/{uuid.uuid4().hex}"


@pytest.fixture(scope="module")
def hub_process(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Herald]:
    redis_server.start()
    launcher = HeraldLauncher(redis_server.url, tmp_path_factory.mktemp("mercure"))
    try:
        yield launcher(**SETTINGS)
    finally:
        launcher.stop_all(show_logs=False)


@pytest.fixture
def hub(hub_process: Herald, flushed_redis: RedisServer) -> Herald:
    if hub_process.proc.poll() is not None:
        pytest.fail(f"the Mercure Herald died\n{hub_process.logs()}")
    return hub_process


async def publish(
    client: httpx.AsyncClient, base: str, auth: str | None = PUBLISHER, **fields: Any
) -> httpx.Response:
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    if auth:
        headers["Authorization"] = f"Bearer {auth}"
    pairs = [(k, v) for k, vs in fields.items() for v in (vs if isinstance(vs, list) else [vs])]
    return await client.post(f"{base}{HUB}", content=urlencode(pairs), headers=headers)


async def test_an_update_reaches_a_subscriber_as_the_publisher_sent_it(hub: Herald) -> None:
    name = topic()
    async with (
        httpx.AsyncClient() as client,
        SSEStream(client, f"{hub.url}{HUB}", params={"match": name}) as stream,
    ):
        assert stream.response.status_code == 200
        assert stream.response.headers["content-type"].startswith("text/event-stream")
        answer = await publish(
            client,
            hub.url,
            topic=name,
            data="line 1\n\nline 3",
            id="book-1",
            type="Book",
            retry="3000",
        )
        assert answer.status_code == 200
        assert answer.headers["content-type"] == "text/plain; charset=utf-8"
        assert answer.text == "book-1"
        assert answer.headers["link"] == f'<{hub.url}{HUB}>; rel="mercure"; last-event-id="book-1"'
        event = await stream.next_event()
        assert (event.id, event.event, event.data) == ("book-1", "Book", "line 1\n\nline 3")

        answer = await publish(client, hub.url, topic=name, data="no id")
        assert answer.text.startswith("urn:herald:")
        event = await stream.next_event()
        assert (event.id, event.event, event.data) == (answer.text, "message", "no id")


async def test_matchers_of_both_protocol_versions_select_topics(hub: Herald) -> None:
    base = f"https://example.com/{uuid.uuid4().hex}"
    params = [
        ("match", f"{base}/exact"),
        ("match_urlpattern", f"{base}/pattern/:id"),
        ("topic", f"{base}/template/{{id}}"),
    ]
    async with (
        httpx.AsyncClient() as client,
        SSEStream(client, f"{hub.url}{HUB}", params=params) as stream,
    ):
        for path in ("elsewhere", "exact", "pattern/1/deeper", "pattern/2", "template/3"):
            await publish(client, hub.url, topic=f"{base}/{path}", data=path)
        # An update matched by one of its alternate topics only.
        await publish(client, hub.url, topic=[f"{base}/nope", f"{base}/exact"], data="alternate")
        events = await stream.collect(4)
        assert [e.data for e in events] == ["exact", "pattern/2", "template/3", "alternate"]


async def test_private_updates_reach_only_subscribers_granted_one_of_their_topics(
    hub: Herald,
) -> None:
    book, user_book = topic(), topic()
    everything = [("match", "*")]
    granted = {"Authorization": f"Bearer {token(subscribe=[user_book])}"}
    cookie = {"Cookie": f"__Secure-mercure_access_token={token(subscribe=[book])}"}
    v0_query = [
        *everything,
        ("authorization", v0_token(subscribe=["https://example.com/books/{id}"])),
    ]
    async with httpx.AsyncClient() as client:
        url = f"{hub.url}{HUB}"
        async with (
            SSEStream(client, url, params=everything) as anonymous,
            SSEStream(client, url, params=everything, headers=granted) as by_alternate,
            SSEStream(client, url, params=everything, headers=cookie) as by_cookie,
            SSEStream(client, url, params=v0_query) as by_v0_query,
            SSEStream(
                client, url, params=everything, headers={"Authorization": f"Bearer {token()}"}
            ) as no_grant,
        ):
            await publish(client, hub.url, topic=[book, user_book], data="secret", private="on")
            await publish(client, hub.url, topic=book, data="public")
            for stream in (by_alternate, by_cookie, by_v0_query):
                assert (await stream.next_event()).data == "secret"
            # Updates arrive in order: the public one first means the private one was held back.
            for stream in (anonymous, no_grant, by_alternate, by_cookie, by_v0_query):
                assert (await stream.next_event()).data == "public"


async def test_tokens_are_required_and_errors_carry_a_bearer_challenge(herald: Any) -> None:
    app: Herald = herald(HERALD_JWT_KEY=KEY)
    url = f"{app.url}{HUB}"
    metadata = f"{app.url}/.well-known/oauth-protected-resource{HUB}"
    async with httpx.AsyncClient() as client:
        refused = await client.get(url, params={"match": "a"})
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"] == f'Bearer resource_metadata="{metadata}"'

        refused = await publish(client, app.url, auth=None, topic="a")
        assert refused.status_code == 401
        refused = await publish(client, app.url, auth="not-a-token", topic="a")
        assert refused.status_code == 401
        assert 'error="invalid_token"' in refused.headers["www-authenticate"]

        name = topic()
        viewer = {"Authorization": f"Bearer {token(subscribe=['*'])}"}
        async with SSEStream(client, url, params={"match": "*"}, headers=viewer) as stream:
            refused = await publish(
                client, app.url, auth=token(publish=[name]), topic=[name, topic()]
            )
            assert refused.status_code == 403
            assert 'error="insufficient_scope"' in refused.headers["www-authenticate"]
            await publish(client, app.url, auth=token(publish=[name]), topic=name, data="allowed")
            assert (await stream.next_event()).data == "allowed"

        described = (await client.get(metadata)).json()
        assert described["resource"] == url
        assert described["authorization_details_types_supported"] == [DETAIL_TYPE]


async def test_bad_requests_are_refused_before_anything_is_published(hub: Herald) -> None:
    async with httpx.AsyncClient() as client:
        url = f"{hub.url}{HUB}"
        assert (await client.get(url)).status_code == 400
        assert (await client.get(url, params={"match_regex": "a"})).status_code == 400
        assert (await publish(client, hub.url, data="no topic")).status_code == 400
        reserved = await publish(client, hub.url, topic=f"{hub.url}{HUB}/subscriptions/x")
        assert reserved.status_code == 400
        as_json = await client.post(
            url, json={"topic": "a"}, headers={"Authorization": f"Bearer {PUBLISHER}"}
        )
        assert as_json.status_code == 415
        assert (await client.delete(url)).status_code == 405


async def test_a_resume_replays_what_followed_the_id_whatever_its_kind(hub: Herald) -> None:
    name = topic()
    async with httpx.AsyncClient() as client:
        ids = []
        for n in range(4):
            fields: dict[str, Any] = {"topic": name, "data": f"u{n}"}
            if n % 2 == 0:
                fields["id"] = f"pub-{n}-{name}"
            ids.append((await publish(client, hub.url, **fields)).text)
        await publish(client, hub.url, topic=name, data="secret", private="on")
        await publish(client, hub.url, topic=topic(), data="other topic")
        url = f"{hub.url}{HUB}"
        cases = [
            ({"Last-Event-ID": ids[0]}, {}, ids[0], ["u1", "u2", "u3"]),
            ({}, {"last_event_id": ids[1]}, ids[1], ["u2", "u3"]),
            ({}, {"lastEventID": ids[2]}, ids[2], ["u3"]),
            ({"Last-Event-ID": ids[2]}, {"last_event_id": ids[0]}, ids[2], ["u3"]),
            ({}, {"last_event_id": "earliest"}, "earliest", ["u0", "u1", "u2", "u3"]),
            ({}, {"last_event_id": "never-published"}, "earliest", ["u0", "u1", "u2", "u3"]),
        ]
        for headers, query, answered, replayed in cases:
            marker_topic = topic()
            params = [("match", name), ("match", marker_topic), *query.items()]
            async with SSEStream(client, url, params=params, headers=headers) as stream:
                assert stream.response.headers["mercure-last-event-id"] == answered
                assert stream.response.headers["last-event-id"] == answered
                events = await stream.collect(len(replayed))
                assert [e.data for e in events] == replayed, (headers, query)
                # The private update is not replayed to an anonymous subscriber either.
                marker = await publish(client, hub.url, topic=marker_topic, data="live")
                assert (await stream.next_event()).id == marker.text


async def test_a_resume_older_than_the_history_replays_all_and_says_earliest(
    hub: Herald, flushed_redis: RedisServer
) -> None:
    name = topic()
    async with httpx.AsyncClient() as client:
        first = (await publish(client, hub.url, topic=name, data="first", id=f"first-{name}")).text
        for n in range(3):
            await publish(client, hub.url, topic=name, data=f"kept {n}")
        redis = aioredis.Redis.from_url(flushed_redis.url)
        await redis.xtrim("herald:stream:{mercure}", maxlen=3, approximate=False)
        await redis.aclose()
        for resume in (first, "urn:herald:1-0"):
            headers = {"Last-Event-ID": resume}
            async with SSEStream(
                client, f"{hub.url}{HUB}", params={"match": name}, headers=headers
            ) as stream:
                assert stream.response.headers["mercure-last-event-id"] == "earliest"
                assert [e.data for e in await stream.collect(3)] == ["kept 0", "kept 1", "kept 2"]


async def test_a_live_start_gives_the_position_to_resume_from(hub: Herald) -> None:
    name = topic()
    async with httpx.AsyncClient() as client:
        url = f"{hub.url}{HUB}"
        async with SSEStream(client, url, params={"match": name}) as stream:
            await wait_until(lambda: _known(stream), "the opening id")
            position = stream.last_id
        assert position is not None and position.startswith("urn:herald:")
        await publish(client, hub.url, topic=name, data="while away")
        async with SSEStream(
            client, url, params={"match": name}, headers={"Last-Event-ID": position}
        ) as stream:
            assert (await stream.next_event()).data == "while away"


async def _known(stream: SSEStream) -> bool:
    return stream.last_id is not None


async def test_one_read_of_redis_serves_every_mercure_subscriber(hub: Herald) -> None:
    name = topic()
    counters = ("herald_entries_read_total", "herald_mercure_published_updates_total")
    async with httpx.AsyncClient() as client:

        async def metrics() -> dict[str, float]:
            exposition = (await client.get(f"{hub.url}/metrics")).text
            return {name: metric(exposition, name) for name in (*counters, "herald_topics")}

        before = await metrics()
        url = f"{hub.url}{HUB}"
        params = [
            [("match", name)],
            [("match", "*")],
            [("match_urlpattern", "https://example.com/books/:id")],
        ]
        streams = [SSEStream(client, url, params=p) for p in params * 3]
        for stream in streams:
            await stream.__aenter__()
        try:
            assert (await metrics())["herald_topics"] == 1
            await publish(client, hub.url, topic=name, data="once")
            for stream in streams:
                assert (await stream.next_event()).data == "once"
            after = await metrics()
            # Nine subscribers, one update: one entry read from Redis.
            assert [after[c] - before[c] for c in counters] == [1, 1]
        finally:
            for stream in streams:
                await stream.aclose()


async def test_heartbeats_cors_and_a_clean_shutdown(herald: Any) -> None:
    origin = "https://app.example"
    app: Herald = herald(
        **SETTINGS, HERALD_HEARTBEAT_SECONDS="0.5", HERALD_CORS_ORIGINS=f'["{origin}"]'
    )
    url = f"{app.url}{HUB}"
    async with httpx.AsyncClient() as client:
        preflight = await client.options(
            url,
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization",
            },
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == origin
        headers = {"Origin": origin, "Last-Event-ID": "earliest"}
        async with SSEStream(client, url, params={"match": "a"}, headers=headers) as stream:
            assert stream.response.headers["access-control-allow-origin"] == origin
            assert stream.response.headers["access-control-allow-credentials"] == "true"
            exposed = stream.response.headers["access-control-expose-headers"].lower()
            assert "mercure-last-event-id" in exposed and "link" in exposed
            await wait_until(lambda: _heartbeat(stream), "a heartbeat comment")
            app.terminate()
            await stream.wait_closed()


async def _heartbeat(stream: SSEStream) -> bool:
    return bool(stream.comments)


@pytest.fixture
def chromium() -> Iterator[Any]:
    """Chromium for one test: sync Playwright's loop must not outlive it, or the async
    tests after it in this module would find a loop running."""
    sync_api = pytest.importorskip("playwright.sync_api")
    need_chromium()
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


def test_a_private_update_published_on_one_replica_reaches_a_browser_on_another(
    herald: Any, chromium: Any
) -> None:
    browser = chromium
    publisher_side: Herald = herald(HERALD_JWT_KEY=KEY)
    browser_side: Herald = herald(HERALD_JWT_KEY=KEY)
    name = topic()
    context = browser.new_context()
    try:
        context.add_cookies(
            [
                {
                    "name": "__Secure-mercure_access_token",
                    "value": token(subscribe=[name]),
                    "domain": "127.0.0.1",
                    "path": HUB,
                    "secure": True,
                    "httpOnly": True,
                }
            ]
        )
        page = context.new_page()
        page.goto(f"{browser_side.url}/healthz")
        page.evaluate(
            """(name) => {
                window.received = [];
                window.opened = false;
                const url = new URL("/.well-known/mercure", location.origin);
                url.searchParams.append("match", name);
                const source = new EventSource(url);
                source.onopen = () => { window.opened = true; };
                source.addEventListener("Book", (e) => {
                    window.received.push([e.lastEventId, e.data]);
                });
            }""",
            name,
        )
        page.wait_for_function("window.opened")
        answer = httpx.post(
            f"{publisher_side.url}{HUB}",
            data={
                "topic": name,
                "data": "for your eyes",
                "private": "on",
                "type": "Book",
                "id": "p-1",
            },
            headers={"Authorization": f"Bearer {token(publish=[name])}"},
        )
        assert answer.status_code == 200
        page.wait_for_function("window.received.length > 0")
        assert page.evaluate("window.received") == [["p-1", "for your eyes"]]
    finally:
        context.close()


async def test_mercure_publishes_count_against_the_publish_rate(herald: Any) -> None:
    app: Herald = herald(
        **SETTINGS, HERALD_PUBLISH_RATE="0.001", HERALD_PUBLISH_BURST="1", HERALD_MAX_BATCH="1"
    )
    async with httpx.AsyncClient() as client:
        assert (await publish(client, app.url, topic="a", data="1")).status_code == 200
        refused = await publish(client, app.url, topic="a", data="2")
        assert refused.status_code == 429
        assert "retry-after" in refused.headers


SUBSCRIPTIONS = f"{HUB}/subscriptions"
EVENTS_OF_SUBSCRIPTIONS = f"{SUBSCRIPTIONS}/:match_type/:match/:subscriber"


def watcher_token() -> str:
    """Reads subscription events and the subscription API (and nothing else)."""
    topics = [
        {"match": SUBSCRIPTIONS},
        {"match": f"{SUBSCRIPTIONS}/*", "match_type": "urlpattern"},
    ]
    detail = {"type": DETAIL_TYPE, "actions": ["subscribe"], "topics": topics}
    claims = {"exp": int(time.time()) + 600, "authorization_details": [detail]}
    return jwt.encode(claims, KEY, algorithm="HS256", headers={"typ": "at+jwt"})


async def test_active_subscriptions_are_announced_and_listed_by_every_replica(herald: Any) -> None:
    a: Herald = herald(**SETTINGS, HERALD_MERCURE_SUBSCRIPTIONS="true")
    b: Herald = herald(**SETTINGS, HERALD_MERCURE_SUBSCRIPTIONS="true")
    name = topic()
    watcher = {"Authorization": f"Bearer {watcher_token()}"}
    detail = {
        "type": DETAIL_TYPE,
        "actions": ["subscribe"],
        "topics": [{"match": name}],
        "payload": {"name": "Alice"},
    }
    claims = {"exp": int(time.time()) + 600, "authorization_details": [detail]}
    alice = jwt.encode(claims, KEY, algorithm="HS256", headers={"typ": "at+jwt"})
    async with httpx.AsyncClient() as client:
        events = SSEStream(
            client,
            f"{a.url}{HUB}",
            params={"match_urlpattern": EVENTS_OF_SUBSCRIPTIONS},
            headers=watcher,
        )
        async with events:
            subscribed = SSEStream(
                client,
                f"{b.url}{HUB}",
                params={"match": name},
                headers={"Authorization": f"Bearer {alice}"},
            )
            async with subscribed:
                created = await events.next_event()
                assert created.event == "mercure"
                document = json.loads(created.data)
                subscriber = document["subscriber"]
                one = f"{SUBSCRIPTIONS}/exact/{quote(name, safe='')}/{quote(subscriber, safe='')}"
                assert document == {
                    "id": one,
                    "type": "subscription",
                    "match_type": "exact",
                    "match": name,
                    "subscriber": subscriber,
                    "active": True,
                    "payload": {"name": "Alice"},
                }
                listed = await client.get(f"{a.url}{SUBSCRIPTIONS}", headers=watcher)
                assert listed.status_code == 200
                assert document in listed.json()["subscriptions"]
                link = listed.headers["link"]
                assert 'rel="mercure"' in link and 'type="mercure"' in link
                assert (await client.get(f"{a.url}{one}", headers=watcher)).json() == document
                by_matcher = f"{SUBSCRIPTIONS}/exact/{quote(name, safe='')}"
                assert (await client.get(f"{a.url}{by_matcher}", headers=watcher)).json()[
                    "subscriptions"
                ] == [document]
                unchanged = await client.get(
                    f"{a.url}{SUBSCRIPTIONS}",
                    headers=watcher | {"If-None-Match": listed.headers["etag"]},
                )
                assert unchanged.status_code == 304
            ended = json.loads((await events.next_event()).data)
            assert ended == document | {"active": False}
            assert (await client.get(f"{a.url}{one}", headers=watcher)).status_code == 404

        assert (await client.get(f"{a.url}{SUBSCRIPTIONS}")).status_code == 401
        others = {"Authorization": f"Bearer {token(subscribe=[name])}"}
        assert (await client.get(f"{a.url}{SUBSCRIPTIONS}", headers=others)).status_code == 403


async def test_without_the_setting_there_is_no_subscription_api(hub: Herald) -> None:
    async with httpx.AsyncClient() as client:
        assert (await client.get(f"{hub.url}{SUBSCRIPTIONS}")).status_code == 404
        described = (
            await client.get(f"{hub.url}/.well-known/oauth-protected-resource{HUB}")
        ).json()
        assert "mercure_subscriptions" not in described


async def test_a_publish_by_cookie_must_come_from_an_allowed_origin(herald: Any) -> None:
    app: Herald = herald(HERALD_JWT_KEY=KEY, HERALD_CORS_ORIGINS='["https://app.example"]')
    cookie = {
        "Cookie": f"__Secure-mercure_access_token={PUBLISHER}",
        "Content-Type": "application/x-www-form-urlencoded",
    }
    url = f"{app.url}{HUB}"
    async with httpx.AsyncClient() as client:
        for origin, status in [
            (None, 403),
            ("https://evil.example", 403),
            ("https://app.example", 200),
            (app.url, 200),
        ]:
            headers = cookie | ({"Origin": origin} if origin else {})
            answer = await client.post(url, content="topic=a&data=x", headers=headers)
            assert answer.status_code == status, (origin, answer.text)
        referred = cookie | {"Referer": f"{app.url}/page"}
        assert (await client.post(url, content="topic=a", headers=referred)).status_code == 200


def dechunk(raw: bytes) -> bytes:
    """The body of a chunked HTTP/1.1 response, as far as it arrived."""
    _, _, rest = raw.partition(b"\r\n\r\n")
    body = b""
    while rest:
        size_line, found, rest = rest.partition(b"\r\n")
        if not found or not size_line:
            break
        size = int(size_line, 16)
        body += rest[:size]
        rest = rest[size + 2 :]
    return body


async def test_a_mercure_subscriber_that_falls_behind_is_cut_off_and_resumes_without_a_gap(
    herald: Any,
) -> None:
    app: Herald = herald(**SETTINGS, HERALD_SUBSCRIBER_BUFFER=20)
    name = topic()
    loop = asyncio.get_running_loop()
    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.setblocking(False)
    await loop.sock_connect(slow, ("127.0.0.1", app.port))
    request = f"GET {HUB}?{urlencode({'match': name})} HTTP/1.1\r\nHost: herald\r\n\r\n"
    await loop.sock_sendall(slow, request.encode())
    received: list[bytes] = []

    async def read_slowly() -> None:
        # Far slower than the updates come: the hub's buffer for it overflows. The
        # response ends with its last chunk (the connection itself stays open).
        while not b"".join(received[-2:]).endswith(b"\r\n0\r\n\r\n"):
            received.append(await loop.sock_recv(slow, 16384))
            await asyncio.sleep(0.01)

    try:
        async with httpx.AsyncClient(timeout=30) as client:

            async def subscribed(count: int) -> bool:
                exposition = (await client.get(f"{app.url}/metrics")).text
                return metric(exposition, "herald_subscribers") == count

            await wait_until(lambda: subscribed(1), "the slow client subscribed")
            reading = asyncio.create_task(read_slowly())
            ids = []
            for n in range(200):
                answer = await publish(client, app.url, topic=name, data=f"{n:04} " + "x" * 60_000)
                ids.append(answer.text)
            await asyncio.wait_for(reading, 60)
            overflows = metric(
                (await client.get(f"{app.url}/metrics")).text, "herald_subscriber_overflows_total"
            )
        events = parse([dechunk(b"".join(received))])
        assert overflows == 1
        assert 0 < len(events) < len(ids), "the client was cut off before the end"
        async with (
            httpx.AsyncClient(timeout=30) as client,
            SSEStream(
                client,
                f"{app.url}{HUB}",
                params={"match": name},
                headers={"Last-Event-ID": events[-1].id},
            ) as resumed,
        ):
            rest = await resumed.collect(len(ids) - len(events), timeout=30)
        assert [e.id for e in events + rest] == ids
    finally:
        slow.close()


async def test_a_reused_id_resumes_after_its_earliest_update(hub: Herald) -> None:
    name = topic()
    reused = f"reused-{name}"
    async with httpx.AsyncClient() as client:
        for n, update_id in enumerate([reused, None, reused, None]):
            fields = {"id": update_id} if update_id else {}
            await publish(client, hub.url, topic=name, data=f"u{n}", **fields)
        headers = {"Last-Event-ID": reused}
        async with SSEStream(
            client, f"{hub.url}{HUB}", params={"match": name}, headers=headers
        ) as stream:
            assert stream.response.headers["mercure-last-event-id"] == reused
            assert [e.data for e in await stream.collect(3)] == ["u1", "u2", "u3"]
