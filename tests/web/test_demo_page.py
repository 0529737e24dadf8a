"""The demo page at `/`, in a real headless Chromium (Debian's, driven by Playwright).

What a newcomer sees after `herald serve --demo`: ticks, a typewriter answer, the online
count and log lines; and the page's own EventSource resuming with no gap after the
server dropped it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import redis

from tests.conftest import ROOT, HeraldFactory, HeraldLauncher, RedisServer
from workers.typewriter import DEFAULT_TEXTS

SYMBOLS = ("AAPL", "MSFT", "NVDA", "TSLA", "AMZN")
# wait_for_function is given functions: Playwright evals a bare expression again on every
# poll, and the page's Content-Security-Policy (no 'unsafe-eval') refuses that.
WAIT_MS = 20_000

pytestmark = pytest.mark.integration


@pytest.fixture
def page_of(browser: Any) -> Iterator[Callable[[str], Any]]:
    """Factory: a new page at a URL; page errors fail the test."""
    contexts: list[Any] = []
    errors: list[str] = []

    def open_page(url: str) -> Any:
        context = browser.new_context(viewport={"width": 1280, "height": 860})
        contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(url)
        return page

    yield open_page
    for context in contexts:
        context.close()
    assert errors == [], f"JavaScript errors on the page: {errors}"


def test_the_demo_shows_ticks_a_typed_answer_the_online_count_and_log_lines(
    page_of: Callable[[str], Any], embedded: HeraldLauncher, tmp_path: Path
) -> None:
    app = embedded(
        HERALD_DEMO="true",
        HERALD_TYPEWRITER_TOKENS_PER_SECOND=80,
        HERALD_TYPEWRITER_PAUSE_SECONDS=0.5,
    )
    page = page_of(f"{app.url}/")
    page.wait_for_function("() => herald.state === 'live'", timeout=WAIT_MS)
    assert page.text_content("#connection") == "live"

    for symbol in SYMBOLS:
        row = f"#ticker tr[data-symbol={symbol}]"
        page.wait_for_selector(f"{row} td.price", timeout=WAIT_MS)
        price = float(page.text_content(f"{row} td.price").replace(",", ""))
        assert price > 0

    page.wait_for_function("() => herald.answers.some((a) => a.fromStart)", timeout=WAIT_MS)
    answer = page.evaluate("herald.answers.find((a) => a.fromStart)")
    assert answer["text"] in DEFAULT_TEXTS
    bubble = f".bubble[data-answer='{answer['answer']}']"
    assert page.get_attribute(bubble, "data-complete") == "true"
    shown = page.evaluate(f'document.querySelector("{bubble}").firstChild.data')
    assert shown == answer["text"]

    page.wait_for_function(
        "() => document.querySelector('#online').textContent === '1 online'", timeout=WAIT_MS
    )
    second = page_of(f"{app.url}/")
    page.wait_for_function(
        "() => document.querySelector('#online').textContent === '2 online'", timeout=WAIT_MS
    )
    second.close()
    page.wait_for_function(
        "() => document.querySelector('#online').textContent === '1 online'", timeout=WAIT_MS
    )

    page.wait_for_function(
        "() => document.querySelectorAll('#logs div').length >= 2", timeout=WAIT_MS
    )
    assert '"GET /' in page.text_content("#logs")

    screenshot = tmp_path / "demo.png"
    page.screenshot(path=str(screenshot))
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    print(f"screenshot: {screenshot}")


@pytest.fixture
def stocks_worker(flushed_redis: RedisServer, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
    env |= {
        "HERALD_REDIS_URL": flushed_redis.url,
        "HERALD_STOCKS_SYMBOLS": "AAPL=100",
        "HERALD_STOCKS_RATE": "15",
    }
    with (tmp_path / "stocks.log").open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "service", "worker", "stocks"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.wait(5)


def test_the_page_reconnects_by_itself_and_misses_nothing_while_the_server_was_away(
    page_of: Callable[[str], Any],
    flushed_redis: RedisServer,
    stocks_worker: subprocess.Popen[bytes],
    herald: HeraldFactory,
) -> None:
    app = herald(HERALD_RETRY_MS=300, HERALD_DEMO_PAGE="true")
    page = page_of(f"{app.url}/?symbols=AAPL")
    page.wait_for_function("() => herald.state === 'live'", timeout=WAIT_MS)
    received = "herald.received.filter((e) => e.type === 'tick').length"
    page.wait_for_function(f"() => {received} >= 10", timeout=WAIT_MS)

    # The server goes away: its streams end, the page's EventSource retries alone.
    assert app.terminate() == 0
    away_from = time.time()
    page.wait_for_function("() => herald.state === 'reconnecting'", timeout=WAIT_MS)
    assert "reconnecting" in page.text_content("#connection")
    time.sleep(1.5)  # ticks keep landing in Redis while no server runs
    away_until = time.time()
    herald(port=app.port, HERALD_RETRY_MS=300, HERALD_DEMO_PAGE="true")
    page.wait_for_function("() => herald.state === 'live'", timeout=WAIT_MS)
    seen = page.evaluate(received)
    page.wait_for_function(f"() => {received} >= {seen + 10}", timeout=WAIT_MS)

    stocks_worker.send_signal(signal.SIGTERM)
    assert stocks_worker.wait(5) == 0
    with redis.Redis.from_url(flushed_redis.url, decode_responses=True) as client:
        published = [
            json.loads(fields["data"]) for _, fields in client.xrange("herald:stream:stocks.AAPL")
        ]
    page.wait_for_function(
        f"() => herald.received.at(-1).data.ts === {published[-1]['ts']}", timeout=WAIT_MS
    )
    ticks = page.evaluate("herald.received.filter((e) => e.type === 'tick').map((e) => e.data)")
    # Everything from the first tick the page saw to the last, once each, in order.
    first = published.index(ticks[0])
    assert ticks == published[first:]
    missed_window = [t for t in ticks if away_from * 1000 < t["ts"] < away_until * 1000]
    assert missed_window, "no tick was published while the server was away"


SECRET = "demo-page-secret-that-is-long-enough-for-hs256"


def test_with_auth_on_the_page_reads_its_token_from_the_fragment_and_sends_it_in_a_header(
    browser: Any, herald: HeraldFactory
) -> None:
    app = herald(HERALD_JWT_KEY=SECRET, HERALD_DEMO_PAGE="true")
    token = jwt.encode({"herald": {"subscribe": ["*"]}}, SECRET, algorithm="HS256")
    publisher = jwt.encode({"herald": {"publish": ["chat.*"]}}, SECRET, algorithm="HS256")
    context = browser.new_context()
    try:
        requests: list[tuple[str, str | None]] = []
        context.on(
            "request",
            lambda request: requests.append((request.url, request.headers.get("authorization"))),
        )
        page = context.new_page()
        page.goto(f"{app.url}/#token={token}")
        page.wait_for_function("() => herald.state === 'live'", timeout=WAIT_MS)
        token_event = {"answer": "a1", "index": 0, "text": "authorized"}
        published = httpx.post(
            f"{app.url}/publish",
            json={"topic": "chat.demo", "event": "token", "data": token_event},
            headers={"Authorization": f"Bearer {publisher}"},
        )
        assert published.status_code == 200
        page.wait_for_function("() => herald.received.length === 1", timeout=WAIT_MS)
        shown = page.text_content("#chat .bubble")

        refused = context.new_page()
        refused.goto(f"{app.url}/")
        refused.wait_for_function("() => herald.state === 'closed'", timeout=WAIT_MS)
        closed_pill = refused.text_content("#connection")
    finally:
        context.close()
    assert shown == "authorized"
    assert closed_pill == "closed: 401"
    assert not any(token in url for url, _ in requests)
    streams = [auth for url, auth in requests if "/events?" in url]
    # One stream with the token, one refused attempt without: a 401 is not retried.
    assert streams == [f"Bearer {token}", None]
