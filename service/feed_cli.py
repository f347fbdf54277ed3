"""``codat-hooks events tail``: the change feed on the terminal (see :mod:`service.feed`)."""

from __future__ import annotations

import contextlib
from typing import Any

import click
import orjson

from service import feed
from service.db import Database, Tx, sql
from service.oncall_cli import json_option, run_with_database

_LATEST = sql("""
SELECT id, type, at, company_id, connection_id, data FROM changes
WHERE id <= $1 ORDER BY id DESC LIMIT $2""")
_LATEST_OF = sql("""
SELECT id, type, at, company_id, connection_id, data FROM changes
WHERE id <= $1 AND company_id = $3 ORDER BY id DESC LIMIT $2""")


def describe(change: dict[str, Any]) -> str:
    """One change as a line a person reads."""
    data, kind = change["data"] or {}, change["type"]
    subject = change["connectionId"] or change["companyId"]
    if kind == "connection.status_changed":
        what = f"{data.get('from') or 'new'} -> {data.get('to')}"
        if data.get("skipped"):
            what += " (skipped states: asked Codat)"
        cause = data.get("cause") or {}
        what += f"  by {cause.get('source')} {cause.get('eventType')} {cause.get('eventId')}"
    elif kind == "connection.deleted":
        what = f"{data.get('from') or 'unknown'} -> Deleted"
    elif kind == "company.bill_pay_ready_changed":
        why = "; ".join(data.get("whyNot") or [])
        what = "ready for Bill Pay" if data.get("ready") else f"not ready ({why})"
    else:
        what = "deleted"
    return f"{change['id']:>8}  {change['at']}  {kind:<31} {subject}  {what}"


@click.group()
def events() -> None:
    """The change feed internal services follow (GET /v1/events)."""


@events.command("tail")
@click.option("--follow", "-f", is_flag=True, help="Keep printing changes as they commit.")
@click.option("--company", "company_id", default=None, help="Only this company's changes.")
@click.option("--lines", "-n", default=20, show_default=True, type=click.IntRange(0, 500),
              help="How many of the latest changes to print first.")
@json_option
def tail(follow: bool, company_id: str | None, lines: int, as_json: bool) -> None:
    """The latest changes; with --follow, then every new one, until interrupted. With --json,
    one JSON object per line."""
    def show(change: dict[str, Any]) -> None:
        click.echo(orjson.dumps(change).decode() if as_json else describe(change))

    async def work(db: Database) -> None:
        changes = feed.Feed(db)
        horizon = await changes.now()

        async def latest(tx: Tx) -> list[dict[str, Any]]:
            if company_id:
                rows = await tx.fetch(_LATEST_OF, horizon, lines, company_id)
            else:
                rows = await tx.fetch(_LATEST, horizon, lines)
            return [feed.change_json(r) for r in reversed(rows)]
        for change in await db.read(latest):
            show(change)
        if not follow:
            return
        await changes.notifier.start(db)
        try:
            position, filters = horizon, feed.Filters(company_id=company_id)
            while True:
                page = await changes.page(after=position, limit=500, wait=feed.MAX_WAIT,
                                          filters=filters)
                for change in page.results:
                    show(change)
                position = page.next
        finally:
            await changes.notifier.close()

    with contextlib.suppress(KeyboardInterrupt):
        run_with_database(work)
