"""A product released out of specification, on the real broker, SQLite and PostgreSQL: it ships, but it
cannot be scheduled for infusion (409 naming what its file misses) until order intake holds the
physician's request, the patient's consent, the risk assessment and the IND; then it is booked,
delivered clean and confirmed, and the webhooks and the FHIR Appointment carry the flag."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from deploy.observe import EventLog, WebhookListener
from tests.e2e.conftest import CENTER, COORDINATOR, COURIER, COURIER_2, RunningStack
from tests.e2e.journey import (
    place_accepted_order,
    record_collection_and_manufacturing,
    scan,
    wait_until_released,
)
from tests.e2e.test_journey import register_webhook

pytestmark = pytest.mark.e2e

REFS = {
    "physician_request_ref": "PR-OOS-7Q41",
    "patient_consent_ref": "ICF-OOS-7Q41",
    "risk_assessment_ref": "AGC-RA-7Q41",
    "ind_ref": "IND-7Q4100",
}
TAG = "out-of-specification"


async def case_when(
    http: httpx.AsyncClient, stack: RunningStack, coi: str, field: str, timeout: float = 30.0
) -> dict[str, Any]:
    """The scheduling case once `field` is true in it."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        response = await http.get(f"{stack.scheduling}/cases/{coi}", headers=COORDINATOR)
        if response.status_code == 200 and response.json()[field]:
            case: dict[str, Any] = response.json()
            return case
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"scheduling's case {coi} never had {field}")
        await asyncio.sleep(0.05)


async def test_a_product_out_of_specification_is_scheduled_only_once_its_file_is_complete(
    stack: RunningStack, http: httpx.AsyncClient, events: EventLog, webhook_listener: WebhookListener
) -> None:
    await register_webhook(http, stack, webhook_listener)
    order = await place_accepted_order(http, stack)
    coi, order_id = order["coi"], order["id"]
    await record_collection_and_manufacturing(http, stack, order_id)
    released = await http.post(
        f"{stack.orders}/orders/{order_id}/manufacturing-release",
        json={
            "lot_number": "LOT-OOS-7Q41",
            "released_at": datetime.now(UTC).isoformat(),
            "out_of_specification": True,
            "out_of_specification_code": "cell_dose",
        },
        headers=COORDINATOR,
    )
    assert released.status_code == 200 and released.json()["product_out_of_specification"], released.text
    v2 = await events.wait_for(lambda e: e.type == "product.released_for_shipment.v2" and e.subject == coi)
    assert v2.data.out_of_specification and v2.data.out_of_specification_code == "cell_dose"  # type: ignore[union-attr]
    shipment = await wait_until_released(http, stack, coi)  # COI tracking read the v2: the leg may go
    await case_when(http, stack, coi, "out_of_specification")

    base = f"{stack.tracking}/shipments/{shipment['id']}/scans"
    picked = await http.post(base, json=scan("pick_up", [coi]), headers=COURIER)
    assert picked.status_code == 201 and picked.json()["accepted"], picked.text
    offered = await events.wait_for(lambda e: e.type == "slot.options_offered.v1" and e.subject == coi)
    option_id = str(offered.data.options[0].option_id)  # type: ignore[union-attr]
    bookings = f"{stack.scheduling}/cases/{coi}/bookings"
    refused = await http.post(bookings, json={"option_id": option_id}, headers=COORDINATOR)
    assert refused.status_code == 409, refused.text
    [reason] = refused.json()["reasons"]
    assert "out of specification (cell_dose)" in reason
    assert "physician_request, patient_consent, risk_assessment, ind" in reason

    # The coordinator files the documents; the US site needs the IND as well.
    file = f"{stack.orders}/orders/{order_id}/out-of-specification-file"
    partial = await http.post(
        file, json={k: v for k, v in REFS.items() if k != "ind_ref"}, headers=COORDINATOR
    )
    assert partial.status_code == 200 and partial.json()["missing"] == ["ind"], partial.text
    still = await http.post(bookings, json={"option_id": option_id}, headers=COORDINATOR)
    assert still.status_code == 409, "the file is not complete without the IND"
    complete = await http.post(file, json={"ind_ref": REFS["ind_ref"]}, headers=COORDINATOR)
    assert complete.status_code == 200 and complete.json()["complete"], complete.text
    completed = await events.wait_for(
        lambda e: e.type == "product.oos_file_completed.v1" and e.subject == coi
    )
    assert completed.data.documents == ["physician_request", "patient_consent", "risk_assessment", "ind"]  # type: ignore[union-attr]
    await case_when(http, stack, coi, "oos_file_complete")

    booked = await http.post(bookings, json={"option_id": option_id}, headers=COORDINATOR)
    assert booked.status_code == 201, booked.text
    appointment = booked.json()
    assert appointment["state"] == "tentative" and appointment["out_of_specification"] is True

    handed = await http.post(
        base, json=scan("hand_off", [coi], location="JFK cargo", handed_to="courier-cy"), headers=COURIER
    )
    assert handed.status_code == 201 and handed.json()["accepted"], handed.text
    delivered = await http.post(
        base,
        json=scan("delivery", [coi], location="Boston QTC cell lab", temperature=-175.5),
        headers=COURIER_2,
    )
    assert delivered.status_code == 201 and delivered.json()["shipment_status"] == "delivered", delivered.text
    confirmed = await events.wait_for(lambda e: e.type == "slot.confirmed.v1" and e.subject == coi)
    assert str(confirmed.data.appointment_id) == appointment["id"]  # type: ignore[union-attr]

    hook = webhook_listener.wait_for(
        lambda h: h.json()["kind"] == "slot.confirmed" and h.json()["coi"] == coi
    )
    assert hook.json()["out_of_specification"] is True
    resource = await http.get(f"{stack.scheduling}/fhir/Appointment/{appointment['id']}", headers=CENTER)
    assert resource.status_code == 200, resource.text
    assert resource.json()["status"] == "booked"
    assert [t["code"] for t in resource.json()["meta"]["tag"]] == [TAG]

    # The references stay in order intake: on no topic, in no webhook.
    published = b"".join(value for _, value, _ in events.raw)
    assert not [ref for ref in REFS.values() if ref.encode() in published]
    assert all(ref not in h.body.decode() for h in webhook_listener.received for ref in REFS.values())
