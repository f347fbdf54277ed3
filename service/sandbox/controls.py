"""``/_sandbox``: levers for tests, benchmarks and the demo (no auth, JSON in and out).

Act as the SMB (authorize, decline, deauthorize), import companies Codat already holds (for a
benchmark's storm), steer deliveries (pause, resume in an order
with duplicates, resend), inject faults, read the call log, and reset everything.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from service.sandbox import lifecycle
from service.sandbox.bodies import connection_body
from service.sandbox.errors import CodatError
from service.sandbox.faults import FaultRuleError, parse_rule
from service.sandbox.gate import sandbox_of
from service.sandbox.model import Company, Connection, ConnectionStatus
from service.sandbox.platforms import PLATFORMS
from service.sandbox.state import Sandbox
from service.sandbox.webhooks import ORDERS, DeliveryRefused

Move = Callable[[Sandbox, Company, Connection], str | None]


def _json(body: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(body, status_code=status)


def _problem(status: int, message: str) -> JSONResponse:
    return _json({"error": message}, status)


async def _body(request: Request) -> Any:
    raw = await request.body()
    if not raw.strip():
        return {}
    return json.loads(raw)


def _smb_action(move: Move) -> Callable[[Request], Awaitable[Response]]:
    """An endpoint doing ``move`` as the SMB would; answers the connection and the event."""

    async def endpoint(request: Request) -> Response:
        sandbox = sandbox_of(request)
        try:
            company, connection = sandbox.connection(request.path_params["companyId"],
                                                     request.path_params["connectionId"])
            event = move(sandbox, company, connection)
        except CodatError as exc:
            return _problem(exc.status, exc.error)
        except lifecycle.TransitionRefused as exc:
            return _problem(409, str(exc))
        return _json({"connection": connection_body(sandbox.config.base_url, connection),
                      "event": event})

    return endpoint


async def pause(request: Request) -> Response:
    sandbox_of(request).webhooks.pause()
    return _json({"paused": True})


async def resume(request: Request) -> Response:
    try:
        body = await _body(request)
    except ValueError:
        return _problem(400, "the body is not valid JSON")
    if not isinstance(body, dict):
        return _problem(400, "the body is a JSON object")
    order = body.get("order", "fifo")
    duplicates = body.get("duplicates", 0)
    if order not in ORDERS or not isinstance(duplicates, int) or duplicates < 0:
        return _problem(400, f"order is one of {', '.join(ORDERS)}; duplicates is an int >= 0")
    batch = sandbox_of(request).webhooks.resume(order, duplicates)
    return _json({"paused": False, "order": order, "duplicates": duplicates,
                  "messages": [message.id for message in batch]})


async def resend(request: Request) -> Response:
    message_id = request.path_params["messageId"]
    try:
        sandbox_of(request).webhooks.resend(message_id)
    except KeyError:
        return _problem(404, f"no message {message_id}")
    except DeliveryRefused as exc:
        return _problem(409, str(exc))
    return _json({"messageId": message_id, "resent": True}, 202)


async def messages(request: Request) -> Response:
    webhooks = sandbox_of(request).webhooks
    return _json({"paused": webhooks.paused, "held": [m.id for m in webhooks.held],
                  "messages": [m.describe() for m in webhooks.messages.values()]})


async def add_fault(request: Request) -> Response:
    try:
        rule = parse_rule(await _body(request))
    except (ValueError, FaultRuleError) as exc:
        return _problem(400, str(exc))
    faults = sandbox_of(request).faults
    faults.add(rule)
    return _json({"fault": rule.describe(), "active": len(faults.rules)}, 201)


async def list_faults(request: Request) -> Response:
    return _json({"faults": [rule.describe() for rule in sandbox_of(request).faults.rules]})


async def clear_faults(request: Request) -> Response:
    return _json({"cleared": sandbox_of(request).faults.clear()})


async def calls(request: Request) -> Response:
    return _json(sandbox_of(request).calls.describe())


def _imported(item: Any) -> tuple[str, str, list[tuple[str, Any, ConnectionStatus]]]:
    """One company of an import, checked: ValueError says what is wrong."""
    if not isinstance(item, dict) or not isinstance(item.get("id"), str) or not item["id"]:
        raise ValueError("each company is an object with a non-empty string id")
    name = item.get("name", item["id"])
    connections = item.get("connections", [])
    if not isinstance(name, str) or not isinstance(connections, list):
        raise ValueError(f"company {item['id']}: name is a string, connections a list")
    checked = []
    for entry in connections:
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), str) or not entry["id"]:
            raise ValueError(f"company {item['id']}: each connection has a non-empty string id")
        platform = PLATFORMS.get(entry.get("platformKey", "qhyg"))
        try:
            status = ConnectionStatus(entry.get("status", "PendingAuth"))
        except ValueError:
            status = None
        if platform is None or status is None:
            raise ValueError(f"connection {entry['id']}: platformKey is one of "
                             f"{', '.join(PLATFORMS)}; status one of "
                             f"{', '.join(s.value for s in ConnectionStatus)}")
        checked.append((entry["id"], platform, status))
    return item["id"], name, checked


async def import_companies(request: Request) -> Response:
    """Companies and connections Codat already holds, put in place without a webhook:
    ``{"companies": [{"id", "name", "connections": [{"id", "platformKey", "status"}]}]}``.
    All or nothing: one bad entry refuses the whole body."""
    try:
        body = await _body(request)
        items = body.get("companies") if isinstance(body, dict) else None
        if not isinstance(items, list):
            raise ValueError("the body is {\"companies\": [...]}")
        checked = [_imported(item) for item in items]
    except ValueError as exc:
        return _problem(400, str(exc))
    sandbox = sandbox_of(request)
    for company_id, name, connections in checked:
        lifecycle.adopt(sandbox, company_id, name, connections)
    return _json({"companies": len(checked),
                  "connections": sum(len(c) for _, _, c in checked)}, 201)


async def reset(request: Request) -> Response:
    await sandbox_of(request).reset()
    return _json({"reset": True})


SMB = "/_sandbox/companies/{companyId}/connections/{connectionId}"

routes: list[BaseRoute] = [
    Route(SMB + "/authorize", _smb_action(lifecycle.authorize), methods=["POST"]),
    Route(SMB + "/decline", _smb_action(lifecycle.decline), methods=["POST"]),
    Route(SMB + "/deauthorize", _smb_action(lifecycle.deauthorize), methods=["POST"]),
    Route("/_sandbox/companies", import_companies, methods=["POST"]),
    Route("/_sandbox/webhooks", messages, methods=["GET"]),
    Route("/_sandbox/webhooks/pause", pause, methods=["POST"]),
    Route("/_sandbox/webhooks/resume", resume, methods=["POST"]),
    Route("/_sandbox/webhooks/{messageId}/resend", resend, methods=["POST"]),
    Route("/_sandbox/faults", list_faults, methods=["GET"]),
    Route("/_sandbox/faults", add_fault, methods=["POST"]),
    Route("/_sandbox/faults", clear_faults, methods=["DELETE"]),
    Route("/_sandbox/calls", calls, methods=["GET"]),
    Route("/_sandbox/reset", reset, methods=["POST"]),
]
