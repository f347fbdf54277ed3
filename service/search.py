"""The on-call search: one box for a company's name or id, a connection id, a message id, an
event id or a job id. Every lookup is keyed: primary keys, ``ix_deliveries_event_id``, and a
range over ``ix_companies_name_id`` for names that start with what was typed."""

from __future__ import annotations

from dataclasses import dataclass

from service.db import Tx, sql

LIMIT = 20
_MAX_CHAR = "\U0010ffff"  # sorts after every character: [q, q + this) holds q's prefixes

_COMPANY = sql("SELECT id, name FROM companies WHERE id = $1")
_CONNECTION = sql("""
SELECT c.id, c.company_id, c.status, c.deleted, co.name AS company_name
FROM connections c LEFT JOIN companies co ON co.id = c.company_id WHERE c.id = $1""")
_DELIVERY = sql("""
SELECT d.message_id, d.event_type, d.outcome, d.company_id, co.name AS company_name
FROM deliveries d LEFT JOIN companies co ON co.id = d.company_id WHERE d.message_id = $1""")
_BY_EVENT = sql(f"""
SELECT d.message_id, d.event_type, d.outcome, d.company_id, co.name AS company_name
FROM deliveries d LEFT JOIN companies co ON co.id = d.company_id WHERE d.event_id = $1
ORDER BY d.received_at DESC LIMIT {LIMIT}""")
_JOB = sql("""
SELECT j.id, j.kind, j.status, j.company_id, co.name AS company_name
FROM outbox j LEFT JOIN companies co ON co.id = j.company_id WHERE j.id = $1""")
# The name index ends with id: a company's name range is read in index order, no sort.
_BY_NAME = sql(f"""
SELECT id, name FROM companies WHERE name >= $1 AND name < $2 ORDER BY name, id
LIMIT {LIMIT}""")


@dataclass(frozen=True, slots=True)
class Hit:
    """What was found: a ``kind`` (company, connection, delivery, job), its id, what it is,
    and the company it belongs to (``company_id`` is the company's own id for a company)."""

    kind: str
    id: str
    detail: str
    company_id: str | None
    company_name: str | None
    exact: bool  # the id was typed whole (not a name's start)


def _spellings(text: str) -> list[str]:
    """How a name's start may have been typed: as is, capitalized, and so on (the index
    compares exactly, so each is a range of its own)."""
    seen: list[str] = []
    for variant in (text, text[:1].upper() + text[1:], text.title(), text.lower(), text.upper()):
        if variant and variant not in seen:
            seen.append(variant)
    return seen


async def search(tx: Tx, query: str) -> list[Hit]:
    """Everything ``query`` names: exact ids first, then companies whose name starts with it."""
    text = query.strip()
    if not text:
        return []
    hits: list[Hit] = []
    if (row := await tx.fetchrow(_COMPANY, text)) is not None:
        hits.append(Hit("company", row["id"], "company", row["id"], row["name"], True))
    if (row := await tx.fetchrow(_CONNECTION, text)) is not None:
        state = "Deleted" if row["deleted"] else row["status"]
        hits.append(Hit("connection", row["id"], f"connection, {state}", row["company_id"],
                        row["company_name"], True))
    if (row := await tx.fetchrow(_DELIVERY, text)) is not None:
        hits.append(Hit("delivery", row["message_id"],
                        f"delivery (message id), {row['event_type']}, {row['outcome']}",
                        row["company_id"], row["company_name"], True))
    for row in await tx.fetch(_BY_EVENT, text):
        hits.append(Hit("delivery", row["message_id"],
                        f"delivery of event {text}, {row['event_type']}, {row['outcome']}",
                        row["company_id"], row["company_name"], True))
    if (row := await tx.fetchrow(_JOB, text)) is not None:
        hits.append(Hit("job", row["id"], f"follow-up job, {row['kind']}, {row['status']}",
                        row["company_id"], row["company_name"], True))
    named: dict[str, Hit] = {}
    for prefix in _spellings(text):
        for row in await tx.fetch(_BY_NAME, prefix, prefix + _MAX_CHAR):
            if str(row["name"]).startswith(prefix) and row["id"] not in named:
                named[row["id"]] = Hit("company", row["id"], "company (name)", row["id"],
                                       row["name"], False)
    exact_companies = {h.id for h in hits if h.kind == "company"}
    hits += sorted((h for h in named.values() if h.id not in exact_companies),
                   key=lambda h: (h.company_name or "", h.id))[:LIMIT]
    return hits
