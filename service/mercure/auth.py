"""Mercure access tokens: where a request carries one, and what a verified one grants.

Two kinds, told apart by their claims:

- current (draft-dunglas-mercure-08): an RFC 9068 access token, `typ` `at+jwt`, `exp`
  required, rights in `authorization_details` entries of type
  `https://mercure.rocks/authorization-detail` (`actions`, `topics` of matchers);
- v0 (the Mercure hub's v0.24 protocol): the `mercure` claim (or `https://mercure.rocks/`)
  with `publish` and `subscribe` lists of selectors (exact, URI template or `*`).

Both are verified with HERALD_JWT_KEY and HERALD_JWT_ALGORITHM, and `aud`/`iss` are checked
against HERALD_MERCURE_AUDIENCE/HERALD_MERCURE_ISSUER when those are set.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

import jwt
from starlette.requests import Request

from service.errors import BadRequest, Forbidden, Unauthorized
from service.mercure.match import InvalidMatcher, Kind, Matcher, any_matches, check
from service.settings import Settings

DETAIL_TYPE = "https://mercure.rocks/authorization-detail"
COOKIES = ("__Secure-mercure_access_token", "mercureAuthorization")
"""The current protocol's cookie name, then v0's."""
MAX_DETAILS = 100
MAX_MATCHERS = 1000
MAX_PATTERN_LENGTH = 4096

Source = Literal["header", "query", "cookie"]


def _challenge(metadata_url: str, error: str | None) -> dict[str, str]:
    params = [f'error="{error}"'] if error else []
    params.append(f'resource_metadata="{metadata_url}"')
    return {"WWW-Authenticate": "Bearer " + ", ".join(params)}


class TokenRequired(Unauthorized):
    """401 with a challenge and no error code: a token is needed and none came."""

    def __init__(self, detail: str, metadata_url: str) -> None:
        super().__init__(detail)
        self.metadata_url = metadata_url

    def headers(self) -> dict[str, str]:
        return _challenge(self.metadata_url, None)


class InvalidToken(TokenRequired):
    """401 `invalid_token`: the token does not verify or its Mercure claims are malformed."""

    def headers(self) -> dict[str, str]:
        return _challenge(self.metadata_url, "invalid_token")


class InsufficientScope(Forbidden):
    """403 `insufficient_scope`: a valid token that does not allow this."""

    def __init__(self, detail: str, metadata_url: str) -> None:
        super().__init__(detail)
        self.metadata_url = metadata_url

    def headers(self) -> dict[str, str]:
        return _challenge(self.metadata_url, "insufficient_scope")


class InvalidRequest(BadRequest):
    """400 `invalid_request`: the token's presentation is malformed."""

    def __init__(self, detail: str, metadata_url: str) -> None:
        super().__init__(detail)
        self.metadata_url = metadata_url

    def headers(self) -> dict[str, str]:
        return _challenge(self.metadata_url, "invalid_request")


@dataclass(frozen=True, slots=True)
class Grant:
    """What a verified token (or none: `ANONYMOUS`) allows."""

    publish: tuple[Matcher, ...] = ()
    subscribe: tuple[Matcher, ...] = ()
    expires_at: float | None = None
    anonymous: bool = field(default=False, compare=False)
    payloads: tuple[tuple[tuple[Matcher, ...], Any], ...] = field(default=(), compare=False)
    """Each subscribe detail's topics and payload (None: it has none), in the token's order."""
    payload: Any = field(default=None, compare=False)
    """v0's `mercure.payload`, for every subscription."""

    def may_publish(self, topics: Iterable[str], base: str) -> bool:
        """Every topic of an update needs a publish grant."""
        return all(any_matches(self.publish, (t,), base) for t in topics)

    def may_read(self, topics: Iterable[str], base: str) -> bool:
        """A private update needs a subscribe grant on one of its topics."""
        return any_matches(self.subscribe, topics, base)

    def payload_for(self, subscription: Matcher, base: str) -> Any:
        """The payload of the first subscribe detail whose topics match the subscription's
        own matcher string (as if it were a topic); else v0's payload."""
        for matchers, payload in self.payloads:
            if any_matches(matchers, (subscription.pattern,), base):
                return payload
        return self.payload


ANONYMOUS = Grant(anonymous=True)
UNRESTRICTED = Grant(publish=(Matcher("exact", "*"),))
"""A publisher's rights when Herald runs without HERALD_JWT_KEY (development only)."""


def token_of(request: Request, metadata_url: str) -> tuple[str, Source] | None:
    """The token a request presents: the Authorization header wins, then v0's `authorization`
    query parameter, then a Mercure cookie."""
    header = request.headers.getlist("authorization")
    if header:
        scheme, _, token = header[0].partition(" ")
        if len(header) > 1 or scheme.lower() != "bearer" or not token.strip():
            raise InvalidRequest("Authorization must be 'Bearer <token>'", metadata_url)
        return token.strip(), "header"
    query = request.query_params.getlist("authorization")
    if query:
        if len(query) > 1 or not query[0]:
            raise InvalidRequest("give one authorization query parameter", metadata_url)
        return query[0], "query"
    for name in COOKIES:
        cookie = request.cookies.get(name)
        if cookie:
            return cookie, "cookie"
    return None


class MercureAuthenticator:
    """Verifies Mercure tokens with Herald's one key and algorithm."""

    def __init__(self, settings: Settings, base: str) -> None:
        assert settings.jwt_key is not None
        self._key = settings.jwt_key.get_secret_value()
        self._algorithm = settings.jwt_algorithm
        self._audience = settings.mercure_audience
        self._issuer = settings.mercure_issuer
        self._base = base

    def verify(self, token: str, source: Source, metadata_url: str) -> Grant:
        try:
            header = jwt.get_unverified_header(token)
            claims = jwt.decode(
                token,
                self._key,
                algorithms=[self._algorithm],
                audience=self._audience,
                issuer=self._issuer,
                options={"verify_aud": self._audience is not None},
            )
        except jwt.PyJWTError as exc:
            raise InvalidToken(f"the token is not valid: {exc}", metadata_url) from None
        try:
            if "mercure" in claims or "https://mercure.rocks/" in claims:
                return self._v0(claims)
            return self._current(header, claims, source)
        except ValueError as exc:
            raise InvalidToken(f"the token is not valid: {exc}", metadata_url) from None

    def _v0(self, claims: dict[str, Any]) -> Grant:
        mercure = claims.get("mercure", claims.get("https://mercure.rocks/"))
        if not isinstance(mercure, dict):
            raise ValueError("the mercure claim must be an object")
        return Grant(
            publish=self._selectors(mercure.get("publish"), "publish"),
            subscribe=self._selectors(mercure.get("subscribe"), "subscribe"),
            expires_at=_expiry(claims),
            payload=mercure.get("payload"),
        )

    def _selectors(self, selectors: object, action: str) -> tuple[Matcher, ...]:
        if selectors is None:
            return ()
        if not isinstance(selectors, list) or not all(isinstance(s, str) for s in selectors):
            raise ValueError(f"mercure.{action} must be a list of strings")
        if len(selectors) > MAX_MATCHERS:
            raise ValueError(f"mercure.{action} holds more than {MAX_MATCHERS} selectors")
        return tuple(self._matcher("template", s) for s in selectors)

    def _current(self, header: dict[str, Any], claims: dict[str, Any], source: Source) -> Grant:
        typ = str(header.get("typ", "")).lower().removeprefix("application/")
        if typ != "at+jwt":
            raise ValueError("its typ must be at+jwt")
        if "exp" not in claims:
            raise ValueError("it has no exp")
        if source == "query":
            raise ValueError("access tokens are not accepted in the URL")
        details = claims.get("authorization_details", [])
        if not isinstance(details, list) or len(details) > MAX_DETAILS:
            raise ValueError(f"authorization_details must be a list of at most {MAX_DETAILS}")
        publish: list[Matcher] = []
        subscribe: list[Matcher] = []
        payloads: list[tuple[tuple[Matcher, ...], Any]] = []
        for detail in details:
            if not isinstance(detail, dict):
                raise ValueError("each authorization detail must be an object")
            if detail.get("type") != DETAIL_TYPE:
                continue
            actions = detail.get("actions")
            if not isinstance(actions, list) or not actions:
                raise ValueError("a Mercure authorization detail needs a list of actions")
            if not all(isinstance(a, str) for a in actions):
                raise ValueError("actions must be strings")
            matchers = self._topics(detail.get("topics"))
            if "payload" in detail and not isinstance(detail["payload"], dict):
                raise ValueError("a payload must be an object")
            if "publish" in actions:
                publish.extend(matchers)
            if "subscribe" in actions:
                subscribe.extend(matchers)
                payloads.append((tuple(matchers), detail.get("payload")))
        if len(publish) + len(subscribe) > MAX_MATCHERS:
            raise ValueError(f"more than {MAX_MATCHERS} topic matchers")
        return Grant(tuple(publish), tuple(subscribe), _expiry(claims), payloads=tuple(payloads))

    def _topics(self, topics: object) -> list[Matcher]:
        if not isinstance(topics, list) or not topics:
            raise ValueError("a Mercure authorization detail needs a list of topics")
        matchers = []
        for topic in topics:
            if not isinstance(topic, dict) or not isinstance(topic.get("match"), str):
                raise ValueError("each topic must be an object with a match string")
            kind = topic.get("match_type", "exact")
            if kind not in ("exact", "urlpattern"):
                raise ValueError(f"unsupported match_type {kind!r}")
            matchers.append(self._matcher(kind, topic["match"]))
        return matchers

    def _matcher(self, kind: Kind, pattern: str) -> Matcher:
        if len(pattern) > MAX_PATTERN_LENGTH:
            raise ValueError(f"a matcher is at most {MAX_PATTERN_LENGTH} characters")
        matcher = Matcher(kind, pattern)
        try:
            check(matcher, self._base)
        except InvalidMatcher as exc:
            raise ValueError(str(exc)) from None
        return matcher


def _expiry(claims: dict[str, Any]) -> float | None:
    exp = claims.get("exp")
    return float(exp) if exp is not None else None


def check_origin(request: Request, allowed: list[str]) -> None:
    """A publish authorised by a cookie must come from an allowed origin (against CSRF):
    Herald's own, or one of HERALD_CORS_ORIGINS."""
    origin = request.headers.get("origin")
    if not origin:
        referer = urlsplit(request.headers.get("referer", ""))
        origin = f"{referer.scheme}://{referer.netloc}" if referer.netloc else ""
    if not origin:
        raise Forbidden("a publish with a cookie needs an Origin or Referer header")
    if "*" in allowed or origin in allowed:
        return
    if urlsplit(origin).netloc == request.headers.get("host"):
        return
    raise Forbidden(f"publishing with a cookie is not allowed from {origin}")
