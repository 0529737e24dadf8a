"""Schemathesis against the publish API's OpenAPI schema, on a real process: no 5xx."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from tests.conftest import Herald

pytestmark = pytest.mark.integration


def test_generated_publishes_never_get_a_server_error(default_herald: Herald) -> None:
    schema = schemathesis.openapi.from_url(f"{default_herald.url}/openapi.json")
    # Only /publish: /events is a stream that never ends, by contract.
    publish = schema["/publish"]["POST"]

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(case=publish.as_strategy())
    def publish_anything(case: schemathesis.Case) -> None:
        case.call_and_validate(checks=[not_a_server_error], timeout=10)

    publish_anything()


def test_generated_mercure_updates_never_get_a_server_error(default_herald: Herald) -> None:
    schema = schemathesis.openapi.from_url(f"{default_herald.url}/openapi.json")
    publish = schema["/.well-known/mercure"]["POST"]

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(case=publish.as_strategy())
    def publish_anything(case: schemathesis.Case) -> None:
        case.call_and_validate(checks=[not_a_server_error], timeout=10)

    publish_anything()
