"""The HTTP edge: every request body is admitted here, once, before any route or dependency sees it.

`EdgeRoute` is the route class of every router. For a request with a body it, in this order:
- authenticates the bearer token of a route that needs one (`services.common.auth.authenticate`) **before
  reading a byte of the body**: a wrong or missing token on a 20 MB POST is a 401, the body never read;
- refuses, on a GET route, a query parameter the route does not declare with **422** naming it: a filter is
  applied or refused, never ignored (a caller asking for one site's objects is never answered with all);
  a route class with `checks_query_itself` applies its standard's rule instead (FHIR's
  `fhir.FhirRoute`: ignored and reported, or 400 under strict handling; the EPCIS query's 400);
- refuses a body over the route's stated limit with **413**, from `Content-Length` before reading and
  while reading otherwise (`x-max-body-bytes` in the operation's OpenAPI, `DEFAULT_BODY_LIMIT` if unset);
- refuses a media type the operation does not document with **415**;
- refuses bytes that are not UTF-8 JSON, and JSON nested deeper than `MAX_JSON_DEPTH`, with **400**;
- validates a model body in pydantic's *strict JSON* mode: `"yes"` is not a boolean, `0` not a date,
  `"2"` not a number; `RequestModel` makes NaN, Infinity and control characters in text **422** too.
The body it parsed (a validated model, or the JSON of a route that reads its own) is handed to FastAPI,
so nothing is parsed twice. Every refusal is an RFC 9457 problem (`services.common.problems`).
"""

from __future__ import annotations

import email.message
import json
import math
import re
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from typing import Annotated, Any

from fastapi import FastAPI, Request, Response
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator
from starlette.routing import BaseRoute

from services.common import problems
from services.common.auth import BEARER, authenticate
from services.common.problems import FieldError, ProblemError

BODY_LIMIT_KEY = "x-max-body-bytes"
PROBLEM_TYPES_KEY = "x-problem-types"
"""A route's own problem `type` for the edge's 400 / 413 / 415 (EPCIS capture: the binding's exceptions)."""
PROBLEM_HEADERS_KEY = "x-problem-headers"
"""Headers the route's edge refusals carry, by status (EPCIS capture: its limits on a 413)."""
DEFAULT_BODY_LIMIT = 64 * 1024
"""Every request model of the services fits in a few kilobytes; EPCIS capture states its own limit."""
MAX_JSON_DEPTH = 32
"""Deeper than any document the services take (an EPCIS sensor report sits at depth 7)."""
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
READ_METHODS = frozenset({"GET", "HEAD"})
JSON_MEDIA_TYPES = ("application/json",)


class RequestModel(BaseModel):
    """Base of every request body (and of the models nested in one): unknown fields are refused, a number
    must be finite and text holds no control character. Strictness (no coercion) is applied by the edge,
    which validates the JSON."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @field_validator("*", mode="after")
    @classmethod
    def _no_control_characters(cls, value: Any) -> Any:
        # PostgreSQL cannot store NUL in text; the others (bar tab and line breaks) only hide or garble it.
        if _holds_control_character(value):
            raise ValueError(CONTROL_CHARACTER_DETAIL)
        return value


NOTE_MAX_LENGTH = 500
Note = Annotated[
    str,
    Field(
        min_length=1,
        max_length=NOTE_MAX_LENGTH,
        description="Free text beside the reason code, for the record: kept by this service and returned "
        "to those who may read the record; never in an event, a webhook, a log line or an error (I6)",
    ),
]
"""A person's note beside a reason code (the code is what the other services and the sites are told)."""

CONTROL_CHARACTER_DETAIL = "must not contain control characters (such as NUL)"
_CONTROL_CHARACTER = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _holds_control_character(value: Any) -> bool:
    if isinstance(value, str):
        return _CONTROL_CHARACTER.search(value) is not None
    if isinstance(value, list | tuple | set | frozenset):
        return any(_holds_control_character(item) for item in value)
    if isinstance(value, dict):
        return any(_holds_control_character(k) or _holds_control_character(v) for k, v in value.items())
    return False


def json_body(
    *,
    limit: int = DEFAULT_BODY_LIMIT,
    media_types: tuple[str, ...] = JSON_MEDIA_TYPES,
    schema: Any = None,
    problem_types: Mapping[int, str] | None = None,
    problem_headers: Mapping[int, Mapping[str, str]] | None = None,
) -> dict[str, Any]:
    """`openapi_extra` of a route that reads a JSON body of its own (no model parameter): documents the
    body and its limit, and tells the edge which media types to admit and, if the route speaks a standard
    of its own, the problem types and headers of the edge's refusals."""
    content = {media: {"schema": schema or {"type": "object"}} for media in media_types}
    extra: dict[str, Any] = {BODY_LIMIT_KEY: limit, "requestBody": {"required": True, "content": content}}
    if problem_types:
        extra[PROBLEM_TYPES_KEY] = {str(status): kind for status, kind in problem_types.items()}
    if problem_headers:
        extra[PROBLEM_HEADERS_KEY] = {str(status): dict(h) for status, h in problem_headers.items()}
    return extra


def body_limit(limit: int) -> dict[str, Any]:
    """`openapi_extra` of a model route whose body may be larger than `DEFAULT_BODY_LIMIT`."""
    return {BODY_LIMIT_KEY: limit}


class EdgeRoute(APIRoute):
    checks_query_itself = False
    """A route class that sets this parses and refuses its query parameters itself, by its standard's
    rule (the EPCIS query's 400 QueryParameterException; FHIR's search rules, `fhir.FhirRoute`): the
    edge does not."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        admission = BodyAdmission.of(self)
        declared = frozenset(declared_query_names(self.dependant))
        filters_only = not self.checks_query_itself
        authenticated = needs_token(self.dependant)

        async def admitted(request: Request) -> Response:
            _check_parameters(request)
            if request.method in READ_METHODS and filters_only:
                declared_filters_only(request, declared)
            if request.method in BODY_METHODS:
                if authenticated:
                    # The route's own dependency checks the role later; the token is checked here, first.
                    authenticate(request, await BEARER(request))
                try:
                    await admission.admit(request)
                except ProblemError as refusal:
                    raise admission.restyled(refusal) from None
            return await handler(request)

        return admitted


def _check_parameters(request: Request) -> None:
    """Path and query values hold no control character either (a NUL reaching PostgreSQL is a 500)."""
    errors = [
        FieldError(location=location, pointer=problems.pointer([name]), detail=CONTROL_CHARACTER_DETAIL)
        for location, values in (
            ("path", request.path_params.items()),
            ("query", request.query_params.multi_items()),
        )
        for name, value in values
        if _holds_control_character(value)
    ]
    if errors:
        raise problems.validation_problem(errors)


def declared_filters_only(request: Request, declared: frozenset[str]) -> None:
    """A query parameter the route does not declare is refused (422, naming it and the route's filters,
    never its value), never ignored: a caller asking for one site's objects must not get every site's."""
    unknown = sorted(set(request.query_params) - declared)
    if unknown:
        allowed = ", ".join(sorted(declared)) or "none"
        raise problems.validation_problem(
            [
                FieldError(
                    location="query",
                    pointer=problems.pointer([name]),
                    detail=f"not a filter here ({allowed})",
                )
                for name in unknown
            ]
        )


def needs_token(dependant: Dependant) -> bool:
    """Whether a route (through any of its dependencies) takes the bearer token."""
    return any(dep.call is BEARER or needs_token(dep) for dep in dependant.dependencies)


def declared_query_names(dependant: Dependant) -> set[str]:
    """The query parameters a route declares, those of its dependencies too (by their alias: `from`)."""
    names = {param.alias for param in dependant.query_params}
    for dependency in dependant.dependencies:
        names |= declared_query_names(dependency)
    return names


def api_routes(routes: Sequence[BaseRoute]) -> Iterator[APIRoute]:
    """Every API route, those of included routers too (FastAPI keeps an included router whole)."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        included = getattr(route, "original_router", None)
        if included is not None:
            yield from api_routes(included.routes)


def check_admitted(app: FastAPI) -> None:
    """Refuse to build an app with a route outside the edge, or one whose body model is not a
    `RequestModel`: such a route would take bodies unchecked."""
    for route in api_routes(app.routes):
        if not isinstance(route, EdgeRoute):
            raise TypeError(f"{route.path} is not an EdgeRoute: make its router with route_class=EdgeRoute")
        BodyAdmission.of(route)


class BodyAdmission:
    """What one route admits: its limit, its media types and the model its body must be."""

    def __init__(
        self,
        limit: int,
        media_types: tuple[str, ...],
        model: TypeAdapter[Any] | None,
        problem_types: Mapping[str, str] | None = None,
        problem_headers: Mapping[str, Mapping[str, str]] | None = None,
    ) -> None:
        self.limit = limit
        self.media_types = media_types
        self.model = model
        self.problem_types = dict(problem_types or {})
        self.problem_headers = dict(problem_headers or {})

    def restyled(self, refusal: ProblemError) -> ProblemError:
        """The refusal with the route's own type and headers for its status, if it declares them."""
        status = str(refusal.status)
        refusal.type = self.problem_types.get(status, refusal.type)
        refusal.headers.update(self.problem_headers.get(status, {}))
        return refusal

    @classmethod
    def of(cls, route: APIRoute) -> BodyAdmission:
        extra = route.openapi_extra or {}
        limit = int(extra.get(BODY_LIMIT_KEY, DEFAULT_BODY_LIMIT))
        media_types = tuple(extra.get("requestBody", {}).get("content", {})) or JSON_MEDIA_TYPES
        model: TypeAdapter[Any] | None = None
        if route.body_field is not None:
            annotation = route.body_field.field_info.annotation
            if not (isinstance(annotation, type) and issubclass(annotation, RequestModel)):
                raise TypeError(f"{route.path}: a request body must be a RequestModel, not {annotation!r}")
            model = TypeAdapter(annotation)
        return cls(limit, media_types, model, extra.get(PROBLEM_TYPES_KEY), extra.get(PROBLEM_HEADERS_KEY))

    async def admit(self, request: Request) -> None:
        body = await self._read(request)
        if not body:
            return  # FastAPI answers a missing required body with a 422 naming it
        self._check_media_type(request.headers.get("content-type"))
        request._body = body
        if self.model is not None:
            request._json = self._validated(body)
        else:
            request._json = _parsed(body)

    async def _read(self, request: Request) -> bytes:
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.limit:
            raise _too_large(self.limit)
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.limit:
                raise _too_large(self.limit)
            chunks.append(chunk)
        return b"".join(chunks)

    def _check_media_type(self, content_type: str | None) -> None:
        message = email.message.Message()
        message["content-type"] = content_type or ""
        media = message.get_content_type() if content_type else ""
        charset = message.get_content_charset()
        if media not in self.media_types or charset not in (None, "utf-8"):
            raise ProblemError(
                415,
                f"send the body as {' or '.join(self.media_types)} (UTF-8)",
                type=problems.UNSUPPORTED_MEDIA,
                title="Unsupported media type",
            )

    def _validated(self, body: bytes) -> Any:
        assert self.model is not None
        try:
            return self.model.validate_json(body, strict=True)
        except ValidationError as error:
            details = error.errors(include_input=False, include_url=False, include_context=False)
            syntax = next((e for e in details if e["type"] == "json_invalid"), None)
            if syntax is not None:
                raise _malformed_json(str(syntax["msg"])) from None
            # Deep JSON fails the model too: name the depth, not the first field it broke.
            _check_document(json.loads(body))
            raise problems.validation_problem(problems.field_errors(details)) from None


def _parsed(body: bytes) -> Any:
    """The JSON of a route that validates its own document (EPCIS): UTF-8, bounded depth, finite numbers,
    text without control characters."""
    try:
        document = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise ProblemError(
            400,
            f"the body is not UTF-8 (byte {error.start})",
            type=problems.MALFORMED,
            title="The body is not valid JSON",
        ) from None
    except RecursionError:
        raise _too_deep() from None
    except json.JSONDecodeError as error:
        raise _malformed_json(f"{error.msg} at line {error.lineno} column {error.colno}") from None
    refused = _check_document(document)
    if refused:
        raise problems.validation_problem(refused)
    return document


def _check_document(document: Any) -> list[FieldError]:
    """400 past `MAX_JSON_DEPTH`; else every NaN or ±Infinity (written as such, or overflowing a float) and
    every text (value or key) with a control character: what a model would refuse, for a document that
    no model describes."""
    stack: list[tuple[Any, tuple[int | str, ...]]] = [(document, ())]
    problems_found: list[FieldError] = []
    while stack:
        value, path = stack.pop()
        if len(path) > MAX_JSON_DEPTH:
            raise _too_deep()
        detail = None
        if isinstance(value, dict):
            stack.extend((child, (*path, key)) for key, child in value.items())
            if any(_holds_control_character(key) for key in value):
                detail = "a key " + CONTROL_CHARACTER_DETAIL
        elif isinstance(value, list):
            stack.extend((child, (*path, index)) for index, child in enumerate(value))
        elif isinstance(value, float) and not math.isfinite(value):
            detail = "Input should be a finite number"
        elif isinstance(value, str) and _holds_control_character(value):
            detail = CONTROL_CHARACTER_DETAIL
        if detail is not None:
            problems_found.append(FieldError(pointer=problems.pointer(path), detail=detail))
    return sorted(problems_found, key=lambda e: e.pointer)


def _too_large(limit: int) -> ProblemError:
    return ProblemError(
        413,
        f"the body may be at most {limit} bytes",
        type=problems.TOO_LARGE,
        title="The body is too large",
    )


def _too_deep() -> ProblemError:
    return ProblemError(
        400,
        f"the JSON is nested deeper than {MAX_JSON_DEPTH} levels",
        type=problems.MALFORMED,
        title="The body is not valid JSON",
    )


def _malformed_json(reason: str) -> ProblemError:
    if "recursion limit" in reason:
        return _too_deep()
    return ProblemError(
        400,
        f"the body is not valid JSON: {reason}",
        type=problems.MALFORMED,
        title="The body is not valid JSON",
    )
