"""GS1's official EPCIS examples (CONFORMANCE_DIR/epcis/JSON) posted to POST /capture of the running stack,
on the real broker and database."""

from __future__ import annotations

import httpx
import pytest

from tests.conformance.material import EPCIS_DIR
from tests.e2e.conftest import COURIER, RunningStack

pytestmark = pytest.mark.e2e
EXAMPLES = EPCIS_DIR / "JSON"


async def test_every_official_example_is_accepted_or_refused_with_a_reason_over_http(
    stack: RunningStack, http: httpx.AsyncClient
) -> None:
    examples = sorted(p for p in EXAMPLES.rglob("*") if p.suffix in (".json", ".jsonld"))
    assert len(examples) >= 30
    for path in examples:
        response = await http.post(
            f"{stack.tracking}/capture",
            content=path.read_bytes(),
            headers={
                **COURIER,
                "Content-Type": "application/ld+json",
                "GS1-Capture-Error-Behaviour": "proceed",
            },
        )
        assert response.status_code in (202, 400), (path.name, response.text)
        body = response.json()
        if response.status_code == 400:
            assert body["errors"], path.name
            continue
        assert body["events"], path.name
        for event in body["events"]:
            assert event["outcome"] in ("applied", "refused") and (
                event["outcome"] == "applied" or event["reason"]
            ), (path.name, event)
