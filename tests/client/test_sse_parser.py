"""The SSE parser (service/client/sse_parser.py) follows the WHATWG event-stream
interpretation rules."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.sse import Event, SSEParser, parse


def feed_all(*chunks: bytes) -> tuple[SSEParser, list[Event]]:
    parser = SSEParser()
    events: list[Event] = []
    for chunk in chunks:
        events.extend(parser.feed(chunk))
    return parser, events


def test_named_event_with_id_and_data() -> None:
    events = parse([b'id: 1-0\nevent: tick\ndata: {"price":189.2}\n\n'])
    assert events == [Event(id="1-0", event="tick", data='{"price":189.2}')]


def test_event_type_defaults_to_message_and_id_to_none() -> None:
    assert parse([b"data: hi\n\n"]) == [Event(id=None, event="message", data="hi")]


def test_empty_event_field_means_message() -> None:
    assert parse([b"event:\ndata: x\n\n"]) == [Event(id=None, event="message", data="x")]


@pytest.mark.parametrize("newline", [b"\n", b"\r\n", b"\r"])
def test_every_line_ending_is_accepted(newline: bytes) -> None:
    stream = newline.join([b"id: 7-1", b"event: e", b"data: a", b"data: b", b"", b""])
    assert parse([stream]) == [Event(id="7-1", event="e", data="a\nb")]


def test_mixed_line_endings_in_one_stream() -> None:
    events = parse([b"data: a\r\ndata: b\rdata: c\n\r\ndata: d\r\r"])
    assert events == [Event(None, "message", "a\nb\nc"), Event(None, "message", "d")]


def test_crlf_split_across_chunks_is_one_line_ending() -> None:
    # If the LF after a chunk-final CR were a second line ending, the empty line
    # would dispatch "a" alone and "b" would become a separate event.
    parser, events = feed_all(b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n")
    assert events == [Event(None, "message", "a\nb")]
    assert parser.dispatched == 1


def test_cr_at_chunk_end_followed_by_another_line_is_a_line_ending() -> None:
    _, events = feed_all(b"data: a\r", b"data: b\r", b"\r")
    assert events == [Event(None, "message", "a\nb")]


def test_cr_at_chunk_end_then_empty_chunk_then_lf() -> None:
    _, events = feed_all(b"data: a\r", b"", b"\n\n")
    assert events == [Event(None, "message", "a")]


def test_event_is_dispatched_as_soon_as_its_blank_line_arrives() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: a\n") == []
    assert parser.feed(b"\n") == [Event(None, "message", "a")]


def test_only_one_leading_space_is_stripped() -> None:
    assert parse([b"data:  two spaces\ndata:none\n\n"]) == [
        Event(None, "message", " two spaces\nnone")
    ]


def test_a_field_without_colon_has_an_empty_value() -> None:
    assert parse([b"data\ndata\n\n"]) == [Event(None, "message", "\n")]


def test_a_value_may_contain_colons() -> None:
    assert parse([b"data: a: b:c\n\n"]) == [Event(None, "message", "a: b:c")]


def test_empty_data_line_dispatches_an_empty_string() -> None:
    assert parse([b"data:\n\n"]) == [Event(None, "message", "")]


def test_no_data_means_no_dispatch_and_event_type_is_reset() -> None:
    events = parse([b"event: ignored\n\ndata: x\n\n"])
    assert events == [Event(None, "message", "x")]


def test_comments_are_recorded_and_not_dispatched() -> None:
    parser, events = feed_all(b": heartbeat\n\n:no-space\n:\n\n")
    assert events == []
    assert parser.comments == ["heartbeat", "no-space", ""]


def test_comment_between_fields_does_not_interrupt_the_event() -> None:
    assert parse([b"data: a\n: ping\ndata: b\n\n"]) == [Event(None, "message", "a\nb")]


def test_unknown_fields_are_ignored() -> None:
    assert parse([b"foo: bar\ndata: x\nDATA: y\n\n"]) == [Event(None, "message", "x")]


def test_id_persists_across_events_until_changed() -> None:
    events = parse([b"id: 1\ndata: a\n\ndata: b\n\nid\ndata: c\n\n"])
    assert [e.id for e in events] == ["1", "1", ""]


def test_id_with_nul_is_ignored() -> None:
    events = parse([b"id: 5\ndata: a\n\nid: 6\x007\ndata: b\n\n"])
    assert [e.id for e in events] == ["5", "5"]


def test_last_event_id_is_updated_at_the_blank_line() -> None:
    parser = SSEParser()
    parser.feed(b"id: 9-0\n")
    assert parser.last_event_id is None
    parser.feed(b"\n")  # no data: nothing dispatched, but the id is now in force
    assert parser.last_event_id == "9-0"
    assert parser.feed(b"data: x\n\n") == [Event("9-0", "message", "x")]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"retry: 1500", 1500),
        (b"retry:0", 0),
        (b"retry: 15x0", None),
        (b"retry: -1", None),
        (b"retry: 1.5", None),
        (b"retry:", None),
        (b"retry:  15", None),
        ("retry: ١٢".encode(), None),  # non-ASCII digits
    ],
)
def test_retry_only_when_all_ascii_digits(line: bytes, expected: int | None) -> None:
    parser, _ = feed_all(line + b"\n\n")
    assert parser.retry == expected


def test_retry_records_how_many_events_came_before_it() -> None:
    parser, _ = feed_all(b"retry: 100\n\ndata: a\n\nretry: 200\n\n")
    assert parser.retry == 200
    assert parser.events_before_retry == 0
    late, _ = feed_all(b"data: a\n\nretry: 100\n\n")
    assert late.events_before_retry == 1


def test_bom_at_stream_start_is_stripped_once() -> None:
    bom = "\ufeff".encode()
    assert parse([bom + b"data: x\n\n"]) == [Event(None, "message", "x")]
    # A second BOM is part of the first line: the field name is then "\ufeffdata".
    assert parse([bom + bom + b"data: x\n\n"]) == []


def test_bom_split_across_chunks() -> None:
    bom = "\ufeff".encode()
    assert parse([bom[:1], bom[1:2], bom[2:] + b"data: x\n\n"]) == [Event(None, "message", "x")]


def test_bom_not_at_start_is_data() -> None:
    assert parse(["data: \ufeffx\n\n".encode()]) == [Event(None, "message", "\ufeffx")]


def test_utf8_split_inside_a_character() -> None:
    raw = "data: wörld 🌍\n\n".encode()
    chunks = [raw[i : i + 1] for i in range(len(raw))]
    assert parse(chunks) == [Event(None, "message", "wörld 🌍")]


def test_invalid_utf8_becomes_replacement_character() -> None:
    assert parse([b"data: a\xffb\n\n"]) == [Event(None, "message", "a\ufffdb")]


def test_unterminated_event_at_end_of_stream_is_discarded() -> None:
    assert parse([b"data: a\n\ndata: b\n"]) == [Event(None, "message", "a")]
    assert parse([b"data: a\n\ndata: b"]) == [Event(None, "message", "a")]


STREAM = (
    "\ufeffretry: 2000\r\n\r\n: hi\n"
    "id: 1-0\nevent: tick\ndata: héllo\ndata: wörld 🌍\r\n\r"
    "data:  x\rid: 2\x003\n\nid\ndata\n\n"
    "event: e\ndata: last\n\n"
).encode()
STREAM_EVENTS = [
    Event("1-0", "tick", "héllo\nwörld 🌍"),
    Event("1-0", "message", " x"),
    Event("", "message", ""),
    Event("", "e", "last"),
]


def test_reference_stream() -> None:
    parser, events = feed_all(STREAM)
    assert events == STREAM_EVENTS
    assert parser.comments == ["hi"]
    assert parser.retry == 2000


@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=20))
def test_any_chunking_gives_the_same_events(cuts: list[int]) -> None:
    bounds = [0, *sorted(cuts), len(STREAM)]
    chunks = [STREAM[a:b] for a, b in itertools.pairwise(bounds)]
    parser, events = feed_all(*chunks)
    assert events == STREAM_EVENTS
    assert parser.comments == ["hi"]
    assert parser.retry == 2000


@given(
    st.lists(
        st.tuples(
            st.text(
                alphabet=st.characters(codec="utf-8", exclude_characters="\r\n\0"), max_size=20
            ),
            st.lists(
                st.text(
                    alphabet=st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=20
                ),
                min_size=1,
                max_size=4,
            ),
        ),
        max_size=5,
    ),
    st.sampled_from(["\n", "\r\n", "\r"]),
    st.integers(min_value=1, max_value=7),
)
def test_encoded_events_round_trip(
    spec: list[tuple[str, list[str]]], newline: str, chunk_size: int
) -> None:
    text = ""
    for event_id, lines in spec:
        text += f"id: {event_id}{newline}"
        text += "".join(f"data: {line}{newline}" for line in lines)
        text += newline
    raw = text.encode()
    chunks = [raw[i : i + chunk_size] for i in range(0, len(raw), chunk_size)]
    events = parse(chunks)
    assert [(e.id, e.data) for e in events] == [(i, "\n".join(lines)) for i, lines in spec]
