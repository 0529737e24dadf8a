"""The demo page shows what it is given as text and runs nothing it did not ship.

Hostile values reach the page two ways: its query string (`symbols`, `log`, `chat`), which
anyone can put in a link, and event data, which any publisher (or anything that can XADD)
controls. In a real headless Chromium, none of them may run script or add an element,
and each must appear literally where the page shows it. The page comes with a strict
Content-Security-Policy, works under it, and is served only where it is wanted.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
import redis

from tests.conftest import Herald, HeraldFactory, HeraldLauncher, RedisServer

# wait_for_function is given functions: Playwright evals a bare expression again on every
# poll, and the page's Content-Security-Policy (no 'unsafe-eval') refuses that.
WAIT_MS = 20_000

pytestmark = pytest.mark.integration


def _octal(text: str) -> str:
    return "".join(f"\\{ord(c):o}" for c in text)


# The page upper-cases symbols, which turns `window` into `WINDOW`; this one still sets
# window.__xss because it spells every lower-case name in octal escapes.
UPPER_CASE_PROOF = (
    f"<IMG SRC=X ONERROR=\"[]['{_octal('filter')}']['{_octal('constructor')}']"
    f"('{_octal('window.__xss=1')}')()\">"
)
PAYLOADS = {
    "img-onerror": "<img src=x onerror=window.__xss=1>",
    "svg-onload": '"><svg onload=window.__xss=1>',
    "script-close": "</script><script>window.__xss=1</script>",
    "selector-breakout": '"] x"] [data-answer="',
    "attribute-breakout": "' autofocus onfocus=window.__xss=1 x='",
    "upper-case-proof": UPPER_CASE_PROOF,
}

# What script or markup could have put into the page, looked for everywhere.
INJECTED = """() => ({
  xss: typeof window.__xss,
  elements: document.querySelectorAll("img, svg, iframe, object, embed").length,
  handlers: [...document.querySelectorAll("*")].filter(
    (e) => [...e.attributes].some((a) => a.name.startsWith("on"))).length,
  scripts: [...document.scripts].filter((s) => /__xss/i.test(s.outerHTML)).length,
})"""
CLEAN = {"xss": "undefined", "elements": 0, "handlers": 0, "scripts": 0}

CSP = {
    "default-src": "'none'",
    "script-src": "'self'",
    "style-src": "'self'",
    "connect-src": "'self'",
    "img-src": "'self' data:",
    "base-uri": "'none'",
    "form-action": "'none'",
    "frame-ancestors": "'none'",
    "require-trusted-types-for": "'script'",
    "trusted-types": "'none'",
}


@dataclass
class Watched:
    """A page with everything it reported: console errors, uncaught errors, dialogs."""

    page: Any
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)

    def complaints(self) -> dict[str, list[str]]:
        return {
            "console errors": self.console_errors,
            "page errors": self.page_errors,
            "dialogs": self.dialogs,
        }


@pytest.fixture
def open_page(browser: Any) -> Iterator[Callable[[str], Watched]]:
    """Factory: a new page at a URL, watched from before its first script runs."""
    contexts: list[Any] = []

    def open_watched(url: str) -> Watched:
        context = browser.new_context(viewport={"width": 1280, "height": 860})
        contexts.append(context)
        page = context.new_page()
        watched = Watched(page)
        page.on(
            "console",
            lambda m: m.type == "error" and watched.console_errors.append(m.text),
        )
        page.on("pageerror", lambda error: watched.page_errors.append(str(error)))

        def on_dialog(dialog: Any) -> None:
            watched.dialogs.append(f"{dialog.type}: {dialog.message}")
            dialog.dismiss()

        page.on("dialog", on_dialog)
        page.goto(url)
        return watched

    yield open_watched
    for context in contexts:
        context.close()


@pytest.fixture(scope="module")
def page_herald(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Herald]:
    """One Herald on Redis that serves the demo page, for the module's tests."""
    redis_server.start()
    launcher = HeraldLauncher(redis_server.url, tmp_path_factory.mktemp("herald"))
    try:
        yield launcher(HERALD_DEMO_PAGE="true")
    finally:
        launcher.stop_all(show_logs=False)


@pytest.fixture
def app(
    request: pytest.FixtureRequest, page_herald: Herald, flushed_redis: RedisServer
) -> Iterator[Herald]:
    """The module's Herald, with an empty Redis; its logs are shown when the test failed."""
    yield page_herald
    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed:
        print(page_herald.logs())


def page_url(app: Herald, **params: str) -> str:
    return f"{app.url}/?{urlencode(params)}"


@pytest.mark.parametrize("payload", PAYLOADS.values(), ids=PAYLOADS.keys())
def test_query_parameters_are_shown_as_text_and_never_run(
    open_page: Callable[[str], Watched], app: Herald, payload: str
) -> None:
    watched = open_page(page_url(app, symbols=f"AAPL,{payload}", log=payload, chat=payload))
    page = watched.page
    page.wait_for_function("() => herald.state !== 'connecting'", timeout=WAIT_MS)

    assert page.evaluate(INJECTED) == CLEAN
    assert watched.complaints() == {"console errors": [], "page errors": [], "dialogs": []}
    symbols = page.evaluate(
        "[...document.querySelectorAll('#ticker tbody tr')].map((tr) => tr.cells[0].textContent)"
    )
    assert symbols == ["AAPL", payload.upper()]
    assert page.text_content("#logs-topic") == f"logs.{payload}"
    assert page.text_content("#chat-topic") == f"chat.{payload}"
    note = page.text_content("#logs div.note")
    for topic in (f"stocks.{payload.upper()}", f"logs.{payload}", f"chat.{payload}"):
        assert topic in note
    # What cannot be a topic is not followed; the rest of the page still is.
    assert page.evaluate("herald.state") == "live"


@pytest.mark.parametrize("payload", PAYLOADS.values(), ids=PAYLOADS.keys())
def test_event_data_is_shown_as_text_and_never_runs(
    open_page: Callable[[str], Watched], app: Herald, flushed_redis: RedisServer, payload: str
) -> None:
    watched = open_page(page_url(app, symbols=f"AAPL,{payload}", log="demo", chat="demo"))
    page = watched.page
    page.wait_for_function("() => herald.state === 'live'", timeout=WAIT_MS)

    tick = {
        "symbol": payload.upper(),
        "price": 101.5,
        "change": 1.5,
        "change_pct": 1.5,
        "volume": payload,
        "ts": int(time.time() * 1000),
    }
    events = [
        {"topic": "stocks.AAPL", "event": "tick", "data": tick},
        {
            "topic": "chat.demo",
            "event": "token",
            "data": {"answer": payload, "index": 0, "text": payload},
        },
        {"topic": "chat.demo", "event": "done", "data": {"answer": payload, "tokens": 1}},
        {"topic": "logs.demo", "event": "log", "data": {"line": payload}},
        {
            "topic": "presence.chat.demo",
            "event": "online",
            "data": {"topic": "chat.demo", "count": payload},
        },
    ]
    assert httpx.post(f"{app.url}/publish", json=events).status_code == 200
    # Herald's own notice type cannot be published over HTTP, and written straight into
    # Redis it arrives as a plain message, which the page does not show as a notice.
    with redis.Redis.from_url(flushed_redis.url) as client:
        client.xadd("herald:stream:logs.demo", {"event": "herald.trimmed", "data": payload})
        client.xadd("herald:stream:logs.demo", {"event": "log", "data": '{"line": "after"}'})
    page.wait_for_function(
        "() => herald.received.length === 6 && document.querySelectorAll('#logs div').length === 3",
        timeout=WAIT_MS,
    )

    assert page.evaluate(INJECTED) == CLEAN
    assert watched.complaints() == {"console errors": [], "page errors": [], "dialogs": []}
    row = page.evaluate(
        "[...document.querySelectorAll('#ticker tbody tr')[1].cells].map((c) => c.textContent)"
    )
    assert row[0] == payload.upper()
    assert row[1:4] == ["101.50", "+1.50", "+1.50%"]
    assert row[4] == payload
    bubbles = page.evaluate(
        "[...document.querySelectorAll('#chat .bubble')].map((b) => "
        "({answer: b.dataset.answer, text: b.firstChild.data, complete: b.dataset.complete}))"
    )
    assert bubbles == [{"answer": payload, "text": payload, "complete": "true"}]
    assert page.evaluate("herald.answers") == [
        {"answer": payload, "text": payload, "fromStart": True}
    ]
    lines = page.evaluate("[...document.querySelectorAll('#logs div')].map((d) => d.textContent)")
    assert lines[1:] == [payload, "after"]
    assert page.text_content("#online") == f"{payload} online"


def test_the_page_ships_a_strict_content_security_policy(app: Herald) -> None:
    page = httpx.get(f"{app.url}/")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    policy = page.headers["content-security-policy"]
    directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
    assert directives == CSP
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["referrer-policy"] == "no-referrer"

    script = httpx.get(f"{app.url}/demo.js")
    assert script.status_code == 200
    assert script.headers["content-type"] == "text/javascript; charset=utf-8"
    assert script.headers["x-content-type-options"] == "nosniff"
    style = httpx.get(f"{app.url}/demo.css")
    assert style.status_code == 200
    assert style.headers["content-type"] == "text/css; charset=utf-8"
    assert style.headers["x-content-type-options"] == "nosniff"


def test_the_demo_works_under_its_policy_with_no_violation(
    open_page: Callable[[str], Watched], embedded: HeraldLauncher
) -> None:
    demo = embedded(
        HERALD_DEMO="true",
        HERALD_TYPEWRITER_TOKENS_PER_SECOND=80,
        HERALD_TYPEWRITER_PAUSE_SECONDS=0.5,
    )
    watched = open_page(f"{demo.url}/")
    page = watched.page
    page.wait_for_function("() => herald.state === 'live'", timeout=WAIT_MS)
    page.wait_for_selector("#ticker tr[data-symbol=AAPL] td.price", timeout=WAIT_MS)
    page.wait_for_function("() => herald.answers.length > 0", timeout=WAIT_MS)
    page.wait_for_function(
        "() => document.querySelectorAll('#logs div').length > 0", timeout=WAIT_MS
    )
    page.wait_for_function(
        "() => document.querySelector('#online').textContent === '1 online'", timeout=WAIT_MS
    )
    # The style sheet applies: the header is dark, the live pill green.
    header = page.evaluate("getComputedStyle(document.querySelector('header')).backgroundColor")
    assert header == "rgb(17, 24, 39)"
    pill = page.evaluate("getComputedStyle(document.querySelector('#connection')).color")
    assert pill == "rgb(110, 231, 183)"
    assert watched.complaints() == {"console errors": [], "page errors": [], "dialogs": []}

    # Markup that slipped in anyway would not run: the policy refuses inline script.
    page.evaluate(
        "() => { const s = document.createElement('script');"
        " try { s.text = 'window.__inline = 1'; } catch {}"
        " document.body.append(s); }"
    )
    assert page.evaluate("typeof window.__inline") == "undefined"


@pytest.mark.parametrize(
    ("redis_url", "env", "served"),
    [
        (True, {}, False),
        (True, {"HERALD_DEMO_PAGE": "true"}, True),
        (True, {"HERALD_DEMO": "true"}, True),
        (False, {}, True),
        (False, {"HERALD_DEMO_PAGE": "false"}, False),
    ],
    ids=["redis", "redis-demo-page", "redis-demo", "embedded", "embedded-no-demo-page"],
)
def test_the_page_is_served_only_where_it_is_wanted(
    herald: HeraldFactory,
    embedded: HeraldLauncher,
    redis_url: bool,
    env: dict[str, str],
    served: bool,
) -> None:
    app = (herald if redis_url else embedded)(**env)
    for path in ("/", "/demo.js", "/demo.css"):
        answer = httpx.get(f"{app.url}{path}")
        if served:
            assert answer.status_code == 200, path
        else:
            assert answer.status_code == 404, path
            assert answer.headers["content-type"] == "application/json"
            assert answer.json()["detail"]
