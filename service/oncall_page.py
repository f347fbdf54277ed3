"""GET /oncall: one read-only HTML page for whoever is on call (no JavaScript, no assets).

Auth is the query API's: a bearer token (read scope), or, for a browser, the session cookie
the login form (``POST /oncall/login``) sets; see :mod:`service.sessions`.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from schemas.state import ConnectionStatus, State
from service import outbox, queries
from service.auth import TokenAuth
from service.db import Database, Row, Tx, as_dt, sql, utcnow
from service.sessions import COOKIE, SESSION_SECONDS, Sessions, form_token

PATH = "/oncall"
LOGIN_PATH = "/oncall/login"
LOGOUT_PATH = "/oncall/logout"
LIMIT = 50
CONNECTIONS_LIMIT = 20
EXCERPT_BYTES = 400
_HEADERS = {  # no script may run, nothing may frame the page, nothing is cached or leaked
    "Cache-Control": "no-store", "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
                               "form-action 'self'; frame-ancestors 'none'"}

_NOT_LINKED = ", ".join(f"'{s}'" for s in ConnectionStatus if s is not ConnectionStatus.LINKED)
_STATE_COUNTS = sql(
    "SELECT status, deleted, COUNT(*) AS n FROM connections GROUP BY status, deleted")
# No index orders by updated_at: the status index narrows to non-Linked rows, then a top-N sort.
_CONNECTIONS = sql(f"""
SELECT id, company_id, platform_key, platform_name, source_type, integration_id, source_id,
    link_url, status, errors, created, last_sync, deleted, deleted_at, last_event_at,
    last_event_id, version, created_at, updated_at
FROM connections WHERE status IN ({_NOT_LINKED}) AND deleted = FALSE
ORDER BY updated_at DESC, id DESC LIMIT $1""")
_HISTORY = sql("""
SELECT id, connection_id, company_id, from_state, to_state, result, source, event_id, event_type,
    delivery_id, event_time, recorded_at, reason
FROM connection_history ORDER BY id DESC LIMIT $1""")
# One statement per outcome, so each walks ix_deliveries_outcome_received_at backwards.
_DELIVERIES = sql(f"""
SELECT message_id, msg_timestamp, event_id, event_type, company_id, connection_id,
    substr(body, 1, {EXCERPT_BYTES}) AS body, body_sha256, headers, secret_id, received_at,
    processed_at, outcome, error, attempts, 0 AS conflicts
FROM deliveries WHERE outcome = $1 ORDER BY received_at DESC, message_id DESC LIMIT $2""")
_CONFLICTS = sql(f"""
SELECT c.id, c.message_id, c.body_sha256, substr(c.body, 1, {EXCERPT_BYTES}) AS body,
    c.received_at, d.body_sha256 AS stored_sha256, d.outcome AS stored_outcome,
    d.event_type AS stored_event_type
FROM delivery_conflicts c LEFT JOIN deliveries d ON d.message_id = c.message_id
ORDER BY c.id DESC LIMIT $1""")
_DEAD = sql("""
SELECT id, kind, dedupe_key, company_id, connection_id, payload, status, attempts, max_attempts,
    next_attempt_at, lease_until, locked_by, last_error, created_at, updated_at
FROM outbox WHERE status = 'dead' ORDER BY next_attempt_at DESC, id DESC LIMIT $1""")


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything the page shows, read in one unit of work."""

    now: datetime
    states: dict[str, int]
    connections: list[dict[str, Any]]
    history: list[dict[str, Any]]
    deliveries: list[dict[str, Any]]
    conflicts: list[dict[str, Any]]
    dead: list[dict[str, Any]]
    jobs: dict[str, int]
    oldest_due: datetime | None
    paused_until: datetime | None


def _excerpt(body: Any) -> str | None:
    raw = None if body is None else bytes(body)
    return None if raw is None else raw.decode("utf-8", "replace") + (
        " …" if len(raw) >= EXCERPT_BYTES else "")


async def read_snapshot(tx: Tx) -> Snapshot:
    """The page's data: every statement LIMITed, ordered along an index where one exists."""
    now = utcnow()
    states = {state.value: 0 for state in State}
    for row in await tx.fetch(_STATE_COUNTS):
        key = State.DELETED.value if row["deleted"] else (row["status"] or "unknown")
        states[key] = states.get(key, 0) + int(row["n"])
    deliveries: list[Row] = []
    for outcome in ("failed", "unparseable"):
        deliveries += await tx.fetch(_DELIVERIES, outcome, LIMIT)
    deliveries.sort(key=lambda r: (as_dt(r["received_at"]), r["message_id"]), reverse=True)
    jobs, oldest_due = await outbox.counts(tx, now=now)
    return Snapshot(
        now=now, states=states,
        connections=[queries.connection_json(r)
                     for r in await tx.fetch(_CONNECTIONS, CONNECTIONS_LIMIT)],
        history=[queries.history_json(r) for r in await tx.fetch(_HISTORY, LIMIT)],
        deliveries=[queries.delivery_json(r, include_body=False) | {"excerpt": _excerpt(r["body"])}
                    for r in deliveries[:LIMIT]],
        conflicts=[dict(r) | {"excerpt": _excerpt(r["body"])}
                   for r in await tx.fetch(_CONFLICTS, LIMIT)],
        dead=[outbox.job_json(r) for r in await tx.fetch(_DEAD, LIMIT)],
        jobs=jobs, oldest_due=oldest_due, paused_until=await outbox.paused_until(tx))


# --- rendering: every value from the database goes through _e (html.escape) ---------------------

_TONE = {"Linked": "ok", "applied": "ok", "done": "muted", "PendingAuth": "info",
         "pending": "info", "running": "info", "superseded": "warn", "Unlinked": "warn",
         "Deauthorized": "bad", "rejected": "bad", "failed": "bad", "unparseable": "bad",
         "dead": "bad", "Deleted": "muted"}

_CSS = """
:root{color-scheme:dark}body{margin:0;padding:1rem 1.5rem 3rem;background:#15171a;color:#e8e8e8;
font:16px/1.45 system-ui,sans-serif}h1{font-size:1.5rem;margin:0}h2{font-size:1.15rem;
margin:2rem 0 .4rem;border-bottom:1px solid #333;padding-bottom:.2rem}a{color:#8ab4f8}
nav a{margin-right:1rem}.meta,.ago,.note{color:#9aa0a6;font-size:.85rem}.cards{display:flex;
flex-wrap:wrap;gap:.6rem;margin:.8rem 0}.card{background:#202327;border:1px solid #333;
border-radius:6px;padding:.4rem .8rem;min-width:6.5rem}.card b{display:block;font-size:1.6rem}
.card.alert{border-color:#f28b82;background:#3a1f1f}table{border-collapse:collapse;width:100%;
font-size:.9rem}th,td{text-align:left;vertical-align:top;padding:.3rem .5rem;
border-bottom:1px solid #2c2f33}th{color:#bdc1c6}tr:nth-child(even) td{background:#1a1c1f}
time{white-space:nowrap}code{font:.85rem ui-monospace,monospace;word-break:break-all}
pre{white-space:pre-wrap;word-break:break-all;margin:0;max-height:9em;overflow:auto;
font:.8rem ui-monospace,monospace;color:#f6c3bd}.b{padding:0 .45rem;border-radius:4px;
font-weight:600;white-space:nowrap}.ok{background:#1e3a26;color:#81c995}.info{background:#1d2f45;
color:#8ab4f8}.warn{background:#3d3217;color:#fdd663}.bad{background:#4a1c1c;color:#f28b82}
.muted{background:#2c2f33;color:#bdc1c6}.empty{color:#81c995}
"""


def _e(value: object) -> str:
    return "—" if value is None or value == "" else html.escape(str(value))


def _badge(value: object) -> str:
    return f'<span class="b {_TONE.get(str(value), "muted")}">{_e(value)}</span>'


def _ago(seconds: float) -> str:
    for size, unit in ((86400, "d"), (3600, "h"), (60, "min"), (1, "s")):
        if abs(seconds) >= size or unit == "s":
            amount = f"{abs(seconds) // size:.0f} {unit}"
            break
    return f"{amount} ago" if seconds >= 0 else f"in {amount}"


def _when(value: Any, now: datetime) -> str:
    moment = as_dt(value)
    if moment is None:
        return "—"
    return (f'<time datetime="{_e(moment.isoformat())}">{moment:%Y-%m-%d %H:%M:%S}</time>'
            f' <span class="ago">({_ago((now - moment).total_seconds())})</span>')


def _error_text(error: Any) -> str:
    return str(error.get("errorMessage") or error) if isinstance(error, dict) else str(error)


def _code(value: object) -> str:
    return f"<code>{_e(value)}</code>"


def _pre(value: object, label: str | None = None) -> str:
    if value is None or value == "":
        return "—"
    block = f"<pre>{_e(value)}</pre>"
    return f"<details><summary>{_e(label)}</summary>{block}</details>" if label else block


def _section(anchor: str, title: str, head: list[str], rows: list[list[str]], note: str) -> str:
    heading = f'<h2 id="{anchor}">{_e(title)} <span class="note">{_e(note)}</span></h2>'
    if not rows:
        return f'{heading}<p class="empty">None.</p>'
    cells = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    header = "".join(f"<th>{_e(h)}</th>" for h in head)
    return f"{heading}<table><thead><tr>{header}</tr></thead><tbody>{cells}</tbody></table>"


def _card(label: str, count: object, alert: bool = False) -> str:
    return f'<div class="card{" alert" if alert else ""}">{_e(label)}<b>{_e(count)}</b></div>'


def _summary(s: Snapshot) -> str:
    states = "".join(_card(k, v, k == State.DEAUTHORIZED and v > 0) for k, v in s.states.items())
    jobs = "".join(_card(f"jobs {k}", v, k == "dead" and v > 0) for k, v in s.jobs.items())
    extra = [f"oldest due job: {_when(s.oldest_due, s.now)}" if s.oldest_due else "",
             f"Codat calls paused until {_when(s.paused_until, s.now)}"
             if s.paused_until and s.paused_until > s.now else ""]
    notes = "".join(f'<p class="meta">{x}</p>' for x in extra if x)
    return (f'<h2 id="summary">Connections by state</h2><div class="cards">{states}</div>'
            f'<h2 id="jobs">Follow-up jobs</h2><div class="cards">{jobs}</div>{notes}')


def _connections(s: Snapshot) -> str:
    rows = [[_badge(c["status"]), _code(c["id"]), _code(c["companyId"]),
             _e(c["platformName"] or c["platformKey"]), _when(c["updatedAt"], s.now),
             _pre("; ".join(_error_text(x) for x in c["errors"]))]
            for c in s.connections]
    return _section("connections", "Not Linked", ["State", "Connection", "Company", "Platform",
                    "Updated", "Errors"], rows,
                    f"latest {CONNECTIONS_LIMIT} by last update; deleted ones only counted")


def _transitions(s: Snapshot) -> str:
    rows = [[_when(h["recordedAt"], s.now), _code(h["connectionId"]), _e(h["fromState"]),
             _e(h["toState"]), _badge(h["result"]), _e(h["source"]), _e(h["eventType"]),
             _e(h["reason"])] for h in s.history]
    return _section("transitions", "Latest transitions", ["Recorded", "Connection", "From",
                    "To", "Result", "Source", "Event", "Reason"], rows,
                    f"newest {LIMIT}, all connections")


def _deliveries(s: Snapshot) -> str:
    rows = [[_when(d["receivedAt"], s.now), _code(d["messageId"]), _badge(d["outcome"]),
             _e(d["eventType"]), _e(d["attempts"]), _pre(d["error"]),
             "pruned" if d["bodyPruned"] else _pre(d["excerpt"], "body (start)")]
            for d in s.deliveries]
    return _section("deliveries", "Failed and unparseable deliveries", ["Received", "Message",
                    "Outcome", "Event", "Attempts", "Error", "Body"], rows, f"newest {LIMIT}")


def _conflicts(s: Snapshot) -> str:
    rows = [[_when(c["received_at"], s.now), _code(c["message_id"]),
             f'{_badge(c["stored_outcome"])} {_e(c["stored_event_type"])}',
             f'{_code(c["body_sha256"][:16])} / {_code((c["stored_sha256"] or "")[:16])}',
             _pre(c["excerpt"], "body (start)")] for c in s.conflicts]
    return _section("conflicts", "Conflicting deliveries", ["Received", "Message", "Stored as",
                    "sha256 new / stored", "New body"], rows,
                    f"newest {LIMIT}; same message id, another body; never processed")


def _dead(s: Snapshot) -> str:
    rows = [[_when(j["updatedAt"], s.now), _code(j["id"]), _e(j["kind"]),
             f'{_code(j["companyId"])}<br>{_code(j["connectionId"])}',
             f'{_e(j["attempts"])}/{_e(j["maxAttempts"])}', _pre(j["lastError"])]
            for j in s.dead]
    return _section("dead", "Dead follow-up jobs", ["Died", "Job", "Kind",
                    "Company / connection", "Attempts", "Last error"], rows,
                    f"newest {LIMIT}; make them pending again with the CLI")


def _document(title: str, body: str) -> str:
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" '
            f'content="width=device-width,initial-scale=1"><title>{_e(title)}</title>'
            f"<style>{_CSS}</style></head><body>{body}</body></html>")


def render(s: Snapshot) -> str:
    """The page for a snapshot."""
    nav = "".join(f'<a href="#{a}">{t}</a>' for a, t in (
        ("connections", "not linked"), ("transitions", "transitions"),
        ("deliveries", "failed deliveries"), ("conflicts", "conflicts"), ("dead", "dead jobs")))
    head = (f'<h1>codat-hooks on call</h1><p class="meta">read at {s.now:%Y-%m-%d %H:%M:%S} '
            f'UTC · <a href="{PATH}">refresh</a></p><nav>{nav}</nav>')
    sections = [_summary(s), _connections(s), _transitions(s), _deliveries(s), _conflicts(s),
                _dead(s)]
    return _document("codat-hooks on call", head + "".join(sections))


_LOGIN = f"""<h1>codat-hooks on call: log in</h1>
<p>This page needs one of the service's API tokens (<code>SERVICE_READ_TOKENS</code> or
<code>SERVICE_API_TOKENS</code>), the same bearer token the query API takes. It is sent once,
in this form; the browser then keeps a signed session (never the token) in an HttpOnly cookie
for this page only, for {SESSION_SECONDS // 3600} hours.</p>{{note}}<form method="post"
action="{LOGIN_PATH}"><input type="password" name="token" autocomplete="off" aria-label="token"
required> <button>Log in</button></form>"""


# --- auth and routes ----------------------------------------------------------------------------

def _login_page(status: int, note: str = "") -> Response:
    body = _LOGIN.replace("{note}", f'<p class="note">{_e(note)}</p>' if note else "")
    return HTMLResponse(_document("codat-hooks on call: log in", body), status,
                        {**_HEADERS, "WWW-Authenticate": 'Bearer realm="codat-hooks"'})


def oncall_routes(db: Database, auth: TokenAuth, sessions: Sessions) -> list[Route]:
    """``GET /oncall`` behind a bearer token or a session cookie; ``POST /oncall/login`` (the
    form) and ``POST /oncall/logout``."""
    async def page(request: Request) -> Response:
        return HTMLResponse(render(await db.read(read_snapshot)), headers=_HEADERS)

    protected = auth.protect(page, also=sessions.scope_of)

    async def endpoint(request: Request) -> Response:
        if "token" in request.query_params:  # it would sit in access logs and the history
            return _login_page(400, "A token in the address is not accepted: use this form.")
        if auth.bearer_scope(request) is None and sessions.scope_of(request) is None:
            response = _login_page(401)
            if COOKIE in request.cookies:  # expired, or its token was removed
                sessions.clear_cookie(response, request)
            return response
        return await protected(request)

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

    return [Route(PATH, endpoint, methods=["GET"]),
            Route(LOGIN_PATH, login, methods=["POST"]),
            Route(LOGOUT_PATH, logout, methods=["POST"])]
