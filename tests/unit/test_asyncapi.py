"""The bus's AsyncAPI documents: each service's, served at /asyncapi.json, and the combined one committed in
contracts/asyncapi.json. Both are valid against the official AsyncAPI JSON Schemas (@asyncapi/specs), name
every topic and every event type with its payload, and say what the code declares: the committed file is
what `make schemas` generates now, and each service's `PUBLISHES` is exactly the events its code builds.

The apps are built in-process and never started: no broker, no server, a throwaway SQLite file."""

from __future__ import annotations

import ast
import copy
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
from cgt_contracts.events import EVENT_TYPES, SUPERSEDED, OrderAcceptedV2, SlotConfirmed
from fastapi import FastAPI
from fastapi.testclient import TestClient
from faststream.kafka import KafkaBroker, KafkaMessage, TestKafkaBroker
from faststream.message import StreamMessage
from pydantic.json_schema import models_json_schema

from deploy import fetch_asyncapi_schemas
from services.common.asyncapi import (
    SCHEMAS_REF,
    Consumed,
    combined_document,
    declarations,
    declare_publishers,
    documented_consumer,
    type_name,
)
from services.common.topics import ALL_TOPICS
from tests.support.apps import SERVICES, every_app
from tests.support.asyncapi import errors

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "contracts"))
from generate_asyncapi import DOCUMENT, current_document, render  # type: ignore[import-not-found]  # noqa: E402

COMMITTED: dict[str, Any] = json.loads(DOCUMENT.read_text())
EXPECTED_CHANNELS = {
    "order_intake": {
        ("receive", "shipments.events"),
        ("receive", "scheduling.events"),
        ("send", "orders.events"),
        ("send", "shipments.events.dlq"),
        ("send", "scheduling.events.dlq"),
    },
    "coi_tracking": {
        ("receive", "orders.events"),
        ("receive", "couriers.scans"),
        ("send", "shipments.events"),
        ("send", "ledger.heads"),
        ("send", "orders.events.dlq"),
        ("send", "couriers.scans.dlq"),
    },
    "scheduling": {
        ("receive", "orders.events"),
        ("receive", "shipments.events"),
        ("send", "scheduling.events"),
        ("send", "orders.events.dlq"),
        ("send", "shipments.events.dlq"),
    },
}
"""What each service reads and writes on the bus (as docs/asyncapi.md and DESIGN §5 say)."""


@pytest.fixture(scope="module")
def apps(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, FastAPI]]:
    with every_app(tmp_path_factory.mktemp("asyncapi")) as built:
        yield built


@pytest.fixture(scope="module")
def served(apps: dict[str, FastAPI]) -> dict[str, dict[str, Any]]:
    """Each service's document as a caller without a token gets it (the app never started: no lifespan)."""
    documents = {}
    for service, app in apps.items():
        response = TestClient(app).get("/asyncapi.json")
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/json"
        documents[service] = response.json()
    return documents


def resolve(document: dict[str, Any], node: Any) -> Any:
    """Follow `$ref`s within `document` (FastStream percent-encodes its keys in them)."""
    while isinstance(node, dict) and "$ref" in node:
        reference = node["$ref"]
        assert reference.startswith("#/"), reference
        node = document
        for part in reference[2:].split("/"):
            node = node[unquote(part).replace("~1", "/").replace("~0", "~")]
    return node


def references(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from references(value)
    elif isinstance(node, list):
        for item in node:
            yield from references(item)


def payload_titles(document: dict[str, Any], operation: dict[str, Any]) -> list[str]:
    """The models an operation's message carries: the titles of its payload's `oneOf`."""
    [message] = operation["messages"]
    payload = resolve(document, resolve(document, message)["payload"])
    return sorted(resolve(document, option)["title"] for option in payload["oneOf"])


# ---------------------------------------------------------------- the committed combined document


def test_the_committed_document_is_what_make_schemas_generates_now() -> None:
    assert render(current_document()) == DOCUMENT.read_text(), (
        "run `make schemas` and commit contracts/asyncapi.json"
    )


def test_the_combined_document_is_a_valid_asyncapi_3_document() -> None:
    assert COMMITTED["asyncapi"] == "3.0.0"
    assert errors(COMMITTED) == []


BREAKAGES: dict[str, tuple[Callable[[dict[str, Any]], object], str]] = {
    "an unknown action": (
        lambda d: d["operations"]["order-intake.send.orders.events"].update(action="publish"),
        "operations/order-intake.send.orders.events/action: 'publish' is not one of ['send', 'receive']",
    ),
    "a binding of the wrong type": (
        lambda d: d["channels"]["orders.events"]["bindings"]["kafka"].update(partitions="six"),
        "channels/orders.events/bindings/kafka/partitions: 'six' is not of type 'integer'",
    ),
    "an OpenAPI discriminator in a payload schema": (
        lambda d: d["components"]["schemas"]["OrderAcceptedV2"].update(
            discriminator={"propertyName": "type"}
        ),
        "components/schemas/OrderAcceptedV2/discriminator: {'propertyName': 'type'} is not of type 'string'",
    ),
    "no info": (lambda d: d.pop("info"), "<document>: 'info' is a required property"),
}


@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
def test_the_validator_refuses_what_the_asyncapi_schema_refuses(breakage: str) -> None:
    """Not a vacuous check: the schema is followed into operations, bindings and payload schemas."""
    change, expected = BREAKAGES[breakage]
    broken = copy.deepcopy(COMMITTED)
    change(broken)
    assert errors(broken)[0] == expected


def test_every_topic_is_a_channel_with_its_partitions() -> None:
    channels = COMMITTED["channels"]
    assert sorted(channels) == sorted(spec.name for spec in ALL_TOPICS)
    for spec in ALL_TOPICS:
        assert channels[spec.name]["address"] == spec.name
        assert channels[spec.name]["bindings"]["kafka"]["partitions"] == spec.partitions


def test_every_event_type_is_a_message_on_a_channel_with_its_payload_schema() -> None:
    messages = COMMITTED["components"]["messages"]
    assert sorted(messages) == sorted([*EVENT_TYPES, "deadLetter"])
    _, expected = models_json_schema(
        [(model, "validation") for model in EVENT_TYPES.values()], ref_template=SCHEMAS_REF
    )
    assert COMMITTED["components"]["schemas"] == expected["$defs"]
    on_channels = [name for channel in COMMITTED["channels"].values() for name in channel["messages"]]
    for name, model in EVENT_TYPES.items():
        assert messages[name]["payload"] == {"$ref": f"#/components/schemas/{model.__name__}"}
        assert resolve(COMMITTED, messages[name]["payload"])["properties"]["type"]["const"] == name
        assert on_channels.count(name) == 1, f"{name} is on {on_channels.count(name)} channels"


def test_superseded_types_are_on_the_channel_of_their_successor_and_only_read() -> None:
    channel_of = {name: topic for topic, c in COMMITTED["channels"].items() for name in c["messages"]}
    sent = {
        name.split("#/channels/")[1].split("/messages/")[1]
        for key, operation in COMMITTED["operations"].items()
        if operation["action"] == "send"
        for name in (m["$ref"] for m in operation["messages"])
    }
    for old, new in SUPERSEDED.items():
        assert channel_of[old] == channel_of[new]
        assert old not in sent and new in sent
        assert COMMITTED["components"]["messages"][old]["summary"].startswith(f"Superseded by {new}")


def test_every_internal_reference_resolves() -> None:
    for reference in references(COMMITTED):
        assert resolve(COMMITTED, {"$ref": reference}) is not None


def test_operations_say_what_each_service_declares(apps: dict[str, FastAPI]) -> None:
    operations = COMMITTED["operations"]
    for service, app in apps.items():
        name = app.state.runtime.settings.service_name
        recorded = declarations(app.state.runtime.broker)
        module = sys.modules[f"services.{service}.app"]
        assert recorded.published == module.PUBLISHES
        for topic, types in module.PUBLISHES.items():
            listed = [m["$ref"].rsplit("/", 1)[1] for m in operations[f"{name}.send.{topic}"]["messages"]]
            assert listed == sorted(type_name(t) for t in types)
        for consumed in recorded.consumed:
            read = {type_name(t) for t in consumed.event_types}
            per_topic = [
                {m["$ref"].rsplit("/", 1)[1] for m in operations[f"{name}.receive.{topic}"]["messages"]}
                for topic in consumed.topics
            ]
            assert set().union(*per_topic) == read
        actions = {
            (key.split(".", 2)[1], key.split(".", 2)[2]) for key in operations if key.startswith(f"{name}.")
        }
        assert actions == EXPECTED_CHANNELS[service]
    assert [key for key in operations if key.startswith("couriers.")] == ["couriers.send.couriers.scans"]


# ---------------------------------------------------------------- PUBLISHES: the events each service builds


def built_event_classes(package: str) -> set[str]:
    """The event classes a service's code constructs (every event it builds goes to its outbox)."""
    names = {model.__name__ for model in EVENT_TYPES.values()}
    found = set()
    for path in (ROOT / "services" / package).glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                func = node.func
                called = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
                if called in names:
                    found.add(called)
    return found


@pytest.mark.parametrize("package", sorted(SERVICES))
def test_publishes_names_exactly_the_events_the_service_builds(
    package: str, apps: dict[str, FastAPI]
) -> None:
    module = sys.modules[f"services.{package}.app"]
    declared = {model.__name__ for types in module.PUBLISHES.values() for model in types}
    assert declared == built_event_classes(package)
    assert not {type_name(t) for types in module.PUBLISHES.values() for t in types} & set(SUPERSEDED)


def test_the_check_of_publishes_sees_a_built_event_that_is_not_declared() -> None:
    assert "LedgerHeadPublished" in built_event_classes("coi_tracking")
    assert built_event_classes("common") == set()


# ---------------------------------------------------------------- each service's served document


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_each_service_serves_a_valid_asyncapi_3_document_without_a_token(
    service: str, served: dict[str, dict[str, Any]]
) -> None:
    document = served[service]
    assert document["asyncapi"] == "3.0.0"
    assert errors(document) == []
    for reference in references(document):
        assert resolve(document, {"$ref": reference}) is not None


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_each_service_document_has_its_topics_with_the_contract_models(
    service: str, served: dict[str, dict[str, Any]], apps: dict[str, FastAPI]
) -> None:
    document = served[service]
    channels = document["channels"]
    found = {
        (operation["action"], resolve(document, operation["channel"])["address"])
        for operation in document["operations"].values()
    }
    assert found == EXPECTED_CHANNELS[service]
    assert {channel["address"] for channel in channels.values()} == {topic for _, topic in found}
    recorded = declarations(apps[service].state.runtime.broker)
    for operation in document["operations"].values():
        address = resolve(document, operation["channel"])["address"]
        if operation["action"] == "receive":
            [consumed] = [c for c in recorded.consumed if address in c.topics]
            assert payload_titles(document, operation) == sorted(t.__name__ for t in consumed.event_types)
        elif address in recorded.published:
            expected = sorted(t.__name__ for t in recorded.published[address])
            assert payload_titles(document, operation) == expected
            schema = resolve(document, resolve(document, operation["messages"][0])["payload"])
            data = resolve(document, resolve(document, schema["oneOf"][0])["properties"]["data"])
            assert data["additionalProperties"] is False


# ---------------------------------------------------------------- documenting changes nothing at run time


async def test_a_documented_consumer_gets_the_records_bodies_as_they_are() -> None:
    """The payload annotation only documents: invalid JSON still reaches the consumer as bytes (which
    dead-letters it), FastStream validates nothing against the contract models."""
    broker = KafkaBroker()
    received: list[tuple[list[bytes], bool]] = []

    async def consume(bodies: list[bytes], message: KafkaMessage) -> None:
        received.append((bodies, isinstance(message, StreamMessage)))

    handler = documented_consumer(broker, Consumed("g", ("orders.events",), (OrderAcceptedV2,)), consume)
    broker.subscriber("orders.events", group_id="g", batch=True, decoder=lambda message: message.body)(
        handler
    )
    async with TestKafkaBroker(broker) as test_broker:
        await test_broker.publish_batch(b"not json", b'{"type": "x"}', topic="orders.events")
    assert received == [([b"not json", b'{"type": "x"}'], True)]


def test_a_consumer_of_a_type_no_topic_of_its_carries_is_a_declaration_error() -> None:
    broker = KafkaBroker()

    async def consume(bodies: list[bytes], message: KafkaMessage) -> None:
        return None

    documented_consumer(broker, Consumed("g", ("orders.events",), (SlotConfirmed,)), consume)
    declare_publishers(broker, {"orders.events": (OrderAcceptedV2,)})
    with pytest.raises(
        ValueError, match=r"g reads \['slot.confirmed.v1'\], which none of its topics carries"
    ):
        combined_document({"x": broker}, version="0")


# ---------------------------------------------------------------- the official schemas, pinned


def test_the_schemas_are_the_pinned_files_make_install_fetched() -> None:
    assert fetch_asyncapi_schemas.fetch() == [ROOT / ".cache" / "asyncapi" / "3.0.0.json"]
    with pytest.raises(fetch_asyncapi_schemas.FetchError, match=r"sha256 [0-9a-f]{64} is not the pinned"):
        fetch_asyncapi_schemas.check_tarball(b"not the tarball", "test")
    tarball = fetch_asyncapi_schemas.tarball("auto")  # the cached one, checked
    with pytest.raises(
        fetch_asyncapi_schemas.FetchError, match=r"3.0.0.json: sha256 [0-9a-f]{64} is not the pinned"
    ):
        fetch_asyncapi_schemas.member_bytes(tarball, "package/schemas/3.0.0.json", "0" * 64)
