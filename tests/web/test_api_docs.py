"""`/docs` and `/redoc` in Chromium with no network but Herald itself: they render every
operation from Herald's own files, under their Content-Security-Policy."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.conftest import Herald, HeraldLauncher

pytestmark = pytest.mark.integration

WAIT_MS = 20_000
# Set before any script of the page runs: every CSP violation the page meets.
RECORD_VIOLATIONS = """
window.__violations = [];
document.addEventListener("securitypolicyviolation", (e) => {
  window.__violations.push(`${e.violatedDirective} ${e.blockedURI}`);
});
"""


@pytest.fixture(scope="module")
def docs_herald(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Herald]:
    launcher = HeraldLauncher(None, tmp_path_factory.mktemp("docs"))
    try:
        yield launcher()
    finally:
        launcher.stop_all(show_logs=False)


class Offline:
    """A page whose requests reach Herald only: anything else is aborted and noted."""

    def __init__(self, browser: Any, herald: Herald) -> None:
        self.context = browser.new_context()
        self.page = self.context.new_page()
        self.elsewhere: list[str] = []
        self.errors: list[str] = []
        origin = urlsplit(herald.url).netloc
        self.page.add_init_script(RECORD_VIOLATIONS)
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))

        def only_herald(route: Any) -> None:
            if urlsplit(route.request.url).netloc == origin:
                route.continue_()
            else:
                self.elsewhere.append(route.request.url)
                route.abort()

        self.context.route("**/*", only_herald)

    def violations(self) -> list[str]:
        return list(self.page.evaluate("window.__violations"))

    def close(self) -> None:
        self.context.close()


def operations(herald: Herald) -> dict[tuple[str, str], str]:
    """(METHOD, path) → summary of every operation the OpenAPI schema describes."""
    schema = httpx.get(f"{herald.url}/openapi.json").json()
    return {
        (method.upper(), path): operation.get("summary", "")
        for path, item in schema["paths"].items()
        for method, operation in item.items()
    }


def test_swagger_ui_renders_every_operation_offline(browser: Any, docs_herald: Herald) -> None:
    expected = operations(docs_herald)
    assert {("POST", "/publish"), ("GET", "/events")} <= expected.keys()
    offline = Offline(browser, docs_herald)
    try:
        answer = offline.page.goto(f"{docs_herald.url}/docs")
        assert answer is not None and answer.status == 200
        assert "script-src 'self'" in answer.headers["content-security-policy"]
        blocks = offline.page.locator(".opblock")
        blocks.nth(len(expected) - 1).wait_for(timeout=WAIT_MS)
        rendered = {
            (
                block.locator(".opblock-summary-method").inner_text().strip(),
                block.locator(".opblock-summary-path").get_attribute("data-path"),
            )
            for block in blocks.all()
        }
        assert rendered == expected.keys()
        assert offline.elsewhere == []
        assert offline.violations() == []
        assert offline.errors == []
    finally:
        offline.close()


def test_redoc_renders_every_operation_offline(browser: Any, docs_herald: Herald) -> None:
    expected = operations(docs_herald)
    offline = Offline(browser, docs_herald)
    try:
        answer = offline.page.goto(f"{docs_herald.url}/redoc")
        assert answer is not None and answer.status == 200
        assert "script-src 'self'" in answer.headers["content-security-policy"]
        publish = expected[("POST", "/publish")]
        offline.page.get_by_role("heading", name=publish).first.wait_for(timeout=WAIT_MS)
        headings = set(offline.page.locator("h2").all_inner_texts())
        assert {summary for summary in expected.values() if summary} <= headings
        assert offline.elsewhere == []
        # ReDoc's "API docs by Redocly" badge is an image on its CDN (hidden when it fails
        # to load): the policy refuses it before any request leaves, and nothing else.
        badge = "https://cdn.redoc.ly/redoc/logo-mini.svg"
        assert offline.violations() in ([], [f"img-src {badge}"])
        assert [e for e in offline.errors if f"image '{badge}' violates" not in e] == []
    finally:
        offline.close()


def test_the_assets_are_herald_s_own_and_nothing_else_is_served(docs_herald: Herald) -> None:
    with httpx.Client(base_url=docs_herald.url) as http:
        script = http.get("/docs/assets/swagger-ui-bundle.js")
        style = http.get("/docs/assets/swagger-ui.css")
        unknown = http.get("/docs/assets/..%2Fapp.py")
    assert script.status_code == 200
    assert script.headers["content-type"].startswith(("text/javascript", "application/javascript"))
    assert b"SwaggerUIBundle" in script.content
    assert style.headers["content-type"].startswith("text/css")
    assert unknown.status_code == 404
