"""SSE encoding: what an EventSource makes of the bytes Herald writes."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from service.encoding import sse
from tests.sse import parse

event_names = st.from_regex(r"[A-Za-z][A-Za-z0-9._-]{0,63}", fullmatch=True)
# Any text at all, line breaks of every kind included.
texts = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=300)


def normalised(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


@given(event_names, texts)
def test_event_source_receives_the_data_with_line_breaks_as_lf(name: str, text: str) -> None:
    frame = sse.frame(b"1-0", sse.body(name.encode(), text.encode()))
    (event,) = parse([frame])
    assert event.event == name
    assert event.id == "1-0"
    assert event.data == normalised(text)


@given(st.lists(st.tuples(event_names, texts), min_size=1, max_size=10), st.data())
def test_frames_concatenated_into_one_chunk_are_separate_events(
    events: list[tuple[str, str]], data: st.DataObject
) -> None:
    stream = b"".join(
        sse.frame(f"{i}-0".encode(), sse.body(n.encode(), t.encode()))
        for i, (n, t) in enumerate(events)
    )
    cut = data.draw(st.integers(min_value=0, max_value=len(stream)))
    parsed = parse([stream[:cut], stream[cut:]])
    assert [(e.id, e.event, e.data) for e in parsed] == [
        (f"{i}-0", n, normalised(t)) for i, (n, t) in enumerate(events)
    ]


@given(st.binary(max_size=80))
def test_an_entry_event_field_never_breaks_a_line(raw: bytes) -> None:
    body = sse.entry_body({b"event": raw, b"data": b"x"})
    (event,) = parse([body])
    assert event.data == "x"
    assert event.event in (raw.decode("utf-8", "replace"), "message")
    assert not event.event.startswith("herald.")


@given(st.from_regex(r"herald\.[A-Za-z0-9._-]{0,56}", fullmatch=True))
def test_an_entry_cannot_pass_for_one_of_heralds_own_events(name: str) -> None:
    (event,) = parse([sse.entry_body({b"event": name.encode(), b"data": b"{}"})])
    assert event.event == "message"


def test_entries_without_event_or_data_are_plain_empty_messages() -> None:
    (event,) = parse([sse.entry_body({})])
    assert (event.event, event.data) == ("message", "")


@given(st.text(max_size=100))
def test_comments_are_one_line_and_carry_no_event(text: str) -> None:
    encoded = sse.comment(text)
    assert encoded.count(b"\n") == 2 and encoded.endswith(b"\n\n")
    assert b"\r" not in encoded
    assert parse([encoded]) == []


def test_retry_field_sets_the_reconnection_delay() -> None:
    assert sse.retry(2500) == b"retry: 2500\n\n"


def test_encode_entry_keeps_position_body_and_whole_frame() -> None:
    frame = sse.encode_entry(b"1732200000000-7", {b"event": b"tick", b"data": b'{"p":1}'})
    assert frame.sid == (1_732_200_000_000, 7)
    assert frame.data == b'id: 1732200000000-7\nevent: tick\ndata: {"p":1}\n\n'
    assert frame.data.endswith(frame.body)
