"""The bus's AsyncAPI documents, from what the code declares on each service's broker.

Every subscriber (`consumer.subscribe_batches`) and every topic a service writes (`declare_publishers`,
called by `service.build_service` with the service's `PUBLISHES`) goes through here, which records it per
broker (`declarations`) and registers it with FastStream with the contract models as its payload:
- `service_document`: the AsyncAPI 3.0.0 document FastStream generates for one service's broker, served
  at `GET /asyncapi.json`;
- `combined_document`: one AsyncAPI 3.0.0 document for the whole bus (every topic, every event type and
  version with its schema, who sends and who receives), committed as contracts/asyncapi.json by
  contracts/generate_asyncapi.py (`make schemas`).

Documenting changes nothing at run time: a subscriber's payload annotation only overrides its JSON Schema
(its bodies are still validated as `list[bytes]` and parsed by the consumer), and a FastStream publisher
does nothing until used (the outbox relay publishes with its own producer; dead letters go through
`broker.publish`).
"""

from __future__ import annotations

import weakref
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Union

from cgt_contracts.envelope import EventEnvelope
from cgt_contracts.events import EVENT_TYPES, SUPERSEDED
from faststream.kafka import KafkaBroker, KafkaMessage
from faststream.specification import AsyncAPI
from pydantic import GetJsonSchemaHandler, TypeAdapter
from pydantic.json_schema import JsonSchemaValue, models_json_schema
from pydantic_core import CoreSchema

from services.common.topics import ALL_TOPICS, COURIER_SCANS, TOPIC_SOURCES, dlq

ASYNCAPI_VERSION = "3.0.0"
KAFKA_BINDING_VERSION = "0.5.0"
SCHEMAS_REF = "#/components/schemas/{model}"
DEAD_LETTER = "deadLetter"
COURIERS = "couriers"
"""The couriers' systems: outside the platform, they write `couriers.scans` (COI tracking reads it)."""


@dataclass(frozen=True)
class DocumentedAs:
    """Pydantic metadata: the JSON Schema of the annotated value is one of these event models (the
    value itself is validated as its own type)."""

    event_types: tuple[type[EventEnvelope], ...]

    def __get_pydantic_json_schema__(
        self, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        # The models' union as pydantic writes it (a reference to each, under its own name), as a `oneOf`:
        # not the discriminated union's, whose OpenAPI `discriminator` object AsyncAPI does not have.
        union = handler(TypeAdapter(Union[self.event_types]).core_schema)  # noqa: UP007
        return {"oneOf": union.get("anyOf", [union])}


@dataclass(frozen=True)
class Consumed:
    """A consumer group: the topics it reads and the event types it applies (others are skipped or
    dead-lettered), each refused record going to the topic's dead-letter topic."""

    group_id: str
    topics: tuple[str, ...]
    event_types: tuple[type[EventEnvelope], ...]


@dataclass
class Declarations:
    """What one service's broker reads and writes."""

    consumed: list[Consumed] = field(default_factory=list)
    published: dict[str, tuple[type[EventEnvelope], ...]] = field(default_factory=dict)
    """Each topic the service writes events to, with their types (its outbox rows)."""
    dead_letters: list[str] = field(default_factory=list)
    """The dead-letter topics its consumers write refused records to."""


_DECLARATIONS: weakref.WeakKeyDictionary[KafkaBroker, Declarations] = weakref.WeakKeyDictionary()


def declarations(broker: KafkaBroker) -> Declarations:
    """What has been declared on `broker` (nothing yet: an empty record)."""
    return _DECLARATIONS.setdefault(broker, Declarations())


def type_name(model: type[EventEnvelope]) -> str:
    name: str = model.model_fields["type"].default
    return name


Consume = Callable[[list[bytes], KafkaMessage], Awaitable[None]]


def documented_consumer(broker: KafkaBroker, consumed: Consumed, consume: Consume) -> Consume:
    """`consume` as FastStream's subscriber, its payload documented as the consumed event types; recorded
    in the broker's declarations, with the dead-letter topics its group writes."""
    recorded = declarations(broker)
    recorded.consumed.append(consumed)
    for topic in consumed.topics:
        _declare_dead_letters(broker, recorded, topic)

    async def handler(bodies: list[bytes], message: KafkaMessage) -> None:
        await consume(bodies, message)

    handler.__annotations__ = {
        "bodies": Annotated[list[bytes], DocumentedAs(consumed.event_types)],
        "message": KafkaMessage,
        "return": None,
    }
    handler.__name__ = handler.__qualname__ = consumed.group_id.replace("-", "_")
    return handler


def _declare_dead_letters(broker: KafkaBroker, recorded: Declarations, topic: str) -> None:
    name = dlq(topic)
    if name in recorded.dead_letters:
        return
    recorded.dead_letters.append(name)
    broker.publisher(
        name,
        title=name,
        description=f"Records of {topic} this service's consumers refused or kept failing on, as they were, "
        "with headers dlq-reason, dlq-source-topic, dlq-source-partition, dlq-source-offset and "
        "dlq-consumer-group",
    )


def declare_publishers(broker: KafkaBroker, publishes: Mapping[str, Sequence[type[EventEnvelope]]]) -> None:
    """The topics the service writes events to (through its outbox), each with the event types written
    there: recorded in the broker's declarations and registered as FastStream publishers (documentation
    only: the outbox relay publishes)."""
    recorded = declarations(broker)
    for topic, event_types in publishes.items():
        recorded.published[topic] = tuple(event_types)
        broker.publisher(
            topic,
            title=topic,
            description=f"Events written to {topic}: " + ", ".join(type_name(t) for t in event_types),
            schema=Annotated[Any, DocumentedAs(tuple(event_types))],
        )


def service_document(broker: KafkaBroker, *, title: str, version: str, description: str) -> dict[str, Any]:
    """The AsyncAPI 3.0.0 document FastStream generates for one service's broker."""
    specification = AsyncAPI(
        broker, title=title, version=version, description=description, schema_version=ASYNCAPI_VERSION
    ).to_specification()
    document: dict[str, Any] = specification.to_jsonable()
    return document


# ---------------------------------------------------------------- the combined document


def combined_document(services: Mapping[str, KafkaBroker], *, version: str) -> dict[str, Any]:
    """One AsyncAPI 3.0.0 document for the whole bus from the services' declarations (`services`: each
    service's name and broker): every topic a channel, every event type a message with its payload
    schema, every service's reading and writing an operation. Deterministic: sorted throughout.

    A topic carries the types written to it, and the older versions they superseded (records still on it);
    `couriers.scans`, written outside the platform, the types COI tracking reads there. A consumer group
    reading several topics reads each type on the topics that carry it; a type it reads that none of its
    topics carries is a declaration error (ValueError)."""
    topics = {spec.name: spec for spec in ALL_TOPICS}
    on_topic: dict[str, set[str]] = {name: set() for name in topics}
    operations: dict[str, dict[str, Any]] = {}

    def operation(service: str, action: str, topic: str, types: Sequence[str], summary: str) -> None:
        on_topic[topic].update(types)
        operations[f"{service}.{action}.{topic}"] = {
            "action": action,
            "channel": {"$ref": f"#/channels/{topic}"},
            "summary": summary,
            "messages": [{"$ref": f"#/channels/{topic}/messages/{name}"} for name in sorted(types)],
        }

    declared = {service: declarations(broker) for service, broker in sorted(services.items())}
    for service, recorded in declared.items():
        for topic, event_types in recorded.published.items():
            written = [type_name(t) for t in event_types]
            on_topic[topic].update(old for old, new in SUPERSEDED.items() if new in written)
            operation(service, "send", topic, written, f"{service} writes these events (its outbox)")
    for service, recorded in declared.items():
        for consumed in recorded.consumed:
            read = {type_name(t) for t in consumed.event_types}
            if COURIER_SCANS in consumed.topics:
                summary = "Couriers' systems write their scans, each signed with the company's key"
                operation(COURIERS, "send", COURIER_SCANS, sorted(read), summary)
            unplaced = read - set().union(*(on_topic[topic] for topic in consumed.topics))
            if unplaced:
                raise ValueError(
                    f"{consumed.group_id} reads {sorted(unplaced)}, which none of its topics carries"
                )
            for topic in consumed.topics:
                summary = f"{service} reads these events (consumer group {consumed.group_id})"
                operation(service, "receive", topic, sorted(read & on_topic[topic]), summary)
        for name in recorded.dead_letters:
            operation(service, "send", name, [DEAD_LETTER], f"{service}'s consumers dead-letter here")

    used = sorted(set().union(*on_topic.values()) - {DEAD_LETTER})
    schemas = _schemas([EVENT_TYPES[name] for name in used])
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": "CGT Logistics event bus",
            "version": version,
            "description": "Every topic of the bus, every event type and version on it with its payload "
            "(a CloudEvents 1.0 envelope with its typed `data`), and which service writes and reads it. "
            "Generated from the code by `make schemas` (contracts/generate_asyncapi.py): do not edit.",
        },
        "defaultContentType": "application/json",
        "channels": {
            name: _channel(name, topics[name].partitions, sorted(on_topic[name])) for name in sorted(topics)
        },
        "operations": dict(sorted(operations.items())),
        "components": {
            "messages": {
                **{name: _message(EVENT_TYPES[name]) for name in used},
                DEAD_LETTER: _dead_letter_message(),
            },
            "schemas": schemas,
        },
    }


def _schemas(models: Sequence[type[EventEnvelope]]) -> dict[str, Any]:
    _, top = models_json_schema([(model, "validation") for model in models], ref_template=SCHEMAS_REF)
    definitions: dict[str, Any] = top.get("$defs", {})
    return dict(sorted(definitions.items()))


def _channel(topic: str, partitions: int, messages: Sequence[str]) -> dict[str, Any]:
    producer = TOPIC_SOURCES.get(topic)
    if topic.endswith(".dlq"):
        description = f"Dead letters of {topic.removesuffix('.dlq')}: each refused record as it was."
    elif producer is not None:
        description = (
            f"Written by {producer} only (the broker's ACL); keyed by the event's subject (its COI)."
        )
    elif topic == COURIER_SCANS:
        description = "Couriers' scans, each signed by its courier company; keyed by the COI."
    else:
        description = "COI tracking's signed custody-ledger heads; append-only, kept forever."
    return {
        "address": topic,
        "description": description,
        "messages": {name: {"$ref": f"#/components/messages/{name}"} for name in messages},
        "bindings": {
            "kafka": {"topic": topic, "partitions": partitions, "bindingVersion": KAFKA_BINDING_VERSION}
        },
    }


def _message(model: type[EventEnvelope]) -> dict[str, Any]:
    name = type_name(model)
    message: dict[str, Any] = {
        "name": name,
        "title": model.__name__,
        "contentType": "application/json",
        "correlationId": {"location": "$message.payload#/correlationid"},
        "headers": {
            "type": "object",
            "properties": {
                "ce_type": {"type": "string", "const": name},
                "content-type": {"type": "string", "const": "application/json"},
                "correlation_id": {"type": "string"},
            },
        },
        "payload": {"$ref": SCHEMAS_REF.format(model=model.__name__)},
    }
    if name in SUPERSEDED:
        message["summary"] = (
            f"Superseded by {SUPERSEDED[name]}: still read (records on the topic), no longer written"
        )
    elif model.__doc__:
        message["summary"] = " ".join(model.__doc__.split())
    return message


def _dead_letter_message() -> dict[str, Any]:
    header = {"type": "string"}
    return {
        "name": DEAD_LETTER,
        "title": "Dead letter",
        "summary": "A refused record as it was (its value, key and headers), with why and where it came from",
        "headers": {
            "type": "object",
            "required": ["dlq-reason", "dlq-source-topic", "dlq-source-partition", "dlq-source-offset"],
            "properties": {
                "dlq-reason": header,
                "dlq-source-topic": header,
                "dlq-source-partition": header,
                "dlq-source-offset": header,
                "dlq-consumer-group": header,
            },
        },
        "payload": {"description": "The refused record's value, unchanged (not necessarily an event)"},
    }
