"""The contracts package: envelopes, strictness, and committed schemas that only change compatibly."""

from __future__ import annotations

import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
from cgt_contracts.events import EVENT_TYPES, OrderAccepted, OrderAcceptedData, parse_event
from pydantic import ValidationError

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "contracts"))
from generate_schemas import SCHEMAS, current_schemas  # type: ignore[import-not-found]


def accepted(**data_overrides: Any) -> dict[str, Any]:
    data = {
        "order_id": str(uuid4()),
        "coi": "CHW4321260000014",
        "patient_ref": "PSN-1",
        "therapy_code": "WASKYRA",
        "treatment_center_id": "TC-BOSTON",
        "storage_limit_celsius": -150.0,
        "conditioning_days": 4,
        "accepted_at": "2026-03-01T10:00:00+01:00",
    }
    data.update(data_overrides)
    return {
        "specversion": "1.0",
        "id": str(uuid4()),
        "source": "cgt/order-intake",
        "type": "order.accepted.v1",
        "time": "2026-03-01T09:00:00Z",
        "subject": "CHW4321260000014",
        "datacontenttype": "application/json",
        "correlationid": "c-1",
        "data": data,
    }


def test_an_event_round_trips_through_json_and_is_normalised_to_utc() -> None:
    event = parse_event(json.dumps(accepted()))
    assert isinstance(event, OrderAccepted)
    assert event.data.accepted_at.utcoffset() is not None
    assert event.data.accepted_at.isoformat() == "2026-03-01T09:00:00+00:00"
    assert parse_event(event.model_dump_json()) == event


@pytest.mark.parametrize(
    "coi",
    [
        "CHW432126000001",  # 15 characters: the check character is missing
        "CHW43212600000145",  # 17 characters
        "CHO4321260000014",  # FIN letter O is not issued
        "XXW4321260000014",  # not a COI (`CH` prefix)
        "chw4321260000014",  # lower case never prints on a label
    ],
)
def test_a_coi_of_the_wrong_form_is_refused_in_data_and_subject(coi: str) -> None:
    with pytest.raises(ValidationError, match="coi"):
        parse_event(json.dumps(accepted(coi=coi)))
    event = accepted()
    event["subject"] = coi
    with pytest.raises(ValidationError, match="subject"):
        parse_event(json.dumps(event))


def test_the_coi_form_is_defined_once_in_the_contracts() -> None:
    from cgt_contracts.envelope import COI_REGEX

    from services.common.identifiers import COI_PATTERN

    assert COI_PATTERN.pattern == COI_REGEX


def test_an_event_about_an_order_rejected_before_its_coi_is_keyed_by_the_order_id() -> None:
    event = accepted()
    event["subject"] = uuid4().hex.upper()
    assert parse_event(json.dumps(event)).subject == event["subject"]


def test_unknown_fields_are_refused() -> None:
    with pytest.raises(ValidationError, match="extra"):
        parse_event(json.dumps(accepted(patient_name="Jane Doe")))


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValidationError):
        parse_event(json.dumps(accepted(accepted_at="2026-03-01T10:00:00")))


def test_unknown_event_types_are_refused() -> None:
    document = accepted()
    document["type"] = "order.accepted.v9"
    with pytest.raises(ValidationError):
        parse_event(json.dumps(document))


def test_payloads_carry_no_patient_identifying_fields() -> None:
    forbidden = {"name", "patient_name", "date_of_birth", "dob", "mrn", "medical_record_number", "address"}
    for model in EVENT_TYPES.values():
        data_model = model.model_fields["data"].annotation
        assert data_model is not None
        assert forbidden.isdisjoint(data_model.model_fields), model.__name__


def test_every_event_type_is_versioned() -> None:
    for name in EVENT_TYPES:
        assert name.rsplit(".", 1)[-1].startswith("v")


def _breaking_changes(old: dict[str, Any], new: dict[str, Any], path: str = "") -> list[str]:
    """Changes that break a reader or writer of the old version: a removed or retyped property, a newly
    required field, a narrowed enum or literal. Adding an optional field is compatible."""
    problems: list[str] = []
    old_props, new_props = old.get("properties", {}), new.get("properties", {})
    for name, old_prop in old_props.items():
        if name not in new_props:
            problems.append(f"{path}{name}: removed")
            continue
        new_prop = new_props[name]
        for key in ("type", "format", "$ref", "const"):
            if old_prop.get(key) != new_prop.get(key):
                problems.append(f"{path}{name}: {key} {old_prop.get(key)!r} -> {new_prop.get(key)!r}")
        if "enum" in old_prop and not set(old_prop["enum"]) <= set(new_prop.get("enum", [])):
            problems.append(f"{path}{name}: enum narrowed")
    newly_required = set(new.get("required", [])) - set(old.get("required", []))
    problems.extend(f"{path}{name}: newly required" for name in sorted(newly_required))
    for name, old_def in old.get("$defs", {}).items():
        if name in new.get("$defs", {}):
            problems.extend(_breaking_changes(old_def, new["$defs"][name], f"{path}{name}."))
        else:
            problems.append(f"{path}$defs.{name}: removed")
    return problems


@pytest.mark.parametrize("event_type", sorted(EVENT_TYPES))
def test_committed_schema_exists_and_the_model_is_compatible_with_it(event_type: str) -> None:
    committed_path = SCHEMAS / f"{event_type}.json"
    assert committed_path.exists(), f"run `make schemas` and commit {committed_path.name}"
    committed = json.loads(committed_path.read_text())
    current = current_schemas()[event_type]
    assert _breaking_changes(committed, current) == [], "incompatible change: publish a new version instead"


def test_the_compatibility_check_catches_a_breaking_change() -> None:
    committed = current_schemas()["order.accepted.v1"]
    changed = json.loads(json.dumps(committed))
    data = changed["$defs"]["OrderAcceptedData"]
    data["properties"]["conditioning_days"]["type"] = "string"
    data["required"].append("new_mandatory_field")
    data["properties"]["new_mandatory_field"] = {"type": "string"}
    problems = _breaking_changes(committed, changed)
    assert any("conditioning_days: type" in p for p in problems)
    assert any("new_mandatory_field: newly required" in p for p in problems)


def test_instances_of_every_model_validate_against_their_own_published_type() -> None:
    event = OrderAccepted(
        source="cgt/order-intake",
        subject="CHW4321260000014",
        correlationid="c",
        data=OrderAcceptedData(
            **{**accepted()["data"], "accepted_at": datetime.fromisoformat("2026-03-01T09:00:00+00:00")}
        ),
    )
    assert event.type == "order.accepted.v1" and EVENT_TYPES[event.type] is OrderAccepted


FREE_TEXT_FIELDS = {"reason", "reasons", "location", "note", "message", "refusal_reason", "detail"}
"""Names of fields that carried (or would carry) text a person typed or a sentence our code wrote."""


def _field_names(model: Any) -> set[str]:
    """Every field name of a model and of the models nested in it."""
    names: set[str] = set()
    for name, info in model.model_fields.items():
        names.add(name)
        for nested in (info.annotation, *getattr(info.annotation, "__args__", ())):
            inner = getattr(nested, "__args__", (nested,))
            for candidate in (nested, *inner):
                if isinstance(candidate, type) and hasattr(candidate, "model_fields"):
                    names |= _field_names(candidate)
    return names


def test_the_events_written_carry_codes_never_free_text() -> None:
    """I6: every type our services write says why with a code; the superseded ones are only read. A
    courier's scan is how COI tracking receives a location from a courier's system (as `POST .../scans`
    over HTTP): COI tracking keeps it, and no event of ours repeats it."""
    from cgt_contracts.events import SUPERSEDED

    received = {"courier.scan.v1", "courier.scan.v2"}
    for name, model in EVENT_TYPES.items():
        if name in SUPERSEDED or name in received:
            continue
        data_model = model.model_fields["data"].annotation
        assert FREE_TEXT_FIELDS.isdisjoint(_field_names(data_model)), name


def test_every_superseded_type_names_a_type_that_exists() -> None:
    from cgt_contracts.events import SUPERSEDED

    for old, new in SUPERSEDED.items():
        assert old in EVENT_TYPES and new in EVENT_TYPES and new not in SUPERSEDED
        assert old.rsplit(".", 1)[0] == new.rsplit(".", 1)[0]


def test_a_reason_code_outside_its_closed_list_is_refused() -> None:
    from cgt_contracts.events import OrderCancelledV2

    event = {
        "specversion": "1.0",
        "id": str(uuid4()),
        "source": "cgt/order-intake",
        "type": "order.cancelled.v2",
        "time": "2026-03-01T09:00:00Z",
        "subject": "CHW4321260000014",
        "correlationid": "c-1",
        "data": {
            "order_id": str(uuid4()),
            "coi": "CHW4321260000014",
            "reason_code": "patient_withdrew",
            "cancelled_by": "coord-1",
            "cancelled_at": "2026-03-01T09:00:00Z",
        },
    }
    assert isinstance(parse_event(json.dumps(event)), OrderCancelledV2)
    event["data"]["reason_code"] = "the patient moved to Ohio"  # type: ignore[index]
    with pytest.raises(ValidationError, match="reason_code"):
        parse_event(json.dumps(event))
