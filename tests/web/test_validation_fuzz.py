"""Hypothesis against topic and event-type validation: the contract's rules, nothing else,
and the fast check of publishes against the model it stands in for."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Annotated

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from pydantic import Field, TypeAdapter, ValidationError
from pydantic_core import from_json

from service.errors import Invalid
from service.models import Entry, PublishEvent, entry_of
from service.publish.body import parse_event, parse_events
from service.settings import Settings
from service.web.app import create_app

# DESIGN.md's words, written out again here so the test does not reuse the code's regex.
TOPIC = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}", re.ASCII)
EVENT = re.compile(r"[A-Za-z][A-Za-z0-9._-]{0,63}", re.ASCII)

names = st.one_of(
    st.text(max_size=140),
    st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,130}", fullmatch=True),
)


def accepted(**fields: object) -> bool:
    try:
        PublishEvent.model_validate(fields)
    except ValidationError:
        return False
    return True


@given(names)
def test_a_topic_is_accepted_exactly_when_the_contract_says(topic: str) -> None:
    assert accepted(topic=topic) == bool(TOPIC.fullmatch(topic))


@given(names)
def test_an_event_type_is_accepted_exactly_when_the_contract_says(event: str) -> None:
    allowed = bool(EVENT.fullmatch(event)) and not event.startswith("herald.")
    assert accepted(topic="t", event=event) == allowed


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with TestClient(create_app(Settings())) as c:
        yield c


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    body=st.dictionaries(
        st.sampled_from(["topic", "event", "data", "x"]) | st.text(max_size=6),
        json_values,
        max_size=4,
    )
)
def test_any_json_object_gets_200_or_422_never_a_server_error(
    client: TestClient, body: dict[str, object]
) -> None:
    answer = client.post("/publish", json=body)
    assert answer.status_code in (200, 422), answer.text
    if answer.status_code == 200:
        assert answer.json() == {"topic": body["topic"], "id": answer.json()["id"]}
    else:
        assert "detail" in answer.json()


# Documents near the valid ones, and the JSON a client may send by mistake: names that
# are not strings, NaN and huge numbers (`json.dumps` writes them as JSON does not).
event_fields = st.fixed_dictionaries(
    {},
    optional={
        "topic": names | json_values,
        "event": names | st.sampled_from(["message", "tick", "herald.x"]) | json_values,
        "data": json_values | st.sampled_from([float("nan"), float("inf"), 10**30, 1e300]),
        "extra": json_values,
    },
)
documents = st.one_of(
    event_fields.map(json.dumps),
    event_fields.map(lambda fields: json.dumps(fields, ensure_ascii=False)),
    st.lists(event_fields, max_size=3).map(json.dumps),
    st.text(max_size=40),
).map(str.encode) | st.binary(max_size=40)


def pydantic_entry(document: bytes) -> Entry | None:
    try:
        event = PublishEvent.model_validate_json(document)
    except ValidationError:
        return None
    return Entry(event.topic, event.event, event.text)


@settings(max_examples=600)
@given(documents)
@example(b'{"topic":"t","data":"\\ud800"}')  # a lone surrogate
@example(b'{"topic":"t","data":' + b"[" * 300 + b"]" * 300 + b"}")  # past the depth limit
@example(b'{"topic":"t\\n"}')
@example(b'{"topic":"t","topic":"u"}')
@example(b'{"topic":"t","data":1e400}')
@example(b'{"topic":"t","data":123456789012345678901234567890}')
def test_the_fast_event_check_agrees_with_the_model(document: bytes) -> None:
    expected = pydantic_entry(document)
    try:
        fast = entry_of(from_json(document))
    except ValueError:
        fast = None
    # Where the fast check accepts, the model accepts the same event; it may only be
    # more cautious (then the model validates, and gives the errors).
    assert fast is None or fast == expected
    if expected is None:
        with pytest.raises(Invalid):
            parse_event(document)
    else:
        assert parse_event(document) == expected


@given(
    topic=st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}", fullmatch=True),
    event=st.from_regex(r"[A-Za-z][A-Za-z0-9._-]{0,63}", fullmatch=True),
    data=json_values,
)
def test_the_fast_event_check_takes_every_ordinary_event(
    topic: str, event: str, data: object
) -> None:
    assume(not event.startswith("herald."))
    document = json.dumps({"topic": topic, "event": event, "data": data}).encode()
    assert entry_of(from_json(document)) == pydantic_entry(document) is not None


BATCH = TypeAdapter(Annotated[list[PublishEvent], Field(min_length=1)])


@settings(max_examples=300)
@given(st.lists(event_fields, max_size=4).map(json.dumps).map(str.encode))
def test_a_batch_gets_the_events_or_the_errors_the_model_gives(document: bytes) -> None:
    try:
        expected = [Entry(e.topic, e.event, e.text) for e in BATCH.validate_json(document)]
    except ValidationError as exc:
        with pytest.raises(Invalid) as refused:
            parse_events(document, Settings())
        assert refused.value.detail == exc.errors(
            include_url=False, include_context=False, include_input=False
        )
    else:
        assert parse_events(document, Settings()) == (expected, True)
