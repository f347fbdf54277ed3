"""/openapi.json: a valid OpenAPI 3.1 document, derived from the models; every route documented
and every documented path served; every query API route and probe driven on SQLite and
PostgreSQL with data from signed webhooks, each real answer (errors included) validated against
the document. The onboarding routes are driven against the sandbox in test_openapi_flow.py.
"""

from __future__ import annotations

import copy
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import httpx
import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate
from starlette.routing import Route

from service import api_models
from service.localserver import free_port
from service.openapi import document_path, openapi_document
from service.outbox import JobStatus
from tests.conftest import Service, make_settings, start_service
from tests.contract import Contract
from tests.factories import (
    TOKEN,
    at,
    company_body,
    connection_body,
    new_id,
    read_completed_body,
    sign,
)

READ_TOKEN = "read-token-0123456789"
DOCUMENT = openapi_document()
SERVED_PREFIXES = ("/v1/", "/healthz", "/readyz")


def _operations(document: dict[str, Any]) -> list[tuple[str, str]]:
    return [(method, path) for path, item in document["paths"].items() for method in item
            if method in ("get", "post", "put", "patch", "delete")]


def _routes(app: Any) -> set[tuple[str, str]]:
    """(method, documented form of the path) of every route the app serves under /v1 and the
    probes."""
    return {(method.lower(), document_path(route.path)) for route in app.routes
            if isinstance(route, Route) and route.path.startswith(SERVED_PREFIXES)
            for method in route.methods or () if method != "HEAD"}


@pytest.fixture
async def reader_service(database_url: str) -> AsyncIterator[Service]:
    """The app with a full-rights token (TOKEN) and a read-only one (READ_TOKEN)."""
    settings = make_settings(database_url, service_read_tokens=READ_TOKEN)
    app, lifespan, client = await start_service(settings)
    try:
        yield Service(app, client, settings)
    finally:
        await client.aclose()
        await lifespan.__aexit__(None, None, None)


async def _contract(client: httpx.AsyncClient) -> Contract:
    served = await client.get("/openapi.json")  # no token needed
    assert served.status_code == 200
    contract = Contract(served.json())
    contract.attach(client)
    return contract


# --- the document ------------------------------------------------------------------------------

def test_the_document_is_valid_openapi_3_1() -> None:
    validate(copy.deepcopy(DOCUMENT))
    for name, schema in DOCUMENT["components"]["schemas"].items():
        Draft202012Validator.check_schema(schema)
        assert not name.endswith(("-Input", "-Output")), f"{name}: a model used both ways"


def test_the_validator_refuses_a_broken_document() -> None:
    broken = copy.deepcopy(DOCUMENT)
    del broken["paths"]["/v1/connections"]["get"]["parameters"][0]["in"]
    with pytest.raises(Exception, match="'in' is a required property"):
        validate(broken)


async def test_the_app_serves_the_document(service: Service) -> None:
    served = await service.client.get("/openapi.json")
    assert served.status_code == 200
    assert served.json() == DOCUMENT


async def test_every_route_is_documented_and_every_documented_operation_served(
        service: Service) -> None:
    routes = _routes(service.app)
    documented = set(_operations(DOCUMENT))
    assert len(routes) >= 12
    assert routes - documented == set(), "served, not documented"
    assert documented - routes == set(), "documented, not served"


def test_every_operation_names_its_scope_and_path_parameters() -> None:
    schemes = DOCUMENT["components"]["securitySchemes"]
    assert schemes == {"bearer": {"type": "http", "scheme": "bearer",
                                  "description": schemes["bearer"]["description"]}}
    for method, path in _operations(DOCUMENT):
        operation = DOCUMENT["paths"][path][method]
        if not path.startswith("/v1/"):
            assert operation["security"] == [], path  # the probes need no token
            continue
        # Onboarding (every POST) needs a full-rights token; everything else reads.
        scope = "write" if method == "post" else "read"
        assert operation["security"] == [{"bearer": [scope]}], (method, path)
        names = {p["name"] for p in operation["parameters"] if p["in"] == "path"}
        assert names == set(re.findall(r"{([^}]+)}", path)), (method, path)
        expected = {"401", "422", "503"} | ({"403"} if scope == "write" else set()) \
            | ({"404"} if names else set())
        assert expected <= set(operation["responses"]), (method, path)


def test_the_models_name_what_the_code_uses() -> None:
    assert set(get_args(api_models.JobStatusName)) == set(JobStatus.ALL)


# --- the query API, driven -----------------------------------------------------------------------

@dataclass
class Seeded:
    company: str
    connection: str  # Linked, with a superseded and a rejected word in its history
    message_id: str  # the delivery that linked it


async def _deliver(service: Service, body: bytes) -> str:
    headers = sign(body)
    answer = await service.client.post("/webhooks/codat", content=body, headers=headers)
    assert answer.status_code == 200, answer.text
    return headers["svix-id"]


async def _seed(service: Service) -> Seeded:
    """Connections in several states, words applied, superseded, rejected and skipping, a
    read, an unparseable delivery, and the jobs they queued."""
    a, b = new_id(), new_id()
    linked, failing, gone, skipped = new_id(), new_id(), new_id(), new_id()

    def event(kind: str, company: str, connection: str, status: str, second: float,
              **extra: Any) -> bytes:
        return connection_body(kind, company_id=company, connection_id=connection, status=status,
                               generated=at(second), **extra)
    await _deliver(service, event("connection.created", a, linked, "PendingAuth", 0))
    message_id = await _deliver(service, event("connection.connected", a, linked, "Linked", 2))
    await _deliver(service, event("connection.disconnected", a, linked, "Unlinked", 1))
    await _deliver(service, event("connection.created", a, linked, "PendingAuth", 3))
    await _deliver(service, event("connection.failed", a, failing, "PendingAuth", 2, errors=[
        {"statusCode": "403", "statusText": "User cancelled", "status": "Active"}]))
    await _deliver(service, event("connection.connected", b, gone, "Linked", 3,
                                  platform_key="gbol"))
    await _deliver(service, event("connection.deleted", b, gone, "Linked", 4))
    await _deliver(service, event("connection.disconnected", b, skipped, "Deauthorized", 5))
    await _deliver(service, read_completed_body(
        company_id=a, connection_id=linked, statuses={"bills": "Complete", "suppliers": "Fetching"},
        generated=at(6)))
    await _deliver(service, company_body("company.updated", company_id=b, generated=at(7)))
    await _deliver(service, b'{"eventType": 42, "generatedDate": "yesterday"}')
    return Seeded(a, linked, message_id)


def _fill(path: str, seeded: Seeded, **replace: str) -> str:
    values = {"companyId": seeded.company, "connectionId": seeded.connection,
              "messageId": seeded.message_id, **replace}
    return re.sub(r"{(\w+)}", lambda m: values[m[1]], path)


async def _first_cursor(service: Service, url: str) -> str:
    page = (await service.get(url, limit="1")).json()
    assert page["nextCursor"], (url, page)
    return str(page["nextCursor"])


async def _parameter_values(service: Service, url: str, parameter: dict[str, Any],
                            seeded: Seeded) -> tuple[list[str], list[str]]:
    """Values of a documented query parameter the document takes, and ones it refuses; both
    derived from its schema, so the document and what the route accepts cannot part."""
    schema, name = parameter["schema"], parameter["name"]
    if "enum" in schema:
        return list(schema["enum"]), ["Bogus"]
    if schema.get("type") == "integer":
        low, high = schema["minimum"], schema["maximum"]
        return [str(low), str(high), str(schema["default"])], [str(low - 1), str(high + 1), "x"]
    if schema.get("type") == "boolean":
        return ["true", "false"], ["maybe"]
    if name == "cursor":
        return [await _first_cursor(service, url)], ["!!!"]
    return [{"companyId": seeded.company, "platformKey": "qhyg"}[name]], []


async def test_every_query_route_answers_as_documented(reader_service: Service) -> None:
    service = reader_service
    contract = await _contract(service.client)
    seeded = await _seed(service)
    reader = {"authorization": f"Bearer {READ_TOKEN}"}
    gets = [path for method, path in _operations(contract.document)
            if method == "get" and path.startswith("/v1/")]
    assert len(gets) == 7
    for path in gets:
        url = _fill(path, seeded)
        ok = await service.get(url)
        assert ok.status_code == 200, (url, ok.text)
        assert (await service.client.get(url, headers=reader)).status_code == 200
        assert (await service.client.get(url)).status_code == 401
        assert (await service.client.get(url, headers={"authorization": "Bearer no"})).\
            status_code == 401
        assert (await service.get(url, x="\x00")).status_code == 422
        for name in re.findall(r"{(\w+)}", path):
            for missing in (new_id(), "not-an-id"):
                assert (await service.get(_fill(path, seeded, **{name: missing}))).\
                    status_code == 404
        for parameter in contract.document["paths"][path]["get"]["parameters"]:
            if parameter["in"] != "query":
                continue
            takes, refuses = await _parameter_values(service, url, parameter, seeded)
            for value in takes:
                answer = await service.get(url, **{parameter["name"]: value})
                assert answer.status_code == 200, (url, parameter["name"], value, answer.text)
            for value in refuses:
                answer = await service.get(url, **{parameter["name"]: value})
                assert answer.status_code == 400, (url, parameter["name"], value, answer.text)
                assert parameter["name"] in answer.json()["error"]
    # Bodies that differ: a delivery with its body, a deleted connection, a failing one.
    delivery = await service.get(f"/v1/deliveries/{seeded.message_id}", includeBody="true")
    assert delivery.json()["body"]["encoding"] == "utf-8"
    assert "body" not in (await service.get(f"/v1/deliveries/{seeded.message_id}")).json()
    for state in ("Deleted", "PendingAuth", "Deauthorized"):
        assert (await service.get("/v1/connections", status=state)).json()["results"]
    history = (await service.get(f"/v1/connections/{seeded.connection}/history")).json()
    assert {h["result"] for h in history["results"]} == {"applied", "superseded", "rejected"}
    company = (await service.get(f"/v1/companies/{seeded.company}")).json()
    assert company["dataTypes"] and company["dataConnections"]

    expected = {seen for path in gets for seen in contract.documented("get", path)}
    # 503 (database unavailable): test_with_the_database_unreachable_every_route_is_503.
    assert expected - contract.seen == {("get", path, 503) for path in gets}


BODIES = {"/v1/companies": {"name": "Toft stores"},
          "/v1/companies/{companyId}/connections": {"platformKey": "qhyg"}}


async def test_with_the_database_unreachable_every_route_is_503() -> None:
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/nothing"  # nothing listens there
    app, lifespan, client = await start_service(make_settings(url))
    try:
        contract = Contract(DOCUMENT)
        contract.attach(client)
        served = _routes(app)
        for method, path in _operations(DOCUMENT):
            target = _fill(path, Seeded(new_id(), new_id(), "msg_1"))
            body = BODIES.get(path) if method == "post" else None
            answer = await client.request(method, target, json=body,
                                          headers={"authorization": f"Bearer {TOKEN}"})
            expected = 200 if path == "/healthz" else 503
            assert answer.status_code == expected, (method, target, answer.text)
        assert (await client.get("/readyz")).json() == {"ready": False,
                                                         "reason": "database unreachable"}
        assert {(m, p) for m, p, status in contract.seen if status == 503} == \
            {(m, p) for m, p in served if p != "/healthz"}
    finally:
        await client.aclose()
        await lifespan.__aexit__(None, None, None)


# --- the probes ----------------------------------------------------------------------------------

async def test_the_probes_answer_as_documented(service: Service, tmp_path: Path) -> None:
    contract = await _contract(service.client)
    assert (await service.client.get("/healthz")).status_code == 200
    assert (await service.client.get("/readyz")).status_code == 200
    # A database no migration has touched: not ready, and the answer says how far behind.
    _app, lifespan, client = await start_service(make_settings(f"sqlite:///{tmp_path}/new.db"))
    try:
        contract.attach(client)
        behind = await client.get("/readyz")
        assert behind.status_code == 503
        assert behind.json()["reason"] == "migrations are behind"
    finally:
        await client.aclose()
        await lifespan.__aexit__(None, None, None)
    assert contract.seen == {("get", "/healthz", 200), ("get", "/readyz", 200),
                             ("get", "/readyz", 503)}
