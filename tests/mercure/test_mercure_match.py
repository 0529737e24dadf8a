"""Mercure topic matchers, ids and request parsing: pure functions, with properties."""

from __future__ import annotations

import time
from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.errors import BadRequest, PayloadTooLarge
from service.mercure.form import parse_matchers, parse_pairs, parse_update
from service.mercure.ids import InvalidId, check_publisher_id, decode_hub_id, hub_id
from service.mercure.match import (
    FALLBACK_HUB_URL,
    InvalidMatcher,
    Matcher,
    check,
    in_namespace,
    matches,
    valid_protocol_string,
)

BASE = FALLBACK_HUB_URL
HUB_PATH = "/.well-known/mercure"
KINDS = ("exact", "urlpattern", "template")

printable_topics = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=60
).filter(lambda t: t != "*")
segments = st.text("abcdefghijklmnopqrstuvwxyz0123456789-._~", min_size=1, max_size=20).filter(
    lambda s: s not in (".", "..")
)


@given(st.sampled_from(KINDS), printable_topics)
def test_the_wildcard_selects_every_topic_whatever_the_kind(kind: str, topic: str) -> None:
    assert matches(Matcher(kind, "*"), topic, BASE)  # type: ignore[arg-type]


@given(printable_topics, printable_topics)
def test_exact_matching_is_equality(pattern: str, topic: str) -> None:
    assert matches(Matcher("exact", pattern), topic, BASE) == (pattern == topic)


@given(printable_topics.filter(lambda t: "{" not in t and "}" not in t), printable_topics)
def test_a_v0_selector_without_expressions_is_exact(selector: str, topic: str) -> None:
    assert matches(Matcher("template", selector), topic, BASE) == (selector == topic)


@given(segments, st.text(min_size=0, max_size=12))
def test_a_v0_template_matches_its_expansions(prefix: str, value: str) -> None:
    template = Matcher("template", f"https://example.com/{prefix}/{{id}}.jsonld")
    expanded = f"https://example.com/{prefix}/{quote(value, safe='')}.jsonld"
    assert matches(template, expanded, BASE)
    assert not matches(template, f"https://example.com/{prefix}x/{value}.jsonld", BASE)


@pytest.mark.parametrize(
    ("template", "expansion"),
    [
        # RFC 6570's own examples (section 3.2), var="value", hello="Hello World!",
        # path="/foo/bar", x=1024, y=768, list=("red","green","blue").
        ("{var}", "value"),
        ("{hello}", "Hello%20World%21"),
        ("{+path}/here", "/foo/bar/here"),
        ("here?ref={+path}", "here?ref=/foo/bar"),
        ("{#path,x}/here", "#/foo/bar,1024/here"),
        ("X{.var}", "X.value"),
        ("{/var,x}/here", "/value/1024/here"),
        ("{;x,y}", ";x=1024;y=768"),
        ("{?x,y}", "?x=1024&y=768"),
        ("?fixed=yes{&x}", "?fixed=yes&x=1024"),
        ("{list}", "red,green,blue"),
        ("{/list*}", "/red/green/blue"),
        ("{var:3}", "val"),
        ("map{?undefined}", "map"),
    ],
)
def test_v0_templates_match_the_rfc_examples(template: str, expansion: str) -> None:
    assert matches(Matcher("template", template), expansion, BASE)


def test_a_template_segment_does_not_cross_a_slash() -> None:
    matcher = Matcher("template", "https://example.net/foo/{random}")
    assert matches(matcher, "https://example.net/foo/abc", BASE)
    assert not matches(matcher, "https://example.net/foo/abc/def", BASE)
    assert not matches(
        Matcher("template", "https://example.net/bar/{var}"), "https://example.net/foo/x}", BASE
    )


@given(segments)
def test_a_url_pattern_matches_one_path_segment(segment: str) -> None:
    pattern = Matcher("urlpattern", "https://example.com/books/:id")
    assert matches(pattern, f"https://example.com/books/{segment}", BASE)
    assert not matches(pattern, f"https://example.com/books/{segment}/more", BASE)
    assert not matches(pattern, f"https://example.com/films/{segment}", BASE)


def test_url_patterns_resolve_relative_patterns_and_topics_against_the_hub() -> None:
    base = "https://hub.example/.well-known/mercure"
    pattern = Matcher("urlpattern", "/books/:id")
    assert matches(pattern, "https://hub.example/books/1", base)
    assert matches(pattern, "/books/1", base)
    assert not matches(pattern, "https://other.example/books/1", base)


def test_a_topic_that_is_no_url_never_matches_a_url_pattern() -> None:
    assert not matches(Matcher("urlpattern", "https://example.com/:x"), "http://[::1", BASE)


def test_url_patterns_are_case_sensitive_but_hosts_are_not() -> None:
    pattern = Matcher("urlpattern", "https://example.com/Books/:id")
    assert matches(pattern, "https://EXAMPLE.com/Books/1", BASE)
    assert not matches(pattern, "https://example.com/books/1", BASE)


def test_a_pathological_url_pattern_is_refused_or_matches_in_linear_time() -> None:
    # Rust's regex engine (behind urlpattern) and RE2 cannot backtrack: both answer at once.
    started = time.process_time()
    with pytest.raises(InvalidMatcher):
        check(Matcher("urlpattern", "https://example.com/(((a+)+)+)b"), BASE)
    template = Matcher("template", "{a}{b}{c}{d}{e}{f}{g}{h}x")
    assert not matches(template, "a" * 20_000, BASE)
    assert time.process_time() - started < 5


@given(
    st.text(max_size=30), st.sampled_from(["\x00", "\n", "\r", "\x7f", "\x85", "\u200b", "\u202e"])
)
def test_control_and_format_characters_are_refused(text: str, bad: str) -> None:
    assert not valid_protocol_string(text + bad)


@pytest.mark.parametrize(
    ("topic", "reserved"),
    [
        ("/.well-known/mercure", True),
        ("/.well-known/mercure/subscriptions/x", True),
        ("https://other.example/.well-known/mercure/subscriptions", True),
        ("/.well-known/%6Dercure/x", True),
        ("/a/../.well-known/mercure", True),
        ("mercure/x", True),  # relative: resolved against the hub's URL
        ("https://example.com/.well-known/mercurex", False),
        ("https://example.com/books/1", False),
        ("raw-string", False),
    ],
)
def test_the_hub_namespace_is_found_after_resolution(topic: str, reserved: bool) -> None:
    assert in_namespace(topic, HUB_PATH) is reserved


@given(st.tuples(st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1)))
def test_hub_ids_decode_to_their_position(position: tuple[int, int]) -> None:
    text = hub_id(position)
    assert text.startswith("urn:herald:")
    assert decode_hub_id(text) == position


@pytest.mark.parametrize("text", ["my-id", "urn:uuid:e1ee88e2", "https://example.com/1"])
def test_publisher_ids_are_not_hub_ids(text: str) -> None:
    assert decode_hub_id(text) is None
    check_publisher_id(text)


@pytest.mark.parametrize("text", ["#1", "earliest", "urn:herald:1-0", "a\nb", "a\u200bb"])
def test_publisher_ids_the_hub_refuses(text: str) -> None:
    with pytest.raises(InvalidId):
        check_publisher_id(text)


def form(**fields: str | list[str]) -> list[tuple[str, str]]:
    pairs = []
    for name, value in fields.items():
        for one in value if isinstance(value, list) else [value]:
            pairs.append((name, one))
    return pairs


def test_an_update_keeps_its_topics_in_order_and_private_whatever_its_value() -> None:
    update = parse_update(
        form(
            topic=["https://a/1", "https://a/2"], data="x", private="", id="i", type="t", retry="5"
        ),
        1000,
        HUB_PATH,
    )
    assert update.topics == ("https://a/1", "https://a/2")
    assert (update.private, update.id, update.type, update.retry) == (True, "i", "t", 5)


@pytest.mark.parametrize(
    ("fields", "status"),
    [
        ({"data": "x"}, 400),
        ({"topic": "*"}, 400),
        ({"topic": "/.well-known/mercure/subscriptions/x"}, 400),
        ({"topic": "a\rb"}, 400),
        ({"topic": "a", "type": "mercure"}, 400),
        ({"topic": "a", "type": "a\nid: x"}, 400),
        ({"topic": "a", "id": "earliest"}, 400),
        ({"topic": "a", "retry": "1s"}, 400),
        ({"topic": "a", "retry": "١٢"}, 400),  # Unicode digits are not ASCII digits
        ({"topic": "a", "data": "x" * 1001}, 413),
        ({"topic": ["t"] * 101}, 413),
    ],
)
def test_bad_updates_are_refused_with_the_right_status(
    fields: dict[str, str | list[str]], status: int
) -> None:
    with pytest.raises((BadRequest, PayloadTooLarge)) as refused:
        parse_update(form(**fields), 1000, HUB_PATH)
    assert refused.value.status == status


def test_form_values_must_be_utf8() -> None:
    assert parse_pairs(b"topic=caf%C3%A9&data=a+b") == [("topic", "café"), ("data", "a b")]
    with pytest.raises(BadRequest):
        parse_pairs(b"topic=%FF")


def test_subscribe_parameters_choose_the_matcher_kind() -> None:
    pairs = parse_pairs(
        b"match=a&match_exact=b&match_urlpattern=https%3A%2F%2Fx%2F%3Aid&topic=c%7Bd%7D&other=1"
    )
    assert parse_matchers(pairs, BASE) == [
        Matcher("exact", "a"),
        Matcher("exact", "b"),
        Matcher("urlpattern", "https://x/:id"),
        Matcher("template", "c{d}"),
    ]


@pytest.mark.parametrize(
    "query",
    [
        b"other=1",
        b"match_regex=a",
        b"Match=a",
        b"match_urlpattern=https%3A%2F%2Fx%2F(",
        b"match=a%0Ab",
        b"match=" + b"a" * 4097,
        b"&".join([b"match=a"] * 101),
    ],
)
def test_bad_subscriptions_are_refused(query: bytes) -> None:
    with pytest.raises(BadRequest):
        parse_matchers(parse_pairs(query), BASE)
