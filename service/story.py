"""One customer's story, and one delivery's: what the on-call page and ``codat-hooks status``
show. A company's timeline merges its connections' moves, its deliveries and its follow-up
jobs, newest first, a page at a time; every read is keyed by the company (or a connection of
it) and LIMITed, so a company with years of traffic costs what one page holds."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from service import outbox, queries
from service.db import Row, Tx, as_dt, sql
from service.queries import BadQuery

PAGE = 50
_KINDS = {"transition": 0, "delivery": 1, "job": 2}  # order among entries of the same moment
_FAR_FUTURE = datetime(9999, 1, 1, tzinfo=UTC)

_HISTORY = sql(f"""
SELECT {queries.HISTORY_COLUMNS}
FROM connection_history WHERE connection_id = $1 AND recorded_at <= $2
ORDER BY recorded_at DESC, id DESC LIMIT $3""")
_DELIVERIES = sql("""
SELECT message_id, msg_timestamp, event_id, event_type, company_id, connection_id, NULL AS body,
    body_sha256, headers, secret_id, received_at, processed_at, outcome, error, attempts,
    0 AS conflicts
FROM deliveries WHERE company_id = $1 AND received_at <= $2
ORDER BY received_at DESC, message_id DESC LIMIT $3""")
_JOBS = sql("""
SELECT id, kind, dedupe_key, company_id, connection_id, payload, status, attempts, max_attempts,
    next_attempt_at, lease_until, locked_by, last_error, created_at, updated_at
FROM outbox WHERE company_id = $1 AND created_at <= $2
ORDER BY created_at DESC, id DESC LIMIT $3""")
_CAUSED_MOVES = sql(f"""
SELECT {queries.HISTORY_COLUMNS}
FROM connection_history WHERE connection_id = $1 AND event_id = $2 ORDER BY id""")
_CAUSED_JOBS = sql("""
SELECT id, kind, dedupe_key, company_id, connection_id, payload, status, attempts, max_attempts,
    next_attempt_at, lease_until, locked_by, last_error, created_at, updated_at
FROM outbox WHERE dedupe_key IN ($1, $2, $3) ORDER BY created_at""")
_NAME = sql("SELECT name FROM companies WHERE id = $1")


@dataclass(frozen=True, slots=True)
class Entry:
    """One line of a timeline: a move (``transition``), a ``delivery`` or a ``job``."""

    at: datetime
    kind: str
    key: str
    data: dict[str, Any]

    @property
    def order(self) -> tuple[datetime, int, str]:
        return (self.at, _KINDS[self.kind], self.key)


@dataclass
class Story:
    company: dict[str, Any]  # queries.get_company, each connection with its "since"
    entries: list[Entry] = field(default_factory=list)
    next_cursor: str | None = None
    why_not_ready: list[str] = field(default_factory=list)


def encode_cursor(entry: Entry) -> str:
    raw = orjson.dumps([entry.at.isoformat(), _KINDS[entry.kind], entry.key])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, int, str]:
    try:
        at, kind, key = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        moment = as_dt(at)
        if moment is None or not isinstance(kind, int) or not isinstance(key, str):
            raise ValueError(cursor)
    except (binascii.Error, ValueError, TypeError, orjson.JSONDecodeError):
        raise BadQuery("before: not a cursor this page gave") from None
    return moment, kind, key


def commands(company_id: str, told: Story) -> list[str]:
    """The CLI commands on-call may want for this company, ready to copy."""
    lines = [f"codat-hooks status {company_id}",
             f"codat-hooks reconcile --company {company_id}",
             f'codat-hooks reconcile --company {company_id} --apply --reason "..."']
    for entry in told.entries:
        if entry.kind == "delivery" and entry.data["outcome"] in ("failed", "unparseable"):
            lines.append(f'codat-hooks replay {entry.key} --apply --reason "..."')
        if entry.kind == "job" and entry.data["status"] == "dead":
            lines.append(f'codat-hooks outbox retry {entry.key} --apply --reason "..."')
    return lines


def why_not_ready(company: dict[str, Any]) -> list[str]:
    """Why a company is not ready for Bill Pay, in words: which connection, which data type."""
    if company["billPayReady"]:
        return []
    connections = [c for c in company["dataConnections"] if not c["deleted"]]
    linked = [c for c in connections if c["status"] == "Linked"]
    reasons = []
    if not linked:
        states = ", ".join(f"{c['id']} is {c['status']}" for c in connections) or "none"
        reasons.append(f"no Linked connection (connections: {states})")
    detail = company["billPayDetail"] or {}
    if detail.get("codat"):
        reasons.append(f"Codat said: {detail['codat']}")
    types = {t["dataType"]: t for t in company["dataTypes"]}
    for data_type in detail.get("missing") or []:
        if data_type == "a Linked connection":
            continue
        known = types.get(data_type)
        if detail.get("mode") == "sync":  # sync mode asks Codat for payable bank accounts
            reasons.append(f"{data_type}: none Bill Pay can pay from (checked at Codat)")
        elif known is None:
            reasons.append(f"{data_type}: never read")
        else:
            reasons.append(f"{data_type}: {known['status']} (connection "
                           f"{known['connectionId'] or '?'}, last read {known['lastReadAt']})")
    if company["billPayCheckedAt"] is None:
        reasons.append("readiness not checked yet (the confirm job has not run)")
    return reasons


async def read_story(tx: Tx, company_id: str, *, before: str | None = None,
                     limit: int = PAGE) -> Story | None:
    """The company, its connections (state and since when), why it is not ready, and one page
    of its timeline, newest first, before ``before`` (a cursor from a previous page)."""
    company = await queries.get_company(tx, company_id)
    if company is None:
        return None
    for connection in company["dataConnections"]:
        state = "Deleted" if connection["deleted"] else connection["status"]
        connection["since"] = await queries.in_state_since(tx, connection["id"], state) \
            if state else None
    cursor = decode_cursor(before) if before else None
    until = cursor[0] if cursor else _FAR_FUTURE
    entries: list[Entry] = []
    for connection in company["dataConnections"]:
        for row in await tx.fetch(_HISTORY, connection["id"], until, limit + 1):
            entries.append(Entry(_at(row["recorded_at"]), "transition", f"{row['id']:020d}",
                                 queries.history_json(row)))
    for row in await tx.fetch(_DELIVERIES, company_id, until, limit + 1):
        entries.append(Entry(_at(row["received_at"]), "delivery", row["message_id"],
                             queries.delivery_json(row, include_body=False)))
    for row in await tx.fetch(_JOBS, company_id, until, limit + 1):
        entries.append(Entry(_at(row["created_at"]), "job", row["id"], outbox.job_json(row)))
    if cursor is not None:
        entries = [e for e in entries if e.order < cursor]
    entries.sort(key=lambda e: e.order, reverse=True)
    page = entries[:limit]
    more = len(entries) > limit
    return Story(company, page, encode_cursor(page[-1]) if more else None,
                 why_not_ready(company))


def _at(value: Any) -> datetime:
    moment = as_dt(value)
    assert moment is not None
    return moment


@dataclass
class DeliveryStory:
    delivery: dict[str, Any]  # queries.get_delivery with the body
    company_name: str | None
    moves: list[dict[str, Any]]
    jobs: list[dict[str, Any]]


async def read_delivery(tx: Tx, message_id: str) -> DeliveryStory | None:
    """A delivery with its body, and the history rows and jobs its event caused."""
    delivery = await queries.get_delivery(tx, message_id, include_body=True)
    if delivery is None:
        return None
    event, connection = delivery["eventId"], delivery["connectionId"]
    company = delivery["companyId"]
    moves: Sequence[Row] = []
    if event and connection:
        moves = await tx.fetch(_CAUSED_MOVES, connection, event)
    jobs: Sequence[Row] = []
    if event:  # the dedupe keys the handlers give the jobs an event causes
        jobs = await tx.fetch(_CAUSED_JOBS, f"confirm:{connection}:{event}",
                              f"reconcile:{connection}:{event}", f"readiness:{company}:{event}")
    name = await tx.fetchval(_NAME, company) if company else None
    return DeliveryStory(delivery, name, [queries.history_json(r) for r in moves],
                         [outbox.job_json(r) for r in jobs])
