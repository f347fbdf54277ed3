"""The OpenAPI 3.1 document served at /openapi.json, derived, never written by hand.

Schemas come from the pydantic models the API validates its requests and its responses
against (:mod:`service.api_models`, :mod:`service.feed_models`); paths, parameters,
scopes and statuses from the operations declared beside the routes (``service.api``,
``service.onboarding``, and the change feed's ``FEED``). ``tests/test_openapi.py`` checks that
every route is documented, every documented path is served, and every real response, errors
included, validates against this document.
"""

from __future__ import annotations

import re
from functools import cache
from typing import Any

from pydantic import BaseModel
from pydantic.alias_generators import to_camel
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaMode, models_json_schema
from pydantic_core import CoreSchema

from service import api, api_models, feed_models, onboarding
from service.operations import Operation

OPERATIONS: tuple[Operation, ...] = (*api.OPERATIONS, *onboarding.OPERATIONS, feed_models.FEED)
_PROBE_MODELS = (api_models.Health, api_models.Ready, api_models.NotReady)
_PATH_PARAMETERS = {
    "company_id": "Codat's company id (a UUID)",
    "connection_id": "Codat's connection id (a UUID)",
    "message_id": "the delivery's svix message id (its svix-id header)",
}
_REF_TEMPLATE = "#/components/schemas/{model}"
_SECURITY = (
    "A token from SERVICE_API_TOKENS (full rights: scopes read and write) or from "
    "SERVICE_READ_TOKENS (scope read only). Each operation names the scope it needs: read for "
    "the query API and the change feed, write for onboarding (a read-only token gets 403).")


class _Schema(GenerateJsonSchema):
    """pydantic's JSON Schema without a title on every property: the names say it."""

    def field_title_should_be_set(self, schema: CoreSchema) -> bool:
        return False


Refs = dict[type[BaseModel], dict[str, Any]]


def _components() -> tuple[Refs, dict[str, Any]]:
    """Every model's schema under #/components/schemas, and a $ref to each by model."""
    wanted: dict[type[BaseModel], JsonSchemaMode] = {api_models.Error: "serialization"}
    for model in (*_PROBE_MODELS, *feed_models.CHANGE_MODELS, feed_models.Change):
        wanted[model] = "serialization"
    for operation in OPERATIONS:
        wanted[operation.response] = "serialization"
        if operation.body is not None:
            wanted[operation.body] = "validation"
    by_key, definitions = models_json_schema(list(wanted.items()), ref_template=_REF_TEMPLATE,
                                             schema_generator=_Schema)
    refs = {model: by_key[(model, mode)] for model, mode in wanted.items()}
    return refs, definitions.get("$defs", {})


def _json(schema: dict[str, Any], description: str,
          headers: dict[str, Any] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {"description": description,
                                "content": {"application/json": {"schema": schema}}}
    if headers:
        response["headers"] = headers
    return response


def _header(description: str, *, required: bool = True) -> dict[str, Any]:
    return {"description": description, "required": required, "schema": {"type": "string"}}


def document_path(path: str) -> str:
    """A route's path as the document writes it: /v1/companies/{company_id} ->
    /v1/companies/{companyId}."""
    return re.sub(r"{(\w+)}", lambda m: "{" + to_camel(m[1]) + "}", path)


def _parameters(operation: Operation) -> list[dict[str, Any]]:
    parameters = [{"name": to_camel(name), "in": "path", "required": True,
                   "description": _PATH_PARAMETERS[name], "schema": {"type": "string"}}
                  for name in re.findall(r"{(\w+)}", operation.path)]
    parameters += [{"name": p.name, "in": p.where, "required": False,
                    "description": p.description, "schema": p.schema()}
                   for p in operation.params]
    return parameters


def _responses(operation: Operation, refs: Refs) -> dict[str, Any]:
    success_headers = None
    if any(p.name == "Idempotency-Key" for p in operation.params):
        success_headers = {"Idempotent-Replayed": _header(
            "true when this answer replays the first one given for the Idempotency-Key",
            required=False)}
    responses = {str(operation.status): _json(
        refs[operation.response], "Created" if operation.status == 201 else "OK",
        success_headers)}
    for status, meaning in operation.error_statuses().items():
        headers = None
        if status == 401:
            headers = {"WWW-Authenticate": _header('Bearer realm="codat-hooks"')}
        elif status == 503:
            headers = {"Retry-After": _header("seconds to wait before retrying")}
        elif status == 409 and "Idempotency-Key" in meaning:
            headers = {"Retry-After": _header("seconds to wait (when a request with this "
                                              "Idempotency-Key is in progress)",
                                              required=False)}
        responses[str(status)] = _json(refs[api_models.Error], meaning, headers)
    return responses


def _operation(operation: Operation, refs: Refs) -> dict[str, Any]:
    described: dict[str, Any] = {
        "summary": operation.summary,
        "security": [{"bearer": [operation.scope.value]}],
        "parameters": _parameters(operation),
    }
    if operation.body is not None:
        described["requestBody"] = {
            "required": operation.body_required,
            "content": {"application/json": {"schema": refs[operation.body]}}}
    described["responses"] = _responses(operation, refs)
    return described


def _probes(refs: Refs) -> dict[str, Any]:
    # Served by service.app's Health, with no token.
    return {
        "/healthz": {"get": {"summary": "The process is alive", "security": [],
                             "responses": {"200": _json(refs[api_models.Health], "Alive")}}},
        "/readyz": {"get": {
            "summary": "The database is reachable and its migrations are current",
            "security": [],
            "responses": {"200": _json(refs[api_models.Ready], "Ready"),
                          "503": _json(refs[api_models.NotReady], "Not ready")}}},
    }


@cache
def openapi_document() -> dict[str, Any]:
    """The whole document (built once)."""
    refs, schemas = _components()
    paths: dict[str, Any] = {}
    for operation in OPERATIONS:
        paths.setdefault(document_path(operation.path), {})[operation.method.lower()] = \
            _operation(operation, refs)
    paths.update(_probes(refs))
    return {
        "openapi": "3.1.0",
        "info": {"title": "codat-hooks API", "version": "1",
                 "description": "The state of SMB customers' links to their accounting "
                                "software, kept from Codat's webhooks; onboarding into Codat's "
                                "Bill Pay; a feed of every change."},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": _SECURITY}},
            "schemas": schemas,
        },
        "paths": paths,
    }
