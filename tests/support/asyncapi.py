"""Validation against the official AsyncAPI JSON Schemas (@asyncapi/specs, fetched by `make install` into
.cache/asyncapi/ by deploy/fetch_asyncapi_schemas.py), offline: each bundled schema holds every definition
under its own `$id`, and the one schema outside it (JSON Schema draft-07, which AsyncAPI's Schema Object
extends) is jsonschema's own copy. A referencing `Registry` retrieves nothing it was not given: any other
reference fails, it is never fetched."""

from __future__ import annotations

import functools
import json
from typing import Any

from jsonschema import Draft7Validator
from jsonschema.exceptions import ValidationError, best_match
from referencing import Registry, Resource

from deploy.fetch_asyncapi_schemas import MEMBERS, schema_path, sha256_of

DRAFT7 = "http://json-schema.org/draft-07/schema"


@functools.cache
def validator(version: str) -> Draft7Validator:
    """A validator for AsyncAPI `version` documents, from the pinned schema `make install` fetched."""
    path = schema_path(version)
    assert path.is_file(), f"{path} is missing: run `make install` (deploy/fetch_asyncapi_schemas.py)"
    data = path.read_bytes()
    assert sha256_of(data) == MEMBERS[version][1], f"{path} is not the pinned file: run `make install`"
    schema = json.loads(data)
    draft7 = Resource.from_contents(Draft7Validator.META_SCHEMA)
    registry: Registry[Any] = Registry().with_resources(
        [(schema["$id"], Resource.from_contents(schema)), (DRAFT7, draft7), (DRAFT7 + "#", draft7)]
    )
    registry = registry.crawl()
    return Draft7Validator(schema, registry=registry)


def errors(document: dict[str, Any]) -> list[str]:
    """Why `document` is not a valid AsyncAPI document of the version it states (empty: it is valid)."""
    found = list(validator(str(document.get("asyncapi"))).iter_errors(document))
    if not found:
        return []
    best: ValidationError | None = best_match(found)
    return [
        f"{'/'.join(map(str, e.absolute_path)) or '<document>'}: {e.message[:300]}"
        for e in [best, *found]
        if e
    ]
