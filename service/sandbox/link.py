"""The hosted Link pages the SMB opens: a plain page with Authorize and Decline buttons.

The buttons POST to ``.../authorize`` and ``.../decline`` on the same path; each answers with a
small result page. The state changes go through :mod:`lifecycle`, like the controls.
"""

from __future__ import annotations

from html import escape

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Route

from service.sandbox import lifecycle
from service.sandbox.bodies import link_url
from service.sandbox.errors import CodatError
from service.sandbox.gate import sandbox_of
from service.sandbox.model import Company, Connection, ConnectionStatus

CONNECTION = "/link/companies/{companyId}/connections/{connectionId}"


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    html = (f"<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{escape(title)}</title></head>\n"
            f"<body style=\"font-family: sans-serif; max-width: 36rem; margin: 3rem auto\">\n"
            f"<h1>{escape(title)}</h1>\n{body}\n</body></html>\n")
    return HTMLResponse(html, status_code=status)


def _find(request: Request) -> tuple[Company, Connection] | Response:
    try:
        return sandbox_of(request).connection(request.path_params["companyId"],
                                              request.path_params["connectionId"])
    except CodatError as exc:
        return _page("Link not found", f"<p>{escape(exc.error)}</p>", 404)


def _title(company: Company, connection: Connection) -> str:
    return f"Connect {company.name} to {connection.platform.name}"


async def start(request: Request) -> Response:
    found = _find(request)
    if isinstance(found, Response):
        return found
    company, connection = found
    base = request.url.path.removesuffix("/start")
    if connection.status is ConnectionStatus.LINKED:
        note = "<p>This connection is already linked. You can close this page.</p>"
    else:
        note = (f"<p>{escape(company.name)} is asking to read your accounting data in "
                f"{escape(connection.platform.name)} (Codat sandbox).</p>")
    buttons = (f"<form method=\"post\" action=\"{base}/authorize\" style=\"display:inline\">"
               f"<button type=\"submit\" name=\"choice\" value=\"authorize\">Authorize</button>"
               f"</form>\n<form method=\"post\" action=\"{base}/decline\" "
               f"style=\"display:inline\"><button type=\"submit\" name=\"choice\" "
               f"value=\"decline\">Decline</button></form>")
    return _page(_title(company, connection), f"{note}\n{buttons}")


async def authorize(request: Request) -> Response:
    found = _find(request)
    if isinstance(found, Response):
        return found
    company, connection = found
    lifecycle.authorize(sandbox_of(request), company, connection)
    return _page(_title(company, connection),
                 f"<p>Connected. {escape(company.name)} can now read your "
                 f"{escape(connection.platform.name)} data. You can close this page.</p>")


async def decline(request: Request) -> Response:
    found = _find(request)
    if isinstance(found, Response):
        return found
    company, connection = found
    try:
        lifecycle.decline(sandbox_of(request), company, connection)
    except lifecycle.TransitionRefused as exc:
        return _page(_title(company, connection), f"<p>{escape(str(exc))}</p>", 409)
    return _page(_title(company, connection),
                 "<p>You declined. Nothing was shared. You can close this page.</p>")


async def company_page(request: Request) -> Response:
    """The company's ``redirect``: one link per connection still waiting to be authorized."""
    sandbox = sandbox_of(request)
    try:
        company = sandbox.company(request.path_params["companyId"])
    except CodatError as exc:
        return _page("Link not found", f"<p>{escape(exc.error)}</p>", 404)
    items = "\n".join(
        f"<li><a href=\"{escape(link_url(sandbox.config.base_url, c))}\">"
        f"{escape(c.platform.name)}</a> ({c.status.value})</li>"
        for c in company.connections.values())
    return _page(f"Connect {company.name}", f"<ul>\n{items}\n</ul>" if items
                 else "<p>No connection has been created for this company yet.</p>")


routes: list[BaseRoute] = [
    Route("/link/company/{companyId}", company_page, methods=["GET"]),
    Route(CONNECTION + "/start", start, methods=["GET"]),
    Route(CONNECTION + "/authorize", authorize, methods=["POST"]),
    Route(CONNECTION + "/decline", decline, methods=["POST"]),
]
