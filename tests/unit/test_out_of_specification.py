"""A product released out of specification, without I/O: what its file must hold (order intake) and what
scheduling may do with it until the file is complete (issue 18)."""

from __future__ import annotations

import pytest
from cgt_contracts.events import OosDocument, SlotReasonCode

from services.order_intake.domain import (
    oos_documents_missing,
    oos_documents_required,
    oos_file_refusal,
    release_specification_problem,
)
from services.scheduling.domain import (
    AppointmentState,
    Lapse,
    RiskCause,
    Specification,
    held_for,
    held_on_release,
    reason_code_of,
    specification_problems,
    still_holding,
)

BASE = (OosDocument.PHYSICIAN_REQUEST, OosDocument.PATIENT_CONSENT, OosDocument.RISK_ASSESSMENT)
ALL = (*BASE, OosDocument.IND)


# ---------------------------------------------------------------- order intake: the file


@pytest.mark.parametrize(("country", "required"), [("US", ALL), (None, ALL), ("DE", BASE), ("FR", BASE)])
def test_the_file_needs_the_ind_in_the_us_and_where_the_country_is_unknown(
    country: str | None, required: tuple[OosDocument, ...]
) -> None:
    assert oos_documents_required(country) == required


def test_the_file_is_complete_only_when_it_holds_every_required_reference() -> None:
    refs = {OosDocument.PHYSICIAN_REQUEST: "PR-1", OosDocument.PATIENT_CONSENT: "ICF-1"}
    assert oos_documents_missing(refs, "DE") == (OosDocument.RISK_ASSESSMENT,)
    assert oos_documents_missing(refs, "US") == (OosDocument.RISK_ASSESSMENT, OosDocument.IND)
    refs[OosDocument.RISK_ASSESSMENT] = "RA-1"
    assert oos_documents_missing(refs, "DE") == ()
    assert oos_documents_missing(refs, "US") == (OosDocument.IND,), "in the US the IND as well"
    refs[OosDocument.IND] = "IND-1"
    assert oos_documents_missing(refs, "US") == ()
    refs[OosDocument.PATIENT_CONSENT] = ""
    assert oos_documents_missing(refs, "US") == (OosDocument.PATIENT_CONSENT,), "an empty reference is none"


def test_only_a_product_released_out_of_specification_has_a_file_and_a_complete_one_is_not_changed() -> None:
    refused = oos_file_refusal(released_out_of_specification=False, completed=False)
    assert refused is not None and "not released out of specification" in refused
    assert oos_file_refusal(released_out_of_specification=True, completed=False) is None
    completed = oos_file_refusal(released_out_of_specification=True, completed=True)
    assert completed is not None and "already complete" in completed


def test_a_release_out_of_specification_says_what_it_missed_and_only_then() -> None:
    assert release_specification_problem(True, code_given=False) is not None
    assert release_specification_problem(False, code_given=True) is not None
    assert release_specification_problem(True, code_given=True) is None
    assert release_specification_problem(False, code_given=False) is None


# ---------------------------------------------------------------- scheduling: the gate

PENDING = Specification(
    out_of_specification=True, code="cell_dose", documents_required=("physician_request", "ind")
)
COMPLETE = Specification(out_of_specification=True, code="cell_dose", file_complete=True)


def test_a_product_out_of_specification_is_not_scheduled_until_its_file_is_complete() -> None:
    [problem] = specification_problems(PENDING)
    assert "out of specification (cell_dose)" in problem and "physician_request, ind" in problem
    assert specification_problems(COMPLETE) == []
    assert specification_problems(Specification()) == [], "in specification: nothing to wait for"


def test_nothing_goes_ahead_while_the_file_is_pending_the_product_quarantined_or_a_permission_lapsed() -> (
    None
):
    lapse = Lapse(RiskCause.PAYER_AUTHORIZATION_LAPSED, "payer_authorization_lapsed: …")
    assert still_holding(quarantined=False, spec=PENDING, lapses=[]) == [RiskCause.OUT_OF_SPECIFICATION]
    assert still_holding(quarantined=True, spec=COMPLETE, lapses=[]) == [RiskCause.QUARANTINE]
    assert still_holding(quarantined=True, spec=PENDING, lapses=[lapse]) == [
        RiskCause.QUARANTINE,
        RiskCause.OUT_OF_SPECIFICATION,
        RiskCause.PAYER_AUTHORIZATION_LAPSED,
    ]
    assert still_holding(quarantined=False, spec=COMPLETE, lapses=[]) == []
    assert still_holding(quarantined=False, spec=Specification(), lapses=[]) == []


def test_a_hold_for_an_excursion_or_a_coi_break_is_the_quarantines() -> None:
    assert held_for("temperature_excursion", [RiskCause.QUARANTINE])
    assert held_for("coi_break", [RiskCause.QUARANTINE, RiskCause.OUT_OF_SPECIFICATION])
    assert not held_for("out_of_specification", [RiskCause.QUARANTINE])
    assert not held_for("quarantine", [RiskCause.PAYER_AUTHORIZATION_LAPSED])
    assert not held_for(None, [RiskCause.QUARANTINE])


@pytest.mark.parametrize("state", list(AppointmentState))
def test_only_a_tentative_appointment_is_held_by_a_release_out_of_specification(
    state: AppointmentState,
) -> None:
    assert held_on_release(state, PENDING) is (state is AppointmentState.TENTATIVE)
    assert not held_on_release(state, COMPLETE)
    assert not held_on_release(state, Specification())


def test_the_hold_is_told_with_its_own_code() -> None:
    assert reason_code_of(RiskCause.OUT_OF_SPECIFICATION) is SlotReasonCode.OUT_OF_SPECIFICATION
