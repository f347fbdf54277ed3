"""GET /oncall and its pages: read-only HTML for whoever is on call (no JavaScript, no assets).

The pages: the home page (:mod:`service.oncall_home`), the search and the long lists
(:mod:`service.oncall_browse`), a company's story and a delivery (:mod:`service.oncall_company`).

Auth is the query API's: a token from SERVICE_API_TOKENS, checked by :class:`TokenAuth`. A
browser cannot send a bearer header, so ``?token=...`` is accepted once: the answer is a 303
back to the same page (the token leaves the address bar) that sets the token in an HttpOnly,
SameSite=Strict cookie scoped to ``Path=/oncall``. The cookie is then checked exactly like a
bearer header, by ``TokenAuth.allows`` (``hmac.compare_digest`` over the same token set). The
login (what follows ``_LOGIN``) is all in this module.
"""

from __future__ import annotations

import html
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from service import oncall_browse, oncall_company, oncall_home, oncall_lists, search, story
from service.api import TokenAuth
from service.db import Database, Tx
from service.errors import DatabaseUnavailable
from service.oncall_html import PATH, document, esc
from service.queries import BadQuery
from service.recent import MinuteCounts

COOKIE = "codat_hooks_oncall"
COOKIE_MAX_AGE = 12 * 3600  # one night on call
_HEADERS = {  # no script may run, nothing may frame the page, nothing is cached or leaked
    "Cache-Control": "no-store", "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
                               "form-action 'self'; frame-ancestors 'none'"}


# --- auth -----------------------------------------------------------------------------------------

_LOGIN = f"""<h1>codat-hooks on call: log in</h1>
<p>This page needs one of the service's API tokens (<code>SERVICE_API_TOKENS</code>), the same
bearer token the query API takes.</p><p>Open <code>{PATH}?token=YOUR_TOKEN</code> once, or use
the form: the token is kept in an HttpOnly cookie for this page only and removed from the
address.</p><form method="get" action="{PATH}"><input type="password" name="token"
autocomplete="off" aria-label="token" required> <button>Log in</button></form>"""


def _login_page() -> str:
    return document("codat-hooks on call: log in", _LOGIN, header=False)


def _with_token(request: Request, token: str) -> Request | None:
    """``request`` as if it carried ``Authorization: Bearer <token>``; None for junk tokens."""
    if not token or not token.isascii() or not token.isprintable():
        return None
    headers = [(k, v) for k, v in request.scope["headers"] if k != b"authorization"]
    headers.append((b"authorization", b"Bearer " + token.encode("ascii")))
    return Request({**request.scope, "headers": headers}, request.receive)


def _unauthorized(clear_cookie: bool) -> Response:
    response = HTMLResponse(_login_page(), 401,
                            {**_HEADERS, "WWW-Authenticate": 'Bearer realm="codat-hooks"'})
    if clear_cookie:
        response.delete_cookie(COOKIE, path=PATH, httponly=True, samesite="strict")
    return response


Handler = Callable[[Request], Awaitable[Response]]


def _guarded(auth: TokenAuth, handler: Handler) -> Handler:
    """``handler`` behind ``auth``: a bearer header; or ``?token=`` once (a 303 to the same
    address without it, setting the cookie); or the cookie, checked like a bearer header."""
    async def endpoint(request: Request) -> Response:
        token = request.query_params.get("token")
        if token is not None:
            presented = _with_token(request, token.strip())
            if presented is None or not auth.allows(presented):
                return _unauthorized(clear_cookie=False)
            response = RedirectResponse(request.url.path, 303, _HEADERS)  # no token in it
            response.set_cookie(COOKIE, token.strip(), max_age=COOKIE_MAX_AGE, path=PATH,
                                secure=request.url.scheme == "https", httponly=True,
                                samesite="strict")
            return response
        if not auth.allows(request):
            cookie = request.cookies.get(COOKIE)
            presented = _with_token(request, cookie) if cookie is not None else None
            if presented is None or not auth.allows(presented):
                return _unauthorized(clear_cookie=cookie is not None)
        return await _answered(handler, request)
    return endpoint


# --- pages ----------------------------------------------------------------------------------------

def _html(body: str, status: int = 200) -> Response:
    return HTMLResponse(body, status, headers=_HEADERS)


def _problem(status: int, title: str, detail: str) -> Response:
    return _html(document(title, f"<h2>{esc(title)}</h2><p>{esc(detail)}</p>"), status)


async def _answered(handler: Handler, request: Request) -> Response:
    try:
        return await handler(request)
    except BadQuery as exc:
        return _problem(400, "Bad request", str(exc))
    except DatabaseUnavailable:
        return _problem(503, "Database unavailable", "The database cannot be read now; "
                        "refresh in a few seconds.")


class OncallPages:
    """The pages, reading ``db`` (and this process's refusal counts)."""

    def __init__(self, db: Database, recent: MinuteCounts) -> None:
        self._db = db
        self._recent = recent

    async def home(self, request: Request) -> Response:
        recent = self._recent
        snapshot = await self._db.read(lambda tx: oncall_home.read_snapshot(tx, recent))
        return _html(oncall_home.render(snapshot))

    async def search(self, request: Request) -> Response:
        query = request.query_params.get("q", "")[:200]
        hits = await self._db.read(lambda tx: search.search(tx, query))
        if len(hits) == 1 and hits[0].exact:  # one id, pasted whole: go straight to it
            return RedirectResponse(html.unescape(oncall_browse.hit_url(hits[0])), 303,
                                    _HEADERS)
        return _html(oncall_browse.render_search(query, hits))

    async def company(self, request: Request) -> Response:
        company_id = request.path_params["company_id"]
        before = request.query_params.get("before") or None
        found = await self._db.read(lambda tx: story.read_story(tx, company_id, before=before))
        if found is None:
            return _problem(404, "No such company", f"No company {company_id} is known here.")
        return _html(oncall_company.render(found, first_page=before is None))

    async def delivery(self, request: Request) -> Response:
        message_id = request.path_params["message_id"]
        found = await self._db.read(lambda tx: story.read_delivery(tx, message_id))
        if found is None:
            return _problem(404, "No such delivery", f"No delivery {message_id} is stored.")
        return _html(oncall_company.render_delivery(found))

    def listing(self, kind: str, param: str | None, default: str | None) -> Handler:
        async def page(request: Request) -> Response:
            value = request.query_params.get(param, default) if param else None
            before = request.query_params.get("before") or None

            async def read(tx: Tx) -> oncall_lists.Page:
                if kind == "connections":
                    return await oncall_lists.connections(tx, str(value), before=before)
                if kind == "deliveries":
                    return await oncall_lists.deliveries(tx, str(value), before=before)
                if kind == "jobs":
                    return await oncall_lists.jobs(tx, str(value), before=before)
                if kind == "transitions":
                    return await oncall_lists.transitions(tx, before=before)
                return await oncall_lists.conflicts(tx, before=before)
            found = await self._db.read(read)
            return _html(oncall_browse.render_list(kind, found, value=value, before=before))
        return page


def oncall_routes(db: Database, auth: TokenAuth, recent: MinuteCounts | None = None,
                  ) -> list[Route]:
    """``GET /oncall`` and its pages, behind ``auth`` (bearer header, ``?token=`` once, then a
    cookie)."""
    pages = OncallPages(db, recent or MinuteCounts())
    routes: list[tuple[str, Handler]] = [
        (PATH, pages.home), (f"{PATH}/search", pages.search),
        (f"{PATH}/companies/{{company_id}}", pages.company),
        (f"{PATH}/deliveries/{{message_id}}", pages.delivery),
        (f"{PATH}/connections", pages.listing("connections", "state", "Deauthorized")),
        (f"{PATH}/deliveries", pages.listing("deliveries", "outcome", "failed")),
        (f"{PATH}/jobs", pages.listing("jobs", "status", "dead")),
        (f"{PATH}/transitions", pages.listing("transitions", None, None)),
        (f"{PATH}/conflicts", pages.listing("conflicts", None, None)),
    ]
    return [Route(path, _guarded(auth, handler), methods=["GET"]) for path, handler in routes]
