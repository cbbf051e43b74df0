"""Scheduling rules: feasible infusion options and the appointment's state machine. Pure Python, no I/O.

Conditioning destroys the patient's marrow, so it may start only after the product is on site (I4):
options start conditioning no earlier than ETA plus the receipt buffer, and an appointment is confirmed
only on a clean delivery.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from zoneinfo import ZoneInfo

from cgt_contracts.events import SlotReasonCode


class AppointmentState(StrEnum):
    TENTATIVE = "tentative"
    ON_HOLD = "on_hold"
    CONFIRMED = "confirmed"
    CANCELLED = "cancelled"
    INFUSED = "infused"


_TRANSITIONS: dict[AppointmentState, frozenset[AppointmentState]] = {
    AppointmentState.TENTATIVE: frozenset(
        {AppointmentState.ON_HOLD, AppointmentState.CONFIRMED, AppointmentState.CANCELLED}
    ),
    AppointmentState.ON_HOLD: frozenset(
        {AppointmentState.TENTATIVE, AppointmentState.CONFIRMED, AppointmentState.CANCELLED}
    ),
    AppointmentState.CONFIRMED: frozenset(
        {AppointmentState.ON_HOLD, AppointmentState.CANCELLED, AppointmentState.INFUSED}
    ),
    AppointmentState.CANCELLED: frozenset(),
    AppointmentState.INFUSED: frozenset(),
}
ACTIVE_STATES = frozenset({AppointmentState.TENTATIVE, AppointmentState.ON_HOLD, AppointmentState.CONFIRMED})
"""Appointments that hold a chair and admission beds."""

FHIR_APPOINTMENT_STATUS = {
    AppointmentState.TENTATIVE: "pending",
    AppointmentState.ON_HOLD: "pending",
    AppointmentState.CONFIRMED: "booked",
    AppointmentState.CANCELLED: "cancelled",
    AppointmentState.INFUSED: "fulfilled",
}
FHIR_SLOT_STATUS = {
    AppointmentState.TENTATIVE: "busy-tentative",
    # Held: the chair stays reserved but nobody may count on it (docs/fhir.md).
    AppointmentState.ON_HOLD: "busy-unavailable",
    AppointmentState.CONFIRMED: "busy",
    AppointmentState.INFUSED: "busy",
}


def can_move(current: AppointmentState, target: AppointmentState) -> bool:
    return target in _TRANSITIONS[current]


@dataclass(frozen=True)
class SiteCalendar:
    timezone: str
    infusions_per_day: int
    working_weekdays: frozenset[int]
    """ISO weekdays, Monday = 1."""
    blackout_dates: frozenset[date]
    admissions_capacity: int = 1_000_000
    """Beds for patients in conditioning (from its first day through infusion)."""

    def is_open(self, day: date) -> bool:
        return day.isoweekday() in self.working_weekdays and day not in self.blackout_dates


@dataclass(frozen=True)
class SlotOption:
    conditioning_start_on: date
    infusion_on: date

    def admission_days(self) -> list[date]:
        """The days the patient occupies a bed: conditioning start through infusion, inclusive."""
        span = (self.infusion_on - self.conditioning_start_on).days
        return [self.conditioning_start_on + timedelta(days=d) for d in range(span + 1)]


@dataclass(frozen=True)
class Load:
    """What is already booked at a site."""

    infusions: Mapping[date, int]
    admissions: Mapping[date, int]

    @staticmethod
    def of(options: list[SlotOption]) -> Load:
        infusions: Counter[date] = Counter(o.infusion_on for o in options)
        admissions: Counter[date] = Counter(day for o in options for day in o.admission_days())
        return Load(infusions, admissions)


def earliest_conditioning_day(eta_at: datetime, receipt_buffer_hours: float, timezone: str) -> date:
    """The first local day whose start is at or after ETA + receipt buffer."""
    ready = (eta_at + timedelta(hours=receipt_buffer_hours)).astimezone(ZoneInfo(timezone))
    day = ready.date()
    return day if ready.time() == time(0) else day + timedelta(days=1)


def option_problems(option: SlotOption, calendar: SiteCalendar, load: Load) -> list[str]:
    """Why an option cannot be booked: closed or full infusion day, a blackout, no bed on a day."""
    problems: list[str] = []
    if not calendar.is_open(option.infusion_on):
        problems.append(f"{option.infusion_on} is not a working day at the site")
    if load.infusions.get(option.infusion_on, 0) >= calendar.infusions_per_day:
        problems.append(f"no infusion capacity left on {option.infusion_on}")
    for day in option.admission_days():
        if day in calendar.blackout_dates:
            problems.append(f"{day} is a blackout date")
        if load.admissions.get(day, 0) >= calendar.admissions_capacity:
            problems.append(f"no admission bed left on {day}")
    return problems


def feasible_options(
    *,
    eta_at: datetime,
    calendar: SiteCalendar,
    conditioning_days: int,
    receipt_buffer_hours: float,
    load: Load,
    count: int = 3,
    horizon_days: int = 90,
) -> list[SlotOption]:
    """The earliest `count` options: conditioning starts after the product is on site plus the receipt
    buffer, infusion (day 0) on an open working day with capacity, beds on every day, no blackout."""
    first = earliest_conditioning_day(eta_at, receipt_buffer_hours, calendar.timezone)
    options: list[SlotOption] = []
    for offset in range(horizon_days):
        start = first + timedelta(days=offset)
        option = SlotOption(
            conditioning_start_on=start, infusion_on=start + timedelta(days=conditioning_days)
        )
        if not option_problems(option, calendar, load):
            options.append(option)
            if len(options) == count:
                break
    return options


def booking_problems(
    option: SlotOption,
    *,
    eta_at: datetime | None,
    dispatched: bool = False,
    receipt_buffer_hours: float,
    calendar: SiteCalendar,
    load: Load,
) -> list[str]:
    """Everything that forbids booking this option now (I4: never conditioning before the product). A
    product on its way whose ETA is not known (the last one reported had passed) forbids any date."""
    problems = option_problems(option, calendar, load)
    if eta_at is not None:
        earliest = earliest_conditioning_day(eta_at, receipt_buffer_hours, calendar.timezone)
        if option.conditioning_start_on < earliest:
            problems.insert(
                0, f"conditioning may not start before {earliest} (product ETA plus receipt buffer)"
            )
    elif dispatched:
        problems.insert(0, "the product is on its way but its ETA is not known: ask the courier for one")
    return problems


def site_today(now: datetime, timezone: str) -> date:
    return now.astimezone(ZoneInfo(timezone)).date()


def conditioning_may_have_started(conditioning_start_on: date, now: datetime, timezone: str) -> bool:
    """From its first day (site-local) on, the site may be conditioning the patient: the appointment is
    then never moved or held without a person deciding."""
    return site_today(now, timezone) >= conditioning_start_on


def start_in_the_past(option: SlotOption, now: datetime, timezone: str) -> str | None:
    """Why an option cannot be booked or moved to any more: its conditioning would start before today."""
    today = site_today(now, timezone)
    if option.conditioning_start_on < today:
        return (
            f"conditioning would start on {option.conditioning_start_on}, before today ({today}) at the site"
        )
    return None


def eta_refusal(eta_at: datetime, now: datetime) -> str | None:
    """An ETA that has already passed says nothing about when the product arrives: no option is planned
    from it."""
    if eta_at <= now:
        return f"the product's reported ETA {eta_at.isoformat()} has already passed: ask the courier for a current one"
    return None


# ---------------------------------------------------------------- the product at risk (I4)


class RiskCause(StrEnum):
    QUARANTINE = "quarantine"
    TEMPERATURE_EXCURSION = "temperature_excursion"
    COI_BREAK = "coi_break"
    QA_REJECTION = "qa_rejection"
    ORDER_CANCELLED = "order_cancelled"
    DELAY = "delay"
    MANUFACTURING_FAILURE = "manufacturing_failure"
    SITE_QUALIFICATION_LAPSED = "site_qualification_lapsed"
    PAYER_AUTHORIZATION_LAPSED = "payer_authorization_lapsed"
    OUT_OF_SPECIFICATION = "out_of_specification"
    """Holds only (`on_release`): never an alert, so it has no `SlotRiskCause`."""


COORDINATOR_REASONS = frozenset(
    {
        SlotReasonCode.SITE_REQUEST,
        SlotReasonCode.PATIENT_REQUEST,
        SlotReasonCode.PATIENT_CONDITION,
        SlotReasonCode.CLINICAL_DECISION,
        SlotReasonCode.SITE_CAPACITY,
        SlotReasonCode.DELAY,
        SlotReasonCode.OTHER,
    }
)
"""The reasons a coordinator gives for cancelling or moving an appointment; the others are the system's
(a quarantine, a QA decision, a cancelled order), set by the events that cause them."""


def coordinator_reason_problem(code: SlotReasonCode) -> str | None:
    if code in COORDINATOR_REASONS:
        return None
    return (
        f"is set by the system, not by a coordinator; give one of: {', '.join(sorted(COORDINATOR_REASONS))}"
    )


def reason_code_of(cause: RiskCause) -> SlotReasonCode:
    """A threat's cause as the reason the site is told (the same words)."""
    return SlotReasonCode(cause.value)


ENDS_THE_PRODUCT = frozenset(
    {RiskCause.QA_REJECTION, RiskCause.ORDER_CANCELLED, RiskCause.MANUFACTURING_FAILURE}
)
"""Causes after which the product booked for will never be infused: the appointment is cancelled, not held."""
QUARANTINING = frozenset({RiskCause.QUARANTINE, RiskCause.TEMPERATURE_EXCURSION, RiskCause.COI_BREAK})
"""Causes that put the product in quarantine until QA releases it."""


@dataclass(frozen=True)
class RiskResponse:
    """What a threat to the product does to its appointment."""

    move_to: AppointmentState | None
    """ON_HOLD or CANCELLED; None leaves the appointment as it is."""
    alert: bool
    """`slot.at_risk` to the site and an alert on the coordinators' worklist until one resolves it."""


def on_product_at_risk(
    state: AppointmentState, conditioning_may_have_started: bool, cause: RiskCause
) -> RiskResponse:
    """A quarantine, excursion or COI break holds the appointment, a QA rejection or a cancelled order
    cancels it, whatever its state: a confirmed one (the site may act on it) also raises an alert. Once
    conditioning may have started nothing moves without a person: an alert only."""
    if state not in ACTIVE_STATES:
        return RiskResponse(None, alert=False)
    if conditioning_may_have_started:
        return RiskResponse(None, alert=True)
    target = AppointmentState.CANCELLED if cause in ENDS_THE_PRODUCT else AppointmentState.ON_HOLD
    if state is target:
        return RiskResponse(None, alert=False)  # already held: the site was told when it was
    return RiskResponse(target, alert=state is AppointmentState.CONFIRMED)


def alert_detail(
    reason: str,
    before: AppointmentState,
    after: AppointmentState,
    conditioning_may_have_started: bool,
    conditioning_start_on: date,
) -> str:
    """What the coordinators and the site read: the cause, and what it did to the appointment."""
    if conditioning_may_have_started:
        return (
            f"{reason}; conditioning may have started on {conditioning_start_on}: clinical decision needed "
            f"(the appointment is left {after})"
        )
    if after is AppointmentState.CANCELLED:
        return f"{reason}; the {before} appointment is cancelled: make sure the site does not condition"
    return f"{reason}; the {before} appointment is on hold: the site must not start conditioning"


# ---------------------------------------------------------------- the chain's permissions


@dataclass(frozen=True)
class ChainFacts:
    """What order intake said last of the permissions the chain needs (its events only: services never
    ask each other). None is not known: a case opened by an `order.accepted.v1` (before these facts were
    published) is not judged on a fact until an event brings it (a qualification change at its site, a
    renewed authorization); order intake checked both when it accepted the order."""

    site_qualifications: tuple[tuple[date, date | None], ...] | None
    """The site's (effective, expiry) qualification windows for the therapy, both days included."""
    payer_authorization_expires_on: date | None
    """The last day the payer authorization covers."""


@dataclass(frozen=True)
class Lapse:
    cause: RiskCause
    detail: str
    """Scheduling's own words, starting with the code: what a 409 and the worklist say."""


CHAIN_LAPSES = frozenset({RiskCause.SITE_QUALIFICATION_LAPSED, RiskCause.PAYER_AUTHORIZATION_LAPSED})
RENEWED = {
    RiskCause.SITE_QUALIFICATION_LAPSED: SlotReasonCode.SITE_QUALIFICATION_RENEWED,
    RiskCause.PAYER_AUTHORIZATION_LAPSED: SlotReasonCode.PAYER_AUTHORIZATION_RENEWED,
}
"""What the site is told when an appointment held for a lapse goes on."""


def qualified_on(windows: tuple[tuple[date, date | None], ...], day: date) -> bool:
    return any(start <= day and (end is None or day <= end) for start, end in windows)


def chain_lapses(facts: ChainFacts, option: SlotOption) -> list[Lapse]:
    """Why the chain may not go on to this appointment, judged on its own days (site-local dates), not on
    today: the site must be qualified for the therapy on every day from the first day of conditioning
    through the infusion (day 0), and the payer authorization must cover the infusion day. Checked when a
    plan or an infusion is booked or moved (409) and when a delivery would confirm it (held instead)."""
    lapses: list[Lapse] = []
    if facts.site_qualifications is not None:
        uncovered = [d for d in option.admission_days() if not qualified_on(facts.site_qualifications, d)]
        if uncovered:
            lapses.append(
                Lapse(
                    RiskCause.SITE_QUALIFICATION_LAPSED,
                    f"{RiskCause.SITE_QUALIFICATION_LAPSED}: the site is not qualified for the therapy on "
                    f"{uncovered[0]} (conditioning {option.conditioning_start_on} to infusion "
                    f"{option.infusion_on})",
                )
            )
    expires_on = facts.payer_authorization_expires_on
    if expires_on is not None and expires_on < option.infusion_on:
        lapses.append(
            Lapse(
                RiskCause.PAYER_AUTHORIZATION_LAPSED,
                f"{RiskCause.PAYER_AUTHORIZATION_LAPSED}: the payer authorization ends on {expires_on}, "
                f"before the infusion on {option.infusion_on}",
            )
        )
    return lapses


def lapse_attention(lapses: list[Lapse]) -> str:
    """The worklist's words for a chain stopped at confirmation: what lapsed and who acts."""
    return (
        "; ".join(lapse.detail for lapse in lapses)
        + ": the infusion is on hold, not confirmed; record the renewal in order intake"
    )


# ---------------------------------------------------------------- a product released out of specification


@dataclass(frozen=True)
class Specification:
    """What scheduling knows of the product's release (`product.released_for_shipment.v2`) and of its
    out-of-specification file (`product.oos_file_completed.v1`); the documents stay in order intake."""

    out_of_specification: bool = False
    code: str | None = None
    documents_required: tuple[str, ...] = ()
    file_complete: bool = False

    @property
    def file_pending(self) -> bool:
        """Released out of specification and its file not complete yet."""
        return self.out_of_specification and not self.file_complete


def specification_problems(spec: Specification) -> list[str]:
    """Why the product may not be scheduled for infusion because of its release: out of specification
    with its file not complete (the physician's request, the patient's consent, the manufacturer's risk
    assessment, in the US the IND). Booking refuses it, whichever way it comes."""
    if not spec.file_pending:
        return []
    documents = ", ".join(spec.documents_required) or "its documents"
    return [
        f"the product was released out of specification ({spec.code or 'other'}): it cannot be scheduled "
        f"for infusion until order intake has its file complete (missing until then: {documents})"
    ]


def still_holding(quarantined: bool, spec: Specification, lapses: list[Lapse]) -> list[RiskCause]:
    """What keeps an appointment from going ahead (resumed from a hold, confirmed on a clean delivery),
    first to last: a quarantine, an out-of-specification file pending, each lapsed permission of the
    chain. Empty: it may go ahead. Every way that lifts one of them (a QA release, a completed file, a
    renewal, the delivery itself) asks this, so none lets the others through."""
    causes = [RiskCause.QUARANTINE] if quarantined else []
    if spec.file_pending:
        causes.append(RiskCause.OUT_OF_SPECIFICATION)
    return causes + [lapse.cause for lapse in lapses]


def held_for(hold_cause: str | None, causes: list[RiskCause]) -> bool:
    """Whether an appointment's hold names one of `causes` (an excursion or a COI break is the quarantine)."""
    if hold_cause is None:
        return False
    cause = RiskCause(hold_cause)
    return (RiskCause.QUARANTINE if cause in QUARANTINING else cause) in causes


def held_on_release(state: AppointmentState, spec: Specification) -> bool:
    """A tentative appointment booked before its product was released out of specification (a plan's
    infusion leg) is put on hold until the file is complete; a held one stays held."""
    return spec.file_pending and state is AppointmentState.TENTATIVE


@dataclass(frozen=True)
class EtaDecision:
    """What a new ETA does to a booked appointment: nothing (it still leaves the product time to arrive),
    a move to `move_to`, or an alert with `alert` as the reason (never a silent move)."""

    move_to: SlotOption | None = None
    alert: str | None = None


def on_eta_changed(
    *,
    state: AppointmentState,
    booked: SlotOption,
    eta_at: datetime,
    now: datetime,
    calendar: SiteCalendar,
    conditioning_days: int,
    receipt_buffer_hours: float,
    load: Load,
) -> EtaDecision:
    """A tentative or held appointment that no longer leaves the product time to arrive moves to the next
    feasible option; a confirmed one, one whose conditioning may have started, or one with no option left
    is an alert. `load` excludes the appointment itself."""
    earliest = earliest_conditioning_day(eta_at, receipt_buffer_hours, calendar.timezone)
    if booked.conditioning_start_on >= earliest:
        return EtaDecision()
    eta = eta_at.isoformat()
    if conditioning_may_have_started(booked.conditioning_start_on, now, calendar.timezone):
        return EtaDecision(
            alert=f"product delayed (ETA {eta}) but conditioning may have started on "
            f"{booked.conditioning_start_on}: clinical decision needed"
        )
    if state is AppointmentState.CONFIRMED:
        return EtaDecision(alert=f"a confirmed appointment's product is reported delayed (ETA {eta})")
    options = feasible_options(
        eta_at=eta_at,
        calendar=calendar,
        conditioning_days=conditioning_days,
        receipt_buffer_hours=receipt_buffer_hours,
        load=load,
        count=1,
    )
    if not options:
        return EtaDecision(alert=f"product delayed (ETA {eta}): no feasible option, choose a new date")
    return EtaDecision(move_to=options[0])


# ---------------------------------------------------------------- a coordinator's moves and the infusion


@dataclass(frozen=True)
class RuleProblem:
    """Why a request is refused: about one of its fields (`field`, HTTP 422) or about the state (409)."""

    detail: str
    field: str | None = None


def reschedule_problems(state: AppointmentState, current: SlotOption, target: SlotOption) -> list[str]:
    """Only a tentative or held appointment moves (a confirmed one may be conditioning the patient: it is
    cancelled and booked again), to other days. The past is `start_in_the_past`'s, capacity
    `booking_problems`'."""
    problems: list[str] = []
    if state not in (AppointmentState.TENTATIVE, AppointmentState.ON_HOLD):
        problems.append(f"an appointment that is {state} cannot be moved")
    if target == current:
        problems.append("the appointment is already on these days")
    return problems


def infusion_problems(
    *,
    state: AppointmentState,
    conditioning_start_on: date,
    product_received_at: datetime | None,
    product_quarantined: bool,
    infused_on: date,
    now: datetime,
    timezone: str,
) -> list[RuleProblem]:
    """An infusion is recorded only for a confirmed appointment whose product was received and is not in
    quarantine, on a day (site-local) not in the future, on or after conditioning started and the product
    arrived."""
    problems: list[RuleProblem] = []
    if state is not AppointmentState.CONFIRMED:
        problems.append(RuleProblem(f"only a confirmed appointment is infused; this one is {state}"))
    if product_received_at is None:
        problems.append(RuleProblem("the product has not been received"))
    elif product_quarantined:
        problems.append(RuleProblem("the product is in quarantine"))
    today = site_today(now, timezone)
    if infused_on > today:
        problems.append(
            RuleProblem(f"{infused_on} is in the future (today is {today} at the site)", "infused_on")
        )
    elif infused_on < conditioning_start_on:
        problems.append(
            RuleProblem(
                f"{infused_on} is before conditioning started ({conditioning_start_on})", "infused_on"
            )
        )
    elif (
        product_received_at is not None
        and infused_on < product_received_at.astimezone(ZoneInfo(timezone)).date()
    ):
        problems.append(RuleProblem(f"{infused_on} is before the product was received", "infused_on"))
    return problems


# ---------------------------------------------------------------- long-term follow-up


@dataclass(frozen=True)
class Visit:
    number: int
    due_on: date
    window_start: date
    window_end: date


FOLLOW_UP_MONTHS = (1, 3, 6, 12, 18, 24)
"""Visits in the first two years; then yearly to year 15 (integrating vectors carry 15 years of follow-up)."""


def follow_up_schedule(infused_on: date, years: int = 15) -> list[Visit]:
    months = [*FOLLOW_UP_MONTHS, *range(36, years * 12 + 1, 12)]
    visits = []
    for number, month in enumerate(months, start=1):
        due = _add_months(infused_on, month)
        slack = timedelta(days=7 if month <= 3 else 14 if month <= 24 else 30)
        visits.append(Visit(number, due, due - slack, due + slack))
    return visits


def _add_months(day: date, months: int) -> date:
    year, month = divmod(day.month - 1 + months, 12)
    target_year, target_month = day.year + year, month + 1
    for candidate_day in (day.day, 28):
        try:
            return date(target_year, target_month, candidate_day)
        except ValueError:
            continue
    raise ValueError(day)


def retry_delay_seconds(attempt: int, base_seconds: float, cap_seconds: float = 3600.0) -> float:
    """Exponential backoff: base, 2 * base, 4 * base, ... capped."""
    return float(min(base_seconds * 2 ** (attempt - 1), cap_seconds))


# ---------------------------------------------------------------- vein-to-vein plans
#
# A plan chains the legs of one autologous therapy: apheresis at a collection center (local day), the
# starting material's transit to the manufacturing site, a manufacturing slot (ISO week, site-local), the
# expected release, the return shipment (a transit allowance) and the infusion leg (conditioning start,
# day 0) at the treatment center. Each leg is judged in its own site's calendar and time zone.


@dataclass(frozen=True, order=True)
class IsoWeek:
    """An ISO 8601 week (Monday to Sunday), as manufacturing sites count their slots."""

    year: int
    week: int

    @staticmethod
    def of(day: date) -> IsoWeek:
        year, week, _ = day.isocalendar()
        return IsoWeek(year, week)

    @staticmethod
    def parse(text: str) -> IsoWeek:
        """`2026-W50`."""
        year, _, week = text.partition("-W")
        parsed = IsoWeek(int(year), int(week))
        date.fromisocalendar(parsed.year, parsed.week, 1)  # ValueError for a week the year does not have
        return parsed

    def monday(self) -> date:
        return date.fromisocalendar(self.year, self.week, 1)

    def next(self) -> IsoWeek:
        return IsoWeek.of(self.monday() + timedelta(days=7))

    def __str__(self) -> str:
        return f"{self.year}-W{self.week:02d}"


@dataclass(frozen=True)
class CollectionCalendar:
    """An apheresis center's calendar, in its own time zone."""

    timezone: str
    chairs_per_day: int
    working_weekdays: frozenset[int]
    """ISO weekdays, Monday = 1."""
    blackout_dates: frozenset[date]
    material_ready_at: time = time(16, 0)
    """Local time the day's collected material leaves for the manufacturing site."""

    def is_open(self, day: date) -> bool:
        return day.isoweekday() in self.working_weekdays and day not in self.blackout_dates

    def collected_at(self, day: date) -> datetime:
        # In UTC: arithmetic on a zoned datetime is wall-clock arithmetic, an hour off across a DST change.
        return datetime.combine(day, self.material_ready_at, tzinfo=ZoneInfo(self.timezone)).astimezone(UTC)


@dataclass(frozen=True)
class ManufacturingCalendar:
    """One manufacturing site's slots for one therapy, in its own time zone."""

    site_id: str
    timezone: str
    slots_per_week: int
    blackout_weeks: frozenset[IsoWeek]

    def week_starts_at(self, week: IsoWeek) -> datetime:
        """Monday 00:00 of the week at the site."""
        return datetime.combine(week.monday(), time(0), tzinfo=ZoneInfo(self.timezone)).astimezone(UTC)

    def local_day(self, at: datetime) -> date:
        return at.astimezone(ZoneInfo(self.timezone)).date()


class StartingMaterial(StrEnum):
    FRESH = "fresh"
    """Shipped at 2-8 °C: it must reach the site, and manufacturing start, within hours."""
    CRYOPRESERVED = "cryopreserved"
    """Frozen after collection: it may wait for a slot, up to a maximum age."""


@dataclass(frozen=True)
class ManufacturingProtocol:
    """A therapy's manufacturing time and the limits on its starting material."""

    manufacturing_days: int
    """Vein to release when manufacturing starts as the material arrives; a wait for the slot adds to it."""
    starting_material: StartingMaterial
    outbound_transit_hours: float
    """Transit allowance from the collection center to the manufacturing site."""
    max_fresh_transit_hours: float
    """Fresh material: collection to manufacturing start, at most."""
    max_cryopreserved_age_days: int
    """Cryopreserved material: collection to manufacturing start, at most."""
    return_transit_hours: float
    """Transit allowance of the drug product from release to delivery at the treatment center."""


@dataclass(frozen=True)
class Network:
    """The sites a case's plan runs through, and the therapy's protocol."""

    collection: CollectionCalendar
    manufacturing: tuple[ManufacturingCalendar, ...]
    infusion: SiteCalendar
    protocol: ManufacturingProtocol
    conditioning_days: int
    receipt_buffer_hours: float


@dataclass(frozen=True)
class PlanLoad:
    """What is already booked: collections at the collection center per local day, manufacturing slots
    taken per (site, week) for the therapy, and the treatment center's infusion load."""

    collections: Mapping[date, int]
    manufacturing: Mapping[tuple[str, IsoWeek], int]
    infusions: Load


class PlanState(StrEnum):
    OFFERED = "offered"
    BOOKED = "booked"
    """Every leg held tentatively: it counts against each site's capacity."""
    WITHDRAWN = "withdrawn"
    """Replaced by newer plans, another plan of the case was booked, or its lot failed."""


WITHDRAWN_BY_LOT_FAILURE = frozenset({PlanState.OFFERED, PlanState.BOOKED})
"""A failed lot ends the chain it was planned in: the case's offered and booked plans are withdrawn (a
booked one gives its collection chair and manufacturing slot back), so that the case can be planned again
for the next collection."""


@dataclass(frozen=True)
class Plan:
    collection_on: date
    """Collection center's local day."""
    collected_at: datetime
    manufacturing_site_id: str
    manufacturing_week: IsoWeek
    manufacturing_start_at: datetime
    manufacturing_start_on: date
    """Manufacturing site's local day."""
    released_at: datetime
    release_on: date
    """Manufacturing site's local day."""
    eta_at: datetime
    """The return shipment's expected delivery at the treatment center."""
    infusion: SlotOption
    """Conditioning start and infusion (day 0), the treatment center's local days."""


def collection_problems(day: date, calendar: CollectionCalendar, load: PlanLoad) -> list[str]:
    problems: list[str] = []
    if day in calendar.blackout_dates:
        problems.append(f"{day} is a blackout date at the collection center")
    elif day.isoweekday() not in calendar.working_weekdays:
        problems.append(f"{day} is not a working day at the collection center")
    elif load.collections.get(day, 0) >= calendar.chairs_per_day:
        problems.append(f"no apheresis chair left on {day}")
    return problems


def manufacturing_problems(week: IsoWeek, site: ManufacturingCalendar, load: PlanLoad) -> list[str]:
    if week in site.blackout_weeks:
        return [f"{week} is a blackout week at {site.site_id}"]
    if load.manufacturing.get((site.site_id, week), 0) >= site.slots_per_week:
        return [f"no manufacturing slot left at {site.site_id} in {week}"]
    return []


def manufacturing_start_at(
    collected_at: datetime, week: IsoWeek, site: ManufacturingCalendar, protocol: ManufacturingProtocol
) -> datetime:
    """As the material arrives, or at the start of the slot's week (site-local) if it arrives before."""
    arrival = collected_at + timedelta(hours=protocol.outbound_transit_hours)
    return max(arrival, site.week_starts_at(week))


def starting_material_problems(
    collected_at: datetime, week: IsoWeek, site: ManufacturingCalendar, protocol: ManufacturingProtocol
) -> list[str]:
    """The material must arrive by the end of the slot's week (site-local) and, from collection to
    manufacturing start, stay within its limit: hours for fresh material, days for cryopreserved."""
    arrival = collected_at + timedelta(hours=protocol.outbound_transit_hours)
    start = manufacturing_start_at(collected_at, week, site, protocol)
    if IsoWeek.of(site.local_day(arrival)) > week:
        return [f"the starting material reaches {site.site_id} only after {week}"]
    waited_hours = (start - collected_at).total_seconds() / 3600
    if protocol.starting_material is StartingMaterial.FRESH:
        limit = protocol.max_fresh_transit_hours
        if protocol.outbound_transit_hours > limit:
            return [
                f"fresh starting material takes {protocol.outbound_transit_hours:g} h to reach "
                f"{site.site_id}, more than its {limit:g} h limit"
            ]
        if waited_hours > limit:
            return [
                f"fresh starting material would wait until {site.local_day(start)} at {site.site_id}: "
                f"{waited_hours:g} h after collection, more than its {limit:g} h limit"
            ]
    elif waited_hours > protocol.max_cryopreserved_age_days * 24:
        return [
            f"cryopreserved starting material would be {waited_hours / 24:g} days old when manufacturing "
            f"starts in {week}, more than its {protocol.max_cryopreserved_age_days} days"
        ]
    return []


def chain(
    collection_on: date, site: ManufacturingCalendar, week: IsoWeek, network: Network
) -> tuple[datetime, datetime, datetime, datetime]:
    """The leg instants of a collection day and a manufacturing week: collected, manufacturing start,
    released, delivered at the treatment center (ETA)."""
    protocol = network.protocol
    collected_at = network.collection.collected_at(collection_on)
    start = manufacturing_start_at(collected_at, week, site, protocol)
    released = (
        start + timedelta(days=protocol.manufacturing_days) - timedelta(hours=protocol.outbound_transit_hours)
    )
    return collected_at, start, released, released + timedelta(hours=protocol.return_transit_hours)


def _plan(
    collection_on: date, site: ManufacturingCalendar, week: IsoWeek, infusion: SlotOption, network: Network
) -> Plan:
    collected_at, start, released, eta = chain(collection_on, site, week, network)
    return Plan(
        collection_on=collection_on,
        collected_at=collected_at,
        manufacturing_site_id=site.site_id,
        manufacturing_week=week,
        manufacturing_start_at=start,
        manufacturing_start_on=site.local_day(start),
        released_at=released,
        release_on=site.local_day(released),
        eta_at=eta,
        infusion=infusion,
    )


def _first_slot(
    collection_on: date, site: ManufacturingCalendar, network: Network, load: PlanLoad
) -> IsoWeek | None:
    """The earliest week with a slot the material can make, while it stays within its limit."""
    collected_at = network.collection.collected_at(collection_on)
    arrival = collected_at + timedelta(hours=network.protocol.outbound_transit_hours)
    week = IsoWeek.of(site.local_day(arrival))
    while not starting_material_problems(collected_at, week, site, network.protocol):
        if not manufacturing_problems(week, site, load):
            return week
        week = week.next()
    return None


def plan_for_day(day: date, network: Network, load: PlanLoad) -> Plan | None:
    """The best plan collecting on `day` (whose chair the caller has checked): the earliest manufacturing
    slot the starting material can make at every site making the therapy, the first infusion option after
    the product's expected delivery; the earliest infusion wins. None when no site's chain fits."""
    candidates: list[Plan] = []
    for site in network.manufacturing:
        week = _first_slot(day, site, network, load)
        if week is None:
            continue
        eta = chain(day, site, week, network)[3]
        options = feasible_options(
            eta_at=eta,
            calendar=network.infusion,
            conditioning_days=network.conditioning_days,
            receipt_buffer_hours=network.receipt_buffer_hours,
            load=load.infusions,
            count=1,
        )
        if options:
            candidates.append(_plan(day, site, week, options[0], network))
    if not candidates:
        return None
    return min(candidates, key=lambda p: (p.infusion.infusion_on, p.released_at, p.manufacturing_site_id))


def earliest_plans(
    *,
    network: Network,
    load: PlanLoad,
    earliest_collection_on: date,
    count: int = 3,
    horizon_days: int = 120,
) -> list[Plan]:
    """The earliest `count` plans, one per collection day: a chair at the collection center, the
    earliest manufacturing slot the starting material can make (of every site making the therapy; the
    earliest infusion wins), and the first infusion option after the product's expected delivery
    (`feasible_options`: receipt buffer, chairs, beds, working days, blackouts at the treatment center)."""
    plans: list[Plan] = []
    for offset in range(horizon_days):
        day = earliest_collection_on + timedelta(days=offset)
        if collection_problems(day, network.collection, load):
            continue
        plan = plan_for_day(day, network, load)
        if plan is not None:
            plans.append(plan)
            if len(plans) == count:
                break
    return plans


def plan_problems(plan: Plan, *, network: Network, load: PlanLoad, earliest_collection_on: date) -> list[str]:
    """Everything that forbids booking this plan now, leg by leg, the manufacturing slot first (no
    collection without one): the week's capacity and blackout, the starting material's limits, the
    collection day, and the infusion leg after the product's expected delivery (I4)."""
    site = next((s for s in network.manufacturing if s.site_id == plan.manufacturing_site_id), None)
    if site is None:
        return [f"{plan.manufacturing_site_id} no longer manufactures this therapy"]
    problems = manufacturing_problems(plan.manufacturing_week, site, load)
    collected_at = network.collection.collected_at(plan.collection_on)
    problems += starting_material_problems(collected_at, plan.manufacturing_week, site, network.protocol)
    if plan.collection_on < earliest_collection_on:
        problems.append(
            f"the collection on {plan.collection_on} is no longer ahead (first possible: {earliest_collection_on})"
        )
    problems += collection_problems(plan.collection_on, network.collection, load)
    eta = chain(plan.collection_on, site, plan.manufacturing_week, network)[3]
    problems += booking_problems(
        plan.infusion,
        eta_at=eta,
        receipt_buffer_hours=network.receipt_buffer_hours,
        calendar=network.infusion,
        load=load.infusions,
    )
    return problems


# ---------------------------------------------------------------- a booked plan's legs, and its slips


class PlanLeg(StrEnum):
    """A booked plan's legs, each confirmed by its own event: the collection recorded, manufacturing
    started, the product released for shipment, the product delivered clean (which alone confirms the
    infusion, I4)."""

    COLLECTION = "collection"
    MANUFACTURING = "manufacturing"
    RELEASE = "release"
    DELIVERY = "delivery"


@dataclass(frozen=True)
class LegsDone:
    """When each leg of a booked plan was confirmed (None: not yet)."""

    collection_done_at: datetime | None = None
    manufacturing_started_at: datetime | None = None
    product_released_at: datetime | None = None
    product_delivered_at: datetime | None = None


@dataclass(frozen=True)
class Replan:
    """A slipped plan's later legs: `plan` with its new days (the infusion leg moved when
    `infusion_moved`), or an `alert` (the reason, scheduling's words) when the infusion leg cannot be
    moved without a person: conditioning may have started, the appointment is confirmed, or no option
    fits. The other legs follow the slip in every case (nothing is silently dropped)."""

    plan: Plan
    infusion_moved: bool = False
    alert: str | None = None


def postponement_problems(
    plan: Plan, legs: LegsDone, new_collection_on: date, earliest_collection_on: date
) -> list[RuleProblem]:
    """Why a booked plan's collection cannot be postponed to `new_collection_on`: a collection already
    recorded is not moved (409); the new day must be later than the planned one and ahead (422)."""
    if legs.collection_done_at is not None:
        return [RuleProblem("the collection was recorded: a done collection is not postponed")]
    if new_collection_on <= plan.collection_on:
        return [RuleProblem(f"must be after the planned collection ({plan.collection_on})", "collection_on")]
    if new_collection_on < earliest_collection_on:
        return [
            RuleProblem(
                f"must be on or after {earliest_collection_on}, the collection center's next day",
                "collection_on",
            )
        ]
    return []


def replan_after_postponement(
    plan: Plan,
    new_collection_on: date,
    *,
    state: AppointmentState,
    network: Network,
    load: PlanLoad,
    now: datetime,
) -> Replan | list[str]:
    """The plan collecting on `new_collection_on` instead: a chair that day at the collection center, then
    manufacturing slot, release, return and infusion re-planned within capacity (`plan_for_day`; `load`
    excludes the plan itself). Refused with every reason when the day has no chair or no chain fits, or
    when the infusion leg may not move: only a tentative or held appointment moves, never once its
    conditioning may have started."""
    problems = collection_problems(new_collection_on, network.collection, load)
    if problems:
        return problems
    if conditioning_may_have_started(plan.infusion.conditioning_start_on, now, network.infusion.timezone):
        return [
            f"conditioning may have started on {plan.infusion.conditioning_start_on}: clinical decision needed"
        ]
    if state not in (AppointmentState.TENTATIVE, AppointmentState.ON_HOLD):
        return [f"the infusion appointment is {state}: it is not moved"]
    replanned = plan_for_day(new_collection_on, network, load)
    if replanned is None:
        return [f"no manufacturing slot and infusion fit a collection on {new_collection_on}"]
    return Replan(replanned, infusion_moved=replanned.infusion != plan.infusion)


def delayed_release_at(plan: Plan, expected_release_on: date, site: ManufacturingCalendar) -> datetime | None:
    """The release instant on the manufacturing site's `expected_release_on`, at the local time the plan
    released at; None when that is not later than planned (no slip: nothing is re-planned)."""
    planned_time = plan.released_at.astimezone(ZoneInfo(site.timezone)).time()
    released = datetime.combine(expected_release_on, planned_time, tzinfo=ZoneInfo(site.timezone))
    released_utc = released.astimezone(UTC)
    return released_utc if released_utc > plan.released_at else None


def replan_after_release_delay(
    plan: Plan,
    released_at: datetime,
    *,
    state: AppointmentState,
    network: Network,
    site: ManufacturingCalendar,
    now: datetime,
    load: Load,
) -> Replan:
    """A lot released later: the release, the return shipment's delivery (`return_transit_hours` after)
    and the infusion follow (`on_eta_changed`: moved to the next feasible option when conditioning would
    start before the product is on site plus the receipt buffer; an alert, never a silent move, when the
    appointment is confirmed, conditioning may have started, or no option fits). `load` excludes the
    plan's own appointment."""
    eta = released_at + timedelta(hours=network.protocol.return_transit_hours)
    decision = on_eta_changed(
        state=state,
        booked=plan.infusion,
        eta_at=eta,
        now=now,
        calendar=network.infusion,
        conditioning_days=network.conditioning_days,
        receipt_buffer_hours=network.receipt_buffer_hours,
        load=load,
    )
    replanned = replace(
        plan,
        released_at=released_at,
        release_on=site.local_day(released_at),
        eta_at=eta,
        infusion=decision.move_to or plan.infusion,
    )
    return Replan(replanned, infusion_moved=decision.move_to is not None, alert=decision.alert)


# ---------------------------------------------------------------- changing the network's calendars


def collection_calendar_conflicts(calendar: CollectionCalendar, booked: Mapping[date, int]) -> list[str]:
    """What a new collection center calendar would break: a day a booked plan collects on that closes, or
    has fewer chairs than its booked collections. A change never strands a booked collection silently:
    its plan is moved or cancelled first."""
    problems: list[str] = []
    for day, count in sorted(booked.items()):
        if not calendar.is_open(day):
            problems.append(f"{count} booked collection(s) on {day}, which the new calendar closes")
        elif count > calendar.chairs_per_day:
            problems.append(
                f"{count} booked collections on {day}, more than {calendar.chairs_per_day} chair(s)"
            )
    return problems


def manufacturing_calendar_conflicts(
    blackout_weeks: frozenset[IsoWeek], slots: Mapping[str, int], booked: Mapping[tuple[str, IsoWeek], int]
) -> list[str]:
    """What a manufacturing site's new blackout weeks and slots per therapy (`slots`, by therapy code)
    would break: a week holding booked slots that becomes a blackout, or a therapy left with fewer slots
    in a week than are booked there (a therapy no longer listed has none)."""
    problems: list[str] = []
    for (therapy, week), count in sorted(booked.items(), key=lambda item: (str(item[0][1]), item[0][0])):
        if week in blackout_weeks:
            problems.append(f"{count} booked {therapy} slot(s) in {week}, which becomes a blackout week")
        elif count > slots.get(therapy, 0):
            problems.append(f"{count} booked {therapy} slot(s) in {week}, more than {slots.get(therapy, 0)}")
    return problems
