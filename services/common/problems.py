"""RFC 9457 problem documents: the one shape of every 4xx and 5xx answer of every service.

`type` names the kind of problem (`about:blank` when the HTTP status says it all), `title` is fixed per
type, `detail` explains this occurrence, `instance` is the request's correlation id (quote it to support),
and a validation problem lists each failed field in `errors` with a JSON pointer. Nothing the caller sent
is echoed back: not a value (which could be a patient's name), only where it was and what was wrong.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

PROBLEM_MEDIA_TYPE = "application/problem+json"
TYPE_PREFIX = "urn:cgt:problem:"
VALIDATION = f"{TYPE_PREFIX}validation-error"
MALFORMED = f"{TYPE_PREFIX}malformed-body"
TOO_LARGE = f"{TYPE_PREFIX}body-too-large"
UNSUPPORTED_MEDIA = f"{TYPE_PREFIX}unsupported-media-type"
CONFLICT = f"{TYPE_PREFIX}conflict"
TOO_MANY_REQUESTS = f"{TYPE_PREFIX}too-many-requests"
INTERNAL = f"{TYPE_PREFIX}internal-error"
MAX_POINTER_SEGMENT = 64
"""A key the caller invented is part of a pointer: cut long ones, so a pointer never carries a value."""


class FieldError(BaseModel):
    """One failed field: where it is (`pointer` into the body, or the parameter's name) and what is wrong."""

    location: str = Field(default="body", examples=["body", "query", "path", "header"])
    pointer: str = Field(description="JSON pointer (RFC 6901) to the field, e.g. /patient/name")
    detail: str


class Problem(BaseModel):
    """An RFC 9457 problem document (`application/problem+json`); a problem may add members of its own."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(default="about:blank", examples=[VALIDATION])
    title: str = Field(examples=["The request is not valid"])
    status: int = Field(ge=400, le=599, examples=[422])
    detail: str = Field(examples=["1 field failed validation"])
    instance: str = Field(description="The request's correlation id (X-Correlation-ID)")
    errors: list[FieldError] | None = Field(
        default=None, description="Validation problems: every failed field"
    )
    reasons: list[str] | None = Field(default=None, description="Conflicts: every rule the request breaks")


class ProblemError(Exception):
    """Raise to answer with a problem document; the handler adds `instance`."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        type: str = "about:blank",
        title: str | None = None,
        errors: Sequence[FieldError] | None = None,
        reasons: Sequence[str] | None = None,
        headers: Mapping[str, str] | None = None,
        extensions: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.type = type
        self.title = title or HTTPStatus(status).phrase
        self.errors = list(errors) if errors is not None else None
        self.reasons = list(reasons) if reasons is not None else None
        self.headers = dict(headers or {})
        self.extensions = dict(extensions or {})


def conflict(detail: str, reasons: Sequence[str] | None = None) -> ProblemError:
    """409: the request is well-formed but the current state (or a rule) refuses it."""
    return ProblemError(
        409, detail, type=CONFLICT, title="The request conflicts with the current state", reasons=reasons
    )


def invalid(location: str, name: str, detail: str) -> ProblemError:
    """422 for one field that a schema cannot check (it depends on other fields or on stored state)."""
    return validation_problem(
        [FieldError(location=location, pointer=pointer(name.split("/")), detail=detail)]
    )


def correlation_id(request: Request) -> str:
    return str(request.scope.get("state", {}).get("correlation_id", ""))


def problem_response(request: Request, error: ProblemError) -> JSONResponse:
    """The problem document, or under a FHIR base (`/fhir/...`) the same problem as an
    `OperationOutcome`, which is what a FHIR client reads."""
    body = Problem(
        type=error.type,
        title=error.title,
        status=error.status,
        detail=error.detail,
        instance=correlation_id(request),
        errors=error.errors,
        reasons=error.reasons,
        **error.extensions,
    )
    from services.common import fhir  # fhir builds on this module

    if fhir.is_fhir_path(request.url.path):
        return fhir.outcome_response(body, error.headers)
    return JSONResponse(
        body.model_dump(mode="json", exclude_none=True),
        status_code=error.status,
        headers=error.headers,
        media_type=PROBLEM_MEDIA_TYPE,
    )


def pointer(loc: Sequence[int | str]) -> str:
    """`("patient", "name")` → `/patient/name` (RFC 6901 escaping, long segments cut)."""
    segments = []
    for part in loc:
        text = str(part)[:MAX_POINTER_SEGMENT]
        segments.append(text.replace("~", "~0").replace("/", "~1"))
    return "/" + "/".join(segments) if segments else ""


def field_errors(errors: Sequence[Mapping[str, Any]], *, default_location: str = "body") -> list[FieldError]:
    """Pydantic / FastAPI errors as field errors: the location and message only, never the input."""
    result = []
    for error in errors:
        loc = list(error.get("loc", ()))
        location = default_location
        if loc and loc[0] in ("body", "query", "path", "header", "cookie"):
            location = str(loc.pop(0))
        result.append(FieldError(location=location, pointer=pointer(loc), detail=str(error.get("msg", ""))))
    return result


def validation_problem(errors: Sequence[FieldError]) -> ProblemError:
    count = len(errors)
    return ProblemError(
        422,
        f"{count} field{'s' if count != 1 else ''} failed validation",
        type=VALIDATION,
        title="The request is not valid",
        errors=errors,
    )


async def _on_problem(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, ProblemError)
    return problem_response(request, error)


async def _on_http_exception(request: Request, error: Exception) -> JSONResponse:
    """Starlette's and FastAPI's own errors (404 route, 405 method, 401 from the bearer scheme)."""
    assert isinstance(error, StarletteHTTPException)
    detail = error.detail if isinstance(error.detail, str) else HTTPStatus(error.status_code).phrase
    problem = ProblemError(error.status_code, detail, headers=error.headers)
    return problem_response(request, problem)


async def _on_validation_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RequestValidationError)
    return problem_response(request, validation_problem(field_errors(error.errors())))


def internal_error() -> ProblemError:
    return ProblemError(
        500,
        "the service failed to answer; quote the instance (correlation id) to support",
        type=INTERNAL,
        title="Internal error",
    )


def install_problem_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ProblemError, _on_problem)
    app.add_exception_handler(StarletteHTTPException, _on_http_exception)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    # An unexpected exception becomes a 500 problem in CorrelationMiddleware, which logs it with the id.


def documented(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` of a route: the problems it answers with beyond those every operation documents."""
    return {code: {"description": HTTPStatus(code).phrase} for code in statuses}


_PROBLEM_CONTENT = {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}}
_BODY_PROBLEMS = (400, 413, 415, 422)
_AUTH_PROBLEMS = (401, 403, 429)
_RETRY_AFTER = {
    "Retry-After": {
        "description": "Whole seconds until this caller (or, after failed authentications, this address) "
        "may send again",
        "schema": {"type": "integer", "minimum": 1},
    }
}


_OUTCOME_CONTENT = {"application/fhir+json": {"schema": {"$ref": "#/components/schemas/OperationOutcome"}}}
_OUTCOME_SCHEMA = {
    "type": "object",
    "description": "An HL7 FHIR R4 OperationOutcome: the same problem, one issue per failed element or rule",
    "required": ["resourceType", "issue"],
    "properties": {
        "resourceType": {"type": "string", "enum": ["OperationOutcome"]},
        "issue": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["severity", "code"],
                "properties": {
                    "severity": {"type": "string"},
                    "code": {"type": "string"},
                    "diagnostics": {"type": "string"},
                    "expression": {"type": "array", "items": {"type": "string"}},
                },
            },
        },
    },
}
_FHIR_SEARCH_PROBLEMS = (400, 422)
"""A FHIR search refuses an unknown parameter under `Prefer: handling=strict` (400) and a bad value (422)."""


def document_problems(openapi: dict[str, Any]) -> dict[str, Any]:
    """Make every error response of every operation a Problem (`application/problem+json`): those the
    route declares, and those the edge gives: 400/413/415/422 with a body, 422 with parameters, 404 with
    a path parameter, 401/403 when the caller must authenticate, and 429 with `Retry-After` past the caller's
    rate limit (`services/common/ratelimit.py`). Under `/fhir` the same errors are `OperationOutcome`s
    (`application/fhir+json`, as `problem_response` answers there). FastAPI's own validation-error schemas go."""
    for path, path_item in openapi.get("paths", {}).items():
        under_fhir = path == "/fhir" or path.startswith("/fhir/")
        for method, operation in path_item.items():
            responses: dict[str, Any] = operation.setdefault("responses", {})
            fhir_search = (
                under_fhir and method == "get" and "{" not in path and not path.endswith("/metadata")
            )
            implied: list[int] = list(_FHIR_SEARCH_PROBLEMS) if fhir_search else []
            if "requestBody" in operation:
                implied += _BODY_PROBLEMS
            parameters = operation.get("parameters", [])
            if parameters:
                implied.append(422)
            if any(parameter.get("in") == "path" for parameter in parameters):
                implied.append(404)  # a path names a resource, which may not exist (or not be the caller's)
            if operation.get("security"):
                implied += _AUTH_PROBLEMS
            for status in implied:
                responses.setdefault(str(status), {"description": HTTPStatus(status).phrase})
            if "429" in responses:
                responses["429"].setdefault("headers", _RETRY_AFTER)
            for code, response in responses.items():
                if code[0] in "45":
                    response["content"] = _OUTCOME_CONTENT if under_fhir else _PROBLEM_CONTENT
    schemas = openapi.setdefault("components", {}).setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    problem = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.update(problem.pop("$defs", {}))
    schemas["Problem"] = problem
    schemas["OperationOutcome"] = _OUTCOME_SCHEMA
    return openapi
