"""GET /oncall and its pages: read-only HTML for whoever is on call (no JavaScript, no assets).

The pages: the home page (:mod:`service.oncall_home`), the search and the long lists
(:mod:`service.oncall_browse`), a company's story and a delivery (:mod:`service.oncall_company`).

Auth is the query API's: a bearer token (read scope), or, for a browser, the signed session
cookie the login form (``POST /oncall/login``) sets; see :mod:`service.sessions`. A token in
the address is refused: it would sit in access logs and the browser's history.
"""

from __future__ import annotations

import html
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from service import oncall_browse, oncall_company, oncall_home, oncall_lists, search, story
from service.auth import TokenAuth
from service.db import Database, Tx
from service.errors import DatabaseUnavailable
from service.oncall_html import PATH, document, esc
from service.queries import BadQuery
from service.recent import MinuteCounts
from service.sessions import COOKIE, SESSION_SECONDS, Sessions, form_token

LOGIN_PATH = f"{PATH}/login"
LOGOUT_PATH = f"{PATH}/logout"
_HEADERS = {  # no script may run, nothing may frame the page, nothing is cached or leaked
    "Cache-Control": "no-store", "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
                               "form-action 'self'; frame-ancestors 'none'"}


# --- auth -----------------------------------------------------------------------------------------

_LOGIN = f"""<h1>codat-hooks on call: log in</h1>
<p>This page needs one of the service's API tokens (<code>SERVICE_READ_TOKENS</code> or
<code>SERVICE_API_TOKENS</code>), the same bearer token the query API takes. It is sent once,
in this form; the browser then keeps a signed session (never the token) in an HttpOnly cookie
for these pages only, for {SESSION_SECONDS // 3600} hours.</p>{{note}}<form method="post"
action="{LOGIN_PATH}"><input type="password" name="token" autocomplete="off" aria-label="token"
required> <button>Log in</button></form>"""


def _login_page(status: int, note: str = "") -> Response:
    body = _LOGIN.replace("{note}", f'<p class="note">{esc(note)}</p>' if note else "")
    return HTMLResponse(document("codat-hooks on call: log in", body, header=False), status,
                        {**_HEADERS, "WWW-Authenticate": 'Bearer realm="codat-hooks"'})


Handler = Callable[[Request], Awaitable[Response]]


def _guarded(auth: TokenAuth, sessions: Sessions, handler: Handler) -> Handler:
    """``handler`` behind a read-scope bearer token or a session cookie."""
    async def endpoint(request: Request) -> Response:
        if "token" in request.query_params:  # it would sit in access logs and the history
            return _login_page(400, "A token in the address is not accepted: use this form.")
        if auth.bearer_scope(request) is None and sessions.scope_of(request) is None:
            response = _login_page(401)
            if COOKIE in request.cookies:  # expired, or its token was removed
                sessions.clear_cookie(response, request)
            return response
        return await _answered(handler, request)
    return endpoint


def _session_routes(sessions: Sessions) -> list[Route]:
    async def login(request: Request) -> Response:
        token = await form_token(request)
        value = sessions.issue(token) if token else None
        if value is None:
            return _login_page(401, "That token is not valid.")
        response = RedirectResponse(PATH, 303, _HEADERS)
        sessions.set_cookie(response, request, value)
        return response

    async def logout(request: Request) -> Response:
        response = RedirectResponse(PATH, 303, _HEADERS)
        sessions.clear_cookie(response, request)
        return response

    return [Route(LOGIN_PATH, login, methods=["POST"]),
            Route(LOGOUT_PATH, logout, methods=["POST"])]


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


def oncall_routes(db: Database, auth: TokenAuth, sessions: Sessions,
                  recent: MinuteCounts | None = None) -> list[Route]:
    """``GET /oncall`` and its pages, behind a bearer token or a session cookie; the login form
    and the logout."""
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
    return [*(Route(path, _guarded(auth, sessions, handler), methods=["GET"])
              for path, handler in routes), *_session_routes(sessions)]
