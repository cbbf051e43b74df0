"""QA signatures with a second identification component (21 CFR Part 11 §11.200(a)(1), §11.300(d)) on the
real stack: the signing PIN is checked at every disposition, a wrong or missing one signs nothing and is
logged without the PIN, five wrong ones in a row block the signer until a coordinator resets the enrolment.

qa-jr (dev-qa-token) has the PIN `make up` seeds; qa-mk (dev-qa2-token) starts with none."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import pytest

from deploy.observe import EventLog
from services.common.development import DEV_QA_SIGNING_PIN
from tests.e2e.conftest import COORDINATOR, COURIER, QA, RunningStack
from tests.e2e.journey import place_accepted_order, scan, shipment_for

pytestmark = pytest.mark.e2e
QA_2 = {"Authorization": "Bearer dev-qa2-token"}
SIGNATURE_REFUSED = "urn:cgt:problem:signature-refused"
WRONG_PIN = "13572468"


async def quarantined_shipment(http: httpx.AsyncClient, stack: RunningStack, events: EventLog) -> str:
    order = await place_accepted_order(http, stack)
    shipment: str = (await shipment_for(http, stack, events, order["coi"]))["id"]
    warm = scan("pick_up", [order["coi"]], temperature=-90.0)
    picked_up = await http.post(f"{stack.tracking}/shipments/{shipment}/scans", json=warm, headers=COURIER)
    assert picked_up.json()["quarantined"] is True, picked_up.text
    return shipment


def release(pin: str) -> dict[str, Any]:
    return {
        "decision": "release",
        "reason_code": "product_within_limits",
        "note": "logger spike during courier swap; product probe stayed below -150 °C",
        "meaning": "approval",
        "signing_pin": pin,
    }


async def dispositions(http: httpx.AsyncClient, stack: RunningStack, shipment: str) -> list[Any]:
    listed = await http.get(f"{stack.tracking}/shipments/{shipment}/dispositions", headers=QA)
    assert listed.status_code == 200, listed.text
    return list(listed.json())


def assert_refused(response: httpx.Response, refusal: str, pin: str) -> None:
    assert response.status_code == 403, response.text
    problem = response.json()
    assert response.headers["content-type"].startswith("application/problem+json")
    assert problem["type"] == SIGNATURE_REFUSED and problem["refusal"] == refusal, problem
    assert pin not in response.text  # never echoed


def log_lines(stack: RunningStack) -> list[dict[str, Any]]:
    text = stack.stack.services["coi-tracking"].log_path.read_text(errors="replace")
    lines = []
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                lines.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return lines


async def wait_for_log(
    stack: RunningStack, event: str, timeout: float = 10.0, **fields: str
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in log_lines(stack):
            if line.get("event") == event and all(line.get(k) == v for k, v in fields.items()):
                return line
        await asyncio.sleep(0.1)
    raise TimeoutError(f"no {event} {fields} in the coi-tracking log within {timeout}s")


async def test_a_disposition_is_signed_only_with_the_signers_pin(
    stack: RunningStack, http: httpx.AsyncClient, events: EventLog
) -> None:
    shipment = await quarantined_shipment(http, stack, events)
    url = f"{stack.tracking}/shipments/{shipment}/dispositions"

    unsent = {k: v for k, v in release(WRONG_PIN).items() if k != "signing_pin"}
    missing = await http.post(url, json=unsent, headers=QA)
    assert missing.status_code == 422 and [e["pointer"] for e in missing.json()["errors"]] == ["/signing_pin"]
    wrong = await http.post(url, json=release(WRONG_PIN), headers=QA)
    assert_refused(wrong, "wrong_pin", WRONG_PIN)
    assert "1 of 5" in wrong.json()["detail"]
    empty = await http.post(url, json=release(""), headers=QA)
    assert_refused(empty, "wrong_pin", WRONG_PIN)

    # Nothing signed: no disposition, still quarantined, no release in the ledger, nothing published.
    assert await dispositions(http, stack, shipment) == []
    read = (await http.get(f"{stack.tracking}/shipments/{shipment}", headers=QA)).json()
    assert read["status"] == "quarantined"
    ledger = (await http.get(f"{stack.tracking}/shipments/{shipment}/ledger", headers=QA)).json()
    assert [e["kind"] for e in ledger["entries"] if e["kind"] in ("release", "reject")] == []
    refused = await wait_for_log(stack, "qa.signature_refused", signer_id="qa-jr", shipment_id=shipment)
    assert refused["refusal"] == "wrong_pin" and "signing_pin" not in refused

    signed = await http.post(url, json=release(DEV_QA_SIGNING_PIN), headers=QA)
    assert signed.status_code == 201, signed.text
    assert signed.json()["signer_id"] == "qa-jr" and "signing_pin" not in signed.json()
    released = await events.wait_for(
        lambda e: e.type == "shipment.released.v2" and str(e.data.shipment_id) == shipment
    )
    ledger = (await http.get(f"{stack.tracking}/shipments/{shipment}/ledger", headers=QA)).json()
    published = released.model_dump_json()
    for pin in (DEV_QA_SIGNING_PIN, WRONG_PIN):  # in no event, ledger entry or log line
        assert pin not in published and pin not in json.dumps(ledger)
        assert pin not in stack.stack.services["coi-tracking"].log_path.read_text(errors="replace")


async def test_a_signer_enrols_changes_the_pin_and_is_blocked_after_five_wrong_ones(
    stack: RunningStack, http: httpx.AsyncClient, events: EventLog
) -> None:
    pins = f"{stack.tracking}/qa-signers/me/signing-pin"
    reset = f"{stack.tracking}/qa-signers/qa-mk/signing-pin"
    first_pin, second_pin, third_pin = "97315864", "86429753", "75318642"
    shipment = await quarantined_shipment(http, stack, events)
    url = f"{stack.tracking}/shipments/{shipment}/dispositions"

    not_enrolled = await http.post(url, json=release(first_pin), headers=QA_2)
    assert_refused(not_enrolled, "not_enrolled", first_pin)
    assert "PUT /qa-signers/me/signing-pin" in not_enrolled.json()["detail"]

    # Enrolment: only QA, only a strong PIN (422 naming the field, never echoing it).
    assert (await http.put(pins, json={"signing_pin": first_pin}, headers=COORDINATOR)).status_code == 403
    weak = await http.put(pins, json={"signing_pin": "12345678"}, headers=QA_2)
    assert weak.status_code == 422 and [e["pointer"] for e in weak.json()["errors"]] == ["/signing_pin"]
    assert "12345678" not in weak.text
    enrolled = await http.put(pins, json={"signing_pin": first_pin}, headers=QA_2)
    assert enrolled.status_code == 200 and enrolled.json()["signer_id"] == "qa-mk", enrolled.text
    assert enrolled.json()["enrolled"] is True and first_pin not in enrolled.text

    # A change needs the current PIN; a wrong current one is refused like a wrong signature.
    no_current = await http.put(pins, json={"signing_pin": second_pin}, headers=QA_2)
    assert no_current.status_code == 422
    assert [e["pointer"] for e in no_current.json()["errors"]] == ["/current_signing_pin"]
    wrong_current = {"signing_pin": second_pin, "current_signing_pin": WRONG_PIN}
    assert_refused(await http.put(pins, json=wrong_current, headers=QA_2), "wrong_pin", WRONG_PIN)
    changed = await http.put(
        pins, json={"signing_pin": second_pin, "current_signing_pin": first_pin}, headers=QA_2
    )
    assert changed.status_code == 200, changed.text

    # The old PIN no longer signs; five wrong in a row block the signer, even for the right PIN.
    for attempt in range(1, 6):
        wrong = await http.post(url, json=release(first_pin), headers=QA_2)
        assert_refused(wrong, "wrong_pin", first_pin)
        assert f"{attempt} of 5" in wrong.json()["detail"] or attempt == 5
    assert "now blocked" in wrong.json()["detail"]
    assert_refused(await http.post(url, json=release(second_pin), headers=QA_2), "blocked", second_pin)
    blocked_change = {"signing_pin": third_pin, "current_signing_pin": second_pin}
    assert_refused(await http.put(pins, json=blocked_change, headers=QA_2), "blocked", second_pin)
    await wait_for_log(stack, "qa.signer_blocked", signer_id="qa-mk", shipment_id=shipment)
    assert await dispositions(http, stack, shipment) == []

    # Only a coordinator resets; the signer then enrols afresh and signs.
    assert (await http.delete(reset, headers=QA_2)).status_code == 403
    withdrawn = await http.delete(reset, headers=COORDINATOR)
    assert withdrawn.status_code == 200 and withdrawn.json()["enrolled"] is False, withdrawn.text
    assert (await http.delete(reset, headers=COORDINATOR)).status_code == 404
    await wait_for_log(stack, "qa.signing_pin_reset", signer_id="qa-mk", reset_by="coord-ana")
    assert (await http.put(pins, json={"signing_pin": third_pin}, headers=QA_2)).status_code == 200
    signed = await http.post(url, json=release(third_pin), headers=QA_2)
    assert signed.status_code == 201, signed.text
    assert signed.json()["signer_printed_name"] == "M. Kim (QA)"
    assert [d["signer_id"] for d in await dispositions(http, stack, shipment)] == ["qa-mk"]
