"""JWT authorisation: which topics a request may publish to and read.

A token's `herald` claim lists topic patterns, `*` standing for any run of characters:
`{"herald": {"publish": ["stocks.*"], "subscribe": ["user.42.*"]}}`. Publishers send
their token as `Authorization: Bearer`; subscribers may also use a cookie (EventSource
sends cookies) or the `access_token` query parameter (EventSource cannot set headers).
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Iterable
from dataclasses import dataclass

import jwt
from starlette.requests import Request

from service.errors import Forbidden, Unauthorized
from service.models import PRESENCE_PREFIX
from service.settings import Settings

TOKEN_QUERY = "access_token"


def _pattern(patterns: object, action: str) -> re.Pattern[str] | None:
    """One regex matching any of `patterns` whole; None when there are none."""
    if patterns is None:
        return None
    if not isinstance(patterns, list) or not all(isinstance(p, str) for p in patterns):
        raise Unauthorized(f"the token's herald.{action} claim must be a list of patterns")
    if not patterns:
        return None
    alternatives = (".*".join(re.escape(part) for part in p.split("*")) for p in patterns)
    return re.compile("|".join(f"(?:{a})" for a in alternatives))


@dataclass(frozen=True, slots=True)
class Grant:
    """What one verified token allows."""

    publish: re.Pattern[str] | None
    publish_presence: re.Pattern[str] | None
    """Online counts are Herald's: a `presence.` topic needs a pattern naming that prefix
    (`presence.*`), so that a broad `*` grant cannot fake them."""
    subscribe: re.Pattern[str] | None
    expires_at: float | None
    """Unix time of the token's `exp`: a stream it opened ends then."""
    subject: str | None
    """The token's `sub`: who the publish rate limit counts."""
    publisher: str
    """Whose Idempotency-Keys a publish uses: `sub:<sub>`, or the token itself when it
    has no `sub`, so one publisher's keys never answer another's requests."""

    def check_publish(self, topics: Iterable[str]) -> None:
        names = list(topics)
        _check(self.publish, "publish to", [t for t in names if not t.startswith(PRESENCE_PREFIX)])
        presence = [t for t in names if t.startswith(PRESENCE_PREFIX)]
        _check(
            self.publish_presence,
            f"publish to (a pattern starting with {PRESENCE_PREFIX!r} is needed)",
            presence,
        )

    def check_subscribe(self, topics: Iterable[str]) -> None:
        _check(self.subscribe, "subscribe to", topics)


def _check(pattern: re.Pattern[str] | None, action: str, topics: Iterable[str]) -> None:
    denied = sorted({t for t in topics if pattern is None or not pattern.fullmatch(t)})
    if denied:
        raise Forbidden(f"the token may not {action}: {', '.join(denied)}")


class Authenticator:
    """Verifies tokens with the one configured key and algorithm."""

    def __init__(self, settings: Settings) -> None:
        assert settings.jwt_key is not None
        self._key = settings.jwt_key.get_secret_value()
        self._algorithm = settings.jwt_algorithm
        self._cookie = settings.jwt_cookie

    @classmethod
    def of(cls, settings: Settings) -> Authenticator | None:
        return cls(settings) if settings.jwt_key is not None else None

    def publisher(self, request: Request) -> Grant:
        return self._verify(_bearer(request))

    def subscriber(self, request: Request) -> Grant:
        token = (
            _bearer(request)
            or request.cookies.get(self._cookie)
            or request.query_params.get(TOKEN_QUERY)
        )
        return self._verify(token)

    def _verify(self, token: str | None) -> Grant:
        if not token:
            raise Unauthorized("a token is required")
        try:
            claims = jwt.decode(token, self._key, algorithms=[self._algorithm])
        except jwt.ExpiredSignatureError:
            raise Unauthorized("the token has expired") from None
        except jwt.PyJWTError as exc:
            # Not only InvalidTokenError: a token naming HS256 against a public key
            # fails while the key is prepared (InvalidKeyError).
            raise Unauthorized(f"the token is not valid: {exc}") from None
        herald = claims.get("herald")
        if not isinstance(herald, dict):
            raise Unauthorized("the token has no herald claim")
        expires = claims.get("exp")
        subject = str(claims["sub"]) if "sub" in claims else None
        publish = herald.get("publish")
        publish_pattern = _pattern(publish, "publish")
        presence = [p for p in publish or () if p.startswith(PRESENCE_PREFIX)]
        return Grant(
            publish=publish_pattern,
            publish_presence=_pattern(presence, "publish"),
            subscribe=_pattern(herald.get("subscribe"), "subscribe"),
            expires_at=float(expires) if expires is not None else None,
            subject=subject,
            publisher=f"sub:{subject}" if subject is not None else f"token:{token}",
        )


def metrics_bearer(request: Request, expected: str) -> None:
    """401 unless the request carries `Authorization: Bearer <expected>`."""
    token = _bearer(request)
    if token is None:
        raise Unauthorized("/metrics needs the HERALD_METRICS_TOKEN bearer token")
    if not hmac.compare_digest(token.encode(), expected.encode()):
        raise Unauthorized("the /metrics token is not valid")


def _bearer(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None
