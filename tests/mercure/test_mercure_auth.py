"""Mercure tokens: which verify, what they grant, and how a request presents them."""

from __future__ import annotations

import time
from typing import Any

import jwt
import pytest
from starlette.requests import Request

from service.errors import HeraldError
from service.mercure.auth import (
    DETAIL_TYPE,
    InvalidRequest,
    InvalidToken,
    MercureAuthenticator,
    token_of,
)
from service.mercure.match import FALLBACK_HUB_URL, Matcher
from service.settings import Settings

KEY = "a-test-key-that-is-long-enough-for-hs256"
META = "http://hub/.well-known/oauth-protected-resource/.well-known/mercure"
BASE = FALLBACK_HUB_URL


def detail(actions: list[str], *matchers: dict[str, Any]) -> dict[str, Any]:
    return {"type": DETAIL_TYPE, "actions": actions, "topics": list(matchers)}


def current(claims: dict[str, Any], typ: str = "at+jwt", exp: bool = True) -> str:
    body = {"exp": int(time.time()) + 600} if exp else {}
    return jwt.encode(body | claims, KEY, algorithm="HS256", headers={"typ": typ})


def v0(mercure: dict[str, Any], **claims: Any) -> str:
    return jwt.encode({"mercure": mercure} | claims, KEY, algorithm="HS256")


def authenticator(**settings: Any) -> MercureAuthenticator:
    return MercureAuthenticator(Settings(jwt_key=KEY, **settings), BASE)


def test_a_current_token_grants_its_actions_on_its_topics() -> None:
    token = current(
        {
            "authorization_details": [
                detail(
                    ["publish"],
                    {"match": "https://example.com/books/:id", "match_type": "urlpattern"},
                ),
                detail(
                    ["subscribe", "some-future-action"], {"match": "https://example.com/books/1"}
                ),
                {"type": "https://other.example/detail", "anything": True},
            ]
        }
    )
    grant = authenticator().verify(token, "header", META)
    assert grant.may_publish(["https://example.com/books/7"], BASE)
    assert not grant.may_publish(
        ["https://example.com/books/7", "https://example.com/films/1"], BASE
    )
    assert grant.may_read(["https://example.com/books/2", "https://example.com/books/1"], BASE)
    assert not grant.may_read(["https://example.com/books/2"], BASE)
    assert grant.expires_at is not None


def test_a_v0_token_grants_its_selectors() -> None:
    token = v0({"publish": ["https://example.com/books/{id}"], "subscribe": ["*"]})
    grant = authenticator().verify(token, "query", META)
    assert grant.may_publish(["https://example.com/books/1"], BASE)
    assert not grant.may_publish(["https://example.com/films/1"], BASE)
    assert grant.may_read(["anything"], BASE)
    assert grant.subscribe == (Matcher("template", "*"),)


@pytest.mark.parametrize(
    "token",
    [
        current({"authorization_details": []}, typ="JWT"),
        current({"authorization_details": []}, exp=False),
        current(
            {"authorization_details": [detail(["publish"], {"match": "a", "match_type": "regex"})]}
        ),
        current(
            {
                "authorization_details": [
                    detail(["publish"], {"match": "https://x/(", "match_type": "urlpattern"})
                ]
            }
        ),
        current({"authorization_details": [detail([], {"match": "a"})]}),
        current({"authorization_details": [detail(["publish"])]}),
        current({"authorization_details": [detail(["publish", 3], {"match": "a"})]}),
        current({"authorization_details": ["not an object"]}),
        current({"authorization_details": [detail(["publish"], {"match": "a"})], "exp": 1}),
        v0({"publish": "*"}),
        jwt.encode(
            {"mercure": {"publish": ["*"]}},
            "another-key-that-is-long-enough-too",
            algorithm="HS256",
        ),
        "not.a.token",
    ],
    ids=[
        "not at+jwt",
        "no exp",
        "unknown match_type",
        "bad url pattern",
        "no actions",
        "no topics",
        "non-string action",
        "detail not an object",
        "expired",
        "v0 selectors not a list",
        "wrong key",
        "garbage",
    ],
)
def test_tokens_refused_whole(token: str) -> None:
    with pytest.raises(InvalidToken) as refused:
        authenticator().verify(token, "header", META)
    assert refused.value.status == 401
    assert 'error="invalid_token"' in refused.value.headers()["WWW-Authenticate"]


def test_a_current_token_is_not_taken_from_the_url() -> None:
    token = current({"authorization_details": [detail(["subscribe"], {"match": "*"})]})
    with pytest.raises(InvalidToken):
        authenticator().verify(token, "query", META)


def test_audience_and_issuer_are_checked_when_configured() -> None:
    auth = authenticator(
        mercure_audience="https://hub/.well-known/mercure", mercure_issuer="https://app"
    )
    good = {
        "aud": "https://hub/.well-known/mercure",
        "iss": "https://app",
        "authorization_details": [],
    }
    auth.verify(current(good), "header", META)
    auth.verify(current(good | {"aud": ["x", "https://hub/.well-known/mercure"]}), "header", META)
    for bad in ({"aud": "https://elsewhere"}, {"iss": "https://evil"}, {"aud": None}):
        claims = {k: v for k, v in (good | bad).items() if v is not None}
        with pytest.raises(InvalidToken):
            auth.verify(current(claims), "header", META)
    # Unset, a token's aud is not held against it.
    authenticator().verify(current(good), "header", META)


def request(headers: dict[str, str] | None = None, query: bytes = b"") -> Request:
    raw = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    return Request({"type": "http", "method": "GET", "headers": raw, "query_string": query})


def test_the_authorization_header_wins_over_query_and_cookie() -> None:
    both = request(
        {"Authorization": "Bearer H", "Cookie": "mercureAuthorization=C"}, b"authorization=Q"
    )
    assert token_of(both, META) == ("H", "header")
    assert token_of(request({"Cookie": "mercureAuthorization=C"}, b"authorization=Q"), META) == (
        "Q",
        "query",
    )
    assert token_of(request({"Cookie": "__Secure-mercure_access_token=C"}), META) == ("C", "cookie")
    assert token_of(request(), META) is None


@pytest.mark.parametrize("header", ["Basic abc", "Bearer", "Bearer "])
def test_a_malformed_authorization_header_is_an_invalid_request(header: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        token_of(request({"Authorization": header}), META)
    error: HeraldError = refused.value
    assert error.status == 400
    assert 'error="invalid_request"' in error.headers()["WWW-Authenticate"]
