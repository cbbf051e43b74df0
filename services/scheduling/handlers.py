"""Scheduling's subscribers: one typed, module-level function per event, each finding the case the event
is about and handing it to one command (`commands.py`), which asks one domain decision.

Cases come from orders; ETAs, deliveries and every threat to the product (quarantine, temperature
excursion, COI break, QA rejection, cancelled order) from COI tracking and order intake. Orders and
shipments travel on different topics: a shipment event that comes before its order is parked, and applied
once the order's case exists.

Both versions of a superseded event are read (records already on the topics): a `.v1`'s free text is read
as the code `other` and copied nowhere (I6); scheduling's own reasons are built from codes alone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any
from uuid import UUID

import structlog
from cgt_contracts.envelope import EventEnvelope
from cgt_contracts.events import (
    AnyEvent,
    CancellationReasonCode,
    CoiBreak,
    CollectionRecorded,
    ManufacturingDelayed,
    ManufacturingFailed,
    ManufacturingStarted,
    OosFileCompleted,
    OrderAccepted,
    OrderAcceptedV2,
    OrderCancelled,
    OrderCancelledV2,
    PayerAuthorizationRenewed,
    ProductReleasedForShipment,
    ProductReleasedForShipmentDataV2,
    ProductReleasedForShipmentV2,
    QaDispositionDataV2,
    QaReasonCode,
    QuarantineReasonCode,
    ShipmentDelayed,
    ShipmentDelayedV2,
    ShipmentDelivered,
    ShipmentDispatched,
    ShipmentLeg,
    ShipmentQuarantined,
    ShipmentQuarantinedV2,
    ShipmentRejected,
    ShipmentRejectedV2,
    ShipmentReleased,
    ShipmentReleasedV2,
    SiteQualificationChanged,
    TemperatureExcursion,
    parse_event,
)
from sqlmodel import Session, col, select

from services.common.consumer import EventHandler, register_consumer
from services.common.service import Runtime
from services.common.topics import ORDERS, SHIPMENTS
from services.scheduling import commands, domain, plan_commands
from services.scheduling.domain import PlanLeg, RiskCause
from services.scheduling.models import Case, ParkedEvent

log = structlog.get_logger()
GROUP_ID = "scheduling"


@dataclass(frozen=True)
class Config:
    receipt_buffer_hours: float
    """Product receipt to the earliest conditioning start, for a therapy without a protocol of its own."""


def _context(event: EventEnvelope) -> dict[str, str]:
    return {"correlation_id": event.correlationid, "causation_id": str(event.id)}


# ---------------------------------------------------------------- finding the case


def _park(session: Session, event: EventEnvelope, coi: str) -> None:
    """The order's event comes on another topic and may not have arrived yet: keep this one until it has."""
    log.info("scheduling.event_parked", coi=coi)
    if session.exec(select(ParkedEvent.id).where(ParkedEvent.event_id == str(event.id))).first() is None:
        session.add(ParkedEvent(coi=coi, event_id=str(event.id), payload=event.model_dump_json()))


def _live_case(session: Session, event: EventEnvelope, coi: str) -> Case | None:
    """The case under its lock (commands.lock_case), or None if it is cancelled or (parked) unknown yet."""
    case = session.get(Case, coi)
    if case is None:
        _park(session, event, coi)
        return None
    commands.lock_case(session, case)
    return None if case.cancelled else case


def _return_leg_case(session: Session, event: EventEnvelope, coi: str, leg: ShipmentLeg) -> Case | None:
    """Only the return leg (the drug product) decides the appointment."""
    return _live_case(session, event, coi) if leg is ShipmentLeg.RETURN else None


def _case_of_shipment(session: Session, event: EventEnvelope, coi: str, shipment_id: UUID) -> Case | None:
    """For events that do not name their leg (a COI break, a temperature excursion): the case whose
    return shipment this is. A shipment not yet known as the case's return leg is left to the quarantine
    that follows the event, which names its leg."""
    case = _live_case(session, event, coi)
    return case if case is not None and case.shipment_id == shipment_id else None


# ---------------------------------------------------------------- orders


def on_order_accepted(session: Session, event: OrderAccepted | OrderAcceptedV2, config: Config) -> None:
    """v2 brings the site's qualifications and the payer authorization's last day, checked again at
    booking and confirmation; a v1's case knows neither (`domain.ChainFacts`: not judged until known)."""
    if session.get(Case, event.data.coi) is not None:
        return
    case = Case(
        coi=event.data.coi,
        order_id=event.data.order_id,
        patient_ref=event.data.patient_ref,
        therapy_code=event.data.therapy_code,
        treatment_center_id=event.data.treatment_center_id,
        conditioning_days=event.data.conditioning_days,
        long_term_follow_up=event.data.long_term_follow_up,
    )
    if isinstance(event, OrderAcceptedV2):
        windows = [(w.effective_on, w.expires_on) for w in event.data.site_qualifications]
        commands.store_qualifications(case, windows)
        case.payer_authorization_expires_on = event.data.payer_authorization_expires_on
    session.add(case)
    session.flush()
    apply_parked(session, event.data.coi, config)


def apply_parked(session: Session, coi: str, config: Config) -> None:
    """Events about this case that came before its order are applied now, in arrival order."""
    parked = session.exec(
        select(ParkedEvent).where(ParkedEvent.coi == coi).order_by(col(ParkedEvent.id))
    ).all()
    for row in parked:
        handle(session, parse_event(row.payload), config)
        session.delete(row)


def on_order_cancelled(session: Session, event: OrderCancelled | OrderCancelledV2, config: Config) -> None:
    """v1 carried the coordinator's free text: it is read as `other` and its text copied nowhere (I6)."""
    case = session.get(Case, event.data.coi)
    if case is None:
        return  # no case, no appointment: nothing to park for
    commands.lock_case(session, case)
    code = event.data.reason_code if isinstance(event, OrderCancelledV2) else CancellationReasonCode.OTHER
    commands.product_at_risk(
        session, case, RiskCause.ORDER_CANCELLED, f"order cancelled ({code})", **_context(event)
    )


def on_manufacturing_failed(session: Session, event: ManufacturingFailed, config: Config) -> None:
    """The lot failed: its appointment is released and the case waits for the next lot; a planned case is
    offered new plans for its next collection."""
    case = session.get(Case, event.data.coi)
    if case is None:
        return  # order.accepted comes first on the same partition: no case, no appointment
    commands.lock_case(session, case)
    if case.cancelled:
        return
    planned = plan_commands.booked_plan(session, case.coi) is not None
    commands.lot_failed(session, case, event.data.reason_code, **_context(event))
    if planned:
        plan_commands.reopen_after_lot_failure(
            session, case, default_buffer_hours=config.receipt_buffer_hours
        )


def on_site_qualification_changed(session: Session, event: SiteQualificationChanged, config: Config) -> None:
    case = session.get(Case, event.data.coi)
    if case is None:
        return  # order.accepted comes first on the same partition: no case, nothing booked
    commands.lock_case(session, case)
    windows = [(w.effective_on, w.expires_on) for w in event.data.site_qualifications]
    commands.store_qualifications(case, windows)
    session.add(case)
    if not case.cancelled:
        commands.chain_facts_changed(session, case, **_context(event))


def on_payer_authorization_renewed(
    session: Session, event: PayerAuthorizationRenewed, config: Config
) -> None:
    case = session.get(Case, event.data.coi)
    if case is None:
        return  # order.accepted comes first on the same partition
    commands.lock_case(session, case)
    case.payer_authorization_expires_on = event.data.expires_on
    session.add(case)
    if not case.cancelled:
        commands.chain_facts_changed(session, case, **_context(event))


def _planned_case(session: Session, coi: str) -> Case | None:
    """The case of an order event about a plan's leg, under its lock; None if unknown or cancelled."""
    case = session.get(Case, coi)
    if case is None:
        return None  # order.accepted comes first on the same partition: no case, no plan
    commands.lock_case(session, case)
    return None if case.cancelled else case


def on_collection_recorded(session: Session, event: CollectionRecorded, config: Config) -> None:
    case = _planned_case(session, event.data.coi)
    if case is not None:
        plan_commands.record_leg(session, case, PlanLeg.COLLECTION, event.data.collected_at)


def on_manufacturing_started(session: Session, event: ManufacturingStarted, config: Config) -> None:
    case = _planned_case(session, event.data.coi)
    if case is not None:
        plan_commands.record_leg(session, case, PlanLeg.MANUFACTURING, event.data.started_at)


def on_manufacturing_delayed(session: Session, event: ManufacturingDelayed, config: Config) -> None:
    """The command takes `book_plan`'s locks in their order itself (manufacturing sites first)."""
    case = session.get(Case, event.data.coi)
    if case is not None and not case.cancelled:
        plan_commands.manufacturing_delayed(
            session,
            case,
            event.data.expected_release_on,
            event.data.reason_code,
            default_buffer_hours=config.receipt_buffer_hours,
            **_context(event),
        )


def on_product_released_for_shipment(
    session: Session, event: ProductReleasedForShipment | ProductReleasedForShipmentV2, config: Config
) -> None:
    """The lot is released: in specification (a v1 says nothing else) or out of it, with the documents
    its file must hold before the infusion is booked."""
    case = session.get(Case, event.data.coi)
    if case is None:
        return  # order.accepted comes first on the same partition: no case, nothing to schedule
    commands.lock_case(session, case)
    if case.cancelled:
        return
    data = event.data
    spec = (
        domain.Specification(
            out_of_specification=data.out_of_specification,
            code=data.out_of_specification_code,
            documents_required=tuple(data.oos_documents_required),
        )
        if isinstance(data, ProductReleasedForShipmentDataV2)
        else domain.Specification()
    )
    commands.product_released_for_shipment(session, case, spec, **_context(event))
    plan_commands.record_leg(session, case, PlanLeg.RELEASE, data.released_at)


def on_oos_file_completed(session: Session, event: OosFileCompleted, config: Config) -> None:
    case = session.get(Case, event.data.coi)
    if case is None:
        return
    commands.lock_case(session, case)
    if not case.cancelled:
        commands.oos_file_completed(session, case, event.data.completed_at, **_context(event))


# ---------------------------------------------------------------- shipments


def on_shipment_dispatched(session: Session, event: ShipmentDispatched, config: Config) -> None:
    case = _return_leg_case(session, event, event.data.coi, event.data.leg)
    if case is None:
        return
    case.shipment_id = event.data.shipment_id
    commands.take_eta(
        session, case, event.data.eta_at, default_buffer_hours=config.receipt_buffer_hours, **_context(event)
    )


def on_shipment_delayed(session: Session, event: ShipmentDelayed | ShipmentDelayedV2, config: Config) -> None:
    case = _return_leg_case(session, event, event.data.coi, event.data.leg)
    if case is None:
        return
    plan_commands.shipment_delayed(
        session, case, event.data.eta_at, default_buffer_hours=config.receipt_buffer_hours, **_context(event)
    )


def on_shipment_delivered(session: Session, event: ShipmentDelivered, config: Config) -> None:
    case = _return_leg_case(session, event, event.data.coi, event.data.leg)
    if case is not None:
        plan_commands.product_delivered(
            session, case, event.data.delivered_at, event.data.shipment_id, **_context(event)
        )


def on_shipment_quarantined(
    session: Session, event: ShipmentQuarantined | ShipmentQuarantinedV2, config: Config
) -> None:
    case = _return_leg_case(session, event, event.data.coi, event.data.leg)
    if case is not None:
        codes = (
            event.data.reason_codes
            if isinstance(event, ShipmentQuarantinedV2)
            else [QuarantineReasonCode.OTHER]
        )
        reason = f"shipment quarantined ({', '.join(codes)})"
        commands.product_at_risk(session, case, RiskCause.QUARANTINE, reason, **_context(event))


def on_temperature_excursion(session: Session, event: TemperatureExcursion, config: Config) -> None:
    case = _case_of_shipment(session, event, event.data.coi, event.data.shipment_id)
    if case is not None:
        reason = (
            f"temperature excursion: {event.data.reading_celsius} °C above the "
            f"{event.data.limit_celsius} °C limit"
        )
        commands.product_at_risk(session, case, RiskCause.TEMPERATURE_EXCURSION, reason, **_context(event))


def on_coi_break(session: Session, event: CoiBreak, config: Config) -> None:
    case = _case_of_shipment(session, event, event.data.expected_coi, event.data.shipment_id)
    if case is not None:
        # The COIs read are another patient's chain of identity: they stay out of the reason.
        reason = "COI break: a scan did not match the chain of identity"
        commands.product_at_risk(session, case, RiskCause.COI_BREAK, reason, **_context(event))


def _qa_code(event: ShipmentReleased | ShipmentReleasedV2 | ShipmentRejected | ShipmentRejectedV2) -> str:
    return event.data.reason_code if isinstance(event.data, QaDispositionDataV2) else QaReasonCode.OTHER


def on_shipment_released(
    session: Session, event: ShipmentReleased | ShipmentReleasedV2, config: Config
) -> None:
    case = _return_leg_case(session, event, event.data.coi, event.data.leg)
    if case is not None:
        log.info("scheduling.product_released", coi=case.coi, qa_reason_code=_qa_code(event))
        commands.product_released(session, case, **_context(event))


def on_shipment_rejected(
    session: Session, event: ShipmentRejected | ShipmentRejectedV2, config: Config
) -> None:
    case = _return_leg_case(session, event, event.data.coi, event.data.leg)
    if case is not None:
        reason = f"product rejected by QA ({_qa_code(event)})"
        commands.product_at_risk(session, case, RiskCause.QA_REJECTION, reason, **_context(event))


# ---------------------------------------------------------------- registration

HANDLERS: dict[type[EventEnvelope], Callable[[Session, Any, Config], None]] = {
    OrderAccepted: on_order_accepted,
    OrderAcceptedV2: on_order_accepted,
    SiteQualificationChanged: on_site_qualification_changed,
    PayerAuthorizationRenewed: on_payer_authorization_renewed,
    OrderCancelled: on_order_cancelled,
    OrderCancelledV2: on_order_cancelled,
    ManufacturingFailed: on_manufacturing_failed,
    CollectionRecorded: on_collection_recorded,
    ManufacturingStarted: on_manufacturing_started,
    ProductReleasedForShipment: on_product_released_for_shipment,
    ProductReleasedForShipmentV2: on_product_released_for_shipment,
    OosFileCompleted: on_oos_file_completed,
    ManufacturingDelayed: on_manufacturing_delayed,
    ShipmentDispatched: on_shipment_dispatched,
    ShipmentDelayed: on_shipment_delayed,
    ShipmentDelayedV2: on_shipment_delayed,
    ShipmentDelivered: on_shipment_delivered,
    ShipmentQuarantined: on_shipment_quarantined,
    ShipmentQuarantinedV2: on_shipment_quarantined,
    TemperatureExcursion: on_temperature_excursion,
    CoiBreak: on_coi_break,
    ShipmentReleased: on_shipment_released,
    ShipmentReleasedV2: on_shipment_released,
    ShipmentRejected: on_shipment_rejected,
    ShipmentRejectedV2: on_shipment_rejected,
}
"""Each event type scheduling reacts to, and its handler (each checks its own event's type by signature)."""


def handle(session: Session, event: AnyEvent, config: Config) -> None:
    """Apply one event inside the session (the consumer commits, with the event id in its inbox)."""
    HANDLERS[type(event)](session, event, config)


def make_handlers(default_buffer_hours: float) -> dict[type[EventEnvelope], EventHandler]:
    """The consumer's table: every handled type to `handle` with this configuration."""
    dispatch: EventHandler = partial(handle, config=Config(receipt_buffer_hours=default_buffer_hours))
    return dict.fromkeys(HANDLERS, dispatch)


def wire(runtime: Runtime[Any], *, receipt_buffer_hours: float) -> None:
    register_consumer(
        runtime.broker,
        topics=[ORDERS, SHIPMENTS],
        group_id=GROUP_ID,
        engine=runtime.engine,
        handlers=make_handlers(receipt_buffer_hours),
        max_attempts=runtime.settings.consumer_max_attempts,
    )
