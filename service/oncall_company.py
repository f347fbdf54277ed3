"""One customer's story (``GET /oncall/companies/{id}``) and one delivery
(``GET /oncall/deliveries/{message_id}``), as pages."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson

from service.db import utcnow
from service.oncall_html import (
    badge,
    code,
    delivery,
    document,
    error_text,
    esc,
    facts,
    href,
    pager,
    pre,
    table,
    when,
)
from service.story import DeliveryStory, Entry, Story, commands


def _entry(e: Entry, now: datetime) -> list[str]:
    d = e.data
    if e.kind == "transition":
        what = (f'{badge(d["result"])} {esc(d["fromState"])} → {esc(d["toState"])} '
                f'<span class="note">{esc(d["source"])}</span>')
        detail = (f'{esc(d["eventType"])} {delivery(d["deliveryId"])} '
                  f'{esc(d["reason"]) if d["reason"] else ""}')
        subject = code(d["connectionId"])
    elif e.kind == "delivery":
        what = f'delivery {badge(d["outcome"])} {esc(d["eventType"])}'
        detail = delivery(d["messageId"]) + (f" {pre(d['error'])}" if d["error"] else "")
        subject = code(d["connectionId"]) if d["connectionId"] else "—"
    else:
        what = f'job {esc(d["kind"])} {badge(d["status"])}'
        detail = (f'{code(d["id"])} attempts {esc(d["attempts"])}/{esc(d["maxAttempts"])}'
                  + (f" {pre(d['lastError'])}" if d["lastError"] else ""))
        subject = code(d["connectionId"]) if d["connectionId"] else "—"
    return [when(e.at, now), what, subject, detail]


def render(story: Story, *, first_page: bool) -> str:
    now = utcnow()
    c = story.company
    name = c["name"] or c["id"]
    ready = ('<span class="b ok">ready</span>' if c["billPayReady"]
             else '<span class="b bad">not ready</span>')
    head = (f'<h2 id="company">{esc(name)}{" (deleted)" if c["deleted"] else ""}</h2>'
            + facts({"Company id": code(c["id"]), "Bill Pay": ready,
                     "Readiness checked": when(c["billPayCheckedAt"], now),
                     "Last event": when(c["lastEventAt"], now)}))
    why = "".join(f"<li>{esc(reason)}</li>" for reason in story.why_not_ready)
    if why:
        head += f'<h3 id="why">Why not ready</h3><ul class="why">{why}</ul>'
    connections = table(["Connection", "Platform", "State", "Since", "Errors"], [
        [f'<span id="{esc(x["id"])}">{code(x["id"])}</span>',
         esc(x["platformName"] or x["platformKey"]),
         badge("Deleted" if x["deleted"] else x["status"]), when(x["since"], now),
         pre("; ".join(error_text(e) for e in x["errors"]))]
        for x in c["dataConnections"]], "No connection.")
    data_types = table(["Data type", "Status", "Connection", "Last read"], [
        [esc(t["dataType"]), badge(t["status"]), code(t["connectionId"]),
         when(t["lastReadAt"], now)] for t in c["dataTypes"]], "No read reported yet.")
    timeline = table(["When", "What", "Connection", "Detail"],
                     [_entry(e, now) for e in story.entries], "Nothing recorded.")
    more = pager(href("companies", c["id"], before=story.next_cursor)
                 if story.next_cursor else None,
                 None if first_page else href("companies", c["id"]))
    copy = "\n".join(commands(c["id"], story))
    body = (head + f'<h2 id="connections">Connections</h2>{connections}'
            f'<h2 id="data-types">Data types read</h2>{data_types}'
            f'<h2 id="commands">Commands</h2><pre class="full">{esc(copy)}</pre>'
            f'<h2 id="timeline">Timeline <span class="note">moves, deliveries and jobs, newest '
            f'first</span></h2>{timeline}{more}')
    return document(f"{name}: codat-hooks on call", body)


def _pretty(body: dict[str, Any] | None) -> str:
    if body is None:
        return "(pruned)"
    if body["encoding"] != "utf-8":
        return f"(base64) {body['text']}"
    try:
        return orjson.dumps(orjson.loads(body["text"]), option=orjson.OPT_INDENT_2).decode()
    except orjson.JSONDecodeError:
        return str(body["text"])


def render_delivery(s: DeliveryStory) -> str:
    now = utcnow()
    d = s.delivery
    company = (f'<a class="name" href="{href("companies", d["companyId"])}">'
               f'{esc(s.company_name or d["companyId"])}</a> {code(d["companyId"])}'
               if d["companyId"] else "—")
    head = facts({
        "Message id": code(d["messageId"]), "Event": f'{esc(d["eventType"])} {code(d["eventId"])}',
        "Company": company, "Connection": code(d["connectionId"]),
        "Outcome": badge(d["outcome"]), "Error": pre(d["error"]),
        "Received": when(d["receivedAt"], now), "Processed": when(d["processedAt"], now),
        "Attempts": esc(d["attempts"]), "Conflicting bodies": esc(d["conflicts"]),
        "Verified by": code(d["secretId"]), "Body sha256": code(d["bodySha256"])})
    headers = table(["Header", "Value"], [[code(k), code(v)] for k, v in d["headers"].items()],
                    "No header kept.")
    moves = table(["Recorded", "Connection", "From", "To", "Result", "Reason"], [
        [when(h["recordedAt"], now), code(h["connectionId"]), esc(h["fromState"]),
         esc(h["toState"]), badge(h["result"]), esc(h["reason"])] for h in s.moves],
        "No connection move.")
    jobs = table(["Job", "Kind", "Status", "Attempts", "Last error"], [
        [code(j["id"]), esc(j["kind"]), badge(j["status"]),
         f'{esc(j["attempts"])}/{esc(j["maxAttempts"])}', pre(j["lastError"])]
        for j in s.jobs], "No follow-up job.")
    replay = f'codat-hooks replay {d["messageId"]} --apply --reason "..."'
    body = (f'<h2 id="delivery">Delivery {esc(d["messageId"])}</h2>{head}'
            f'<h2 id="headers">Headers kept</h2>{headers}'
            f'<h2 id="body">Body</h2><pre class="full">{esc(_pretty(d["body"]))}</pre>'
            f'<h2 id="moves">Connection moves it caused</h2>{moves}'
            f'<h2 id="jobs">Follow-up jobs it caused</h2>{jobs}'
            f'<h2 id="commands">Replay</h2><pre class="full">{esc(replay)}</pre>')
    return document(f"delivery {d['messageId']}: codat-hooks on call", body)
