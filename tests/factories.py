"""Builders for signed Codat deliveries (svix's own signer) and Codat-shaped event bodies."""

from __future__ import annotations

import base64
import os
import re
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from svix.webhooks import Webhook

from schemas.order import new_message_id

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # the test vector from Codat's docs
SECRET_2 = "whsec_" + base64.b64encode(b"the-rotated-in-secret-0123456789").decode()
OTHER_SECRET = "whsec_" + base64.b64encode(b"a-secret-nobody-configured-here!").decode()
TOKEN = "test-token-0123456789"

CODAT_DIR = Path(os.environ.get("CODAT_SHARED_DIR",
                                Path(__file__).resolve().parents[2] / "shared" / "codat"))
EXAMPLES_DIR = CODAT_DIR / "webhook-examples"
OAS_DIR = CODAT_DIR / "oas"

BASE_TIME = datetime(2026, 11, 1, 12, 0, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    """A generatedDate ``seconds`` after a fixed base time."""
    return BASE_TIME + timedelta(seconds=seconds)


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def sign(body: bytes, *, msg_id: str | None = None, timestamp: int | None = None,
         secret: str = SECRET, prefix: str = "svix") -> dict[str, str]:
    """Signature headers for ``body``, made by svix's own signer; the message id is minted the
    way Svix mints them (a KsuidMs of now) unless given."""
    timestamp = int(time.time()) if timestamp is None else timestamp
    msg_id = msg_id or new_message_id()
    signature = Webhook(secret).sign(msg_id, datetime.fromtimestamp(timestamp, UTC),
                                     body.decode())
    return {f"{prefix}-id": msg_id, f"{prefix}-timestamp": str(timestamp),
            f"{prefix}-signature": signature, "content-type": "application/json"}


def company_ref(company_id: str, name: str = "Toft stores") -> dict[str, Any]:
    return {"id": company_id, "name": name, "description": "cust_123",
            "links": {"portal": f"https://app.codat.io/companies/{company_id}/summary"},
            "tags": {"uid": "customer-42"}}


def connection_body(event_type: str, *, company_id: str, connection_id: str, status: str,
                    generated: datetime, event_id: str | None = None, platform_key: str = "qhyg",
                    errors: list[dict[str, Any]] | None = None,
                    type_key: str = "eventType", **extra: Any) -> bytes:
    """A current-format connection.* event body, shaped like Codat's published examples."""
    connection: dict[str, Any] = {
        "id": connection_id, "integrationId": "bf083d72-62c7-493e-aec9-81b4dbba7e2c",
        "integrationKey": platform_key, "sourceId": "bdd831ce-eebd-4896-89a7-20e5ee8989ee",
        "platformName": "QuickBooks Online", "sourceType": "Accounting",
        "linkUrl": f"https://link-api.codat.io/companies/{company_id}/connections/"
                   f"{connection_id}/start",
        "status": status, "created": "2026-10-27T09:53:29Z",
    }
    if errors is not None:
        connection["dataConnectionErrors"] = errors
    document = {"id": event_id or str(uuid.uuid4()), type_key: event_type,
                "generatedDate": iso(generated),
                "payload": {"referenceCompany": company_ref(company_id), "connection": connection},
                **extra}
    return orjson.dumps(document)


def company_body(event_type: str, *, company_id: str, generated: datetime,
                 event_id: str | None = None, name: str = "Toft stores") -> bytes:
    return orjson.dumps({
        "id": event_id or str(uuid.uuid4()), "eventType": event_type,
        "generatedDate": iso(generated),
        "payload": {"id": company_id, "name": name, "description": "cust_123",
                    "redirect": f"https://link.codat.io/company/{company_id}",
                    "created": "2026-01-01T12:00:00Z", "tags": {"uid": "customer-42"}}})


def legacy_body(*, company_id: str, connection_id: str, new_status: str, old_status: str,
                alert_id: str | None = None, platform_key: str = "gbol") -> bytes:
    return orjson.dumps({
        "ClientId": "bae71d36-ff47-420a-b4a6-f8c9ddf41140", "ClientName": "Bank of Dave",
        "CompanyId": company_id, "DataConnectionId": connection_id,
        "RuleId": "70af3071-65d9-4ec3-b3cb-5283e8d55dac",
        "RuleType": "DataConnectionStatusChanged", "AlertId": alert_id or str(uuid.uuid4()),
        "Message": f"Data connection status changed from {old_status} to {new_status}",
        "Data": {"dataConnectionId": connection_id, "newStatus": new_status,
                 "oldStatus": old_status, "platformKey": platform_key}})


def read_completed_body(*, company_id: str, connection_id: str, statuses: dict[str, str],
                        generated: datetime, initial: bool = True) -> bytes:
    return orjson.dumps({
        "id": str(uuid.uuid4()),
        "eventType": "read.completed.initial" if initial else "read.completed",
        "generatedDate": iso(generated),
        "payload": {"referenceCompany": company_ref(company_id),
                    "modifiedFromDate": iso(generated),
                    "dataTypes": [{"connectionId": connection_id, "dataType": data_type,
                                   "recordsModified": True, "status": status}
                                  for data_type, status in statuses.items()]}})


def spec_operations() -> set[tuple[str, str]]:
    """(METHOD, path regex) of every operation in Codat's Platform and sync Bill Pay specs."""
    operations = set()
    for name in ("Codat-Platform.json", "Codat-Sync-Payables.json"):
        spec = orjson.loads((OAS_DIR / name).read_bytes())
        for path, item in spec["paths"].items():
            pattern = "^" + re.sub(r"\{[^}]+\}", "[^/]+", path) + "$"
            for method in item:
                if method in ("get", "post", "patch", "put", "delete"):
                    operations.add((method.upper(), pattern))
    return operations


def new_id() -> str:
    return str(uuid.uuid4())
