"""Contract tests: what the sandbox answers and sends, checked against Codat's own OpenAPI files.

Bodies are validated with jsonschema (Draft 2020-12, the dialect of these OpenAPI 3.1 files)
and a ``referencing`` registry that resolves ``#/components/...`` inside each file.

One adjustment: the files declare OpenAPI 3.1 but still mark optional values with 3.0's
``nullable: true``, which 2020-12 ignores. Read literally, ``"validation": null`` in an error
or ``"description": null`` would be invalid, though the files mean to allow them. The loader
therefore turns ``nullable: true`` into "or null" (adding "null" to ``type``/``enum``, or
wrapping a ``$ref``/``allOf`` in ``anyOf``) before validating. Nothing else is relaxed.

The folder is ``$CODAT_SHARED_DIR`` or ``../shared/codat`` next to the repository; without it
these tests skip.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import AsyncIterator
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from jsonschema import Draft202012Validator, FormatChecker
from referencing import Registry
from referencing.jsonschema import DRAFT202012
from starlette.routing import Route

from service.sandbox import api, followups
from tests.flow import eventually
from tests.test_sandbox_fixtures import Harness, make_config, running

SHARED = Path(os.environ.get("CODAT_SHARED_DIR",
                             Path(__file__).resolve().parents[2] / "shared" / "codat"))
PLATFORM = "Codat-Platform.json"
PAYABLES = "Codat-Sync-Payables.json"
_MOVED_FOR_NULL = ("$ref", "allOf", "anyOf", "oneOf")

pytestmark = pytest.mark.skipif(not (SHARED / "oas" / PLATFORM).is_file(),
                                reason=f"Codat's OpenAPI files are not at {SHARED}/oas "
                                       "(set CODAT_SHARED_DIR)")


def _honour_nullable(node: Any) -> None:
    """Rewrite OpenAPI 3.0 ``nullable: true`` in place so 2020-12 lets null through."""
    if isinstance(node, list):
        for item in node:
            _honour_nullable(item)
        return
    if not isinstance(node, dict):
        return
    for value in node.values():
        _honour_nullable(value)
    if node.get("nullable") is not True:
        return
    if "type" in node:
        types = node["type"] if isinstance(node["type"], list) else [node["type"]]
        node["type"] = [*types, "null"]
    if "enum" in node:
        node["enum"] = [*node["enum"], None]
    moved = {key: node.pop(key) for key in _MOVED_FOR_NULL if key in node}
    if moved:
        node["anyOf"] = [moved, {"type": "null"}]


def _urn(name: str) -> str:
    return f"urn:codat:{name}"


@cache
def _registry() -> Registry[Any]:
    registry: Registry[Any] = Registry()
    for name in (PLATFORM, PAYABLES):
        document = json.loads((SHARED / "oas" / name).read_text())
        _honour_nullable(document)
        registry = registry.with_resource(_urn(name), DRAFT202012.create_resource(document))
    return registry


@cache
def _spec(name: str) -> dict[str, Any]:
    spec: dict[str, Any] = json.loads((SHARED / "oas" / name).read_text())
    return spec


def _formats() -> FormatChecker:
    checker = FormatChecker(formats=())

    @checker.checks("uuid", raises=ValueError)
    def is_uuid(value: object) -> bool:
        return not isinstance(value, str) or str(uuid.UUID(value)) == value

    @checker.checks("uri")
    def is_uri(value: object) -> bool:
        parts = urlsplit(value) if isinstance(value, str) else None
        return parts is None or bool(parts.scheme and parts.netloc)

    return checker


def assert_matches(instance: Any, pointer: str, spec: str = PLATFORM) -> None:
    """``instance`` is valid against the schema at ``pointer`` in ``spec``."""
    validator = Draft202012Validator({"$ref": f"{_urn(spec)}#{pointer}"},
                                     registry=_registry(), format_checker=_formats())
    errors = sorted(validator.iter_errors(instance), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{spec}#{pointer} at {list(e.absolute_path)}: {e.message}"
                                 for e in errors[:5])


def schema(name: str) -> str:
    return f"/components/schemas/{name}"


def webhook_schema(event_type: str) -> str:
    return f"/webhooks/{event_type}/post/requestBody/content/application~1json/schema"


@pytest.fixture
async def sb() -> AsyncIterator[Harness]:
    async with running(make_config(None)) as harness:
        yield harness


async def scenario(sb: Harness) -> dict[str, str]:
    """Drive one company through every lifecycle move; returns the ids involved."""

    def reads() -> int:
        return sum(1 for m in sb.sandbox.webhooks.messages.values()
                   if m.event_type.startswith("read.completed"))

    company = await sb.create_company("Toft stores", description="c-1", tags={"uid": "c-1"})
    company_id = company["id"]
    declined = (await sb.create_connection(company_id, "gbol"))["id"]
    await sb.smb("decline", company_id, declined)
    linked = (await sb.create_connection(company_id))["id"]
    await sb.smb("authorize", company_id, linked)
    await eventually(lambda: reads() == 1)
    await sb.codat("PATCH", f"/companies/{company_id}/connections/{linked}",
                   json={"status": "Unlinked"})
    await sb.smb("authorize", company_id, linked)
    await eventually(lambda: reads() == 2)
    await sb.smb("deauthorize", company_id, linked)
    await sb.smb("authorize", company_id, linked)
    await eventually(lambda: reads() == 3)
    return {"company": company_id, "linked": linked, "declined": declined}


# --- API answers ----------------------------------------------------------------------------

@pytest.mark.parametrize("spec", [PLATFORM, PAYABLES])
async def test_companies_match_the_company_schemas(sb: Harness, spec: str) -> None:
    ids = await scenario(sb)
    company_path = f"/companies/{ids['company']}"
    created = await sb.codat("POST", "/companies", json={"name": "Bare"})
    assert_matches(created.json(), schema("Company"), spec)
    assert_matches((await sb.codat("GET", company_path)).json(), schema("Company"), spec)
    patched = await sb.codat("PATCH", company_path, json={"description": None})
    assert_matches(patched.json(), schema("Company"), spec)
    listed = await sb.codat("GET", "/companies", params={"pageSize": 1})
    assert "next" in listed.json()["_links"]
    assert_matches(listed.json(), schema("Companies"), spec)


@pytest.mark.parametrize("spec", [PLATFORM, PAYABLES])
async def test_connections_match_the_connection_schemas(sb: Harness, spec: str) -> None:
    ids = await scenario(sb)
    base = f"/companies/{ids['company']}/connections"
    for connection_id in (ids["linked"], ids["declined"]):
        body = (await sb.codat("GET", f"{base}/{connection_id}")).json()
        assert body.get("dataConnectionErrors")  # both carry errors: the richest shape
        assert_matches(body, schema("Connection"), spec)
    fresh = await sb.create_connection(ids["company"], "akxx")
    assert_matches(fresh, schema("Connection"), spec)
    assert_matches((await sb.codat("GET", base, params={"page": 2, "pageSize": 1})).json(),
                   schema("Connections"), spec)


async def test_error_bodies_match_error_message(sb: Harness) -> None:
    company = await sb.create_company()
    pending = await sb.create_connection(company["id"])
    await sb.control("/faults", {"method": "GET", "path": "^/integrations$", "status": 429})
    await sb.codat("POST", "/companies", json={"name": "A"}, headers={"Idempotency-Key": "k"})
    answers = [
        await sb.client.get("/companies"),
        await sb.codat("POST", "/companies", json={"tags": {"x" * 30: "v"}}),
        await sb.codat("GET", "/companies/nope"),
        await sb.codat("GET", f"/companies/{company['id']}/dataStatus"),
        await sb.codat("POST", "/companies", json={"name": "B"}, headers={"Idempotency-Key": "k"}),
        await sb.codat("GET", "/integrations"),
        await sb.codat("PATCH", f"/companies/{company['id']}/connections/{pending['id']}",
                       json={"status": "Unlinked"}),
    ]
    assert [a.status_code for a in answers] == [401, 400, 404, 409, 422, 429, 400]
    for answer in answers:
        assert_matches(answer.json(), schema("ErrorMessage"))
        assert_matches(answer.json(), schema("ErrorMessage"), PAYABLES)
    assert answers[1].json()["validation"]["errors"]


async def test_follow_up_answers_match_their_schemas(sb: Harness) -> None:
    company_id, connection_id = await sb.linked()
    operation = await sb.codat("POST", f"/companies/{company_id}/data/queue/suppliers",
                               params={"connectionId": connection_id})
    assert_matches(operation.json(), schema("PullOperation"))
    assert_matches(operation.json(), schema("PullOperation"), PAYABLES)
    status = await sb.codat("GET", f"/companies/{company_id}/dataStatus")
    assert_matches(status.json(), schema("DataStatuses"))
    for entry in status.json().values():
        assert_matches(entry, schema("DataStatus"), PAYABLES)
    payables = f"/companies/{company_id}/connections/{connection_id}/payables"
    info = await sb.codat("GET", f"{payables}/info")
    assert_matches(info.json(), schema("CompanyInformation"), PAYABLES)
    options = await sb.codat("GET", f"{payables}/mappingOptions/payments")
    assert_matches(options.json(), schema("PaymentMappingOptions"), PAYABLES)
    integrations = await sb.codat("GET", "/integrations")
    assert_matches(integrations.json(), schema("Integrations"))
    assert_matches((await sb.codat("GET", "/integrations/qhyg")).json(), schema("Integration"))


def test_every_codat_route_of_the_sandbox_is_in_a_spec() -> None:
    paths = {**_spec(PAYABLES)["paths"], **_spec(PLATFORM)["paths"]}
    for route in [*api.routes, *followups.routes]:
        assert isinstance(route, Route)
        assert route.path in paths, route.path
        for method in route.methods or ():
            if method != "HEAD":
                assert method.lower() in paths[route.path], (method, route.path)


@pytest.mark.parametrize(("method", "path", "status"), [
    ("post", "/companies", "200"), ("delete", "/companies/{companyId}", "204"),
    ("post", "/companies/{companyId}/connections", "200"),
    ("delete", "/companies/{companyId}/connections/{connectionId}", "200"),
    ("patch", "/companies/{companyId}/connections/{connectionId}", "200"),
    ("post", "/companies/{companyId}/data/queue/{dataType}", "200"),
    ("post", "/companies/{companyId}/data/all", "204"),
])
def test_the_success_statuses_the_sandbox_uses_are_the_specs(method: str, path: str,
                                                             status: str) -> None:
    responses = _spec(PLATFORM)["paths"][path][method]["responses"]
    assert [code for code in responses if code.startswith("2")] == [status]


# --- webhook bodies -------------------------------------------------------------------------

EXAMPLES = SHARED / "webhook-examples"
ALL_EVENTS = {"company.created", "company.deleted", "connection.created",
              "connection.connected", "connection.failed", "connection.disconnected",
              "connection.reconnected", "connection.deleted", "read.completed",
              "read.completed.initial"}


async def every_event(sb: Harness) -> list[dict[str, Any]]:
    ids = await scenario(sb)
    company = f"/companies/{ids['company']}"
    await sb.codat("DELETE", f"{company}/connections/{ids['declined']}")
    await sb.codat("DELETE", company)
    bodies = [m["body"] for m in await sb.messages()]
    assert {b["eventType"] for b in bodies} == ALL_EVENTS
    return bodies


async def test_every_webhook_body_matches_its_event_schema(sb: Harness) -> None:
    for body in await every_event(sb):
        assert_matches(body, webhook_schema(body["eventType"]))


def _example(body: dict[str, Any]) -> dict[str, Any]:
    name = body["eventType"]
    if name == "connection.disconnected" and body["payload"]["connection"]["status"] != "Unlinked":
        name += "--De-authorized"
    example: dict[str, Any] = json.loads((EXAMPLES / f"{name}.json").read_text())
    return example


def _assert_same_keys(ours: Any, theirs: Any, where: str, optional: set[str]) -> None:
    if isinstance(ours, dict) and isinstance(theirs, dict):
        extra = set(ours) - set(theirs) - optional
        missing = set(theirs) - set(ours) - optional
        assert not extra and not missing, f"{where}: extra {extra}, missing {missing}"
        for key in set(ours) & set(theirs) - {"tags"}:  # tags are the client's own keys
            _assert_same_keys(ours[key], theirs[key], f"{where}.{key}", optional)
    elif isinstance(ours, list) and isinstance(theirs, list) and ours and theirs:
        for item in ours:
            _assert_same_keys(item, theirs[0], f"{where}[]", optional)


async def test_every_webhook_body_has_the_shape_of_codats_example(sb: Harness) -> None:
    # Keys that Codat's examples show or omit depending on the object's state.
    optional = {"lastSync", "tags", "dataConnectionErrors", "issues", "resolvedOnUtc"}
    # Codat's examples show milliseconds; its dates carry up to 7 digits (contract section 1),
    # and the sandbox's generatedDate has all 7, so that its events never tie.
    iso_ms = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3,7}Z$")
    for body in await every_event(sb):
        _assert_same_keys(body, _example(body), body["eventType"], optional)
        assert iso_ms.match(body["generatedDate"])
        assert str(uuid.UUID(body["id"])) == body["id"]


def test_the_published_examples_pass_the_same_checks() -> None:
    """The validator itself is sound: Codat's own examples pass it."""
    for name in sorted(ALL_EVENTS):
        example = json.loads((EXAMPLES / f"{name}.json").read_text())
        assert_matches(example, webhook_schema(name))


def test_the_nullable_rewrite_is_needed_and_narrow() -> None:
    """``validation: null`` passes only thanks to the rewrite; a wrong type still fails."""
    body = {"statusCode": 401, "service": "PublicApi", "error": "Unauthorized",
            "correlationId": "x", "validation": None, "canBeRetried": "Unknown",
            "detailedErrorCode": 0}
    assert_matches(body, schema("ErrorMessage"))
    with pytest.raises(AssertionError):
        assert_matches({**body, "validation": "none"}, schema("ErrorMessage"))
    raw = json.loads((SHARED / "oas" / PLATFORM).read_text())
    literal = Registry().with_resource(_urn(PLATFORM), DRAFT202012.create_resource(raw))
    strict = Draft202012Validator({"$ref": f"{_urn(PLATFORM)}#{schema('ErrorMessage')}"},
                                  registry=literal)
    assert not strict.is_valid(body)
