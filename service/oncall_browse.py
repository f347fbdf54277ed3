"""The on-call search results and the long lists, a page at a time."""

from __future__ import annotations

from collections.abc import Callable

from service.db import utcnow
from service.oncall_home import (
    CONFLICT_HEAD,
    CONNECTION_HEAD,
    DELIVERY_HEAD,
    JOB_HEAD,
    TRANSITION_HEAD,
    conflict_rows,
    connection_rows,
    delivery_rows,
    job_rows,
    transition_rows,
)
from service.oncall_html import code, company, document, esc, href, pager, table
from service.oncall_lists import JOB_STATUSES, OUTCOMES, STATES, Page
from service.search import Hit


def hit_url(hit: Hit) -> str:
    """Where a search hit leads: its company's page (at the connection), or the delivery."""
    if hit.kind == "delivery":
        return href("deliveries", hit.id)
    if hit.company_id is None:
        return href()
    url = href("companies", hit.company_id)
    return f"{url}#{esc(hit.id)}" if hit.kind == "connection" else url


def render_search(query: str, hits: list[Hit]) -> str:
    rows = [[f'<a href="{hit_url(h)}">{code(h.id)}</a>', esc(h.detail),
             company(h.company_id, h.company_name)] for h in hits]
    empty = f"Nothing found for {query!r}." if query.strip() else "Type something to search."
    body = (f'<h2 id="results">Search <span class="note">{esc(query)}</span></h2>'
            f'<p class="meta">A company by name (its start) or id; a connection, message, event '
            f"or job id.</p>{table(['Found', 'What', 'Company'], rows, empty)}")
    return document(f"search {query}: codat-hooks on call", body, search=query)


def _tabs(name: str, values: tuple[str, ...], current: str, list_name: str) -> str:
    links = [f"<b>{esc(v)}</b>" if v == current else
             f'<a href="{href(list_name, **{name: v})}">{esc(v)}</a>' for v in values]
    return f'<nav>{" ".join(links)}</nav>'


def render_list(kind: str, page: Page, *, value: str | None, before: str | None) -> str:
    now = utcnow()
    params = {"connections": "state", "deliveries": "outcome", "jobs": "status"}
    param = params.get(kind)
    extra = {param: value} if param else {}
    views: dict[str, Callable[[], tuple[list[str], list[list[str]], str, str]]] = {
        "connections": lambda: (CONNECTION_HEAD, connection_rows(page.rows, now),
                                f"Connections {value}, most recently changed first",
                                _tabs("state", STATES, value or "", "connections")),
        "transitions": lambda: (TRANSITION_HEAD, transition_rows(page.rows, now),
                                "Transitions, newest first", ""),
        "deliveries": lambda: (DELIVERY_HEAD, delivery_rows(page.rows, now),
                               f"Deliveries {value}, newest first",
                               _tabs("outcome", OUTCOMES, value or "", "deliveries")),
        "jobs": lambda: (JOB_HEAD, job_rows(page.rows, now), f"Follow-up jobs {value}",
                         _tabs("status", JOB_STATUSES, value or "", "jobs")),
        "conflicts": lambda: (CONFLICT_HEAD, conflict_rows(page.rows, now),
                              "Conflicting deliveries, newest first", ""),
    }
    head, rows, title, tabs = views[kind]()
    more = pager(href(kind, **extra, before=page.next_cursor) if page.next_cursor else None,
                 href(kind, **extra) if before else None)
    body = f'<h2 id="list">{esc(title)}</h2>{tabs}{table(head, rows)}{more}'
    return document(f"{title}: codat-hooks on call", body)
