"""The query API over HTTP, on SQLite and PostgreSQL, with data seeded by signed webhooks."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from starlette.routing import Route

from service.migrate import head_revision
from service.queries import encode_cursor
from tests.conftest import Service
from tests.factories import TOKEN, at, connection_body, new_id, sign

CONNECTION_FIELDS = {"id", "companyId", "platformKey", "platformName", "sourceType", "status",
                     "linkUrl", "created", "lastEventAt", "updatedAt", "deleted", "errors"}


@dataclass
class World:
    """What the seed created: names -> ids, and one delivery to look at."""

    companies: dict[str, str] = field(default_factory=dict)
    connections: dict[str, str] = field(default_factory=dict)
    company_of: dict[str, str] = field(default_factory=dict)
    message_id: str = ""
    body: bytes = b""

    def ids(self, *names: str) -> list[str]:
        return sorted(self.connections[n] for n in names)


# name: (company, platform key, [(event type, status), ...])
SEED = {
    "a_linked": ("A", "qhyg", [("connection.created", "PendingAuth"),
                               ("connection.connected", "Linked")]),
    "a_pending": ("A", "gbol", [("connection.created", "PendingAuth")]),
    "a_unlinked": ("A", "qhyg", [("connection.connected", "Linked"),
                                 ("connection.disconnected", "Unlinked")]),
    "b_deauth": ("B", "qhyg", [("connection.disconnected", "Deauthorized")]),
    "b_linked": ("B", "gbol", [("connection.connected", "Linked")]),
    "b_deleted": ("B", "qhyg", [("connection.connected", "Linked"),
                                ("connection.deleted", "Linked")]),
    "b_pending": ("B", "rwuv", [("connection.created", "PendingAuth")]),
}


async def deliver(service: Service, body: bytes, msg_id: str | None = None) -> str:
    headers = sign(body, msg_id=msg_id)
    response = await service.client.post("/webhooks/codat", content=body, headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["outcome"] == "processed"
    return headers["svix-id"]


@pytest.fixture
async def world(service: Service) -> World:
    seeded = World(companies={"A": new_id(), "B": new_id()})
    for name, (company, platform, steps) in SEED.items():
        connection = new_id()
        seeded.connections[name] = connection
        seeded.company_of[name] = seeded.companies[company]
        for second, (event_type, status) in enumerate(steps):
            body = connection_body(event_type, company_id=seeded.companies[company],
                                   connection_id=connection, status=status,
                                   generated=at(second), platform_key=platform)
            message_id = await deliver(service, body)
            if name == "a_linked":
                seeded.message_id, seeded.body = message_id, body
    return seeded


async def get(service: Service, path: str, **params: Any) -> httpx.Response:
    return await service.get(path, **params)


async def ok(service: Service, path: str, **params: Any) -> Any:
    response = await service.get(path, **params)
    assert response.status_code == 200, response.text
    return response.json()


# --- authentication ----------------------------------------------------------------------------

def _v1_routes(service: Service) -> list[Route]:
    return [r for r in service.app.routes
            if isinstance(r, Route) and r.path.startswith("/v1/")]


def _fill(path: str, world: World) -> str:
    """A route path with real ids in it (company_id / companyId style alike)."""
    def value(name: str) -> str:
        name = name.lower()
        if "company" in name:
            return world.companies["A"]
        if "connection" in name:
            return world.connections["a_linked"]
        if "message" in name:
            return world.message_id
        raise AssertionError(f"no seed value for path parameter {name}")
    return re.sub(r"{(\w+)}", lambda m: value(m[1]), path)


def _methods(route: Route) -> set[str]:
    return {m.lower() for m in route.methods or ()} - {"head"}


BAD_AUTH = {
    "no header": None,
    "wrong token": "Bearer wrong-token",
    "token prefix": f"Bearer {TOKEN[:-1]}",
    "token plus": f"Bearer {TOKEN}x",
    "basic scheme": f"Basic {TOKEN}",
    "token scheme": f"Token {TOKEN}",
    "bare token": TOKEN,
    "bearer without token": "Bearer ",
    "empty": "",
}


@pytest.mark.parametrize("case", list(BAD_AUTH))
async def test_every_v1_route_needs_a_valid_bearer_token(service: Service, world: World,
                                                         case: str) -> None:
    routes = _v1_routes(service)
    assert len(routes) >= 6
    value = BAD_AUTH[case]
    headers = {} if value is None else {"authorization": value}
    for route in routes:
        for method in _methods(route):
            response = await service.client.request(method, _fill(route.path, world),
                                                    headers=headers, json={})
            assert response.status_code == 401, (method, route.path, response.text)
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert response.json() == {"statusCode": 401,
                                   "error": "a valid bearer token is required"}


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
async def test_every_v1_route_answers_with_a_valid_token(service: Service, world: World,
                                                         scheme: str) -> None:
    for route in (r for r in _v1_routes(service) if "get" in _methods(r)):
        response = await service.client.get(_fill(route.path, world),
                                            headers={"authorization": f"{scheme} {TOKEN}"})
        assert response.status_code == 200, (route.path, response.text)


async def test_probes_need_no_token(service: Service) -> None:
    health = await service.client.get("/healthz")
    assert (health.status_code, health.json()) == (200, {"status": "ok"})
    ready = await service.client.get("/readyz")
    assert (ready.status_code, ready.json()) == \
        (200, {"ready": True, "migration": head_revision()})


# --- companies and connections -----------------------------------------------------------------

async def test_company(service: Service, world: World) -> None:
    company = await ok(service, f"/v1/companies/{world.companies['A']}")
    assert company["id"] == world.companies["A"]
    assert (company["name"], company["description"]) == ("Toft stores", "cust_123")
    assert company["tags"] == {"uid": "customer-42"}
    assert (company["deleted"], company["billPayReady"], company["dataTypes"]) == \
        (False, False, [])
    assert [c["id"] for c in company["dataConnections"]] == \
        world.ids("a_linked", "a_pending", "a_unlinked")


async def test_company_connections(service: Service, world: World) -> None:
    page = await ok(service, f"/v1/companies/{world.companies['B']}/connections")
    assert [c["id"] for c in page["results"]] == \
        world.ids("b_deauth", "b_linked", "b_deleted", "b_pending")
    for connection in page["results"]:
        assert connection["companyId"] == world.companies["B"]


async def test_connection(service: Service, world: World) -> None:
    connection_id = world.connections["a_linked"]
    connection = await ok(service, f"/v1/connections/{connection_id}")
    assert set(connection) >= CONNECTION_FIELDS
    assert connection["id"] == connection_id
    assert connection["companyId"] == world.companies["A"]
    assert (connection["status"], connection["platformKey"]) == ("Linked", "qhyg")
    assert (connection["platformName"], connection["sourceType"]) == \
        ("QuickBooks Online", "Accounting")
    assert connection["linkUrl"].endswith(f"/connections/{connection_id}/start")
    assert connection["created"] == "2026-10-27T09:53:29Z"
    assert connection["lastEventAt"] == "2026-11-01T12:00:01Z"
    assert (connection["deleted"], connection["deletedAt"], connection["errors"]) == \
        (False, None, [])


async def test_a_deleted_connection_keeps_its_last_status(service: Service, world: World) -> None:
    connection = await ok(service, f"/v1/connections/{world.connections['b_deleted']}")
    assert (connection["deleted"], connection["status"]) == (True, "Linked")
    assert connection["deletedAt"] is not None


async def test_history_in_order_with_pagination(service: Service, world: World) -> None:
    connection_id = world.connections["a_unlinked"]
    await deliver(service, connection_body(
        "connection.reconnected", company_id=world.companies["A"], connection_id=connection_id,
        status="Linked", generated=at(5)))
    everything = await ok(service, f"/v1/connections/{connection_id}/history")
    moves = [(h["fromState"], h["toState"], h["result"]) for h in everything["results"]]
    assert moves == [(None, "Linked", "applied"), ("Linked", "Unlinked", "applied"),
                     ("Unlinked", "Linked", "applied")]
    assert everything["nextCursor"] is None
    first = await ok(service, f"/v1/connections/{connection_id}/history", limit=2)
    assert [h["id"] for h in first["results"]] == [h["id"] for h in everything["results"][:2]]
    assert first["nextCursor"]
    rest = await ok(service, f"/v1/connections/{connection_id}/history", limit=2,
                    cursor=first["nextCursor"])
    assert [h["id"] for h in rest["results"]] == [everything["results"][2]["id"]]
    assert rest["nextCursor"] is None


async def test_delivery_body_only_on_request(service: Service, world: World) -> None:
    path = f"/v1/deliveries/{world.message_id}"
    plain = await ok(service, path)
    assert plain["messageId"] == world.message_id
    assert (plain["outcome"], plain["eventType"]) == ("processed", "connection.connected")
    assert plain["connectionId"] == world.connections["a_linked"]
    assert "body" not in plain
    for flag in ("false", "0", "FALSE"):
        assert "body" not in await ok(service, path, includeBody=flag)
    for flag in ("true", "1", "True"):
        with_body = await ok(service, path, includeBody=flag)
        assert with_body["body"] == {"encoding": "utf-8", "text": world.body.decode()}


@pytest.mark.parametrize("path", [
    "/v1/companies/{missing}", "/v1/companies/{missing}/connections",
    "/v1/connections/{missing}", "/v1/connections/{missing}/history",
    "/v1/deliveries/{missing}"])
async def test_unknown_ids_are_404(service: Service, world: World, path: str) -> None:
    missing = new_id()
    response = await get(service, path.format(missing=missing))
    assert response.status_code == 404
    body = response.json()
    assert body["statusCode"] == 404 and missing in body["error"]


# --- GET /v1/connections: filters --------------------------------------------------------------

FILTERS: list[tuple[dict[str, str], tuple[str, ...]]] = [
    ({}, tuple(SEED)),
    ({"status": "Linked"}, ("a_linked", "b_linked")),
    ({"status": "PendingAuth"}, ("a_pending", "b_pending")),
    ({"status": "Unlinked"}, ("a_unlinked",)),
    ({"status": "Deauthorized"}, ("b_deauth",)),
    ({"status": "Deleted"}, ("b_deleted",)),
    ({"platformKey": "qhyg"}, ("a_linked", "a_unlinked", "b_deauth", "b_deleted")),
    ({"platformKey": "gbol"}, ("a_pending", "b_linked")),
    ({"platformKey": "xxxx"}, ()),
    ({"companyId": "A"}, ("a_linked", "a_pending", "a_unlinked")),
    ({"companyId": "B"}, ("b_deauth", "b_linked", "b_deleted", "b_pending")),
    ({"companyId": "B", "status": "Linked"}, ("b_linked",)),
    ({"companyId": "A", "status": "Deleted"}, ()),
    ({"companyId": "B", "platformKey": "qhyg"}, ("b_deauth", "b_deleted")),
    ({"status": "Linked", "platformKey": "qhyg"}, ("a_linked",)),
    ({"status": "Deleted", "platformKey": "qhyg", "companyId": "B"}, ("b_deleted",)),
    ({"status": "Linked", "platformKey": "gbol", "companyId": "B"}, ("b_linked",)),
    ({"status": "PendingAuth", "platformKey": "gbol", "companyId": "B"}, ()),
]


@pytest.mark.parametrize(("params", "expected"), FILTERS,
                         ids=["&".join(f"{k}={v}" for k, v in p.items()) or "all"
                              for p, _ in FILTERS])
async def test_connection_filters(service: Service, world: World, params: dict[str, str],
                                  expected: tuple[str, ...]) -> None:
    query = {k: world.companies.get(v, v) if k == "companyId" else v for k, v in params.items()}
    page = await ok(service, "/v1/connections", **query)
    assert [c["id"] for c in page["results"]] == world.ids(*expected)
    assert page["nextCursor"] is None
    for connection in page["results"]:
        assert set(connection) >= CONNECTION_FIELDS, CONNECTION_FIELDS - set(connection)
        assert connection["deleted"] is (connection["id"] == world.connections["b_deleted"])


async def test_status_filters_do_not_list_deleted_connections(service: Service,
                                                              world: World) -> None:
    listed = {c["id"] for c in (await ok(service, "/v1/connections", status="Linked"))["results"]}
    assert world.connections["b_deleted"] not in listed  # its last status was Linked


# --- GET /v1/connections: keyset pagination ----------------------------------------------------

async def _walk(service: Service, limit: int, **params: str) -> list[list[str]]:
    pages: list[list[str]] = []
    cursor: str | None = None
    while True:
        query: dict[str, Any] = {**params, "limit": limit}
        if cursor:
            query["cursor"] = cursor
        page = await ok(service, "/v1/connections", **query)
        pages.append([c["id"] for c in page["results"]])
        assert len(page["results"]) <= limit
        cursor = page["nextCursor"]
        if cursor is None:
            return pages
        assert len(pages) < 50, "pagination does not end"


@pytest.mark.parametrize("limit", [1, 2, 3, 5, 11, 12, 13, 500])
async def test_pagination_returns_every_connection_once_in_id_order(
        service: Service, world: World, limit: int) -> None:
    company_c = new_id()
    for _ in range(5):
        await deliver(service, connection_body(
            "connection.created", company_id=company_c, connection_id=new_id(),
            status="PendingAuth", generated=at(0)))
    everything = sorted({c["id"] for c in (await ok(service, "/v1/connections"))["results"]})
    assert len(everything) == 12
    pages = await _walk(service, limit)
    assert [i for page in pages for i in page] == everything
    assert len(pages) == -(-12 // limit)  # a full last page carries no cursor
    assert all(len(page) == limit for page in pages[:-1])


@pytest.mark.parametrize("limit", [1, 2, 3])
async def test_pagination_with_a_filter(service: Service, world: World, limit: int) -> None:
    pages = await _walk(service, limit, companyId=world.companies["B"])
    assert [i for page in pages for i in page] == \
        world.ids("b_deauth", "b_linked", "b_deleted", "b_pending")
    pages = await _walk(service, limit, platformKey="qhyg")
    assert [i for page in pages for i in page] == \
        world.ids("a_linked", "a_unlinked", "b_deauth", "b_deleted")


async def test_a_full_last_page_has_no_cursor(service: Service, world: World) -> None:
    page = await ok(service, "/v1/connections", limit=len(SEED))
    assert len(page["results"]) == len(SEED) and page["nextCursor"] is None
    page = await ok(service, "/v1/connections", limit=len(SEED) - 1)
    assert page["nextCursor"] is not None


# --- bad parameters ----------------------------------------------------------------------------

BAD_PARAMS: list[tuple[str, dict[str, str], str]] = [
    ("/v1/connections", {"limit": "0"}, "limit"),
    ("/v1/connections", {"limit": "501"}, "limit"),
    ("/v1/connections", {"limit": "-1"}, "limit"),
    ("/v1/connections", {"limit": "abc"}, "limit"),
    ("/v1/connections", {"limit": "1.5"}, "limit"),
    ("/v1/connections", {"limit": ""}, "limit"),
    ("/v1/connections", {"cursor": "a"}, "cursor"),
    ("/v1/connections", {"cursor": "abc"}, "cursor"),
    ("/v1/connections", {"status": "linked"}, "status"),
    ("/v1/connections", {"status": "Frobnicated"}, "status"),
    ("/v1/connections", {"foo": "1"}, "foo"),
    ("/v1/connections", {"page": "2", "pageSize": "5"}, "page, pageSize"),
    ("/v1/connections", {"platform_key": "qhyg"}, "platform_key"),
    ("/v1/connections/{connection}/history", {"limit": "0"}, "limit"),
    ("/v1/connections/{connection}/history", {"limit": "many"}, "limit"),
    ("/v1/connections/{connection}/history", {"cursor": "a"}, "cursor"),
    ("/v1/deliveries/{message}", {"includeBody": "yes"}, "includeBody"),
]


@pytest.mark.parametrize(("path", "params", "named"), BAD_PARAMS,
                         ids=[f"{p}?{q}" for p, q, _ in BAD_PARAMS])
async def test_a_bad_parameter_is_400_naming_it(service: Service, world: World, path: str,
                                                params: dict[str, str], named: str) -> None:
    url = path.format(connection=world.connections["a_linked"], message=world.message_id)
    response = await get(service, url, **params)
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["statusCode"] == 400
    assert named in body["error"]


async def test_a_superscript_digit_limit_is_400(service: Service) -> None:
    response = await get(service, "/v1/connections", limit="²")
    assert response.status_code == 400
    assert "limit" in response.json()["error"]


async def test_a_history_cursor_that_is_not_a_history_cursor_is_400(service: Service,
                                                                    world: World) -> None:
    response = await get(service, f"/v1/connections/{world.connections['a_linked']}/history",
                         cursor=encode_cursor(world.connections["b_linked"]))
    assert response.status_code == 400
    assert "cursor" in response.json()["error"]


async def test_a_cursor_of_non_base64_characters_is_400(service: Service, world: World) -> None:
    response = await get(service, "/v1/connections", cursor="!!!")
    assert response.status_code == 400
    assert "cursor" in response.json()["error"]
