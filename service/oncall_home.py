"""The on-call home page (``GET /oncall``): states and jobs at a glance, the charts, and the
first page of each list (connections not Linked, transitions, failed deliveries, conflicts,
dead jobs), each with a link to the rest."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from schemas.state import State
from service import oncall_charts, oncall_lists, outbox
from service.db import Tx, sql, utcnow
from service.oncall_charts import Charts
from service.oncall_html import (
    badge,
    card,
    code,
    company,
    delivery,
    document,
    error_text,
    esc,
    href,
    pre,
    section,
    when,
)
from service.recent import MinuteCounts

LIMIT = 50
CONNECTIONS_LIMIT = 20
NOT_LINKED = ("PendingAuth", "Unlinked", "Deauthorized")
# Counted from ix_connections_status_deleted_updated_at alone (no table row is read): the one
# read of the page that grows with the data, by an index entry per connection.
_STATE_COUNTS = sql(
    "SELECT status, deleted, COUNT(*) AS n FROM connections GROUP BY status, deleted")


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything the home page shows, read in one unit of work."""

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
    charts: Charts


async def read_snapshot(tx: Tx, recent: MinuteCounts) -> Snapshot:
    """The page's data: every list a first page along its index, every chart a window."""
    now = utcnow()
    states = {state.value: 0 for state in State}
    for row in await tx.fetch(_STATE_COUNTS):
        key = State.DELETED.value if row["deleted"] else (row["status"] or "unknown")
        states[key] = states.get(key, 0) + int(row["n"])
    not_linked: list[dict[str, Any]] = []
    for state in NOT_LINKED:  # the newest of each state, then the newest of those
        not_linked += (await oncall_lists.connections(tx, state, limit=CONNECTIONS_LIMIT)).rows
    not_linked.sort(key=lambda c: (c["updatedAt"], c["id"]), reverse=True)
    failed: list[dict[str, Any]] = []
    for outcome in ("failed", "unparseable"):
        failed += (await oncall_lists.deliveries(tx, outcome, limit=LIMIT)).rows
    failed.sort(key=lambda d: (d["receivedAt"], d["messageId"]), reverse=True)
    jobs, oldest_due = await outbox.counts(tx, now=now)
    return Snapshot(
        now=now, states=states, connections=not_linked[:CONNECTIONS_LIMIT],
        history=(await oncall_lists.transitions(tx, limit=LIMIT)).rows,
        deliveries=failed[:LIMIT], conflicts=(await oncall_lists.conflicts(tx, limit=LIMIT)).rows,
        dead=(await oncall_lists.jobs(tx, "dead", limit=LIMIT)).rows, jobs=jobs,
        oldest_due=oldest_due, paused_until=await outbox.paused_until(tx),
        charts=await oncall_charts.read_charts(tx, now, recent))


def _summary(s: Snapshot) -> str:
    states = "".join(card(k, v, k == State.DEAUTHORIZED and v > 0,
                          href("connections", state=k) if k in oncall_lists.STATES else None)
                     for k, v in s.states.items())
    jobs = "".join(card(f"jobs {k}", v, k == "dead" and v > 0,
                        href("jobs", status=k) if k in oncall_lists.JOB_STATUSES else None)
                   for k, v in s.jobs.items())
    extra = [f"oldest due job: {when(s.oldest_due, s.now)}" if s.oldest_due else "",
             f"Codat calls paused until {when(s.paused_until, s.now)}"
             if s.paused_until and s.paused_until > s.now else ""]
    notes = "".join(f'<p class="meta">{x}</p>' for x in extra if x)
    return (f'<h2 id="summary">Connections by state</h2><div class="cards">{states}</div>'
            f'<h2 id="jobs">Follow-up jobs</h2><div class="cards">{jobs}</div>{notes}')


def connection_rows(rows: list[dict[str, Any]], now: datetime) -> list[list[str]]:
    return [[badge(c["status"]), code(c["id"]), company(c["companyId"], c["companyName"]),
             esc(c["platformName"] or c["platformKey"]), when(c["updatedAt"], now),
             pre("; ".join(error_text(x) for x in c["errors"]))] for c in rows]


CONNECTION_HEAD = ["State", "Connection", "Company", "Platform", "Updated", "Errors"]


def transition_rows(rows: list[dict[str, Any]], now: datetime) -> list[list[str]]:
    return [[when(h["recordedAt"], now), company(h["companyId"], h["companyName"]),
             code(h["connectionId"]), esc(h["fromState"]), esc(h["toState"]),
             badge(h["result"]), esc(h["source"]), esc(h["eventType"]),
             delivery(h["deliveryId"]), esc(h["reason"])] for h in rows]


TRANSITION_HEAD = ["Recorded", "Company", "Connection", "From", "To", "Result", "Source",
                   "Event", "Delivery", "Reason"]


def delivery_rows(rows: list[dict[str, Any]], now: datetime) -> list[list[str]]:
    return [[when(d["receivedAt"], now), delivery(d["messageId"]),
             company(d["companyId"], d["companyName"]), badge(d["outcome"]),
             esc(d["eventType"]), esc(d["attempts"]), pre(d["error"]),
             "pruned" if d["bodyPruned"] else pre(d["excerpt"], "body (start)")] for d in rows]


DELIVERY_HEAD = ["Received", "Message", "Company", "Outcome", "Event", "Attempts", "Error",
                 "Body"]


def conflict_rows(rows: list[dict[str, Any]], now: datetime) -> list[list[str]]:
    return [[when(c["received_at"], now), delivery(c["message_id"]),
             company(c["company_id"], c["companyName"]),
             f'{badge(c["stored_outcome"])} {esc(c["stored_event_type"])}',
             f'{code(c["body_sha256"][:16])} / {code((c["stored_sha256"] or "")[:16])}',
             pre(c["excerpt"], "body (start)")] for c in rows]


CONFLICT_HEAD = ["Received", "Message", "Company", "Stored as", "sha256 new / stored",
                 "New body"]


def job_rows(rows: list[dict[str, Any]], now: datetime) -> list[list[str]]:
    return [[when(j["updatedAt"], now), code(j["id"]), esc(j["kind"]), badge(j["status"]),
             f'{company(j["companyId"], j["companyName"])}<br>{code(j["connectionId"])}',
             f'{esc(j["attempts"])}/{esc(j["maxAttempts"])}', when(j["nextAttemptAt"], now),
             pre(j["lastError"])] for j in rows]


JOB_HEAD = ["Updated", "Job", "Kind", "Status", "Company / connection", "Attempts",
            "Next attempt", "Last error"]


def render(s: Snapshot) -> str:
    """The page for a snapshot."""
    nav = "".join(f'<a href="#{a}">{t}</a>' for a, t in (
        ("charts", "charts"), ("connections", "not linked"), ("transitions", "transitions"),
        ("deliveries", "failed deliveries"), ("conflicts", "conflicts"), ("dead", "dead jobs")))
    head = (f'<p class="meta">read at {s.now:%Y-%m-%d %H:%M:%S} UTC · '
            f'<a href="{href()}">refresh</a></p><nav>{nav}</nav>')
    sections = [
        _summary(s), oncall_charts.render(s.charts),
        section("connections", "Not Linked", CONNECTION_HEAD, connection_rows(s.connections, s.now),
                f"latest {CONNECTIONS_LIMIT} by last change; deleted ones only counted",
                href("connections", state="Deauthorized")),
        section("transitions", "Latest transitions", TRANSITION_HEAD,
                transition_rows(s.history, s.now), f"newest {LIMIT}, all connections",
                href("transitions")),
        section("deliveries", "Failed and unparseable deliveries", DELIVERY_HEAD,
                delivery_rows(s.deliveries, s.now), f"newest {LIMIT}",
                href("deliveries", outcome="failed")),
        section("conflicts", "Conflicting deliveries", CONFLICT_HEAD,
                conflict_rows(s.conflicts, s.now),
                f"newest {LIMIT}; same message id, another body; never processed",
                href("conflicts")),
        section("dead", "Dead follow-up jobs", JOB_HEAD, job_rows(s.dead, s.now),
                f"newest {LIMIT}; make them pending again with the CLI",
                href("jobs", status="dead")),
    ]
    return document("codat-hooks on call", head + "".join(sections))
