"""What the ingest benchmark sends and pre-loads: Codat-shaped bodies, svix-signed requests.

Bodies are Codat's own published examples (``shared/codat/webhook-examples/connection.*.json``)
with their identifiers, times and platform replaced (``sourceType`` Accounting, ``integrationKey``
``qhyg`` or ``gbol``), serialized compactly. Message ids look like svix's (``msg_`` and a
27-character, time-sortable KSUID). Signatures are made by svix's own signer.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from svix.webhooks import Webhook

ROOT = Path(__file__).resolve().parents[2]
CODAT_DIR = Path(os.environ.get("CODAT_SHARED_DIR", ROOT.parent / "shared" / "codat"))
EXAMPLES = CODAT_DIR / "webhook-examples"

USER_AGENT = "Svix-Webhooks/1.x (codat-hooks bench)"

# (integrationKey, platformName, integrationId, sourceId): Bill Pay accounting platforms.
PLATFORMS = (
    ("qhyg", "QuickBooks Online", str(uuid.uuid5(uuid.NAMESPACE_URL, "integration/qhyg")),
     str(uuid.uuid5(uuid.NAMESPACE_URL, "source/qhyg"))),
    ("gbol", "Xero", str(uuid.uuid5(uuid.NAMESPACE_URL, "integration/gbol")),
     str(uuid.uuid5(uuid.NAMESPACE_URL, "source/gbol"))),
)
REGIONS = ("us", "uk", "eu", "au")

# --- message ids ------------------------------------------------------------------------------

_B62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_KSUID_EPOCH = 1_400_000_000


class MessageIds:
    """svix-like ``msg_<KSUID>`` ids: 4 bytes of time, then a counter and random bytes, in
    base62. Later ids sort after earlier ones (byte order, i.e. ``COLLATE "C"``)."""

    def __init__(self, rng: random.Random, counter: int = 0) -> None:
        self._rng = rng
        self._counter = counter

    def new(self, at: float) -> str:
        self._counter += 1
        n = (int(at) - _KSUID_EPOCH) << 128 | self._counter << 64 | self._rng.getrandbits(64)
        chars = []
        for _ in range(27):
            n, r = divmod(n, 62)
            chars.append(_B62[r])
        return "msg_" + "".join(reversed(chars))


def new_uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def iso_ms(moment: datetime) -> str:
    """Codat's generatedDate format: ``2024-08-08T17:10:34.015Z``."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def iso_s(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


# --- bodies -----------------------------------------------------------------------------------

def _load_example(name: str) -> dict[str, Any]:
    path = EXAMPLES / name
    if not path.is_file():
        raise SystemExit(f"Codat example {path} not found (set CODAT_SHARED_DIR to the folder "
                         "holding webhook-examples/)")
    document: dict[str, Any] = json.loads(path.read_text())
    return document


def _format_template(document: dict[str, Any]) -> str:
    """A compact JSON text with ``@@name@@`` placeholders turned into ``str.format`` fields."""
    text = json.dumps(document, separators=(",", ":"), ensure_ascii=False)
    text = text.replace("{", "{{").replace("}", "}}")
    while "@@" in text:
        before, _, rest = text.partition("@@")
        name, _, after = rest.partition("@@")
        text = f"{before}{{{name}}}{after}"
    return text


def _company_fields(document: dict[str, Any]) -> None:
    company = document["payload"]["referenceCompany"]
    company["id"] = "@@company_id@@"
    company["name"] = "@@company_name@@"
    company["description"] = "@@company_description@@"
    company["links"]["portal"] = "https://app.codat.io/companies/@@company_id@@/summary"
    if "tags" in company:
        company["tags"] = {"customerRegion": "@@region@@", "uid": "@@uid@@"}


def connection_template(example: str) -> str:
    """A connection.* example with every identifier, time and platform field a placeholder."""
    document = _load_example(example)
    document["id"] = "@@event_id@@"
    document["generatedDate"] = "@@generated@@"
    _company_fields(document)
    connection = document["payload"]["connection"]
    connection.update({
        "id": "@@connection_id@@", "integrationId": "@@integration_id@@",
        "integrationKey": "@@platform_key@@", "sourceId": "@@source_id@@",
        "platformName": "@@platform_name@@",
        "linkUrl": "https://link-api.codat.io/companies/@@company_id@@/connections/"
                   "@@connection_id@@/start",
        "lastSync": "@@last_sync@@", "created": "@@created@@", "sourceType": "Accounting",
    })
    for error in connection.get("dataConnectionErrors", []):
        error["erroredOnUtc"] = "@@created@@"
    return _format_template(document)


def read_completed_template() -> str:
    document = _load_example("read.completed.json")
    document["id"] = "@@event_id@@"
    document["generatedDate"] = "@@generated@@"
    document["payload"]["modifiedFromDate"] = "@@generated@@"
    _company_fields(document)
    for data_type in document["payload"]["dataTypes"]:
        data_type["connectionId"] = "@@connection_id@@"
        for issue in data_type.get("issues", []):
            issue["links"]["logs"] = ("https://api.codat.io/companies/@@company_id@@/sync/"
                                      "@@event_id@@/validation")
            issue["links"]["portal"] = ("https://app.codat.io/companies/@@company_id@@/"
                                        "pull-history")
    return _format_template(document)


@dataclass(frozen=True, slots=True)
class Templates:
    created: str
    connected: str
    unlinked: str
    deauthorized: str

    @classmethod
    def load(cls) -> Templates:
        return cls(connection_template("connection.created.json"),
                   connection_template("connection.connected.json"),
                   connection_template("connection.disconnected.json"),
                   connection_template("connection.disconnected--De-authorized.json"))


@dataclass(slots=True)
class Company:
    id: str
    name: str
    description: str
    region: str
    uid: str

    @classmethod
    def new(cls, rng: random.Random, number: int) -> Company:
        return cls(new_uuid(rng), f"Company {number} Ltd", f"cust_{number:07d}",
                   rng.choice(REGIONS), new_uuid(rng))


@dataclass(slots=True)
class Connection:
    id: str
    company: Company
    platform: tuple[str, str, str, str]
    created: datetime
    final: str  # Unlinked or Deauthorized: where its disconnect leaves it
    step: int = 0  # 0: next is created, 1: connected, 2: disconnected, 3: done


def connection_body(template: str, *, event_id: str, generated: datetime,
                    connection: Connection) -> bytes:
    company = connection.company
    key, name, integration_id, source_id = connection.platform
    return template.format(
        event_id=event_id, generated=iso_ms(generated), company_id=company.id,
        company_name=company.name, company_description=company.description,
        region=company.region, uid=company.uid, connection_id=connection.id,
        integration_id=integration_id, platform_key=key, source_id=source_id,
        platform_name=name, last_sync=iso_s(connection.created),
        created=iso_s(connection.created)).encode()


# --- the stream of deliveries sent during a run ---------------------------------------------

@dataclass(frozen=True, slots=True)
class Delivery:
    message_id: str
    body: bytes
    event_type: str


@dataclass(slots=True)
class Stream:
    """Unique deliveries and the order they are sent in (indexes; a repeat is a redelivery)."""

    deliveries: list[Delivery]
    order: list[int]
    companies: int
    connections: int
    by_type: dict[str, int] = field(default_factory=dict)
    known: list[Connection] = field(default_factory=list)  # every connection, in creation order

    @property
    def redeliveries(self) -> int:
        return len(self.order) - len(self.deliveries)


def build_stream(total: int, *, seed: int, ids: MessageIds, templates: Templates,
                 redelivery_rate: float = 0.05, window: int = 500,
                 second_connection_rate: float = 0.2) -> Stream:
    """About ``total`` deliveries: connections going created -> connected -> disconnected
    (Unlinked or Deauthorized) with increasing generatedDate, interleaved across ``window``
    connections at a time (so one company's events are spread out, as in real traffic), and
    ``redelivery_rate`` of them sent again later (same message id, same body)."""
    rng = random.Random(seed)
    unique = max(3, round(total / (1 + redelivery_rate)))
    now = datetime.now(UTC)
    clock = now - timedelta(hours=6)
    made_at = now.timestamp()
    deliveries: list[Delivery] = []
    by_type: dict[str, int] = {}
    active: list[Connection] = []
    companies = connections = 0
    queued: list[Connection] = []
    known: list[Connection] = []

    def refill() -> None:
        nonlocal companies, connections
        while len(active) < window:
            if not queued:
                companies += 1
                company = Company.new(rng, companies)
                platforms = list(PLATFORMS)
                rng.shuffle(platforms)
                count = 2 if rng.random() < second_connection_rate else 1
                for platform in platforms[:count]:
                    final = "Unlinked" if rng.random() < 0.6 else "Deauthorized"
                    queued.append(Connection(new_uuid(rng), company, platform, clock, final))
            connection = queued.pop(0)
            connection.created = clock.replace(microsecond=0)
            connections += 1
            active.append(connection)
            known.append(connection)

    while len(deliveries) < unique:
        refill()
        slot = rng.randrange(len(active))
        connection = active[slot]
        clock += timedelta(milliseconds=rng.randint(5, 120))
        if connection.step == 0:
            template, event_type = templates.created, "connection.created"
        elif connection.step == 1:
            template, event_type = templates.connected, "connection.connected"
        else:
            template = templates.unlinked if connection.final == "Unlinked" \
                else templates.deauthorized
            event_type = f"connection.disconnected ({connection.final})"
        body = connection_body(template, event_id=new_uuid(rng), generated=clock,
                               connection=connection)
        deliveries.append(Delivery(ids.new(made_at), body, event_type))
        by_type[event_type] = by_type.get(event_type, 0) + 1
        connection.step += 1
        if connection.step == 3:
            active[slot] = active[-1]
            active.pop()

    # Redeliveries: the same message again, a little later in the stream (a retry, a replay).
    keyed = [(float(i), i) for i in range(unique)]
    for i in range(unique):
        if rng.random() < redelivery_rate:
            keyed.append((min(unique - 0.5, i + rng.randint(20, 2000) + 0.5), i))
    keyed.sort()
    return Stream(deliveries, [i for _, i in keyed], companies, connections, by_type, known)


def codat_import(streams: Sequence[Stream]) -> dict[str, Any]:
    """What Codat holds after ``streams``: their companies and connections in their final
    states, as the sandbox's ``POST /_sandbox/companies`` takes them."""
    companies: dict[str, dict[str, Any]] = {}
    for stream in streams:
        for connection in stream.known:
            company = companies.setdefault(connection.company.id, {
                "id": connection.company.id, "name": connection.company.name,
                "connections": []})
            company["connections"].append({"id": connection.id,
                                           "platformKey": connection.platform[0],
                                           "status": connection.final})
    return {"companies": list(companies.values())}


def request_bytes(delivery: Delivery, *, port: int, timestamp: int, signature: str) -> bytes:
    head = (f"POST /webhooks/codat HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"User-Agent: {USER_AGENT}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(delivery.body)}\r\nwebhook-id: {delivery.message_id}\r\n"
            f"webhook-timestamp: {timestamp}\r\nwebhook-signature: {signature}\r\n\r\n")
    return head.encode() + delivery.body


def signatures(deliveries: Sequence[Delivery], secret: str, timestamp: int) -> list[str]:
    """svix's own signatures of every delivery at ``timestamp`` (a redelivery reuses its
    original's: same message id, same body, same timestamp)."""
    webhook = Webhook(secret)
    moment = datetime.fromtimestamp(timestamp, UTC)
    return [webhook.sign(d.message_id, moment, d.body.decode()) for d in deliveries]


def write_requests(path: Path, stream: Stream, *, secret: str, port: int,
                   timestamp: int) -> None:
    """The raw HTTP requests for deliveries.lua: a count line, then ``<length>\\n<bytes>``."""
    signed = signatures(stream.deliveries, secret, timestamp)
    with path.open("wb") as out:
        out.write(b"%d\n" % len(stream.order))
        for index in stream.order:
            raw = request_bytes(stream.deliveries[index], port=port, timestamp=timestamp,
                                signature=signed[index])
            out.write(b"%d\n" % len(raw))
            out.write(raw)


# --- a large database's rows (for --large) ---------------------------------------------------

DELIVERY_COLUMNS = ("message_id", "msg_timestamp", "event_id", "event_type", "company_id",
                    "connection_id", "body", "body_sha256", "headers", "secret_id",
                    "received_at", "processed_at", "outcome", "error", "attempts")
COMPANY_COLUMNS = ("id", "name", "description", "tags", "deleted", "bill_pay_ready",
                   "last_event_at", "created_at", "updated_at")
CONNECTION_COLUMNS = ("id", "company_id", "platform_key", "platform_name", "source_type",
                      "integration_id", "source_id", "link_url", "status", "errors", "created",
                      "last_sync", "deleted", "last_event_at", "last_event_id", "version",
                      "created_at", "updated_at")
HISTORY_COLUMNS = ("connection_id", "company_id", "from_state", "to_state", "result", "source",
                   "event_id", "event_type", "delivery_id", "event_time", "recorded_at")

@dataclass(slots=True)
class _Prefilled:
    connection: Connection
    status: str
    version: int = 0
    last_time: datetime | None = None
    last_event_id: str | None = None
    last_type: str | None = None
    last_delivery: str | None = None
    previous_status: str | None = None


def secret_id(secret: str) -> str:
    """The id codat-hooks gives a secret (service/settings.py): stored on each delivery."""
    encoded = secret.removeprefix("whsec_").rstrip("=")
    key = base64.b64decode(encoded + "=" * (-len(encoded) % 4))
    return "whsec:" + hashlib.sha256(key).hexdigest()[:12]


@dataclass(slots=True)
class LargeRows:
    """The rows of a database that has taken ``deliveries`` deliveries about ``connections``
    connections over the last 90 days: each connection created, most connected, some since
    disconnected (the rest of the deliveries are read.completed events of linked connections),
    with their companies and one history row per connection (its latest move)."""

    deliveries: int
    connections: int
    secret: str
    seed: int = 7
    chunk: int = 20_000
    by_status: dict[str, int] = field(default_factory=dict)
    companies: int = 0

    def __post_init__(self) -> None:
        if self.deliveries < 3 * self.connections:
            raise ValueError("a large database needs at least 3 deliveries per connection")

    def build(self) -> Iterator[tuple[str, list[tuple[Any, ...]]]]:
        """(table, rows) chunks: deliveries first (in time order), then companies,
        connections and history."""
        rng = random.Random(self.seed)
        templates = Templates.load()
        read_template = read_completed_template()
        now = datetime.now(UTC).replace(microsecond=0)
        start, end = now - timedelta(days=90), now - timedelta(hours=1)
        span = (end - start).total_seconds()
        self.companies = max(1, round(self.connections * 0.8))
        company_list = [Company.new(rng, 1_000_000 + n) for n in range(self.companies)]
        state: list[_Prefilled] = []
        events: list[tuple[float, int, int]] = []  # (time, connection, kind) kind: 0 1 2 3=read
        linked: list[int] = []
        for n in range(self.connections):
            company = company_list[n * self.companies // self.connections]
            platform = PLATFORMS[(n + rng.randrange(2)) % 2]
            created = (start + timedelta(seconds=rng.uniform(0, span * 0.8))).replace(
                microsecond=0)
            roll = rng.random()
            status = ("PendingAuth" if roll < 0.10 else "Linked" if roll < 0.70
                      else "Unlinked" if roll < 0.85 else "Deauthorized")
            connection = Connection(new_uuid(rng), company, platform, created,
                                    status if status in ("Unlinked", "Deauthorized")
                                    else "Unlinked")
            state.append(_Prefilled(connection, status))
            self.by_status[status] = self.by_status.get(status, 0) + 1
            t0 = created.timestamp()
            events.append((t0, n, 0))
            if status != "PendingAuth":
                events.append((t0 + rng.uniform(60, 3600), n, 1))
                linked.append(n)
            if status in ("Unlinked", "Deauthorized"):
                events.append((rng.uniform(t0 + 3600, end.timestamp()), n, 2))
        reads = self.deliveries - len(events)
        for r in range(reads):
            n = linked[r % len(linked)]
            t0 = state[n].connection.created.timestamp() + 3600
            events.append((rng.uniform(t0, end.timestamp()), n, 3))
        # A disconnected connection reads nothing after its disconnect: move such reads before.
        disconnect_at = {n: t for t, n, k in events if k == 2}
        events = [(min(t, disconnect_at[n] - 1) if k == 3 and n in disconnect_at else t, n, k)
                  for t, n, k in events]
        events.sort()

        ids = MessageIds(rng)
        sid = secret_id(self.secret)
        rows: list[tuple[Any, ...]] = []
        kinds = ("connection.created", "connection.connected", "connection.disconnected",
                 "read.completed")
        for t, n, kind in events:
            s = state[n]
            connection = s.connection
            generated = datetime.fromtimestamp(t, UTC)
            generated = generated.replace(microsecond=generated.microsecond // 1000 * 1000)
            event_id = new_uuid(rng)
            if kind == 3:
                body = read_template.format(
                    event_id=event_id, generated=iso_ms(generated),
                    company_id=connection.company.id, company_name=connection.company.name,
                    company_description=connection.company.description,
                    connection_id=connection.id).encode()
            else:
                template = (templates.created, templates.connected,
                            templates.unlinked if s.status == "Unlinked"
                            else templates.deauthorized)[kind]
                body = connection_body(template, event_id=event_id, generated=generated,
                                       connection=connection)
                s.previous_status = s.last_type and _status_after(s.last_type, s.status)
                s.version += 1
                s.last_time, s.last_event_id, s.last_type = generated, event_id, kinds[kind]
            message_id = ids.new(t)
            if kind != 3:
                s.last_delivery = message_id
            received = generated + timedelta(milliseconds=rng.randint(50, 900))
            timestamp = int(received.timestamp())
            headers = json.dumps({"webhook-id": message_id, "webhook-timestamp": str(timestamp),
                                  "user-agent": USER_AGENT, "content-type": "application/json",
                                  "content-length": str(len(body))}, separators=(",", ":"))
            rows.append((message_id, timestamp, event_id, kinds[kind], connection.company.id,
                         connection.id, body, hashlib.sha256(body).hexdigest(), headers, sid,
                         received, received, "processed", None, 1))
            if len(rows) >= self.chunk:
                yield "deliveries", rows
                rows = []
        if rows:
            yield "deliveries", rows

        first_by_company: dict[str, datetime] = {}
        last_by_company: dict[str, datetime] = {}
        for s in state:
            cid, created = s.connection.company.id, s.connection.created
            first_by_company[cid] = min(first_by_company.get(cid, created), created)
            if s.last_time and (cid not in last_by_company or s.last_time > last_by_company[cid]):
                last_by_company[cid] = s.last_time
        companies = []
        for company in company_list:
            last = last_by_company.get(company.id)
            tags = json.dumps({"customerRegion": company.region, "uid": company.uid},
                              separators=(",", ":"))
            created_at = first_by_company.get(company.id, start)
            companies.append((company.id, company.name, company.description, tags, False,
                              False, last, created_at, last or created_at))
        for i in range(0, len(companies), self.chunk):
            yield "companies", companies[i:i + self.chunk]

        connections, history = [], []
        for s in state:
            c = s.connection
            key, name, integration_id, source_id = c.platform
            errors = "[]"
            if s.status == "Deauthorized":
                errors = json.dumps([{
                    "statusCode": "401",
                    "statusText": "The integration de-authorized access to the connection.",
                    "errorMessage": "The integration de-authorized access to the connection.",
                    "erroredOnUtc": iso_s(c.created), "status": "Active"}],
                    separators=(",", ":"))
            assert s.last_time is not None and s.last_event_id is not None
            connections.append((
                c.id, c.company.id, key, name, "Accounting", integration_id, source_id,
                f"https://link-api.codat.io/companies/{c.company.id}/connections/{c.id}/start",
                s.status, errors, c.created, c.created, False, s.last_time, s.last_event_id,
                s.version, c.created, s.last_time))
            history.append((c.id, c.company.id, s.previous_status, s.status, "applied",
                            "webhook", s.last_event_id, s.last_type, s.last_delivery,
                            s.last_time, s.last_time))
        for i in range(0, len(connections), self.chunk):
            yield "connections", connections[i:i + self.chunk]
        for i in range(0, len(history), self.chunk):
            yield "connection_history", history[i:i + self.chunk]


def _status_after(event_type: str, final: str) -> str:
    return {"connection.created": "PendingAuth", "connection.connected": "Linked"}.get(
        event_type, final)


COLUMNS = {"deliveries": DELIVERY_COLUMNS, "companies": COMPANY_COLUMNS,
           "connections": CONNECTION_COLUMNS, "connection_history": HISTORY_COLUMNS}
