"""A treatment center's EHR integrating in FHIR only (issue 19), on the real broker and both databases,
driven by a real FHIR client library (`fhirpy`): it places the order as a `ServiceRequest`, follows the
case, and reads back the confirmed `Appointment`, its `Slot` and every reference they hold."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fhir.resources.R4B.appointment import Appointment as FhirAppointment
from fhirpy import AsyncFHIRClient
from fhirpy.base.exceptions import OperationOutcome, ResourceNotFound

from deploy.observe import EventLog
from services.common import fhir
from tests.e2e.conftest import CENTER, COORDINATOR, COURIER, RunningStack
from tests.e2e.journey import (
    book_first_option,
    record_collection_and_manufacturing,
    release_product,
    scan,
    shipment_for,
)
from tests.e2e.test_scheduling import midday, new_site
from tests.support.fhir_orders import a_service_request

pytestmark = pytest.mark.e2e


def ehr(base: str, headers: dict[str, str] = COORDINATOR) -> AsyncFHIRClient:
    return AsyncFHIRClient(f"{base}/fhir", authorization=headers["Authorization"])


async def test_an_ehr_orders_in_fhir_and_reads_back_the_confirmed_appointment(
    stack: RunningStack, http: httpx.AsyncClient, events: EventLog
) -> None:
    site = await new_site(http, stack)
    orders, scheduling = ehr(stack.orders), ehr(stack.scheduling)
    posted = a_service_request(site=site.id, npi=site.npi)
    patient_ref = posted["contained"][0]["identifier"][0]["value"]

    request = orders.resource("ServiceRequest", **posted)
    await request.create()

    assert request["status"] == "active"
    [coi] = [i["value"] for i in request["identifier"] if i["system"] == fhir.COI_SYSTEM]
    order = (await http.get(f"{stack.orders}/orders/{request['id']}", headers=COORDINATOR)).json()
    assert order["coi"] == coi and order["patient_ref"] == patient_ref
    await record_collection_and_manufacturing(http, stack, order["id"])
    await release_product(http, stack, order)
    shipment = await shipment_for(http, stack, events, coi)
    picked = await http.post(
        f"{stack.tracking}/shipments/{shipment['id']}/scans",
        json=scan("pick_up", [coi], eta_at=midday(2).isoformat()),
        headers=COURIER,
    )
    assert picked.json()["accepted"], picked.text
    booked = await book_first_option(http, stack, events, coi)
    pending = await scheduling.reference("Appointment", booked["id"]).to_resource()
    assert pending["status"] == "pending"
    delivered = await http.post(
        f"{stack.tracking}/shipments/{shipment['id']}/scans", json=scan("delivery", [coi]), headers=COURIER
    )
    assert delivered.json()["accepted"], delivered.text
    await events.wait_for(lambda e: e.type == "slot.confirmed.v1" and e.subject == coi)

    [appointment] = await scheduling.resources("Appointment").search(patient=f"Patient/{patient_ref}").fetch()
    assert appointment["status"] == "booked"
    FhirAppointment.model_validate(dict(appointment))
    [slot] = await scheduling.resources("Slot").search(schedule=f"Schedule/{site.id}", status="busy").fetch()
    assert slot["id"] == appointment["id"]
    location, patient = (p["actor"] for p in appointment["participant"])
    assert (await scheduling.reference(reference=location["reference"]).to_resource())["id"] == site.id
    shared = await scheduling.reference(reference=patient["reference"]).to_resource()
    assert shared["identifier"] == [{"system": fhir.PATIENT_REF_SYSTEM, "value": patient_ref}]
    status = await orders.reference("ServiceRequest", request["id"]).to_resource()
    assert status["status"] == "active"


async def test_a_treatment_center_ehr_is_refused_in_fhir_what_it_may_not_do(
    stack: RunningStack, http: httpx.AsyncClient
) -> None:
    """Every refusal reaches the client as an OperationOutcome it can read; another site's order is
    never written, another site's appointment reads as missing."""
    center = ehr(stack.orders, CENTER)  # TC-BOSTON's desk
    elsewhere = await new_site(http, stack)

    with pytest.raises(OperationOutcome) as refused:
        await center.resource(
            "ServiceRequest", **a_service_request(site="TC-BOSTON", npi="0000000000")
        ).create()
    outcome: Any = refused.value.resource
    assert outcome["resourceType"] == "OperationOutcome"
    rules = [i["diagnostics"].split(":")[0] for i in outcome["issue"] if i["code"] == "business-rule"]
    assert rules == ["prescriber_npi_invalid"]  # 0000000000 fails the NPI check digit, and only that
    with pytest.raises(ResourceNotFound):
        await ehr(stack.scheduling, CENTER).reference("Schedule", elsewhere.id).to_resource()
