"""What every service's HL7 FHIR R4 interface shares: the media type, errors as `OperationOutcome`,
reads with `ETag`/`Last-Modified`, searchset Bundles with absolute URLs, the search rules for unknown
parameters, and the CapabilityStatement built from what the service declares it serves.

Each service serves FHIR under its own base, `<service>/fhir` (order intake: orders as ServiceRequest;
scheduling: Schedule, Slot, Appointment, Subscription …), and says what it serves once, as a list of
`ResourceCapability`: `capability_statement` publishes it at `GET /fhir/metadata`, and `undeclared_routes`
lets a test check the statement against the routes, both ways.

Resources are validated with `fhir.resources`' R4B models (the official R4 examples validate with them).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from email.utils import format_datetime, parsedate_to_datetime
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request, Response
from fastapi.routing import APIRoute
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from fhir.resources.R4B.operationoutcome import OperationOutcome
from fhir.resources.R4B.patient import Patient
from starlette.responses import JSONResponse

from services.common.edge import EdgeRoute, json_body
from services.common.paging import PageRequest, decode_cursor
from services.common.problems import Problem, ProblemError, invalid

FHIR_JSON = "application/fhir+json"
FHIR_VERSION = "4.0.1"
BASE_PATH = "/fhir"
COI_SYSTEM = "https://www.isbt128.org/uri/ChainOfIdentity"
"""The chain-of-identity identifier's system, on every resource that concerns one case."""
PATIENT_REF_SYSTEM = "https://cgt-logistics.example/fhir/NamingSystem/patient-ref"
"""The pseudonymous patient reference: the only patient key the services share (never a name)."""
EXTENSIONS = "https://cgt-logistics.example/fhir/StructureDefinition"
"""The base of the project's own extensions (the `.example` domain: none is published yet)."""
FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
SEARCH_CONTROL = frozenset({"_count", "_cursor", "_format", "_pretty", "_summary", "_elements"})
"""Result parameters every search takes; `_count` pages, the others are accepted and ignored (JSON only)."""
MAX_COUNT = 100
DEFAULT_COUNT = 20


def patient_reference(patient_ref: str) -> dict[str, Any]:
    """A reference to a patient by the pseudonymous reference: literal (`Patient/<ref>`, which the
    service serves) when the reference is a valid FHIR id, and always with it as the identifier."""
    reference: dict[str, Any] = {"identifier": {"system": PATIENT_REF_SYSTEM, "value": patient_ref}}
    if FHIR_ID.match(patient_ref):
        reference["reference"] = f"Patient/{patient_ref}"
    return reference


def patient_resource(patient_ref: str, updated: datetime) -> dict[str, Any]:
    """A patient as the services share them: the pseudonymous reference, nothing that identifies (I6)."""
    document = {
        "resourceType": "Patient",
        "id": patient_ref,
        "meta": {"lastUpdated": updated.isoformat()},
        "identifier": [{"system": PATIENT_REF_SYSTEM, "value": patient_ref}],
    }
    return Patient.model_validate(document).model_dump(mode="json", exclude_none=True)


def is_fhir_path(path: str) -> bool:
    return path == BASE_PATH or path.startswith(BASE_PATH + "/")


class FhirRoute(EdgeRoute):
    """The route class of a FHIR router: the edge as everywhere, but a search's query parameters follow
    FHIR's rule (`search_request`): an unknown one is ignored and reported in the Bundle, whose `self`
    link names only what was applied, or refused under `Prefer: handling=strict`."""

    checks_query_itself = True


class FhirJSONResponse(JSONResponse):
    media_type = FHIR_JSON


def router() -> APIRouter:
    """A service's FHIR router: under `BASE_PATH`, `FhirRoute`s answering `application/fhir+json`."""
    return APIRouter(
        route_class=FhirRoute, prefix=BASE_PATH, tags=["fhir"], default_response_class=FhirJSONResponse
    )


def documented(
    example: Mapping[str, Any], status: int = 200, description: str = "OK"
) -> dict[int | str, Any]:
    """`responses=` of a FHIR route: its answer is `application/fhir+json`, as `example` shows."""
    content = {FHIR_JSON: {"schema": {"type": "object"}, "example": dict(example)}}
    return {status: {"description": description, "content": content}}


def body(example: Mapping[str, Any], limit: int | None = None) -> dict[str, Any]:
    """`openapi_extra` of a FHIR route that takes a resource: FHIR JSON (or plain JSON), as `example`."""
    schema = {"type": "object", "examples": [dict(example)]}
    media = (FHIR_JSON, "application/json")
    return (
        json_body(media_types=media, schema=schema)
        if limit is None
        else json_body(limit=limit, media_types=media, schema=schema)
    )


def base_url(request: Request) -> str:
    """The absolute FHIR base of this service as the caller reached it (for `fullUrl` and links)."""
    return str(request.base_url).rstrip("/") + BASE_PATH


# ---------------------------------------------------------------- errors

_ISSUE_CODE = {
    400: "invalid",
    401: "login",
    403: "forbidden",
    404: "not-found",
    405: "not-supported",
    406: "not-supported",
    409: "conflict",
    410: "deleted",
    412: "conflict",
    413: "too-costly",
    415: "not-supported",
    422: "invalid",
    429: "throttled",
}


def _expression(pointer: str) -> str:
    """`/contained/0/birthDate` → `contained[0].birthDate` (the FHIRPath-like form FHIR errors use)."""
    path = ""
    for segment in pointer.strip("/").split("/"):
        if not segment:
            continue
        segment = segment.replace("~1", "/").replace("~0", "~")
        path += f"[{segment}]" if segment.isdigit() else (f".{segment}" if path else segment)
    return path


def operation_outcome(problem: Problem) -> dict[str, Any]:
    """A problem document as an `OperationOutcome`: one issue per failed field (its place in
    `expression`, what is wrong in `diagnostics`) or per broken rule, else one for the whole problem.
    Like the problem, it echoes nothing the caller sent; the correlation id is on every issue."""
    code = _ISSUE_CODE.get(problem.status, "exception" if problem.status >= 500 else "processing")
    trace = f" (correlation id {problem.instance})" if problem.instance else ""
    issues: list[dict[str, Any]] = []
    for error in problem.errors or []:
        issue: dict[str, Any] = {"severity": "error", "code": code, "diagnostics": error.detail + trace}
        where = error.pointer if error.location == "body" else error.pointer.strip("/")
        expression = _expression(where) if error.location == "body" else where
        if expression:  # an element named "" has no FHIRPath: the issue still says what is wrong
            issue["expression"] = [expression]
        issues.append(issue)
    for reason in problem.reasons or []:
        issues.append({"severity": "error", "code": "business-rule", "diagnostics": reason + trace})
    if not issues:
        issues.append({"severity": "error", "code": code, "diagnostics": problem.detail + trace})
    document = {"resourceType": "OperationOutcome", "issue": issues}
    return OperationOutcome.model_validate(document).model_dump(mode="json", exclude_none=True)


def outcome_response(problem: Problem, headers: Mapping[str, str]) -> JSONResponse:
    return FhirJSONResponse(operation_outcome(problem), status_code=problem.status, headers=dict(headers))


# ---------------------------------------------------------------- reads


def version_tag(resource: Mapping[str, Any]) -> str:
    """The weak ETag of a resource: its `meta.versionId`, else a digest of its content."""
    version = resource.get("meta", {}).get("versionId")
    if version is None:
        version = hashlib.sha256(repr(sorted(resource.items())).encode()).hexdigest()[:16]
    return f'W/"{version}"'


def read_response(request: Request, resource: dict[str, Any]) -> Response:
    """A read: the resource with `ETag` (`W/"<versionId>"`) and `Last-Modified` (`meta.lastUpdated`);
    304 when the caller's `If-None-Match` names the same version or `If-Modified-Since` is not older."""
    etag = version_tag(resource)
    headers = {"ETag": etag}
    updated = resource.get("meta", {}).get("lastUpdated")
    modified = datetime.fromisoformat(updated) if updated else None
    if modified is not None:
        modified = modified if modified.tzinfo else modified.replace(tzinfo=UTC)
        headers["Last-Modified"] = format_datetime(modified.astimezone(UTC), usegmt=True)
    if etag in [tag.strip() for tag in request.headers.get("if-none-match", "").split(",")]:
        return Response(status_code=304, headers=headers)
    since = request.headers.get("if-modified-since")
    if since and modified is not None and "if-none-match" not in request.headers:
        try:
            if modified.replace(microsecond=0) <= parsedate_to_datetime(since):
                return Response(status_code=304, headers=headers)
        except (TypeError, ValueError):
            pass  # an unreadable date is ignored, as RFC 9110 says
    return FhirJSONResponse(resource, headers=headers)


# ---------------------------------------------------------------- search


@dataclass(frozen=True)
class SearchParameter:
    name: str
    type: str
    """A FHIR search parameter type: token, reference, date, string…"""
    documentation: str


@dataclass(frozen=True)
class SearchRequest:
    """A search's parameters after the FHIR rules: `known` those the resource supports (each with every
    value given), `ignored` the unknown ones (left out of the `self` link, reported in an outcome entry)."""

    known: dict[str, list[str]]
    ignored: list[str]
    count: int

    def first(self, name: str) -> str | None:
        values = self.known.get(name)
        return values[0] if values else None


def search_request(request: Request, supported: Iterable[str]) -> SearchRequest:
    """Split a search's query parameters per the FHIR search rules: an unknown parameter (or modifier)
    is ignored and reported, unless the caller sent `Prefer: handling=strict`, which makes it a 400.
    `_count` is at most `MAX_COUNT`."""
    allowed = set(supported) | SEARCH_CONTROL
    known: dict[str, list[str]] = {}
    ignored: list[str] = []
    for name, value in request.query_params.multi_items():
        if name in allowed:
            known.setdefault(name, []).append(value)
        elif name not in ignored:
            ignored.append(name)
    if ignored and "handling=strict" in request.headers.get("prefer", "").replace(" ", ""):
        raise ProblemError(
            400,
            f"unknown search parameter {ignored[0][:64]!r}; supported: {', '.join(sorted(allowed))}",
            title="Unknown search parameter",
        )
    count = DEFAULT_COUNT
    if "_count" in known:
        raw = known.pop("_count")[-1]
        if not raw.isdigit():
            raise invalid("query", "_count", "a whole number of results per page")
        count = max(1, min(int(raw), MAX_COUNT))
    return SearchRequest(known=known, ignored=ignored, count=count)


def page_of_search(search: SearchRequest) -> PageRequest:
    """The search's page for `services.common.paging`: `_count` rows after `_cursor` (the `next` link's)."""
    cursor = search.first("_cursor")
    return PageRequest(limit=search.count, after=None if cursor is None else decode_cursor(cursor))


_DATE = re.compile(
    r"^(?P<prefix>eq|ne|gt|lt|ge|le|sa|eb)?"
    r"(?P<value>\d{4}(-\d{2}(-\d{2}(T\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?(Z|[+-]\d{2}:\d{2})?)?)?)?)$"
)
DATE_FORMAT = (
    "a FHIR date: an optional prefix (eq, ne, gt, lt, ge, le, sa, eb; eq if none) and a year, month, "
    "day or date-time (2026-12-08, 2026-12-08T09:00:00+01:00)"
)


@dataclass(frozen=True)
class DateRanges:
    """A date search value as the instants it matches: any of `ranges`, each `[start, end)` (None:
    unbounded). Without a UTC offset the value's instants are naive: `in_zone` places them."""

    ranges: tuple[tuple[datetime | None, datetime | None], ...]

    def in_zone(self, zone: tzinfo) -> tuple[tuple[datetime | None, datetime | None], ...]:
        def placed(instant: datetime | None) -> datetime | None:
            if instant is None or instant.tzinfo is not None:
                return instant
            return instant.replace(tzinfo=zone)

        return tuple((placed(start), placed(end)) for start, end in self.ranges)


def date_parameter(name: str, raw: str) -> DateRanges:
    """`ge2026-12-08`, `2026-12`, `lt2026-12-08T12:00:00Z`… per FHIR's date search: the value is the
    range its precision spans (a day, a month, a second); the prefix compares a resource's instant with
    that range. 422 naming the parameter for anything else (never echoing it)."""
    match = _DATE.match(raw)
    if match is None:
        raise invalid("query", name, DATE_FORMAT)
    prefix, value = match.group("prefix") or "eq", match.group("value")
    try:
        low, high = _value_range(value)
    except ValueError:
        raise invalid("query", name, DATE_FORMAT) from None
    ranges: dict[str, tuple[tuple[datetime | None, datetime | None], ...]] = {
        "eq": ((low, high),),
        "ne": ((None, low), (high, None)),
        "gt": ((high, None),),
        "sa": ((high, None),),
        "ge": ((low, None),),
        "lt": ((None, low),),
        "eb": ((None, low),),
        "le": ((None, high),),
    }
    return DateRanges(ranges[prefix])


def _value_range(value: str) -> tuple[datetime, datetime]:
    if len(value) == 4:
        year = int(value)
        return datetime(year, 1, 1), datetime(year + 1, 1, 1)
    if len(value) == 7:
        start = datetime.strptime(value, "%Y-%m")
        return start, (start + timedelta(days=32)).replace(day=1)
    if len(value) == 10:
        start = datetime.fromisoformat(value)
        return start, start + timedelta(days=1)
    start = datetime.fromisoformat(value.replace("Z", "+00:00"))
    precision = timedelta(seconds=1) if re.search(r"T\d{2}:\d{2}:\d{2}", value) else timedelta(minutes=1)
    return start, start + (timedelta(microseconds=1) if "." in value else precision)


def searchset(
    request: Request,
    resource_type: str,
    resources: Sequence[Mapping[str, Any]],
    search: SearchRequest,
    *,
    total: int | None = None,
    next_cursor: str | None = None,
    included: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """A searchset Bundle: each match with its absolute `fullUrl` and `search.mode` `match` (included
    resources `include`), `self` naming only the parameters applied, `next` carrying `_cursor` when
    there is more, and an `OperationOutcome` entry (`search.mode` `outcome`) listing ignored parameters."""
    base = base_url(request)
    applied = [(name, value) for name, values in search.known.items() for value in values]
    applied = [(name, value) for name, value in applied if name != "_cursor"]
    page = [("_count", str(search.count))]
    links = [{"relation": "self", "url": _link(base, resource_type, applied + page + _cursor(search))}]
    if next_cursor is not None:
        links.append(
            {
                "relation": "next",
                "url": _link(base, resource_type, applied + page + [("_cursor", next_cursor)]),
            }
        )
    entries: list[dict[str, Any]] = [
        {"fullUrl": f"{base}/{r['resourceType']}/{r['id']}", "resource": r, "search": {"mode": mode}}
        for mode, group in (("match", resources), ("include", included))
        for r in group
    ]
    if search.ignored:
        names = ", ".join(name[:64] for name in search.ignored)
        outcome = {
            "resourceType": "OperationOutcome",
            "issue": [
                {
                    "severity": "warning",
                    "code": "not-supported",
                    "diagnostics": f"parameters ignored: {names}",
                }
            ],
        }
        entries.append({"resource": outcome, "search": {"mode": "outcome"}})
    document: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": "searchset",
        "link": links,
        "entry": entries,
    }
    if total is not None:
        document["total"] = total
    return Bundle.model_validate(document).model_dump(mode="json", exclude_none=True)


def _cursor(search: SearchRequest) -> list[tuple[str, str]]:
    cursor = search.first("_cursor")
    return [("_cursor", cursor)] if cursor else []


def _link(base: str, resource_type: str, parameters: list[tuple[str, str]]) -> str:
    return f"{base}/{resource_type}?{urlencode(parameters)}"


# ---------------------------------------------------------------- the CapabilityStatement

_INTERACTION_ROUTES = {
    "read": ("GET", "/{id}"),
    "search-type": ("GET", ""),
    "create": ("POST", ""),
    "update": ("PUT", "/{id}"),
    "delete": ("DELETE", "/{id}"),
}


@dataclass(frozen=True)
class ResourceCapability:
    """One resource type a service serves: its interactions (`read`, `search-type`, `create`, `update`,
    `delete`), its search parameters and its operations (`$name` → the path under the type)."""

    type: str
    interactions: tuple[str, ...]
    documentation: str
    search_parameters: tuple[SearchParameter, ...] = ()
    operations: Mapping[str, str] = field(default_factory=dict)
    """`{"status": "/{id}/$status"}`: an operation's name and its path under `/fhir/<type>`."""
    profile: str | None = None
    extensions: tuple[Mapping[str, Any], ...] = ()
    """On the statement's entry for the type (the subscriptions backport's topic canonical, …)."""


CAPABILITY_EXAMPLE: dict[str, Any] = {
    "resourceType": "CapabilityStatement",
    "status": "active",
    "date": "2026-11-23",
    "kind": "instance",
    "fhirVersion": FHIR_VERSION,
    "format": [FHIR_JSON, "json"],
    "rest": [{"mode": "server", "resource": [{"type": "Appointment", "interaction": [{"code": "read"}]}]}],
}


def searchset_example(
    resource: Mapping[str, Any], base: str = "http://127.0.0.1:8000/fhir"
) -> dict[str, Any]:
    """A one-match searchset of `resource`, for a search route's documentation."""
    url = f"{base}/{resource['resourceType']}"
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "link": [{"relation": "self", "url": f"{url}?_count=20"}],
        "entry": [
            {"fullUrl": f"{url}/{resource['id']}", "resource": dict(resource), "search": {"mode": "match"}}
        ],
    }


PSEUDONYMOUS_PATIENT = ResourceCapability(
    type="Patient",
    interactions=("read",),
    documentation="A patient by the pseudonymous reference only: no name, birth date or record number",
)
"""Each base that names patients serves them so (`patient_resource`): the references it hands out resolve."""


def capability_statement(
    request: Request,
    *,
    service: str,
    resources: Sequence[ResourceCapability],
    system_interactions: Sequence[str] = (),
    extensions: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """What this service's FHIR base serves, exactly (`undeclared_routes` checks it against the app)."""
    rest: dict[str, Any] = {
        "mode": "server",
        "security": {
            "cors": False,
            "description": "Bearer token (OAuth 2.0 access token) in the Authorization header, per role",
            "service": [
                {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                            "code": "OAuth",
                        }
                    ]
                }
            ],
        },
        "resource": [_resource_entry(r) for r in resources],
    }
    if system_interactions:
        rest["interaction"] = [{"code": code} for code in system_interactions]
    if extensions:
        rest["extension"] = list(extensions)
    document = {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": datetime.now(UTC).date().isoformat(),
        "kind": "instance",
        "software": {"name": f"CGT Logistics {service}"},
        "implementation": {"description": f"CGT Logistics {service}", "url": base_url(request)},
        "fhirVersion": FHIR_VERSION,
        "format": [FHIR_JSON, "json"],
        "rest": [rest],
    }
    return CapabilityStatement.model_validate(document).model_dump(mode="json", exclude_none=True)


def _resource_entry(resource: ResourceCapability) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "type": resource.type,
        "documentation": resource.documentation,
        "interaction": [{"code": code} for code in resource.interactions],
    }
    if "read" in resource.interactions:
        entry["versioning"] = "versioned"
        entry["conditionalRead"] = "full-support"
    if resource.profile:
        entry["profile"] = resource.profile
    if resource.extensions:
        entry["extension"] = [dict(extension) for extension in resource.extensions]
    if resource.search_parameters:
        entry["searchParam"] = [
            {"name": p.name, "type": p.type, "documentation": p.documentation}
            for p in resource.search_parameters
        ]
    if resource.operations:
        entry["operation"] = [
            {
                "name": name,
                "definition": f"https://cgt-logistics.example/fhir/OperationDefinition/{resource.type}-{name}",
            }
            for name in resource.operations
        ]
    return entry


def declared_routes(
    resources: Sequence[ResourceCapability], system_interactions: Sequence[str] = ()
) -> set[tuple[str, str]]:
    """The (method, path) pairs the statement promises: `/fhir/metadata` and each interaction's."""
    routes = {("GET", f"{BASE_PATH}/metadata")}
    if "transaction" in system_interactions or "batch" in system_interactions:
        routes.add(("POST", BASE_PATH))
    for resource in resources:
        for interaction in resource.interactions:
            method, suffix = _INTERACTION_ROUTES[interaction]
            routes.add((method, f"{BASE_PATH}/{resource.type}{suffix}"))
        for suffix in resource.operations.values():
            routes.add(("GET", f"{BASE_PATH}/{resource.type}{suffix}"))
    return routes


def served_routes(routes: Iterable[APIRoute]) -> set[tuple[str, str]]:
    """The (method, path) pairs of `routes` under `/fhir`, path parameters written `{id}` (pass
    `edge.api_routes(app.routes)`: every route of the app, included routers' too)."""
    served = set()
    for route in routes:
        if is_fhir_path(route.path):
            path = "/".join("{id}" if part.startswith("{") else part for part in route.path.split("/"))
            served |= {(method, path) for method in (route.methods or set()) - {"HEAD", "OPTIONS"}}
    return served


def undeclared_routes(
    routes: Iterable[APIRoute],
    resources: Sequence[ResourceCapability],
    system_interactions: Sequence[str] = (),
) -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
    """(served but not in the statement, in the statement but not served): both empty when the
    CapabilityStatement lists exactly what is served."""
    served, declared = served_routes(routes), declared_routes(resources, system_interactions)
    return served - declared, declared - served
