"""/openapi.json: a valid OpenAPI 3.1 document, derived from the models; every route documented
and every documented path served; every query API route and probe driven on SQLite and
PostgreSQL with data from signed webhooks, each real answer (errors included) validated against
the document; each change type's schema checked on examples. The onboarding routes and the
change feed are driven against the sandbox in test_openapi_flow.py.
"""

from __future__ import annotations

import copy
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import httpx
import orjson
import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate
from pydantic import ValidationError
from starlette.routing import Route

from service import api_models, feed_models
from service.localserver import free_port
from service.openapi import document_path, openapi_document
from service.outbox import JobStatus
from tests.conftest import Service, make_settings, serving, start_service
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
FEED = "/v1/events"
FEED_NOT_SERVED = ("GET /v1/events answers 404: the change feed (issue #13) is not served on "
                   "this branch yet; this runs once service/feed.py routes it")
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
    async with serving(make_settings(database_url, service_read_tokens=READ_TOKEN)) as running:
        yield running


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
    # The feed is documented ahead of its route: test_the_change_feed_is_served says so.
    assert documented - routes - {("get", FEED)} == set(), "documented, not served"


async def test_the_change_feed_is_served(service: Service) -> None:
    if ("get", FEED) not in _routes(service.app):
        answer = await service.get(FEED)
        assert answer.status_code == 404
        pytest.skip(FEED_NOT_SERVED)
    assert (await service.get(FEED)).status_code == 200


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


def test_the_feed_and_each_change_type_are_in_the_document() -> None:
    schemas = DOCUMENT["components"]["schemas"]
    feed = DOCUMENT["paths"][FEED]["get"]
    assert feed["responses"]["200"]["content"]["application/json"]["schema"] == \
        {"$ref": "#/components/schemas/FeedPage"}
    assert {"400", "410"} <= set(feed["responses"])
    assert {p["name"]: p["schema"].get("maximum") for p in feed["parameters"]} == \
        {"after": None, "limit": 500, "wait": 30, "companyId": None, "connectionId": None,
         "type": None}
    types = next(p for p in feed["parameters"] if p["name"] == "type")["schema"]["enum"]
    change = schemas["Change"]
    assert set(change["discriminator"]["mapping"]) == set(types) == set(feed_models.CHANGE_TYPES)
    for name in ("ConnectionStatusChanged", "ConnectionDeleted", "CompanyBillPayReadyChanged",
                 "CompanyDeleted"):
        assert {"$ref": f"#/components/schemas/{name}"} in change["oneOf"]
        assert schemas[name]["required"] == ["id", "type", "at", "companyId", "connectionId",
                                             "data"]


def test_the_models_name_what_the_code_uses() -> None:
    assert set(get_args(api_models.JobStatusName)) == set(JobStatus.ALL)
    assert set(feed_models.CHANGE_TYPES) == {
        get_args(model.model_fields["type"].annotation)[0]
        for model in feed_models.CHANGE_MODELS}


# --- change types: examples --------------------------------------------------------------------

COMPANY, CONNECTION = "8a210b68-6988-11ed-a1eb-0242ac120002", "ee2eb431-c0fa-4dc9-93fa-d29781c12bcd"
CAUSE = {"source": "webhook", "eventId": "a6ba8ea8-2f9c-4f6c-9d16-b4d3ee6a1e2d",
         "eventType": "connection.connected", "deliveryId": "msg_2Ls2aBPfsF7FQ1ShJmf1Xnjjysm"}
EXAMPLES: dict[str, dict[str, Any]] = {
    "ConnectionStatusChanged": {
        "id": "c-000000000042", "type": "connection.status_changed",
        "at": "2026-11-01T12:00:01.123456Z", "companyId": COMPANY, "connectionId": CONNECTION,
        "data": {"from": "PendingAuth", "to": "Linked", "skipped": False, "cause": CAUSE}},
    "ConnectionDeleted": {
        "id": "c-000000000043", "type": "connection.deleted", "at": "2026-11-02T08:30:00Z",
        "companyId": COMPANY, "connectionId": CONNECTION,
        "data": {"from": "Unlinked", "cause": {"source": "reconcile", "eventId": "job:7f1c",
                                               "eventType": "reconcile_connection",
                                               "deliveryId": None}}},
    "CompanyBillPayReadyChanged": {
        "id": "c-000000000044", "type": "company.bill_pay_ready_changed",
        "at": "2026-11-01T12:00:03Z", "companyId": COMPANY, "connectionId": None,
        "data": {"ready": False, "whyNot": [f"bills: Fetching (connection {CONNECTION}, last "
                                            "read 2026-11-01T12:00:02Z)"]}},
    "CompanyDeleted": {
        "id": "c-000000000045", "type": "company.deleted", "at": "2026-11-03T00:00:00+00:00",
        "companyId": COMPANY, "connectionId": None,
        "data": {"eventId": "0b7f0bfa-3f2e-4b0b-8e3e-f0c2d9b1f3a1"}},
}


def _set(*path: str | int, to: Any) -> Callable[[dict[str, Any]], None]:
    def change(example: dict[str, Any]) -> None:
        target: Any = example
        for step in path[:-1]:
            target = target[step]
        target[path[-1]] = to
    return change


def _drop(*path: str) -> Callable[[dict[str, Any]], None]:
    def change(example: dict[str, Any]) -> None:
        target: Any = example
        for step in path[:-1]:
            target = target[step]
        del target[path[-1]]
    return change


WRONG: list[tuple[str, str, Callable[[dict[str, Any]], None]]] = [
    ("ConnectionStatusChanged", "a state that does not exist", _set("data", "to", to="Frozen")),
    ("ConnectionStatusChanged", "no cause", _drop("data", "cause")),
    ("ConnectionStatusChanged", "a null connectionId", _set("connectionId", to=None)),
    ("ConnectionStatusChanged", "skipped as text", _set("data", "skipped", to="no")),
    ("ConnectionStatusChanged", "a cause from nowhere known", _set("data", "cause", "source",
                                                                    to="cli")),
    ("ConnectionStatusChanged", "a cause without its event", _drop("data", "cause", "eventId")),
    ("ConnectionStatusChanged", "at not a date-time", _set("at", to="yesterday")),
    ("ConnectionStatusChanged", "at with no time zone", _set("at", to="2026-11-01T12:00:01")),
    ("ConnectionStatusChanged", "to null", _set("data", "to", to=None)),
    ("ConnectionStatusChanged", "a field no change has", _set("data", "ready", to=True)),
    ("ConnectionDeleted", "no from", _drop("data", "from")),
    ("ConnectionDeleted", "a to, which a deletion has not", _set("data", "to", to="Deleted")),
    ("ConnectionDeleted", "another type's data", _set("data", to={"eventId": "e"})),
    ("CompanyBillPayReadyChanged", "a connectionId", _set("connectionId", to=CONNECTION)),
    ("CompanyBillPayReadyChanged", "whyNot as one text", _set("data", "whyNot", to="no")),
    ("CompanyBillPayReadyChanged", "ready missing", _drop("data", "ready")),
    ("CompanyDeleted", "no eventId", _drop("data", "eventId")),
    ("CompanyDeleted", "a connection's type", _set("type", to="connection.deleted")),
    ("CompanyDeleted", "a type that does not exist", _set("type", to="company.renamed")),
    ("CompanyDeleted", "no id", _drop("id")),
    ("CompanyDeleted", "a numeric companyId", _set("companyId", to=42)),
]


@pytest.mark.parametrize("name", list(EXAMPLES))
def test_each_change_type_accepts_a_realistic_example(name: str) -> None:
    contract = Contract(DOCUMENT)
    example = EXAMPLES[name]
    assert contract.schema_problems(name, example) == []
    assert contract.schema_problems("Change", example) == []
    assert contract.schema_problems("FeedPage", {"results": [example], "next": "c42"}) == []
    parsed = feed_models.Change.model_validate(example)
    assert type(parsed.root).__name__ == name
    dumped = parsed.model_dump(mode="json", by_alias=True)
    assert dumped == {**example, "at": dumped["at"]}
    assert contract.schema_problems(name, dumped) == []
    page = {"results": [example], "next": "c42"}
    assert orjson.loads(feed_models.FEED.serialize(page)) == page  # what the feed would serve


@pytest.mark.parametrize(("name", "wrong", "change"), WRONG,
                         ids=[f"{name}: {wrong}" for name, wrong, _ in WRONG])
def test_each_change_type_refuses_a_wrong_one(name: str, wrong: str,
                                              change: Callable[[dict[str, Any]], None]) -> None:
    contract = Contract(DOCUMENT)
    example = copy.deepcopy(EXAMPLES[name])
    change(example)
    assert contract.schema_problems(name, example), f"the {name} schema took {wrong}"
    assert contract.schema_problems("Change", example), f"the Change schema took {wrong}"
    with pytest.raises(ValidationError):
        feed_models.Change.model_validate(example)
    with pytest.raises(ValidationError):  # the feed would not serve it
        feed_models.FEED.serialize({"results": [example], "next": "c42"})


def test_a_feed_page_always_has_a_next_cursor() -> None:
    contract = Contract(DOCUMENT)
    assert contract.schema_problems("FeedPage", {"results": [], "next": "c42"}) == []
    assert contract.schema_problems("FeedPage", {"results": [], "next": None})
    assert contract.schema_problems("FeedPage", {"results": []})


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
            if method == "get" and path.startswith("/v1/") and path != FEED]
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
            if (method, path) not in served:
                assert path == FEED
                continue
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
