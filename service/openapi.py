"""The OpenAPI 3.1 document served at /openapi.json.

Written as data, next to the routes it describes; ``tests/test_openapi.py`` checks that every
route is documented and that real responses carry what the schemas require.
"""

from __future__ import annotations

from functools import cache
from typing import Any


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(required: list[str], properties: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": properties}


_STR = {"type": "string"}
_NSTR = {"type": ["string", "null"]}
_NTIME = {"type": ["string", "null"], "format": "date-time"}
_TIME = {"type": "string", "format": "date-time"}
_BOOL = {"type": "boolean"}
_INT = {"type": "integer"}

_SCHEMAS: dict[str, Any] = {
    "Error": _obj(["statusCode", "error"], {"statusCode": _INT, "error": _STR}),
    "Connection": _obj(
        ["id", "companyId", "platformKey", "platformName", "sourceType", "status", "linkUrl",
         "created", "lastEventAt", "updatedAt", "deleted", "errors"],
        {"id": _STR, "companyId": _STR, "platformKey": _NSTR, "platformName": _NSTR,
         "sourceType": _NSTR, "integrationId": _NSTR, "sourceId": _NSTR,
         "status": {"type": ["string", "null"],
                    "description": "PendingAuth, Linked, Unlinked or Deauthorized"},
         "linkUrl": _NSTR, "created": _NTIME, "lastSync": _NTIME, "lastEventAt": _NTIME,
         "lastEventId": _NSTR, "updatedAt": _TIME, "deleted": _BOOL, "deletedAt": _NTIME,
         "errors": {"type": "array", "items": {"type": "object"}}, "version": _INT}),
    "DataTypeStatus": _obj(
        ["dataType", "status"],
        {"dataType": _STR, "status": _STR, "connectionId": _NSTR,
         "recordsModified": {"type": ["boolean", "null"]},
         "issues": {"type": "array", "items": {"type": "object"}}, "lastReadAt": _NTIME}),
    "Company": _obj(
        ["id", "name", "deleted", "billPayReady", "dataTypes", "dataConnections"],
        {"id": _STR, "name": _NSTR, "description": _NSTR,
         "tags": {"type": "object", "additionalProperties": _STR}, "redirect": _NSTR,
         "products": {"type": "array", "items": _STR}, "created": _NTIME, "deleted": _BOOL,
         "deletedAt": _NTIME, "billPayReady": _BOOL, "billPayCheckedAt": _NTIME,
         "billPayDetail": {"type": ["object", "null"]},
         "dataTypes": {"type": "array", "items": _ref("DataTypeStatus")},
         "lastEventAt": _NTIME, "createdAt": _TIME, "updatedAt": _TIME,
         "dataConnections": {"type": "array", "items": _ref("Connection")}}),
    "HistoryEntry": _obj(
        ["id", "connectionId", "fromState", "toState", "result", "source", "eventId",
         "deliveryId", "eventTime", "recordedAt"],
        {"id": _INT, "connectionId": _STR, "companyId": _STR, "fromState": _NSTR,
         "toState": _NSTR, "result": {"enum": ["applied", "superseded", "rejected"]},
         "source": {"enum": ["webhook", "api", "reconcile"]}, "eventId": _NSTR,
         "eventType": _NSTR, "deliveryId": _NSTR, "eventTime": _NTIME, "recordedAt": _TIME,
         "reason": _NSTR}),
    "OutboxJob": _obj(
        ["id", "kind", "status", "attempts", "maxAttempts", "nextAttemptAt", "lastError"],
        {"id": _STR, "kind": _STR, "dedupeKey": _STR, "companyId": _NSTR, "connectionId": _NSTR,
         "payload": {"type": "object"}, "status": {"enum": ["pending", "running", "done", "dead"]},
         "attempts": _INT, "maxAttempts": _INT, "nextAttemptAt": _TIME, "leaseUntil": _NTIME,
         "lockedBy": _NSTR, "lastError": _NSTR, "createdAt": _TIME, "updatedAt": _TIME}),
    "NewCompany": {"type": "object", "required": ["name"], "additionalProperties": False,
                   "properties": {"name": {"type": "string", "minLength": 1},
                                  "description": _NSTR,
                                  "tags": {"type": "object", "maxProperties": 10,
                                           "additionalProperties": _STR}}},
    "NewConnection": {"type": "object", "required": ["platformKey"],
                      "additionalProperties": False,
                      "properties": {"platformKey": {"type": "string", "pattern": "^[a-z]{4}$",
                                                     "description": "e.g. qhyg (QuickBooks "
                                                                    "Online), gbol (Xero)"}}},
    "Unlink": {"type": "object", "additionalProperties": False,
               "properties": {"reason": _STR}},
    "Delivery": _obj(
        ["messageId", "timestamp", "outcome", "error", "receivedAt", "bodySha256", "secretId"],
        {"messageId": _STR, "timestamp": _INT, "eventId": _NSTR, "eventType": _NSTR,
         "companyId": _NSTR, "connectionId": _NSTR, "bodySha256": _STR, "secretId": _STR,
         "headers": {"type": "object"}, "receivedAt": _TIME, "processedAt": _NTIME,
         "outcome": {"enum": ["processed", "ignored", "unparseable", "failed"]},
         "error": _NSTR, "attempts": _INT, "conflicts": _INT, "bodyPruned": _BOOL,
         "body": {"type": ["object", "null"], "description": "only with includeBody=true",
                  "properties": {"encoding": {"enum": ["utf-8", "base64"]}, "text": _STR}}}),
}


def _page(item: str) -> dict[str, Any]:
    return _obj(["results", "nextCursor"],
                {"results": {"type": "array", "items": _ref(item)}, "nextCursor": _NSTR})


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _get(summary: str, ok: dict[str, Any], *, params: list[dict[str, Any]] | None = None,
         found: bool = True) -> dict[str, Any]:
    responses: dict[str, Any] = {
        "200": _json(ok, "OK"),
        "400": _json(_ref("Error"), "A query parameter cannot be used"),
        "401": _json(_ref("Error"), "Missing or wrong bearer token"),
        "422": _json(_ref("Error"), "A query value cannot be stored (NUL, a lone surrogate)"),
        "503": _json(_ref("Error"), "Database unavailable; retry"),
    }
    if found:
        responses["404"] = _json(_ref("Error"), "Not found")
    return {"get": {"summary": summary, "security": [{"bearer": []}],
                    "parameters": params or [], "responses": responses}}


def _post(summary: str, request: str, ok_status: str, ok: dict[str, Any],
          errors: dict[str, str]) -> dict[str, Any]:
    responses: dict[str, Any] = {ok_status: _json(ok, "OK")}
    for status, meaning in {"401": "Missing or wrong bearer token",
                            "403": "A read-only token (SERVICE_READ_TOKENS): onboarding needs "
                                   "one from SERVICE_API_TOKENS",
                            "422": "Invalid body, or an Idempotency-Key reused with another body",
                            "502": "Codat failed or refused our credentials",
                            "503": "Codat rate limited us, or the database is unavailable",
                            "504": "Codat did not answer in time", **errors}.items():
        responses[status] = _json(_ref("Error"), meaning)
    key = {"name": "Idempotency-Key", "in": "header", "required": False, "schema": _STR,
           "description": "the same key and body replay the first result"}
    return {"post": {"summary": summary, "security": [{"bearer": []}], "parameters": [key],
                     "requestBody": {"required": request != "Unlink", "content": {
                         "application/json": {"schema": _ref(request)}}},
                     "responses": responses}}


def _path_param(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": _STR}


def _query(name: str, description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema or _STR,
            "description": description}


_PAGING = [_query("limit", "page size, 1 to 500 (default 100)", _INT),
           _query("cursor", "nextCursor from the previous page")]


@cache
def openapi_document() -> dict[str, Any]:
    """The whole document (built once)."""
    probe = {"200": {"description": "OK"}, "503": {"description": "Not ready"}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "codat-hooks query API", "version": "1",
                 "description": "Connection state of SMB customers' accounting links, kept "
                                "from Codat's webhooks."},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "a token from SERVICE_API_TOKENS"}},
            "schemas": {**_SCHEMAS, "ConnectionPage": _page("Connection"),
                        "HistoryPage": _page("HistoryEntry"), "OutboxPage": _page("OutboxJob")},
        },
        "paths": {
            "/v1/companies": _post(
                "Create a Codat company for an SMB customer", "NewCompany", "201",
                _ref("Company"), {"400": "Codat refused the company"}),
            "/v1/companies/{companyId}/connections/{connectionId}/unlink": {
                **_post("Unlink a Linked connection (Codat PATCH status Unlinked)", "Unlink",
                        "200", _ref("Connection"),
                        {"404": "No such connection", "409": "The connection is not Linked"}),
                "parameters": [_path_param("companyId"), _path_param("connectionId")]},
            "/v1/outbox": {**_get("Follow-up jobs", _ref("OutboxPage"), found=False,
                                  params=[_query("status", "pending, running, done or dead"),
                                          *_PAGING])},
            "/v1/companies/{companyId}": {
                **_get("A company, its Bill Pay readiness, read status and connections",
                       _ref("Company"), params=[_path_param("companyId")])},
            "/v1/companies/{companyId}/connections": {
                **_get("A company's connections",
                       _obj(["results"], {"results": {"type": "array",
                                                      "items": _ref("Connection")}}),
                       params=[_path_param("companyId")]),
                **_post("Create a connection for a platformKey; answers its linkUrl "
                        "(status PendingAuth)", "NewConnection", "201", _ref("Connection"),
                        {"404": "No such company at Codat"}),
                "parameters": [_path_param("companyId")]},
            "/v1/connections": {**_get(
                "Connections, filtered, in id order (keyset pagination)",
                _ref("ConnectionPage"), found=False,
                params=[_query("status", "PendingAuth, Linked, Unlinked, Deauthorized or "
                                         "Deleted"),
                        _query("platformKey", "e.g. qhyg"), _query("companyId", "a company"),
                        *_PAGING])},
            "/v1/connections/{connectionId}": {
                **_get("A connection", _ref("Connection"),
                       params=[_path_param("connectionId")])},
            "/v1/connections/{connectionId}/history": {
                **_get("A connection's history: every applied, superseded and rejected move",
                       _ref("HistoryPage"), params=[_path_param("connectionId"), *_PAGING])},
            "/v1/deliveries/{messageId}": {
                **_get("A stored webhook delivery: outcome and error, the body on request",
                       _ref("Delivery"),
                       params=[_path_param("messageId"),
                               _query("includeBody", "true to include the body",
                                      {"type": "boolean"})])},
            "/healthz": {"get": {"summary": "The process is alive", "responses": probe}},
            "/readyz": {"get": {"summary": "Database reachable and migrations current",
                                "responses": probe}},
        },
    }
