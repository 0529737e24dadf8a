"""Hypothesis against topic and event-type validation: the contract's rules, nothing else."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from service.app import create_app
from service.models import PublishEvent
from service.settings import Settings

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
    assert "detail" in answer.json() or "id" in answer.json()
