"""Codat's company, connection and integration endpoints (CONTRACT §4).

Each endpoint is wrapped by :func:`codat_endpoint` (auth, idempotency, faults, call log,
rate-limit headers) and raises :class:`CodatError` for anything but success.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from service.sandbox import lifecycle
from service.sandbox.bodies import company_body, connection_body
from service.sandbox.errors import CodatError
from service.sandbox.gate import codat_endpoint, read_json, sandbox_of
from service.sandbox.model import Company
from service.sandbox.paging import page_from, paged
from service.sandbox.platforms import PLATFORMS, integration_body
from service.sandbox.validation import company_fields, platform_from, unlink_status


def _company_json(request: Request, company: Company) -> JSONResponse:
    return JSONResponse(company_body(sandbox_of(request).config.base_url, company))


async def create_company(request: Request) -> Response:
    fields = company_fields(await read_json(request), partial=False)
    assert fields.name is not None
    company = lifecycle.create_company(sandbox_of(request), fields.name, fields.description,
                                       fields.tags or {})
    return _company_json(request, company)  # 200, not 201, as Codat answers


async def list_companies(request: Request) -> Response:
    sandbox = sandbox_of(request)
    page = page_from(request.query_params)
    items = [company_body(sandbox.config.base_url, c) for c in sandbox.companies.values()]
    return JSONResponse(paged(items, page, request.url.path))


async def get_company(request: Request) -> Response:
    return _company_json(request, sandbox_of(request).company(request.path_params["companyId"]))


async def update_company(request: Request) -> Response:
    """PATCH changes what the body names; PUT replaces, clearing what it leaves out."""
    company = sandbox_of(request).company(request.path_params["companyId"])
    fields = company_fields(await read_json(request), partial=request.method == "PATCH")
    if fields.name is not None:
        company.name = fields.name
    if fields.description is not None:
        company.description = fields.description
    if fields.tags is not None:
        company.tags = fields.tags
    return _company_json(request, company)


async def delete_company(request: Request) -> Response:
    sandbox = sandbox_of(request)
    lifecycle.delete_company(sandbox, sandbox.company(request.path_params["companyId"]))
    return Response(status_code=204)


async def create_connection(request: Request) -> Response:
    sandbox = sandbox_of(request)
    company = sandbox.company(request.path_params["companyId"])
    platform = platform_from(await read_json(request))
    connection = lifecycle.create_connection(sandbox, company, platform)
    return JSONResponse(connection_body(sandbox.config.base_url, connection))


async def list_connections(request: Request) -> Response:
    sandbox = sandbox_of(request)
    company = sandbox.company(request.path_params["companyId"])
    page = page_from(request.query_params)
    items = [connection_body(sandbox.config.base_url, c) for c in company.connections.values()]
    return JSONResponse(paged(items, page, request.url.path))


async def get_connection(request: Request) -> Response:
    sandbox = sandbox_of(request)
    _, connection = sandbox.connection(request.path_params["companyId"],
                                       request.path_params["connectionId"])
    return JSONResponse(connection_body(sandbox.config.base_url, connection))


async def unlink_connection(request: Request) -> Response:
    sandbox = sandbox_of(request)
    company, connection = sandbox.connection(request.path_params["companyId"],
                                             request.path_params["connectionId"])
    unlink_status(await read_json(request))
    try:
        lifecycle.unlink(sandbox, company, connection)
    except lifecycle.TransitionRefused as exc:
        raise CodatError(400, str(exc)) from None
    return JSONResponse(connection_body(sandbox.config.base_url, connection))


async def delete_connection(request: Request) -> Response:
    sandbox = sandbox_of(request)
    company, connection = sandbox.connection(request.path_params["companyId"],
                                             request.path_params["connectionId"])
    lifecycle.delete_connection(sandbox, company, connection)
    return Response(status_code=200)  # 200 with no body, as the spec says


async def list_integrations(request: Request) -> Response:
    page = page_from(request.query_params)
    items = [integration_body(platform) for platform in PLATFORMS.values()]
    return JSONResponse(paged(items, page, request.url.path))


async def get_integration(request: Request) -> Response:
    key = request.path_params["platformKey"]
    platform = PLATFORMS.get(key)
    if platform is None:
        raise CodatError(404, f"Integration {key} not found")
    return JSONResponse(integration_body(platform))


COMPANY = "/companies/{companyId}"
CONNECTION = COMPANY + "/connections/{connectionId}"

routes: list[BaseRoute] = [
    Route("/companies", codat_endpoint(list_companies), methods=["GET"]),
    Route("/companies", codat_endpoint(create_company), methods=["POST"]),
    Route(COMPANY, codat_endpoint(get_company), methods=["GET"]),
    Route(COMPANY, codat_endpoint(update_company), methods=["PATCH", "PUT"]),
    Route(COMPANY, codat_endpoint(delete_company), methods=["DELETE"]),
    Route(COMPANY + "/connections", codat_endpoint(list_connections), methods=["GET"]),
    Route(COMPANY + "/connections", codat_endpoint(create_connection), methods=["POST"]),
    Route(CONNECTION, codat_endpoint(get_connection), methods=["GET"]),
    Route(CONNECTION, codat_endpoint(unlink_connection), methods=["PATCH"]),
    Route(CONNECTION, codat_endpoint(delete_connection), methods=["DELETE"]),
    Route("/integrations", codat_endpoint(list_integrations), methods=["GET"]),
    Route("/integrations/{platformKey}", codat_endpoint(get_integration), methods=["GET"]),
]
