"""Property-based API test: schemathesis generates requests from each service's own OpenAPI (valid ones and
invalid ones) and sends each with every role's token to a stack of its own. Every answer must be a
documented status, of a documented content type, matching the documented schema, and never a 5xx.

Examples are derandomized (the same every run) and bounded per operation, so the suite stays in its time
and a failure is reproducible. A webhook URL drawn by the generator is replaced by a loopback address that
nothing listens on, so nothing is ever sent off this machine."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Err
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.e2e.conftest import RunningStack, running_stack

pytestmark = pytest.mark.e2e
ROLES = {
    "coordinator": "dev-coordinator-token",
    "courier": "dev-courier-token",
    "treatment_center": "dev-center-token",
    "qa": "dev-qa-token",
}
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
EXAMPLES_PER_OPERATION = 12
LOOPBACK_SINK = "http://127.0.0.1:9/never-listening"


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def fuzzed_stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningStack]:
    """A stack of its own: what the generator creates (sites, orders) never meets the journeys' data."""
    backend: str = request.param
    with running_stack(backend, tmp_path_factory.mktemp(f"fuzz-{backend}")) as running:
        yield running


def keep_on_loopback(case: Any) -> None:
    """A webhook's `url` and a FHIR Subscription's `channel.endpoint` go to the sink."""
    if isinstance(case.body, dict) and isinstance(case.body.get("url"), str):
        case.body["url"] = LOOPBACK_SINK
    channel = case.body.get("channel") if isinstance(case.body, dict) else None
    if isinstance(channel, dict) and isinstance(channel.get("endpoint"), str):
        channel["endpoint"] = LOOPBACK_SINK


def failures_of(url: str) -> list[str]:
    """Every operation of the service at `url`, in both generation modes, with every role's token."""
    schema = schemathesis.openapi.from_dict(httpx.get(f"{url}/openapi.json", timeout=10).json())
    failures: list[str] = []
    for result in schema.get_all_operations():
        if isinstance(result, Err):
            failures.append(f"an operation the generator cannot read: {result.err()}")
            continue
        operation = result.ok()
        strategy = st.one_of(
            operation.as_strategy(generation_mode=GenerationMode.POSITIVE),
            operation.as_strategy(generation_mode=GenerationMode.NEGATIVE),
        )

        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            derandomize=True,
            phases=[Phase.explicit, Phase.generate],  # no shrinking: the first failing example is reported
            database=None,
            deadline=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=strategy)
        def call_as_every_role(case: Any) -> None:
            keep_on_loopback(case)
            for role, token in ROLES.items():
                response = case.call(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
                try:
                    case.validate_response(response, checks=CHECKS)
                except (AssertionError, BaseExceptionGroup) as error:
                    raise AssertionError(f"as {role}: {error}") from error

        try:
            call_as_every_role()
        except (Exception, BaseExceptionGroup) as error:
            failures.append(f"{operation.label}: {error}")
    return failures


@pytest.mark.parametrize("service", ["orders", "tracking", "scheduling"])
def test_every_operation_answers_as_documented_for_every_role(
    fuzzed_stack: RunningStack, service: str
) -> None:
    url: str = getattr(fuzzed_stack, service)
    failures = failures_of(url)
    assert not failures, "\n\n".join(failures)
