"""Mercure topic matchers (pure functions): which topics a matcher selects.

Three kinds: `exact` (byte for byte) and `urlpattern` (the URL Pattern standard, relative
patterns and topics resolved against the hub's URL) from the current protocol, and v0's
`template` (exact, or an RFC 6570 URI template). The matcher value `*` selects every topic,
whatever its kind. URL patterns run on Rust's regex engine and templates on RE2: both match
in linear time, so a crafted matcher cannot stall the hub (the spec requires one or the other).
"""

from __future__ import annotations

import functools
import posixpath
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import unquote, urljoin, urlsplit

import re2
from urlpattern import URLPattern

Kind = Literal["exact", "urlpattern", "template"]

WILDCARD = "*"
FALLBACK_HUB_URL = "http://mercure.invalid/.well-known/mercure"
"""The base URL when none is configured (`.invalid` is reserved, RFC 6761)."""


class InvalidMatcher(ValueError):
    """A matcher value its kind cannot use."""


@dataclass(frozen=True, slots=True)
class Matcher:
    kind: Kind
    pattern: str


def valid_protocol_string(text: str) -> bool:
    """No C0 or C1 control character, no DEL, no Unicode format character (category Cf).

    Topics, matchers, ids and types share this rule: such characters could break an SSE
    line or hide in an identifier.
    """
    for char in text:
        code = ord(char)
        if code <= 0x1F or 0x7F <= code <= 0x9F or unicodedata.category(char) == "Cf":
            return False
    return True


def check(matcher: Matcher, base: str) -> None:
    """Raise `InvalidMatcher` unless `matcher` can be evaluated."""
    if not valid_protocol_string(matcher.pattern):
        raise InvalidMatcher("a matcher must not contain control or format characters")
    if matcher.kind == "urlpattern" and matcher.pattern != WILDCARD:
        _url_pattern(matcher.pattern, base)


def matches(matcher: Matcher, topic: str, base: str) -> bool:
    """Whether `matcher` selects `topic`."""
    if matcher.pattern == WILDCARD or matcher.pattern == topic:
        return True
    if matcher.kind == "urlpattern":
        return _url_pattern_matches(matcher.pattern, topic, base)
    if matcher.kind == "template":
        regex = _template(matcher.pattern)
        return regex is not None and regex.fullmatch(topic) is not None
    return False


def any_matches(matchers: Iterable[Matcher], topics: Iterable[str], base: str) -> bool:
    """Whether some matcher selects some topic."""
    topics = tuple(topics)
    return any(matches(m, t, base) for m in matchers for t in topics)


def in_namespace(topic: str, hub_path: str) -> bool:
    """Whether `topic`, resolved against the hub's URL, addresses the hub's own namespace.

    The path is compared after removing dot segments and decoding percent-encoded
    unreserved characters, so `/.well-known/%6Dercure/x` and `/a/../.well-known/mercure` are
    caught too. A topic that cannot be resolved names no hub path.
    """
    try:
        path = urlsplit(urljoin("http://hub.invalid" + hub_path, topic)).path
    except ValueError:
        return False
    path = _decode_unreserved(path)
    normalised = posixpath.normpath(path) if path else "/"
    if path.endswith("/") and normalised != "/":
        normalised += "/"
    hub = hub_path.rstrip("/") or "/"
    return normalised == hub or normalised.startswith(hub.rstrip("/") + "/")


_UNRESERVED_ESCAPE = re.compile(r"%(?:[46][1-9A-Fa-f]|[57][0-9Aa]|3[0-9]|2[Dd]|2[Ee]|5[Ff]|7[Ee])")


def _decode_unreserved(path: str) -> str:
    return _UNRESERVED_ESCAPE.sub(lambda m: unquote(m.group(0)), path)


@functools.lru_cache(maxsize=1024)
def _url_pattern(pattern: str, base: str) -> URLPattern:
    try:
        return URLPattern(pattern, base)
    except ValueError:
        raise InvalidMatcher(f"{pattern[:200]!r} is not a valid URL pattern") from None


@functools.lru_cache(maxsize=65536)
def _url_pattern_matches(pattern: str, topic: str, base: str) -> bool:
    try:
        return _url_pattern(pattern, base).test(topic, base)
    except ValueError:
        # A matcher that is invalid or a topic that is not a URL reference: no match.
        return False


# RFC 6570: what an expression's values may contain, by operator.
_UNRESERVED = r"A-Za-z0-9\-._~"
_RESERVED = r":/?#\[\]@!$&'()*+,;="
_PCT = r"%[0-9A-Fa-f]{2}"
_EXPRESSION = re.compile(r"\{([^{}]*)\}")
_VARSPEC = re.compile(r"(?:[A-Za-z0-9_]|%[0-9A-Fa-f]{2})(?:\.?(?:[A-Za-z0-9_]|%[0-9A-Fa-f]{2}))*")
_MODIFIER = re.compile(r"(?::[1-9][0-9]{0,3}|\*)?")
# operator: (first character, separator, named, reserved characters allowed)
_OPERATORS: dict[str, tuple[str, str, bool, bool]] = {
    "": ("", ",", False, False),
    "+": ("", ",", False, True),
    "#": ("#", ",", False, True),
    ".": (".", ".", False, False),
    "/": ("/", "/", False, False),
    ";": (";", ";", True, False),
    "?": ("?", "&", True, False),
    "&": ("&", "&", True, False),
}


@functools.lru_cache(maxsize=4096)
def _template(template: str) -> Any:
    """The RE2 expression matching every expansion of `template`; None if it is not one
    (RE2 comes without type information)."""
    parts: list[str] = []
    end = 0
    for match in _EXPRESSION.finditer(template):
        literal = template[end : match.start()]
        if "{" in literal or "}" in literal:
            return None
        parts.append(re.escape(literal))
        expression = _expression(match.group(1))
        if expression is None:
            return None
        parts.append(expression)
        end = match.end()
    if not parts:
        return None
    rest = template[end:]
    if "{" in rest or "}" in rest:
        return None
    parts.append(re.escape(rest))
    return re2.compile("".join(parts))


def _expression(body: str) -> str | None:
    operator = body[:1] if body[:1] in "+#./;?&" else ""
    first, separator, named, reserved = _OPERATORS[operator]
    for varspec in body[len(operator) :].split(","):
        name = _VARSPEC.match(varspec)
        if name is None or not _MODIFIER.fullmatch(varspec[name.end() :]):
            return None
    chars = _UNRESERVED + (_RESERVED if reserved else "")
    # Values may be lists (joined by commas) or exploded pairs (`k=v`).
    value = f"(?:[{chars},=]|{_PCT})*"
    if named:
        value = f"(?:[{_UNRESERVED}]|{_PCT})+(?:=(?:[{chars},]|{_PCT})*)?"
    sep = re.escape(separator)
    return f"(?:{re.escape(first)}{value}(?:{sep}{value})*)?"
