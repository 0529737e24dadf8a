"""The browser client, `GET /herald.js`: served, its Node suite, and pages in Chromium.

The Node suite (`tests/js`, Node's own test runner) checks the parser, and the reconnect
rules against Herald processes this module starts. In Debian's Chromium, a page that
imports `/herald.js` reaches Herald through a TCP proxy whose connections the test cuts
for real, and the test checks what the page shows.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt
import pytest
import pytest_asyncio
from fastapi.testclient import TestClient

from service.settings import Settings
from service.web.app import create_app
from tests.conftest import CHROMIUM, CHROMIUM_FLAGS, ROOT, HeraldFactory, need_chromium

SECRET = "herald-js-test-secret-of-at-least-32-bytes"
WAIT_MS = 20_000
PACE = 0.005
"""Seconds between two tokens, as a model streams them."""
LONGER_THAN_A_RETRY = 4.5
"""Seconds: more than a first retry may wait (twice the 2 s default, for a source never open)."""

# The page every browser test loads: what a page author would write, plus `window.state`
# for the test to read. Its headers come from the test when it hands in `testHeaders`.
PAGE = """<!doctype html>
<meta charset="utf-8">
<title>herald.js</title>
<pre id="answer"></pre>
<script type="module">
  import { HeraldSource } from "/herald.js";

  const topic = new URLSearchParams(location.search).get("topic");
  // What the page showed before a reload: saved in the same task as the source's position.
  const state = (window.state = {
    before: sessionStorage.getItem(`shown:${topic}`) ?? "",
    shown: "",
    opens: 0,
    errors: [],
    done: false,
  });
  const source = (state.source = new HeraldSource(`/events?topic=${topic}`, {
    headers: async () => (window.testHeaders ? await window.testHeaders() : {}),
    resumeKey: topic,
  }));
  source.onopen = () => {
    state.opens += 1;
  };
  source.onerror = (event) => {
    state.errors.push([event.status, source.readyState]);
  };
  source.addEventListener("token", (event) => {
    state.shown += event.data;
    sessionStorage.setItem(`shown:${topic}`, state.before + state.shown);
    document.querySelector("#answer").textContent = state.shown;
  });
  source.addEventListener("done", () => {
    state.done = true;
    source.close();
  });
</script>
"""

# Accents, a dash and an emoji cross chunk boundaries as UTF-8; "a\nb" is sent as two data lines.
WORDS = ["Herald", "streams", "token;", "même", "après", "une", "coupure", "—", "🚀", "a\nb"]


def answer_tokens(count: int) -> list[str]:
    """An answer's tokens, each numbered, so that a lost, repeated or swapped one shows."""
    return [f"{WORDS[i % len(WORDS)]}{i} " for i in range(count)]


def new_topic() -> str:
    return f"answer.{uuid.uuid4().hex[:8]}"


def token(grant: dict[str, list[str]]) -> str:
    claims = {"herald": grant, "exp": time.time() + 60, "jti": uuid.uuid4().hex}
    return jwt.encode(claims, SECRET, algorithm="HS256")


async def publish(
    client: httpx.AsyncClient, topic: str, event: str, data: str, auth: bool = False
) -> None:
    headers = {"Authorization": f"Bearer {token({'publish': ['*']})}"} if auth else {}
    body = {"topic": topic, "event": event, "data": data}
    answer = await client.post("/publish", json=body, headers=headers)
    assert answer.status_code == 200, answer.text


# --------------------------------------------------------------------------- served


@pytest.mark.parametrize("settings", [Settings(), Settings(jwt_key=SECRET)], ids=["open", "auth"])
def test_the_client_and_its_types_are_served_to_anyone(settings: Settings) -> None:
    with TestClient(create_app(settings)) as client:
        module = client.get("/herald.js")
        types = client.get("/herald.d.ts")
    assert module.status_code == types.status_code == 200
    assert module.headers["content-type"] == "text/javascript; charset=utf-8"
    assert "export class HeraldSource extends EventTarget" in module.text
    assert types.headers["content-type"] == "application/typescript; charset=utf-8"
    assert "export declare class HeraldSource extends EventTarget" in types.text
    for answer in (module, types):
        assert answer.headers["cache-control"] == "public, max-age=300"
        assert answer.headers["etag"]


# --------------------------------------------------------------------------- node


@pytest.mark.integration
def test_the_node_suite_passes_against_real_heralds(herald: HeraldFactory) -> None:
    node = shutil.which("node")
    if node is None:
        message = "node is not on PATH (apt-get install nodejs)"
        if os.environ.get("CI") == "true":
            pytest.fail(message + "; under CI=true this is a failure, not a skip")
        pytest.skip(message)
    app = herald(HERALD_JWT_KEY=SECRET, HERALD_RETRY_MS=100)
    limited = herald(HERALD_JWT_KEY=SECRET, HERALD_RETRY_MS=100, HERALD_MAX_STREAMS=1)
    env = os.environ | {
        "HERALDJS_URL": app.url,
        "HERALDJS_LIMITED_URL": limited.url,
        "HERALDJS_JWT_KEY": SECRET,
    }
    suites = sorted(str(path) for path in (ROOT / "tests" / "js").glob("*.test.mjs"))
    try:
        ran = subprocess.run(
            [node, "--test", *suites],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"node --test still running after {exc.timeout} s:\n{exc.stdout}")
    assert ran.returncode == 0, ran.stdout[-10_000:] + ran.stderr[-2000:]
    assert "skipped 0" in ran.stdout, ran.stdout[-10_000:]


# --------------------------------------------------------------------------- chromium


class CuttableProxy:
    """A TCP proxy between the browser and Herald; `cut()` drops every connection.

    It keeps what the browser sent on each connection, to read requests as Herald got them.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.sent: list[bytearray] = []
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None
        self.url = ""

    async def __aenter__(self) -> CuttableProxy:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        self.cut()
        await self._server.wait_closed()

    def cut(self) -> None:
        """Reset every open connection, both ways, as a dropped network would."""
        for writer in list(self._writers):
            writer.transport.abort()

    def requests(self, path: str) -> list[bytes]:
        """The head (request line and headers) of every request for `path`, as sent."""
        heads = [
            head
            for sent in self.sent
            for head in re.findall(rb"[A-Z]+ \S+ HTTP/1\.1\r\n.*?\r\n\r\n", sent, re.S)
        ]
        return [head for head in heads if head.split(b" ")[1].split(b"?")[0] == path.encode()]

    def targets(self) -> list[str]:
        """Every request target (the URL in the request line) the browser sent."""
        return [
            target.decode()
            for sent in self.sent
            for target in re.findall(rb"[A-Z]+ (\S+) HTTP/1\.1\r\n", sent)
        ]

    async def _relay(
        self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter
    ) -> None:
        herald_in, herald_out = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        sent = bytearray()
        self.sent.append(sent)
        writers = {client_out, herald_out}
        self._writers |= writers
        try:
            await asyncio.gather(
                self._pipe(client_in, herald_out, sent), self._pipe(herald_in, client_out)
            )
        finally:
            self._writers -= writers

    @staticmethod
    async def _pipe(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, record: bytearray | None = None
    ) -> None:
        try:
            while data := await reader.read(65536):
                if record is not None:
                    record.extend(data)
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass  # one side was cut: the other is closed below
        finally:
            writer.close()


@dataclass
class LoadedPage:
    """The test page in Chromium, and every URL it requested."""

    page: Any
    requested: list[str] = field(default_factory=list)

    async def state(self, expression: str) -> Any:
        return await self.page.evaluate(f"state.{expression}")

    async def until(self, condition: str) -> None:
        await self.page.wait_for_function(f"state.{condition}", timeout=WAIT_MS)


PageOpener = Callable[..., Awaitable[LoadedPage]]


@pytest_asyncio.fixture
async def browser() -> AsyncIterator[Any]:
    """Like conftest's `browser`, with Playwright's async API."""
    need_chromium()
    async_api = pytest.importorskip("playwright.async_api")
    async with async_api.async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield browser
        await browser.close()


@pytest_asyncio.fixture
async def page_at(browser: Any) -> AsyncIterator[PageOpener]:
    """Factory: the test page at a proxy's origin, for a topic; page errors fail the test.

    `headers`, when given, is what the page's headers function returns at every attempt.
    """
    contexts: list[Any] = []
    errors: list[str] = []

    async def open_page(
        proxy: CuttableProxy,
        topic: str,
        headers: Callable[[], Awaitable[dict[str, str]]] | None = None,
    ) -> LoadedPage:
        context = await browser.new_context()
        contexts.append(context)
        # Only the page itself comes from the test; /herald.js and /events go through the proxy.
        await context.route(
            f"{proxy.url}/page?*",
            lambda route: route.fulfill(body=PAGE, content_type="text/html; charset=utf-8"),
        )
        if headers is not None:
            await context.expose_function("testHeaders", headers)
        loaded = LoadedPage(await context.new_page())
        loaded.page.on("request", lambda request: loaded.requested.append(request.url))
        loaded.page.on("pageerror", lambda error: errors.append(str(error)))
        await loaded.page.goto(f"{proxy.url}/page?topic={topic}")
        return loaded

    yield open_page
    for context in contexts:
        await context.close()
    assert errors == [], f"JavaScript errors on the page: {errors}"


@pytest.mark.integration
async def test_an_answer_cut_twice_mid_stream_shows_whole_once_and_in_order(
    herald: HeraldFactory, page_at: PageOpener
) -> None:
    app = herald(HERALD_RETRY_MS=100)
    topic = new_topic()
    tokens = answer_tokens(200)
    async with CuttableProxy(app.port) as proxy, httpx.AsyncClient(base_url=app.url) as client:
        page = await page_at(proxy, topic)
        await page.until("opens === 1")
        for i, text in enumerate(tokens):
            await publish(client, topic, "token", text)
            if i in (70, 140):
                # Mid-answer, while the page is streaming, the network drops its connection.
                await page.until(f"opens === {1 + (i > 70)}")
                proxy.cut()
            await asyncio.sleep(PACE)
        await publish(client, topic, "done", "end")
        await page.until("done")
        shown = await page.state("shown")
        assert await page.page.text_content("#answer") == shown
        assert await page.state("opens") == 3
        assert await page.state("errors") == [[0, 0], [0, 0]]
    assert shown == "".join(tokens)


@pytest.mark.integration
async def test_a_page_reloaded_mid_answer_shows_the_rest(
    herald: HeraldFactory, page_at: PageOpener
) -> None:
    app = herald(HERALD_RETRY_MS=100)
    topic = new_topic()
    tokens = answer_tokens(200)
    reloading = False
    async with CuttableProxy(app.port) as proxy, httpx.AsyncClient(base_url=app.url) as client:

        async def before_each_attempt() -> dict[str, str]:
            nonlocal reloading
            if reloading:
                reloading = False
                # The first page is gone and the second not connected yet: only resuming
                # from the first page's position brings these.
                for text in tokens[100:150]:
                    await publish(client, topic, "token", text)
            return {}

        page = await page_at(proxy, topic, before_each_attempt)
        await page.until("opens === 1")
        for text in tokens[:100]:
            await publish(client, topic, "token", text)
            await asyncio.sleep(PACE)
        await page.until("shown !== ''")
        reloading = True
        await page.page.reload()
        await page.until("opens === 1")
        for text in tokens[150:]:
            await publish(client, topic, "token", text)
            await asyncio.sleep(PACE)
        await publish(client, topic, "done", "end")
        await page.until("done")
        before, after = await page.state("before"), await page.state("shown")
        assert await page.page.text_content("#answer") == after
        first, resumed = proxy.requests("/events")
    assert before and after
    assert before + after == "".join(tokens)
    assert b"\r\nlast-event-id:" not in first.lower()
    assert b"\r\nlast-event-id:" in resumed.lower()


def bearer_in(head: bytes) -> str:
    (value,) = re.findall(rb"(?im)^authorization: bearer (\S+)\r$", head)
    return value.decode()


@pytest.mark.integration
async def test_with_auth_the_token_travels_in_a_header_never_in_a_url(
    herald: HeraldFactory, page_at: PageOpener
) -> None:
    app = herald(HERALD_JWT_KEY=SECRET, HERALD_RETRY_MS=100)
    topic = new_topic()
    tokens = answer_tokens(40)
    given: list[str] = []

    async def authorization() -> dict[str, str]:
        given.append(token({"subscribe": [topic]}))
        return {"Authorization": f"Bearer {given[-1]}"}

    async with CuttableProxy(app.port) as proxy, httpx.AsyncClient(base_url=app.url) as client:
        page = await page_at(proxy, topic, authorization)
        await page.until("opens === 1")
        for i, text in enumerate(tokens):
            await publish(client, topic, "token", text, auth=True)
            if i == 20:
                proxy.cut()
            await asyncio.sleep(PACE)
        await publish(client, topic, "done", "end", auth=True)
        await page.until("done")
        assert await page.state("shown") == "".join(tokens)
        assert await page.state("opens") == 2
        streams = proxy.requests("/events")
        assert f"/events?topic={topic}" in proxy.targets()
    # Each attempt asked for a token and sent that one, in its Authorization header.
    assert [bearer_in(head) for head in streams] == given
    assert len(given) == 2
    urls = page.requested + proxy.targets()
    assert [url for url in urls if any(value in url for value in given)] == []


@pytest.mark.integration
@pytest.mark.parametrize(("status", "grant"), [(401, None), (403, ["another.topic"])])
async def test_a_refused_token_closes_the_source_after_one_attempt(
    herald: HeraldFactory, page_at: PageOpener, status: int, grant: list[str] | None
) -> None:
    app = herald(HERALD_JWT_KEY=SECRET)
    calls = 0

    async def authorization() -> dict[str, str]:
        nonlocal calls
        calls += 1
        return {} if grant is None else {"Authorization": f"Bearer {token({'subscribe': grant})}"}

    async with CuttableProxy(app.port) as proxy:
        page = await page_at(proxy, new_topic(), authorization)
        await page.until("source.readyState === 2")
        await asyncio.sleep(LONGER_THAN_A_RETRY)
        assert await page.state("errors") == [[status, 2]]
        assert await page.state("opens") == 0
        assert len(proxy.requests("/events")) == 1
    assert len([url for url in page.requested if "/events?" in url]) == 1
    assert calls == 1
