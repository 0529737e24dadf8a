"""Schemathesis against the publish API's OpenAPI schema, on a real process: no 5xx."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from tests.conftest import Herald

pytestmark = pytest.mark.integration


@pytest.fixture
def publish_api(default_herald: Herald) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{default_herald.url}/openapi.json")


# /events is left out: a stream that never ends is its contract.
schema = schemathesis.pytest.from_fixture("publish_api").include(path="/publish")


@schema.parametrize()
@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
def test_generated_publishes_never_get_a_server_error(case: schemathesis.Case) -> None:
    case.call_and_validate(checks=[not_a_server_error], timeout=10)
