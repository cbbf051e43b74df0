"""The vein-to-vein journey through the three services on the real broker, SQLite and PostgreSQL."""

from __future__ import annotations

import httpx
import pytest

from deploy.observe import EventLog, WebhookListener
from services.scheduling.webhook_domain import (
    IDEMPOTENCY_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    signature_matches,
)
from tests.e2e.conftest import CENTER, COORDINATOR, COURIER, COURIER_2, RunningStack
from tests.e2e.journey import (
    book_first_option,
    order_body,
    place_accepted_order,
    place_released_order,
    record_collection_and_manufacturing,
    release_product,
    scan,
    shipment_for,
)

pytestmark = pytest.mark.e2e

PHI_STRINGS = ("Test Patient", "MRN-0042", "2019-04-02")


async def register_webhook(http: httpx.AsyncClient, stack: RunningStack, listener: WebhookListener) -> str:
    response = await http.post(f"{stack.scheduling}/webhooks", json={"url": listener.url}, headers=CENTER)
    assert response.status_code == 201, response.text
    secret: str = response.json()["secret"]
    return secret


async def test_clean_journey_confirms_the_slot_and_tells_the_treatment_center(
    stack: RunningStack, http: httpx.AsyncClient, events: EventLog, webhook_listener: WebhookListener
) -> None:
    secret = await register_webhook(http, stack, webhook_listener)
    order = await place_accepted_order(http, stack)
    coi = order["coi"]
    assert order["coi_label"].startswith("&/CH")
    await record_collection_and_manufacturing(http, stack, order["id"])
    await events.wait_for(lambda e: e.type == "order.accepted.v2" and e.subject == coi)
    await release_product(http, stack, order)
    shipment = await shipment_for(http, stack, events, coi)
    assert shipment["bags"] == [{"number": 1, "of": 1, "coi": coi, "din": None}]
    assert shipment["status"] == "planned"
    base = f"{stack.tracking}/shipments/{shipment['id']}/scans"

    picked = await http.post(base, json=scan("pick_up", [coi]), headers=COURIER)
    assert picked.status_code == 201, picked.text
    assert picked.json()["accepted"] and picked.json()["shipment_status"] == "dispatched"
    booked = await book_first_option(http, stack, events, coi)
    assert booked["state"] == "tentative"
    proposed = await events.wait_for(lambda e: e.type == "slot.proposed.v1" and e.subject == coi)
    assert proposed.data.status == "pending"  # type: ignore[union-attr]

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

    await events.wait_for(lambda e: e.type == "shipment.delivered.v1" and e.subject == coi)
    confirmed = await events.wait_for(lambda e: e.type == "slot.confirmed.v1" and e.subject == coi)
    hook = webhook_listener.wait_for(
        lambda h: h.json()["kind"] == "slot.confirmed" and h.json()["coi"] == coi
    )
    assert signature_matches(
        [secret],
        int(hook.headers[TIMESTAMP_HEADER]),
        hook.headers[IDEMPOTENCY_HEADER],
        hook.body,
        hook.headers[SIGNATURE_HEADER],
    )
    assert hook.headers["Idempotency-Key"]
    assert hook.json()["appointment_id"] == str(confirmed.data.appointment_id)  # type: ignore[union-attr]
    assert hook.json()["state"] == "confirmed"

    custody = [e for e in events.of(coi) if e.type == "custody.transferred.v2"]
    assert [(e.data.from_party, e.data.to_party) for e in custody] == [
        ("manufacturer:AGC-MILAN", "courier-ben"),
        ("courier-ben", "courier-cy"),
        ("courier-cy", "TC-BOSTON"),
    ]
    ledger = (
        await http.get(f"{stack.tracking}/shipments/{shipment['id']}/ledger", headers=COORDINATOR)
    ).json()
    assert ledger["valid"] is True and len(ledger["entries"]) == 3

    appointment = (
        await http.get(f"{stack.scheduling}/appointments", params={"coi": coi}, headers=CENTER)
    ).json()
    assert [a["state"] for a in appointment] == ["confirmed"]
    # The order follows the product: order intake consumed the shipment events.
    for _ in range(200):
        status = (await http.get(f"{stack.orders}/orders/{order['id']}", headers=COORDINATOR)).json()[
            "status"
        ]
        if status == "product_delivered":
            break
        await __import__("asyncio").sleep(0.05)
    assert status == "product_delivered"

    everything_on_the_bus = b"".join(value for _, value, _ in events.raw)
    for phi in PHI_STRINGS:
        assert phi.encode() not in everything_on_the_bus


async def test_wrong_coi_quarantines_the_shipment_and_the_slot_is_never_confirmed(
    stack: RunningStack, http: httpx.AsyncClient, events: EventLog
) -> None:
    order = await place_released_order(http, stack)
    coi = order["coi"]
    shipment = await shipment_for(http, stack, events, coi)
    base = f"{stack.tracking}/shipments/{shipment['id']}/scans"
    assert (await http.post(base, json=scan("pick_up", [coi]), headers=COURIER)).json()["accepted"]
    await book_first_option(http, stack, events, coi)

    wrong = "CHW4321269ZZZZZ" + "Q"
    broken = await http.post(
        base, json=scan("checkpoint", [wrong], location="Frankfurt hub"), headers=COURIER
    )
    assert broken.status_code == 201, broken.text
    assert broken.json()["coi_verified"] is False
    assert broken.json()["quarantined"] is True
    assert "COI break" in broken.json()["quarantine_reason"]
    coi_break = await events.wait_for(lambda e: e.type == "coi.break.v1" and e.subject == coi)
    assert coi_break.data.read_cois == [wrong]  # type: ignore[union-attr]
    await events.wait_for(lambda e: e.type == "shipment.quarantined.v2" and e.subject == coi)
    await events.wait_for(lambda e: e.type == "slot.held.v2" and e.subject == coi)

    delivery = await http.post(base, json=scan("delivery", [coi], location="Boston QTC"), headers=COURIER)
    assert delivery.status_code == 201
    assert delivery.json()["shipment_status"] == "quarantined"
    # A later scan on the same key is published after anything the delivery caused, in order.
    marker = await http.post(base, json=scan("receipt", [coi], location="Boston QTC"), headers=COURIER)
    marker_id = marker.json()["scan_id"]
    await events.wait_for(lambda e: e.type == "shipment.scanned.v2" and str(e.data.scan_id) == marker_id)
    assert not [e for e in events.of(coi) if e.type in ("shipment.delivered.v1", "slot.confirmed.v1")]
    appointments = (
        await http.get(f"{stack.scheduling}/appointments", params={"coi": coi}, headers=COORDINATOR)
    ).json()
    assert [a["state"] for a in appointments] == ["on_hold"]
    ledger = (
        await http.get(f"{stack.tracking}/shipments/{shipment['id']}/ledger", headers=COORDINATOR)
    ).json()
    assert ledger["valid"] and [e["kind"] for e in ledger["entries"]] == ["custody", "quarantine", "custody"]


async def test_warm_reading_quarantines(
    stack: RunningStack, http: httpx.AsyncClient, events: EventLog
) -> None:
    order = await place_released_order(http, stack)
    coi = order["coi"]
    shipment = await shipment_for(http, stack, events, coi)
    base = f"{stack.tracking}/shipments/{shipment['id']}/scans"
    result = await http.post(base, json=scan("pick_up", [coi], temperature=-149.0), headers=COURIER)
    assert result.json()["quarantined"] is True
    excursion = await events.wait_for(lambda e: e.type == "temperature.excursion.v1" and e.subject == coi)
    assert excursion.data.reading_celsius == -149.0 and excursion.data.limit_celsius == -150.0  # type: ignore[union-attr]


async def test_callers_are_authenticated_and_their_roles_checked(
    stack: RunningStack, http: httpx.AsyncClient
) -> None:
    assert (await http.post(f"{stack.orders}/orders", json=order_body())).status_code == 401
    bad = {"Authorization": "Bearer not-a-token"}
    assert (await http.post(f"{stack.orders}/orders", json=order_body(), headers=bad)).status_code == 401
    assert (await http.post(f"{stack.orders}/orders", json=order_body(), headers=COURIER)).status_code == 403
    assert (await http.get(f"{stack.scheduling}/appointments", headers=COURIER)).status_code == 403
    other_site = order_body(treatment_center_id="TC-DENVER")
    assert (await http.post(f"{stack.orders}/orders", json=other_site, headers=CENTER)).status_code == 403


async def test_a_courier_scans_only_its_own_company_shipments(
    stack: RunningStack, http: httpx.AsyncClient, events: EventLog
) -> None:
    order = await place_released_order(http, stack)
    shipment = await shipment_for(http, stack, events, order["coi"])
    other = {"Authorization": "Bearer dev-other-courier-token"}
    response = await http.post(
        f"{stack.tracking}/shipments/{shipment['id']}/scans",
        json=scan("pick_up", [order["coi"]]),
        headers=other,
    )
    assert response.status_code == 403


async def test_bad_input_gets_4xx_naming_the_field(
    stack: RunningStack, http: httpx.AsyncClient, events: EventLog
) -> None:
    response = await http.post(
        f"{stack.orders}/orders", json=order_body(prescriber_npi="12AB"), headers=COORDINATOR
    )
    assert response.status_code == 422
    assert any(error["pointer"] == "/prescriber_npi" for error in response.json()["errors"])
    order = await place_released_order(http, stack)
    shipment = await shipment_for(http, stack, events, order["coi"])
    body = scan("pick_up", [order["coi"]])
    del body["eta_at"]
    response = await http.post(
        f"{stack.tracking}/shipments/{shipment['id']}/scans", json=body, headers=COURIER
    )
    # Not a 422: the ETA rule is the domain's, the same for every way a scan arrives; the scan is kept.
    assert response.status_code == 201 and response.json()["accepted"] is False
    assert "eta_at" in response.json()["refusal_reason"]


async def test_health_and_readiness(stack: RunningStack, http: httpx.AsyncClient) -> None:
    for url in (stack.orders, stack.tracking, stack.scheduling):
        assert (await http.get(f"{url}/health")).json()["status"] == "ok"
        ready = await http.get(f"{url}/ready", headers=COORDINATOR)
        assert ready.status_code == 200 and ready.json()["checks"] == {"database": True, "broker": True}
        anonymous = await http.get(f"{url}/ready")
        assert anonymous.status_code == 200 and anonymous.json() == {"status": "ready"}
        assert anonymous.headers["X-Content-Type-Options"] == "nosniff"
        assert anonymous.headers["Cache-Control"] == "no-store" and "server" not in anonymous.headers
