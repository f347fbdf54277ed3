"""On-call commands: inspect, replay, reconcile, retry, prune.

Human tables by default, ``--json`` for scripts; a non-zero exit when something failed. Every
write needs ``--apply`` and a ``--reason``, and leaves who asked and why behind.
"""

from __future__ import annotations

import asyncio
import re
import sys
import uuid
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime, timedelta
from typing import Any, TypeVar

import click
import orjson

from service import oncall, outbox, queries
from service.db import Database, Tx, utcnow, with_database
from service.errors import ConfigError
from service.logs import configure_logging
from service.queries import BadQuery, ConnectionFilter
from service.settings import Settings, load_settings
from service.terminal import unguarded

T = TypeVar("T")
_DURATION = re.compile(r"^(\d+)([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_duration(raw: str) -> timedelta:
    """``90s``, ``15m``, ``12h``, ``30d``, ``2w``."""
    match = _DURATION.match(raw.strip())
    if not match:
        raise click.BadParameter(f"{raw!r} is not a duration like 30d, 12h or 15m")
    return timedelta(**{_UNITS[match[2]]: int(match[1])})


def parse_since(raw: str) -> datetime:
    """An ISO-8601 time, or a duration ago (``2h``)."""
    if _DURATION.match(raw.strip()):
        return utcnow() - parse_duration(raw)
    try:
        return queries.parse_time(raw)
    except BadQuery as exc:
        raise click.BadParameter(str(exc)) from None


def _settings() -> Settings:
    try:
        settings = load_settings()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    # Trace lines (who asked, why) go to stderr: stdout carries the tables and --json.
    configure_logging(settings.log_level, stream=sys.stderr)
    return settings


def run_with_database(fn: Callable[[Database], Awaitable[T]]) -> T:
    """Run ``fn`` with the configured database open (the CLI's way in)."""
    settings = _settings()
    return asyncio.run(with_database(
        settings.database_url, fn, pool_size=2, sqlite_synchronous=settings.sqlite_synchronous,
        sqlite_busy_timeout_ms=settings.sqlite_busy_timeout_ms))


def _emit(data: Any, as_json: bool, render: Callable[[Any], None]) -> None:
    if as_json:
        click.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2, default=str).decode())
    else:
        render(data)


def table(rows: Iterable[dict[str, Any]], columns: list[tuple[str, str]]) -> None:
    """A plain aligned table of ``rows`` with (header, key) columns."""
    rows = list(rows)
    cells = [[("" if r.get(k) is None else str(r.get(k))) for _, k in columns] for r in rows]
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, (h, _) in enumerate(columns)]
    click.echo("  ".join(h.ljust(w) for (h, _), w in zip(columns, widths, strict=True)))
    for row in cells:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
    if not rows:
        click.echo("(none)")


def _write_guard(apply: bool, reason: str | None) -> None:
    if apply and not reason:
        raise click.UsageError("a write needs --reason saying why")


json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


def register(main: click.Group) -> None:
    """Add the on-call commands to the ``codat-hooks`` group."""
    for command in (status, connections, deliveries, replay_command, reconcile, outbox_group,
                    prune):
        main.add_command(command)


@click.command()
@click.argument("company_id")
@json_option
def status(company_id: str, as_json: bool) -> None:
    """A company: its connections and since when, Bill Pay readiness, history, open jobs."""
    found = run_with_database(lambda db: oncall.company_status(db, company_id))
    if found is None:
        raise click.ClickException(f"no company {company_id}")

    def render(company: dict[str, Any]) -> None:
        deleted = " (DELETED)" if company["deleted"] else ""
        click.echo(f"Company {company['id']}  {company['name'] or ''}{deleted}")
        detail = company["billPayDetail"] or {}
        missing = ", ".join(detail.get("missing") or []) or "-"
        click.echo(f"  Bill Pay ready: {company['billPayReady']}  (checked "
                   f"{company['billPayCheckedAt'] or 'never'}; missing: {missing})")
        for reason in company.get("whyNotReady") or []:
            click.echo(f"    why not: {reason}")
        for c in company["dataConnections"]:
            state = "Deleted" if c["deleted"] else c["status"]
            click.echo(f"\n  Connection {c['id']}  {c['platformName'] or c['platformKey']}  "
                       f"{state} since {c['since'] or '?'}")
            for e in c["errors"]:
                click.echo(f"    error: {e.get('statusCode')} {e.get('errorMessage')}")
        click.echo("\n  Timeline (newest first: moves, deliveries, jobs):")
        table([_timeline_row(e) for e in company.get("timeline") or []],
              [("    when", "at"), ("what", "what"), ("connection", "connectionId"),
               ("detail", "detail")])
        click.echo("\n  Open follow-up jobs:")
        table(company["jobs"], [("    id", "id"), ("kind", "kind"), ("status", "status"),
                                ("attempts", "attempts"), ("next", "nextAttemptAt"),
                                ("last error", "lastError")])
        click.echo("\n  Commands:")
        for line in company.get("commands") or []:
            click.echo(f"    {line}")
    _emit(found, as_json, render)


def _timeline_row(entry: dict[str, Any]) -> dict[str, Any]:
    """One timeline entry as a table row: what happened, and the detail that matters."""
    kind = entry["kind"]
    if kind == "transition":
        what = (f"{entry['source']} {entry['result']} {entry['fromState'] or '-'} -> "
                f"{entry['toState']}")
        detail = " ".join(str(x) for x in (entry["eventType"], entry["deliveryId"],
                                           entry["reason"]) if x)
    elif kind == "delivery":
        what = f"delivery {entry['outcome']}"
        detail = " ".join(str(x) for x in (entry["eventType"], entry["messageId"],
                                           entry["error"]) if x)
    else:
        what = f"job {entry['kind']} {entry['status']}"
        detail = " ".join(str(x) for x in (
            entry["id"], f"attempts {entry['attempts']}/{entry['maxAttempts']}",
            entry["lastError"]) if x)
    return {"at": entry["at"], "what": what, "connectionId": entry.get("connectionId"),
            "detail": detail}


_CONNECTION_COLUMNS = [("id", "id"), ("company", "companyId"), ("name", "companyName"),
                       ("platform", "platformKey"),
                       ("status", "status"), ("deleted", "deleted"),
                       ("last event", "lastEventAt"), ("updated", "updatedAt")]


@click.group()
def connections() -> None:
    """Connections."""


@connections.command("list")
@click.option("--status", default=None, help="PendingAuth, Linked, Unlinked, Deauthorized "
                                             "or Deleted.")
@click.option("--platform", default=None, help="A platformKey, e.g. qhyg.")
@click.option("--company", default=None)
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 500))
@json_option
def connections_list(status: str | None, platform: str | None, company: str | None, limit: int,
                     as_json: bool) -> None:
    """List connections (first page; use --json and the API's cursor for more)."""
    try:
        filters = ConnectionFilter(status, platform, company)
    except BadQuery as exc:
        raise click.BadParameter(str(exc)) from None
    async def read(tx: Tx) -> dict[str, Any]:
        page = await queries.list_connections(tx, filters, limit=limit, cursor=None)
        await queries.with_company_names(tx, page["results"])
        return page
    page = run_with_database(lambda db: db.read(read))
    _emit(page, as_json, lambda p: table(p["results"], _CONNECTION_COLUMNS))


@click.group()
def deliveries() -> None:
    """Stored webhook deliveries."""


@deliveries.command("list")
@click.option("--outcome", type=click.Choice(["processed", "ignored", "unparseable", "failed"]))
@click.option("--since", default="24h", show_default=True, help="ISO time, or a duration ago.")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 5000))
@json_option
def deliveries_list(outcome: str | None, since: str, limit: int, as_json: bool) -> None:
    """Deliveries received since a time, oldest first."""
    moment = parse_since(since)
    async def read(tx: Tx) -> list[dict[str, Any]]:
        found = await queries.list_deliveries(tx, since=moment, outcome=outcome, limit=limit)
        return await queries.with_company_names(tx, found)
    rows = run_with_database(lambda db: db.read(read))
    for row in rows:
        row.pop("_receivedAt")
    _emit(rows, as_json, lambda r: table(r, [
        ("message id", "messageId"), ("received", "receivedAt"), ("event type", "eventType"),
        ("company", "companyId"), ("name", "companyName"), ("outcome", "outcome"),
        ("error", "error")]))


@deliveries.command("show")
@click.argument("message_id")
@json_option
def deliveries_show(message_id: str, as_json: bool) -> None:
    """One delivery: headers, outcome, error and the body, pretty-printed."""
    found = run_with_database(lambda db: db.read(lambda tx: queries.get_delivery(tx, message_id,
                                                                    include_body=True)))
    if found is None:
        raise click.ClickException(f"no delivery {message_id}")

    def render(d: dict[str, Any]) -> None:
        for key in ("messageId", "eventType", "eventId", "companyId", "connectionId",
                    "receivedAt", "processedAt", "outcome", "error", "attempts", "conflicts",
                    "secretId", "bodySha256"):
            click.echo(f"{key:>13}: {d[key] if d[key] is not None else '-'}")
        click.echo("      headers:")
        for name, value in d["headers"].items():
            click.echo(f"               {name}: {value}")
        body = d["body"]
        click.echo("         body:")
        if body is None:
            click.echo("               (pruned)")
        elif body["encoding"] == "utf-8":
            try:
                text = orjson.dumps(orjson.loads(body["text"]),
                                    option=orjson.OPT_INDENT_2).decode()
            except orjson.JSONDecodeError:
                text = body["text"]
            click.echo("\n".join("               " + line for line in text.splitlines()))
        else:
            click.echo(f"               (base64) {body['text']}")
    _emit(found, as_json, render)


def _progress(label: str, items: Any) -> Any:
    return click.progressbar(items, label=label, file=unguarded(sys.stderr)) \
        if sys.stderr.isatty() \
        else _nullbar(items)


class _nullbar:
    def __init__(self, items: Any) -> None:
        self._items = items

    def __enter__(self) -> Any:
        return self._items

    def __exit__(self, *exc: object) -> None:
        return None


@click.command("replay")
@click.argument("message_id", required=False)
@click.option("--outcome", type=click.Choice(["processed", "ignored", "unparseable", "failed"]))
@click.option("--since", default=None, help="ISO time, or a duration ago (e.g. 2h).")
@click.option("--reason", default=None, help="Why (recorded with the replay).")
@click.option("--apply", is_flag=True, help="Replay for real (otherwise list what would be).")
@json_option
def replay_command(message_id: str | None, outcome: str | None, since: str | None,
                   reason: str | None, apply: bool, as_json: bool) -> None:
    """Run stored deliveries through the ingest path again (idempotent)."""
    if bool(message_id) == bool(outcome or since):
        raise click.UsageError("give a MESSAGE_ID, or --outcome and/or --since")
    _write_guard(apply, reason)
    who = oncall.actor()

    async def work(db: Database) -> list[dict[str, Any]]:
        if message_id:
            found = await db.read(lambda tx: queries.get_delivery(tx, message_id,
                                                                  include_body=False))
            if found is None:
                raise click.ClickException(f"no delivery {message_id}")
            ids = [message_id]
        else:
            moment = parse_since(since) if since else datetime(1970, 1, 1).astimezone()
            ids = [d["messageId"] async for d in oncall.deliveries_to_replay(
                db, outcome=outcome, since=moment)]
        if not apply:
            return [{"messageId": i, "replayed": False} for i in ids]
        results = []
        with _progress("replaying", ids) as bar:
            for one in bar:
                try:
                    r = await oncall.replay_one(db, one, who=who, why=reason or "")
                except Exception as exc:  # carry on; report it, and exit non-zero at the end
                    results.append({"messageId": one, "replayed": False, "before": None,
                                    "after": "failed", "moves": [], "error": str(exc)})
                    continue
                results.append({"messageId": one, "replayed": r.before is not None,
                                "before": r.before, "after": r.after,
                                "moves": [f"{m.from_state or '-'}->{m.to_state} {m.result}"
                                          for _, m in r.applied.moves]})
        return results

    results = run_with_database(work)
    _emit(results, as_json, lambda r: table(
        [{**x, "moves": ", ".join(x.get("moves") or []) or None} for x in r],
        [("message id", "messageId"), ("replayed", "replayed"), ("before", "before"),
         ("after", "after"), ("changed", "moves"), ("error", "error")]))
    if not apply:
        click.echo(f"{len(results)} deliveries would be replayed; add --apply --reason TEXT",
                   err=True)
    if any(r.get("after") == "failed" or (apply and not r["replayed"]) for r in results):
        sys.exit(1)


@click.command()
@click.option("--company", "company_id", default=None)
@click.option("--all", "all_companies", is_flag=True, help="Every company we know.")
@click.option("--apply", is_flag=True, help="Correct the drift (otherwise only print it).")
@click.option("--reason", default=None, help="Why (recorded in the history).")
@json_option
def reconcile(company_id: str | None, all_companies: bool, apply: bool, reason: str | None,
              as_json: bool) -> None:
    """Compare our connections with Codat's; print the drift; --apply corrects it."""
    if bool(company_id) == all_companies:
        raise click.UsageError("give --company ID or --all")
    _write_guard(apply, reason)
    settings = _settings()
    from service.app import codat_client
    try:
        client = codat_client(settings)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    who, run_id = oncall.actor(), uuid.uuid4().hex[:12]

    async def work(db: Database) -> oncall.ReconcileReport:
        report = oncall.ReconcileReport()
        ids = [company_id] if company_id else [i async for i in oncall.all_company_ids(db)]
        try:
            with _progress("reconciling", ids) as bar:
                for one in bar:
                    report.companies += 1
                    try:
                        report.drifts += await oncall.reconcile_company(
                            db, client, one, apply=apply, who=who, why=reason or "",
                            run_id=run_id)
                    except Exception as exc:  # carry on with the next company
                        report.errors.append(f"{one}: {exc}")
        finally:
            await client.aclose()
        return report

    report = run_with_database(work)
    names = run_with_database(lambda db: db.read(lambda tx: queries.company_names(
        tx, [d.company_id for d in report.drifts]))) if report.drifts else {}
    rows = [{"company": d.company_id, "name": names.get(d.company_id), "connection":
             d.connection_id, "ours": d.ours, "codat": d.codat, "corrected": d.applied}
            for d in report.drifts]
    _emit({"companies": report.companies, "drift": rows, "errors": report.errors}, as_json,
          lambda _: table(rows, [("company", "company"), ("name", "name"),
                                 ("connection", "connection"),
                                 ("ours", "ours"), ("codat", "codat"),
                                 ("corrected", "corrected")]))
    for error in report.errors:
        click.echo(f"error: {error}", err=True)
    if report.errors:
        sys.exit(1)


@click.group("outbox")
def outbox_group() -> None:
    """Follow-up jobs."""


@outbox_group.command("list")
@click.option("--status", type=click.Choice(list(outbox.JobStatus.ALL)))
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 1000))
@json_option
def outbox_list(status: str | None, limit: int, as_json: bool) -> None:
    async def read(tx: Tx) -> list[dict[str, Any]]:
        found = await outbox.list_jobs(tx, status=status, after="", limit=limit)
        return await queries.with_company_names(tx, found)
    rows = run_with_database(lambda db: db.read(read))
    _emit(rows, as_json, lambda r: table(r, [
        ("id", "id"), ("kind", "kind"), ("company", "companyId"), ("name", "companyName"),
        ("status", "status"), ("attempts", "attempts"), ("next attempt", "nextAttemptAt"),
        ("locked by", "lockedBy"), ("last error", "lastError")]))


@outbox_group.command("retry")
@click.argument("job_id", required=False)
@click.option("--dead", is_flag=True, help="Every dead job.")
@click.option("--reason", default=None)
@click.option("--apply", is_flag=True, help="Retry for real.")
@json_option
def outbox_retry(job_id: str | None, dead: bool, reason: str | None, apply: bool,
                 as_json: bool) -> None:
    """Make a dead job (or every dead job) pending again, with its attempts reset."""
    if bool(job_id) == dead:
        raise click.UsageError("give a JOB_ID or --dead")
    if not apply:
        raise click.UsageError("retrying writes: add --apply --reason TEXT")
    _write_guard(apply, reason)
    ids = run_with_database(lambda db: oncall.retry_jobs(db, job_id=job_id, who=oncall.actor(),
                                            why=reason or ""))
    _emit({"retried": ids}, as_json,
          lambda d: click.echo(f"{len(d['retried'])} job(s) pending again: "
                               f"{' '.join(d['retried'])}"))
    if job_id and not ids:
        raise click.ClickException(f"job {job_id} is not dead (or does not exist)")


@click.command()
@click.option("--older-than", "older_than", required=True, help="Drop bodies older than this "
              "(e.g. 7d).")
@click.option("--keep-dedupe", default="30d", show_default=True,
              help="Keep delivery records (the dedupe keys) this long; never under 30d.")
@click.option("--reason", default=None)
@click.option("--apply", is_flag=True)
@json_option
def prune(older_than: str, keep_dedupe: str, reason: str | None, apply: bool,
          as_json: bool) -> None:
    """Delete old delivery bodies, keeping dedupe records (and the change feed) for at least 30
    days."""
    if not apply:
        raise click.UsageError("pruning deletes data: add --apply --reason TEXT")
    _write_guard(apply, reason)
    body_age, record_age = parse_duration(older_than), parse_duration(keep_dedupe)

    async def work(db: Database) -> dict[str, int]:
        totals = {"bodies": 0, "records": 0, "changes": 0}
        async for what, count in oncall.prune(db, older_than=body_age, keep_dedupe=record_age,
                                              who=oncall.actor(), why=reason or ""):
            totals[what] += count
            if sys.stderr.isatty():
                click.echo(f"\r{what}: {totals[what]}", nl=False, file=unguarded(sys.stderr))
        return totals

    totals = run_with_database(work)
    _emit(totals, as_json, lambda t: click.echo(
        f"pruned {t['bodies']} bodies, forgot {t['records']} records and {t['changes']} "
        "changes of the feed"))
