"""Stream ids and multi-topic cursors: what a client sends back as Last-Event-ID."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.encoding.cursor import (
    InvalidPosition,
    decode_cursor,
    encode_cursor,
    format_stream_id,
    next_stream_id,
    normalize_topics,
    parse_position,
    parse_stream_id,
    stream_id_of,
    topic_tag,
)

parts = st.integers(min_value=0, max_value=2**64 - 1)
stream_ids = st.tuples(parts, parts)
realistic_ids = st.tuples(
    st.integers(min_value=1_700_000_000_000, max_value=1_900_000_000_000),
    st.integers(min_value=0, max_value=50),
)
topic_names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,20}", fullmatch=True)
topic_lists = st.lists(topic_names, min_size=2, max_size=32, unique=True).map(normalize_topics)


@given(stream_ids)
def test_stream_ids_round_trip(sid: tuple[int, int]) -> None:
    text = format_stream_id(sid)
    assert parse_stream_id(text) == sid
    assert stream_id_of(text.encode()) == sid


@given(stream_ids)
def test_a_replay_starts_at_the_first_id_after_the_position(sid: tuple[int, int]) -> None:
    after = next_stream_id(sid)
    if sid == (2**64 - 1, 2**64 - 1):
        assert after is None
        return
    assert after is not None and after > sid
    # Nothing fits between: the replay neither repeats the position nor skips an id.
    ms, seq = after
    assert (seq == 0 and sid == (ms - 1, 2**64 - 1)) or sid == (ms, seq - 1)


def test_the_largest_id_has_nothing_after_it() -> None:
    largest = parse_stream_id("18446744073709551615-18446744073709551615")
    assert next_stream_id(largest) is None


@given(topic_lists, st.data())
def test_cursor_round_trips_every_position(topics: tuple[str, ...], data: st.DataObject) -> None:
    positions = data.draw(st.lists(stream_ids, min_size=len(topics), max_size=len(topics)))
    tag = topic_tag(topics)
    text = encode_cursor(tag, positions)
    assert decode_cursor(tag, len(topics), text) == positions
    assert parse_position(topics, text) == dict(zip(topics, positions, strict=True))


@given(topic_lists, st.data())
def test_cursor_is_safe_in_headers_urls_and_sse_ids(
    topics: tuple[str, ...], data: st.DataObject
) -> None:
    positions = data.draw(st.lists(stream_ids, min_size=len(topics), max_size=len(topics)))
    text = encode_cursor(topic_tag(topics), positions)
    assert set(text) <= set("0123456789abcdefghijklmnopqrstuvwxyz.-")


def test_cursor_of_live_topics_is_compact() -> None:
    topics = normalize_topics([f"stocks.S{i}" for i in range(32)])
    positions = [(1_732_200_000_000 + i, i % 3) for i in range(32)]
    text = encode_cursor(topic_tag(topics), positions)
    assert len(text) < 32 * 5
    assert decode_cursor(topic_tag(topics), 32, text) == positions


@given(topic_lists, st.text(max_size=200))
def test_garbage_is_refused_with_invalid_position_only(topics: tuple[str, ...], text: str) -> None:
    try:
        positions = parse_position(topics, text)
    except InvalidPosition:
        return
    assert set(positions) == set(topics)


@given(st.text(max_size=60))
def test_garbage_single_topic_ids_are_refused_with_invalid_position_only(text: str) -> None:
    try:
        sid = parse_stream_id(text)
    except InvalidPosition:
        return
    assert parse_stream_id(format_stream_id(sid)) == sid


@pytest.mark.parametrize(
    "text", ["abc", "1-2-3", "", "1732200000000", "-1-0", "1 -0", "18446744073709551616-0", "1_0-0"]
)
def test_malformed_stream_ids_are_refused(text: str) -> None:
    with pytest.raises(InvalidPosition):
        parse_stream_id(text)


def test_cursor_of_another_topic_set_is_refused() -> None:
    mine, other = normalize_topics(["a", "b"]), normalize_topics(["a", "c"])
    cursor = encode_cursor(topic_tag(other), [(5, 0), (6, 1)])
    with pytest.raises(InvalidPosition, match="different set of topics"):
        parse_position(mine, cursor)


def test_cursor_with_wrong_number_of_positions_is_refused() -> None:
    two = normalize_topics(["a", "b"])
    three = normalize_topics(["a", "b", "c"])
    cursor = encode_cursor(topic_tag(two), [(5, 0), (6, 0)])
    with pytest.raises(InvalidPosition):
        parse_position(three, cursor)


def test_topic_order_and_repeats_do_not_change_the_subscription() -> None:
    assert normalize_topics(["b", "a", "b"]) == ("a", "b")
    assert topic_tag(normalize_topics(["b", "a"])) == topic_tag(normalize_topics(["a", "b"]))


@given(st.lists(realistic_ids, min_size=2, max_size=32))
def test_realistic_positions_round_trip(positions: list[tuple[int, int]]) -> None:
    topics = normalize_topics([f"t{i}" for i in range(len(positions))])
    tag = topic_tag(topics)
    assert decode_cursor(tag, len(topics), encode_cursor(tag, positions)) == positions
