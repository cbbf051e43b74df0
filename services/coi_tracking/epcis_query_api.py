"""EPCIS 2.0 query routes (the REST binding's `GET /events`): a shipment's chain of custody as EPCIS events.

Thin: parse the query (epcis_query.parse_query), read a page (epcis_events.query_events), render it."""

from __future__ import annotations

from typing import Annotated, Any

from cgt_contracts.envelope import utc_now
from fastapi import APIRouter, Path, Request
from fastapi.responses import JSONResponse
from starlette.datastructures import URL

from services.coi_tracking import epcis_binding, epcis_query
from services.coi_tracking.api import Reader, SessionDep
from services.coi_tracking.epcis_events import query_events
from services.coi_tracking.epcis_query import EventQuery, QueryParameterError
from services.common import problems
from services.common.edge import EdgeRoute
from services.common.problems import FieldError, ProblemError


class EpcisQueryRoute(EdgeRoute):
    checks_query_itself = True


router = APIRouter(route_class=EpcisQueryRoute, tags=["epcis"])

SHIPMENT_ID = "6a1f0c2e-8b3d-4f5a-9c7e-2d4b6f8a0c1e"
QUERY_EXAMPLE: dict[str, Any] = {
    "@context": ["https://ref.gs1.org/standards/epcis/2.0.0/epcis-context.jsonld"],
    "type": "EPCISQueryDocument",
    "schemaVersion": "2.0",
    "creationDate": "2026-12-02T15:05:00Z",
    "epcisBody": {
        "queryResults": {
            "queryName": "SimpleEventQuery",
            "resultsBody": {
                "eventList": [
                    {
                        "type": "ObjectEvent",
                        "eventID": "urn:uuid:5f0c6e1a-2b3d-4c5e-8f9a-0b1c2d3e4f5a",
                        "eventTime": "2026-12-02T15:00:00Z",
                        "eventTimeZoneOffset": "+00:00",
                        "epcList": ["urn:epc:id:giai:4012345.CHW4321260000014"],
                        "action": "OBSERVE",
                        "bizStep": "accepting",
                        "readPoint": {"id": "urn:epc:id:sgln:4012345.00005.0"},
                        "bizTransactionList": [
                            {"type": "desadv", "bizTransaction": f"urn:uuid:{SHIPMENT_ID}"}
                        ],
                    }
                ]
            },
        }
    },
}
_PIPE_LIST = {"type": "array", "items": {"type": "string"}}
_PARAMETERS: list[dict[str, Any]] = [
    {"name": "eventType", "in": "query", "style": "pipeDelimited", "explode": False, "schema": _PIPE_LIST},
    {"name": "GE_eventTime", "in": "query", "schema": {"type": "string", "format": "date-time"}},
    {"name": "LT_eventTime", "in": "query", "schema": {"type": "string", "format": "date-time"}},
    {"name": "EQ_bizStep", "in": "query", "style": "pipeDelimited", "explode": False, "schema": _PIPE_LIST},
    {"name": "MATCH_epc", "in": "query", "style": "pipeDelimited", "explode": False, "schema": _PIPE_LIST},
    {"name": "MATCH_anyEPC", "in": "query", "style": "pipeDelimited", "explode": False, "schema": _PIPE_LIST},
    {
        "name": "EQ_bizTransaction",
        "in": "query",
        "description": "urn:uuid:<shipment id>, of any bizTransaction type",
        "style": "pipeDelimited",
        "explode": False,
        "schema": _PIPE_LIST,
    },
    {
        "name": f"EQ_bizTransaction_{epcis_query.BIZ_TRANSACTION_TYPE}",
        "in": "query",
        "style": "pipeDelimited",
        "explode": False,
        "schema": _PIPE_LIST,
    },
    {
        "name": "perPage",
        "in": "query",
        "schema": {
            "type": "integer",
            "minimum": 1,
            "maximum": epcis_query.MAX_PER_PAGE,
            "default": epcis_query.DEFAULT_PER_PAGE,
        },
    },
    {"name": "nextPageToken", "in": "query", "schema": {"type": "string"}},
]
_DOCUMENTED: dict[str, Any] = {
    "parameters": _PARAMETERS,
    "responses": {
        "200": {
            "description": 'An EPCISQueryDocument; the next page\'s URL in `Link: <...>; rel="next"`',
            "content": {"application/json": {"schema": {"type": "object"}, "example": QUERY_EXAMPLE}},
        },
        "400": {
            "description": "QueryParameterException: a parameter this endpoint does not take, or a bad value"
        },
    },
}


def _refused(error: QueryParameterError) -> ProblemError:
    return ProblemError(
        400,
        f"query parameter {error.name[:64]!r} is not valid: {error.detail}",
        type=epcis_binding.QUERY_PARAMETER,
        title="QueryParameterException",
        errors=[FieldError(location="query", pointer=problems.pointer([error.name]), detail=error.detail)],
    )


def _answer(request: Request, session: SessionDep, caller: Reader, event_type: str | None) -> JSONResponse:
    try:
        query: EventQuery = epcis_query.parse_query(request.query_params.multi_items(), event_type)
    except QueryParameterError as error:
        raise _refused(error) from None
    records, after = query_events(session, caller.site_scope, caller.company_scope, query)
    document = epcis_query.query_document([epcis_query.render(r) for r in records], utc_now())
    headers = epcis_binding.response_headers()
    if after is not None:
        url = URL(str(request.url)).remove_query_params("nextPageToken")
        url = url.include_query_params(nextPageToken=epcis_query.encode_token(after))
        headers["Link"] = f'<{url}>; rel="next"'
    return JSONResponse(document, headers=headers, media_type="application/json")


@router.get("/events", summary="Query EPCIS events", response_class=JSONResponse, openapi_extra=_DOCUMENTED)
def get_events(request: Request, session: SessionDep, caller: Reader) -> JSONResponse:
    """Every scan, temperature reading and custody change of the shipments the caller may see (a courier
    its company's, a treatment center its site's, coordinators and QA all) as GS1 EPCIS 2.0 events, in an
    `EPCISQueryDocument`, oldest first (eventTime, then source and record), `perPage` at a time (default
    30, at most 100; the next page's URL in `Link`). Filters: `eventType`, `GE_eventTime`/`LT_eventTime`,
    `EQ_bizStep`, `MATCH_epc`/`MATCH_anyEPC` (a bag's EPC), `EQ_bizTransaction` (`urn:uuid:<shipment
    id>`); list values pipe-delimited. Another parameter is 400 (QueryParameterException) naming it. The
    mapping is in docs/epcis.md."""
    return _answer(request, session, caller, None)


@router.get(
    "/eventTypes/{eventType}/events",
    summary="Query EPCIS events of one type",
    response_class=JSONResponse,
    openapi_extra=_DOCUMENTED | {"parameters": [p for p in _PARAMETERS if p["name"] != "eventType"]},
)
def get_events_of_type(
    event_type: Annotated[str, Path(alias="eventType", max_length=64)],
    request: Request,
    session: SessionDep,
    caller: Reader,
) -> JSONResponse:
    """`GET /events?eventType=<eventType>`, with the same parameters."""
    return _answer(request, session, caller, event_type)


@router.get(
    "/eventTypes",
    summary="List EPCIS event types",
    response_class=JSONResponse,
    responses={
        200: {
            "description": "The event types",
            "content": {"application/json": {"example": list(epcis_query.QUERYABLE_TYPES)}},
        }
    },
)
def get_event_types(caller: Reader) -> JSONResponse:
    """The event types `GET /events` can return (the REST binding's collection of event types)."""
    return JSONResponse(list(epcis_query.QUERYABLE_TYPES), headers=epcis_binding.response_headers())
