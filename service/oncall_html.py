"""HTML building blocks of the on-call pages: every value from outside goes through :func:`esc`
(``html.escape``) or :func:`href` (URL-quoted, then escaped); no script, no external asset."""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any
from urllib.parse import quote, urlencode

from service.db import as_dt

PATH = "/oncall"

_TONE = {"Linked": "ok", "applied": "ok", "done": "muted", "processed": "ok",
         "PendingAuth": "info", "pending": "info", "running": "info", "ignored": "muted",
         "superseded": "warn", "Unlinked": "warn", "Deauthorized": "bad", "rejected": "bad",
         "failed": "bad", "unparseable": "bad", "dead": "bad", "Deleted": "muted"}

CSS = """
:root{color-scheme:dark}body{margin:0;padding:1rem 1.5rem 3rem;background:#15171a;color:#e8e8e8;
font:16px/1.45 system-ui,sans-serif}h1{font-size:1.5rem;margin:0}h2{font-size:1.15rem;
margin:2rem 0 .4rem;border-bottom:1px solid #333;padding-bottom:.2rem}h3{font-size:1rem;
margin:1.2rem 0 .3rem}a{color:#8ab4f8}header{display:flex;flex-wrap:wrap;gap:.5rem 1.5rem;
align-items:baseline}header form{margin-left:auto}input[type=search]{width:22rem;max-width:70vw;
background:#202327;color:#e8e8e8;border:1px solid #444;border-radius:4px;padding:.25rem .5rem}
button{background:#2c2f33;color:#e8e8e8;border:1px solid #555;border-radius:4px;
padding:.2rem .7rem}nav a{margin-right:1rem}.meta,.ago,.note{color:#9aa0a6;font-size:.85rem}
.cards{display:flex;flex-wrap:wrap;gap:.6rem;margin:.8rem 0}.card{background:#202327;
border:1px solid #333;border-radius:6px;padding:.4rem .8rem;min-width:6.5rem}.card b{display:block;
font-size:1.6rem}.card.alert{border-color:#f28b82;background:#3a1f1f}a.card{color:inherit;
text-decoration:none}table{border-collapse:collapse;width:100%;font-size:.9rem}th,td{text-align:left;
vertical-align:top;padding:.3rem .5rem;border-bottom:1px solid #2c2f33}th{color:#bdc1c6}
tr:nth-child(even) td{background:#1a1c1f}time{white-space:nowrap}code{font:.85rem ui-monospace,
monospace;word-break:break-all}pre{white-space:pre-wrap;word-break:break-all;margin:0;
max-height:9em;overflow:auto;font:.8rem ui-monospace,monospace;color:#f6c3bd}pre.full{max-height:
none;color:#e8e8e8;background:#1a1c1f;padding:.6rem;border-radius:4px}.b{padding:0 .45rem;
border-radius:4px;font-weight:600;white-space:nowrap}.ok{background:#1e3a26;color:#81c995}
.info{background:#1d2f45;color:#8ab4f8}.warn{background:#3d3217;color:#fdd663}
.bad{background:#4a1c1c;color:#f28b82}.muted{background:#2c2f33;color:#bdc1c6}
.empty{color:#81c995}.charts{display:grid;grid-template-columns:repeat(auto-fill,minmax(min(30rem,100%),1fr));
gap:1rem}figure{margin:0;background:#1a1c1f;border:1px solid #2c2f33;border-radius:6px;
padding:.5rem .7rem}figcaption{font-size:.9rem;color:#bdc1c6}svg{display:block;width:100%;
height:auto}.pager{margin:.6rem 0}.why li{margin:.15rem 0}dl{display:grid;
grid-template-columns:max-content 1fr;gap:.2rem 1rem;margin:.5rem 0}dt{color:#9aa0a6}dd{margin:0}
.name{font-weight:600}@media (max-width:800px){body{padding:.6rem .7rem 2rem}
table{display:block;overflow-x:auto}header form{margin-left:0}}
"""


def esc(value: object) -> str:
    """Text for HTML: escaped; an em dash for nothing."""
    return "—" if value is None or value == "" else html.escape(str(value))


def href(*segments: str, **params: object) -> str:
    """An escaped link under /oncall: each segment URL-quoted, None params left out."""
    path = "/".join([PATH, *(quote(s, safe="") for s in segments)])
    query = urlencode({k: v for k, v in params.items() if v is not None and v != ""})
    return html.escape(f"{path}?{query}" if query else path)


def link(text: object, url: str, cls: str | None = None) -> str:
    """``url`` comes from :func:`href` (already escaped)."""
    attribute = f' class="{cls}"' if cls else ""
    return f'<a href="{url}"{attribute}>{esc(text)}</a>'


def badge(value: object) -> str:
    return f'<span class="b {_TONE.get(str(value), "muted")}">{esc(value)}</span>'


def ago(seconds: float) -> str:
    for size, unit in ((86400, "d"), (3600, "h"), (60, "min"), (1, "s")):
        if abs(seconds) >= size or unit == "s":
            amount = f"{abs(seconds) // size:.0f} {unit}"
            break
    return f"{amount} ago" if seconds >= 0 else f"in {amount}"


def when(value: Any, now: datetime) -> str:
    moment = as_dt(value)
    if moment is None:
        return "—"
    return (f'<time datetime="{esc(moment.isoformat())}">{moment:%Y-%m-%d %H:%M:%S}</time>'
            f' <span class="ago">({ago((now - moment).total_seconds())})</span>')


def code(value: object) -> str:
    return f"<code>{esc(value)}</code>"


def pre(value: object, label: str | None = None) -> str:
    if value is None or value == "":
        return "—"
    block = f"<pre>{esc(value)}</pre>"
    return f"<details><summary>{esc(label)}</summary>{block}</details>" if label else block


def error_text(error: Any) -> str:
    return str(error.get("errorMessage") or error) if isinstance(error, dict) else str(error)


def company(company_id: object, name: object) -> str:
    """A company as on-call knows it: its name (or its id), linking to its page, and its id."""
    if company_id is None or company_id == "":
        return "—"
    url = href("companies", str(company_id))
    label = link(name, url, "name") if name else link(company_id, url)
    return f"{label}<br>{code(company_id)}" if name else label


def delivery(message_id: object) -> str:
    if message_id is None or message_id == "":
        return "—"
    return f'<a href="{href("deliveries", str(message_id))}">{code(message_id)}</a>'


def table(head: Iterable[str], rows: list[list[str]], empty: str = "None.") -> str:
    if not rows:
        return f'<p class="empty">{esc(empty)}</p>'
    header = "".join(f"<th>{esc(h)}</th>" for h in head)
    cells = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{header}</tr></thead><tbody>{cells}</tbody></table>"


def section(anchor: str, title: str, head: list[str], rows: list[list[str]], note: str,
            more: str | None = None) -> str:
    heading = f'<h2 id="{anchor}">{esc(title)} <span class="note">{esc(note)}</span></h2>'
    after = f'<p class="pager"><a href="{more}">more …</a></p>' if more and rows else ""
    return heading + table(head, rows) + after


def card(label: str, count: object, alert: bool = False, url: str | None = None) -> str:
    cls = f'card{" alert" if alert else ""}'
    inner = f"{esc(label)}<b>{esc(count)}</b>"
    if url:
        return f'<a class="{cls}" href="{url}">{inner}</a>'
    return f'<div class="{cls}">{inner}</div>'


def pager(next_url: str | None, first_url: str | None) -> str:
    links = []
    if first_url:
        links.append(f'<a href="{first_url}">« newest</a>')
    if next_url:
        links.append(f'<a href="{next_url}">older »</a>')
    return f'<p class="pager">{" · ".join(links)}</p>' if links else ""


def facts(items: Mapping[str, str]) -> str:
    """A definition list of already-rendered values."""
    return "<dl>" + "".join(f"<dt>{esc(k)}</dt><dd>{v}</dd>" for k, v in items.items()) + "</dl>"


def document(title: str, body: str, *, search: str = "", header: bool = True) -> str:
    """A whole page: the header (home, the search form) unless not ``header``, and ``body``."""
    top = (f'<header><h1><a href="{PATH}">codat-hooks on call</a></h1>'
              f'<form method="get" action="{PATH}/search" role="search">'
              f'<input type="search" name="q" value="{html.escape(search)}" '
              f'placeholder="company name or id, connection, message, event or job id" '
              f'aria-label="search"> <button>Search</button></form></header>') if header else ""
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" '
            f'content="width=device-width,initial-scale=1"><title>{esc(title)}</title>'
            f"<style>{CSS}</style></head><body>{top}{body}</body></html>")
