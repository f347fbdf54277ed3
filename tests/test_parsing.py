"""parse_event: Codat's published examples, field mapping, tolerance, legacy bodies, bad input."""

from __future__ import annotations

import copy
import itertools
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest

from schemas.events import (
    CompanyEvent,
    CompanyEventKind,
    ConnectionEvent,
    ConnectionEventKind,
    DataTypeRead,
    RateLimitChanged,
    ReadCompleted,
    WriteCompleted,
)
from schemas.state import ConnectionStatus
from schemas.webhook import UnsupportedEvent, UnusableDelivery, parse_event
from tests.factories import EXAMPLES_DIR, connection_body, legacy_body

EXAMPLES = sorted(p.name for p in EXAMPLES_DIR.glob("*.json")) if EXAMPLES_DIR.is_dir() else []
needs_examples = pytest.mark.skipif(not EXAMPLES, reason=f"{EXAMPLES_DIR} is absent")

CK, PK = ConnectionEventKind, CompanyEventKind
# file -> (event class, what identifies it: kind / initial / (data type, successful) / reached)
EXPECTED: dict[str, tuple[type, object]] = {
    "DataConnectionStatusChanged.json": (ConnectionEvent, CK.CONNECTED),
    "company.created.json": (CompanyEvent, PK.CREATED),
    "company.deleted.json": (CompanyEvent, PK.DELETED),
    "company.product.added.json": (CompanyEvent, PK.PRODUCT_ADDED),
    "company.product.removed.json": (CompanyEvent, PK.PRODUCT_REMOVED),
    "connection.created.json": (ConnectionEvent, CK.CREATED),
    "connection.connected.json": (ConnectionEvent, CK.CONNECTED),
    "connection.disconnected.json": (ConnectionEvent, CK.DISCONNECTED),
    "connection.disconnected--De-authorized.json": (ConnectionEvent, CK.DISCONNECTED),
    "connection.reconnected.json": (ConnectionEvent, CK.RECONNECTED),
    "connection.failed.json": (ConnectionEvent, CK.FAILED),
    "connection.deleted.json": (ConnectionEvent, CK.DELETED),
    "read.completed.json": (ReadCompleted, False),
    "read.completed.initial.json": (ReadCompleted, True),
    "bills.write.successful.json": (WriteCompleted, ("bills", True)),
    "bills.write.unsuccessful.json": (WriteCompleted, ("bills", False)),
    "billPayments.write.successful.json": (WriteCompleted, ("billPayments", True)),
    "billPayments.write.unsuccessful.json": (WriteCompleted, ("billPayments", False)),
    "{dataType}.write.successful.json": (WriteCompleted, ("{dataType}", True)),
    "{dataType}.write.unsuccessful.json": (WriteCompleted, ("{dataType}", False)),
    "client.rateLimit.reached.json": (RateLimitChanged, True),
    "client.rateLimit.reset.json": (RateLimitChanged, False),
}


def example(name: str) -> bytes:
    path = EXAMPLES_DIR / name
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    return path.read_bytes()


def example_json(name: str) -> dict[str, Any]:
    document: dict[str, Any] = orjson.loads(example(name))
    return document


def _identity(parsed: object) -> object:
    if isinstance(parsed, ConnectionEvent | CompanyEvent):
        return parsed.kind
    if isinstance(parsed, ReadCompleted):
        return parsed.initial
    if isinstance(parsed, WriteCompleted):
        return (parsed.data_type, parsed.successful)
    if isinstance(parsed, RateLimitChanged):
        return parsed.reached
    raise AssertionError(f"not an event: {parsed!r}")


@needs_examples
@pytest.mark.parametrize("name", EXAMPLES or ["absent"])
def test_every_published_example_parses_to_its_event(name: str) -> None:
    assert name in EXPECTED, f"new example {name}: add what it should parse to"
    body = example(name)
    parsed = parse_event(body)
    event_class, identity = EXPECTED[name]
    assert type(parsed) is event_class
    assert _identity(parsed) == identity
    document = orjson.loads(body)
    assert parsed.meta.event_id == document.get("id", document.get("AlertId"))
    assert parsed.meta.event_type == document.get("eventType", document.get("RuleType"))


@needs_examples
def test_every_expected_example_is_published() -> None:
    assert sorted(EXPECTED) == EXAMPLES


# --- mapped fields -----------------------------------------------------------------------------

def test_connection_event_fields() -> None:
    parsed = parse_event(example("connection.connected.json"))
    assert isinstance(parsed, ConnectionEvent)
    assert parsed.meta.generated_at == datetime(2024, 8, 8, 17, 10, 34, 15000, tzinfo=UTC)
    assert not parsed.legacy and parsed.previous_status is None
    company, connection = parsed.company, parsed.connection
    assert company.id == "0498e921-9b53-4396-a412-4f2f5983b0a2"  # from referenceCompany
    assert (company.name, company.description) == ("Bank of Dave", "internal_id_mxO7rLfo")
    assert company.tags == {"customerRegion": "us", "uid": "335a086e-8563-4b03-94e3-39544225ecb6"}
    assert connection.id == "ee2eb431-c0fa-4dc9-93fa-d29781c12bcd"
    assert connection.status is ConnectionStatus.LINKED
    assert connection.platform_key == "dfxm"  # from integrationKey
    assert (connection.platform_name, connection.source_type) == ("Basiq", "Banking")
    assert connection.integration_id == "bf083d72-62c7-493e-aec9-81b4dbba7e2c"
    assert connection.source_id == "bdd831ce-eebd-4896-89a7-20e5ee8989ee"
    assert connection.link_url == ("https://link-api.codat.io/companies/0498e921-9b53-4396-a412-"
                                   "4f2f5983b0a2/connections/ee2eb431-c0fa-4dc9-93fa-d29781c12bcd"
                                   "/start")
    assert connection.created == datetime(2022, 10, 27, 9, 53, 29, tzinfo=UTC)
    assert connection.last_sync == datetime(2022, 10, 27, 10, 22, 43, 646423, tzinfo=UTC)
    assert connection.errors is None


@pytest.mark.parametrize(("name", "status"), [
    ("connection.created.json", ConnectionStatus.PENDING_AUTH),
    ("connection.disconnected.json", ConnectionStatus.UNLINKED),
    ("connection.disconnected--De-authorized.json", ConnectionStatus.DEAUTHORIZED),
    ("connection.reconnected.json", ConnectionStatus.LINKED),
    ("connection.failed.json", ConnectionStatus.PENDING_AUTH),
    ("connection.deleted.json", ConnectionStatus.LINKED),  # the last status, kept
])
def test_connection_status_is_read_from_the_connection(name: str,
                                                       status: ConnectionStatus) -> None:
    parsed = parse_event(example(name))
    assert isinstance(parsed, ConnectionEvent)
    assert parsed.connection.status is status


@pytest.mark.parametrize("name", ["connection.failed.json",
                                  "connection.disconnected--De-authorized.json"])
def test_connection_errors_are_kept_as_sent(name: str) -> None:
    parsed = parse_event(example(name))
    assert isinstance(parsed, ConnectionEvent)
    sent = example_json(name)["payload"]["connection"]["dataConnectionErrors"]
    assert parsed.connection.errors == sent
    assert parsed.connection.errors and parsed.connection.errors[0]["statusCode"] in ("401", "403")


def test_legacy_platform_key_is_read_when_integration_key_is_absent() -> None:
    document = orjson.loads(connection_body("connection.created", company_id="c",
                                            connection_id="x", status="PendingAuth",
                                            generated=datetime(2026, 1, 1, tzinfo=UTC)))
    del document["payload"]["connection"]["integrationKey"]
    document["payload"]["connection"]["platformKey"] = "gbol"
    parsed = parse_event(orjson.dumps(document))
    assert isinstance(parsed, ConnectionEvent)
    assert parsed.connection.platform_key == "gbol"


def test_integration_key_wins_over_the_legacy_platform_key() -> None:
    document = orjson.loads(connection_body("connection.created", company_id="c",
                                            connection_id="x", status="PendingAuth",
                                            generated=datetime(2026, 1, 1, tzinfo=UTC),
                                            platform_key="qhyg"))
    document["payload"]["connection"]["platformKey"] = "gbol"
    parsed = parse_event(orjson.dumps(document))
    assert isinstance(parsed, ConnectionEvent)
    assert parsed.connection.platform_key == "qhyg"


def test_company_event_fields() -> None:
    parsed = parse_event(example("company.created.json"))
    assert isinstance(parsed, CompanyEvent)
    company = parsed.company
    assert company.id == "0498e921-9b53-4396-a412-4f2f5983b0a2"  # the payload is the company
    assert company.name == "Bank of Dave"
    assert company.redirect == "https://link.codat.io/company/0498e921-9b53-4396-a412-4f2f5983b0a2"
    assert company.created == datetime(2022, 1, 1, 12, tzinfo=UTC)
    assert company.tags == {"customerRegion": "us", "uid": "335a086e-8563-4b03-94e3-39544225ecb6"}


def test_product_event_keeps_the_products() -> None:
    parsed = parse_event(example("company.product.removed.json"))
    assert isinstance(parsed, CompanyEvent)
    assert parsed.company.products == ["accounting", "banking"]


@pytest.mark.parametrize("name", ["read.completed.json", "read.completed.initial.json"])
def test_read_completed_data_types(name: str) -> None:
    parsed = parse_event(example(name))
    assert isinstance(parsed, ReadCompleted)
    assert parsed.company.id == "0498e921-9b53-4396-a412-4f2f5983b0a2"
    [read] = parsed.data_types
    issues = example_json(name)["payload"]["dataTypes"][0]["issues"]
    assert read == DataTypeRead("2e9d2c44-f675-40ba-8049-353bfcb5e171", "invoices", "Complete",
                                False, issues)
    assert parsed.meta.generated_at == datetime(2022, 10, 23, tzinfo=UTC)


@pytest.mark.parametrize(("name", "data_type", "successful", "operation", "status", "record"), [
    ("bills.write.successful.json", "bills", True, "Create", "Success",
     "bil_1Nispe2eZvKYlo2Cd31jOCgZ"),
    ("bills.write.unsuccessful.json", "bills", False, "Update", "Failed", None),
    ("billPayments.write.successful.json", "billPayments", True, "Create", "Success",
     "bil_1Nispe2eZvKYlo2Cd31jOCgZ"),
    ("{dataType}.write.successful.json", "{dataType}", True, "Create", "Success",
     "bil_1Nispe2eZvKYlo2Cd31jOCgZ"),
    ("{dataType}.write.unsuccessful.json", "{dataType}", False, "Update", "Failed", None),
])
def test_write_events(name: str, data_type: str, successful: bool, operation: str,
                      status: str, record: str | None) -> None:
    parsed = parse_event(example(name))
    assert isinstance(parsed, WriteCompleted)
    assert (parsed.data_type, parsed.successful) == (data_type, successful)  # from the type
    assert (parsed.operation, parsed.status, parsed.record_id) == (operation, status, record)
    assert parsed.push_operation_key == "a9367074-b5c3-42c4-9be4-be129f43577e"  # payload.id
    assert parsed.connection_id == "12571faf-0898-47e7-afdd-0fe9eb0a9bf5"
    assert parsed.company.id == "70af3071-65d9-4ec3-b3cb-5283e8d55dac"


@pytest.mark.parametrize("data_type", ["suppliers", "bankAccounts", "journalEntries"])
def test_write_data_type_comes_from_the_event_type(data_type: str) -> None:
    document = example_json("bills.write.unsuccessful.json")
    document["eventType"] = f"{data_type}.write.unsuccessful"
    parsed = parse_event(orjson.dumps(document))
    assert isinstance(parsed, WriteCompleted)
    assert (parsed.data_type, parsed.successful) == (data_type, False)


def test_rate_limit_reached() -> None:
    parsed = parse_event(example("client.rateLimit.reached.json"))
    assert isinstance(parsed, RateLimitChanged)
    assert (parsed.reached, parsed.daily_quota, parsed.quota_remaining) == (True, 12000, 0)
    assert parsed.expires_at == datetime(2024, 9, 1, 12, 14, 14, tzinfo=UTC)


def test_rate_limit_reset_with_codats_invalid_expiry_still_parses() -> None:
    assert example_json("client.rateLimit.reset.json")["payload"]["expiryDate"] == \
        "2024-09-01T23:59:99Z"
    parsed = parse_event(example("client.rateLimit.reset.json"))
    assert isinstance(parsed, RateLimitChanged)
    assert (parsed.reached, parsed.daily_quota, parsed.quota_remaining) == (False, 12000, 11993)
    assert parsed.expires_at is None


# --- type / eventType --------------------------------------------------------------------------

def _minimal(**overrides: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "id": "evt-1", "eventType": "connection.created",
        "generatedDate": "2026-11-01T12:00:00Z",
        "payload": {"referenceCompany": {"id": "comp-1"},
                    "connection": {"id": "conn-1", "status": "PendingAuth"}}}
    document.update(overrides)
    return document


def test_type_is_read_when_event_type_is_absent() -> None:
    document = _minimal()
    document["type"] = document.pop("eventType")
    parsed = parse_event(orjson.dumps(document))
    assert isinstance(parsed, ConnectionEvent)
    assert (parsed.kind, parsed.meta.event_type) == (CK.CREATED, "connection.created")


def test_event_type_wins_over_type() -> None:
    document = _minimal(eventType="connection.connected", type="connection.deleted")
    document["payload"]["connection"]["status"] = "Linked"
    parsed = parse_event(orjson.dumps(document))
    assert isinstance(parsed, ConnectionEvent)
    assert (parsed.kind, parsed.meta.event_type) == (CK.CONNECTED, "connection.connected")


@pytest.mark.parametrize("event_type", ["invoices.sparkled", "payables.bill.created",
                                        "connection.teleported", "bills.write.maybe"])
def test_an_event_type_we_do_not_act_on_is_unsupported(event_type: str) -> None:
    with pytest.raises(UnsupportedEvent) as caught:
        parse_event(orjson.dumps(_minimal(eventType=event_type, payload={})))
    assert (caught.value.event_type, caught.value.event_id) == (event_type, "evt-1")
    assert event_type in str(caught.value)


# --- unknown fields ----------------------------------------------------------------------------

_RAW_LISTS = ("dataConnectionErrors", "issues")  # kept verbatim, so extras would show


def _with_extras(value: Any, counter: itertools.count[int], key: str | None = None) -> Any:
    """``value`` with an unknown key added to every object, at every level."""
    if isinstance(value, list):
        if key in _RAW_LISTS:
            return value
        return [_with_extras(v, counter) for v in value]
    if not isinstance(value, dict):
        return value
    if key == "tags":  # the company's own map of strings: data, not a shape
        return value
    extended = {k: _with_extras(v, counter, k) for k, v in value.items()}
    n = next(counter)
    extended[f"unknownField{n}"] = {"nested": [n, None, {"deeper": True}], "text": "x"}
    return extended


@needs_examples
@pytest.mark.parametrize("name", EXAMPLES or ["absent"])
def test_unknown_fields_are_tolerated_at_every_level(name: str) -> None:
    document = example_json(name)
    extended = _with_extras(copy.deepcopy(document), itertools.count())
    assert orjson.dumps(extended) != orjson.dumps(document)
    assert parse_event(orjson.dumps(extended)) == parse_event(orjson.dumps(document))


def test_unknown_fields_inside_errors_are_kept() -> None:
    error = {"statusCode": "403", "status": "Active", "somethingNew": {"a": 1}}
    document = orjson.loads(connection_body(
        "connection.failed", company_id="c", connection_id="x", status="PendingAuth",
        generated=datetime(2026, 1, 1, tzinfo=UTC), errors=[error]))
    parsed = parse_event(orjson.dumps(document))
    assert isinstance(parsed, ConnectionEvent)
    assert parsed.connection.errors == [error]


# --- legacy DataConnectionStatusChanged (CONTRACT 6.6) -------------------------------------------

def test_legacy_example_is_mapped_per_the_contract() -> None:
    document = example_json("DataConnectionStatusChanged.json")
    parsed = parse_event(orjson.dumps(document))
    assert isinstance(parsed, ConnectionEvent)
    assert parsed.meta.event_id == document["AlertId"]
    assert parsed.meta.event_type == "DataConnectionStatusChanged"
    assert parsed.meta.generated_at is None and parsed.legacy
    assert parsed.company.id == document["CompanyId"]
    assert parsed.connection.id == document["DataConnectionId"]
    assert parsed.connection.status is ConnectionStatus.LINKED  # Data.newStatus
    assert parsed.connection.platform_key == "gbol"  # Data.platformKey
    assert parsed.previous_status is ConnectionStatus.PENDING_AUTH  # Data.oldStatus, kept


@pytest.mark.parametrize(("old", "new", "kind"), [
    ("PendingAuth", "Linked", CK.CONNECTED),
    ("Unlinked", "Linked", CK.RECONNECTED),
    ("Deauthorized", "Linked", CK.RECONNECTED),
    ("Linked", "Unlinked", CK.DISCONNECTED),
    ("Linked", "Deauthorized", CK.DISCONNECTED),
    ("PendingAuth", "PendingAuth", CK.CREATED),
])
def test_legacy_transitions_map_to_event_kinds(old: str, new: str,
                                               kind: ConnectionEventKind) -> None:
    parsed = parse_event(legacy_body(company_id="c", connection_id="x", new_status=new,
                                     old_status=old, alert_id="alert-1"))
    assert isinstance(parsed, ConnectionEvent)
    assert (parsed.kind, parsed.connection.status, parsed.previous_status) == \
        (kind, ConnectionStatus(new), ConnectionStatus(old))
    assert parsed.meta.event_id == "alert-1"


def test_legacy_without_old_status_and_top_level_connection_id() -> None:
    document = orjson.loads(legacy_body(company_id="c", connection_id="x", new_status="Linked",
                                        old_status="PendingAuth"))
    del document["DataConnectionId"], document["Data"]["oldStatus"]
    parsed = parse_event(orjson.dumps(document))
    assert isinstance(parsed, ConnectionEvent)
    assert parsed.connection.id == "x"  # Data.dataConnectionId
    assert (parsed.kind, parsed.previous_status) == (CK.CONNECTED, None)


def test_legacy_without_any_connection_id_is_unusable() -> None:
    document = orjson.loads(legacy_body(company_id="c", connection_id="x", new_status="Linked",
                                        old_status="PendingAuth"))
    del document["DataConnectionId"], document["Data"]["dataConnectionId"]
    with pytest.raises(UnusableDelivery, match="no data connection"):
        parse_event(orjson.dumps(document))


@pytest.mark.parametrize("field", ["newStatus", "oldStatus"])
def test_legacy_unknown_status_is_unusable(field: str) -> None:
    document = orjson.loads(legacy_body(company_id="c", connection_id="x", new_status="Linked",
                                        old_status="PendingAuth"))
    document["Data"][field] = "Frobnicated"
    with pytest.raises(UnusableDelivery, match="unknown connection status 'Frobnicated'"):
        parse_event(orjson.dumps(document))


def test_legacy_body_of_another_rule_type_with_the_same_shape_is_unsupported() -> None:
    document = orjson.loads(legacy_body(company_id="c", connection_id="x", new_status="Linked",
                                        old_status="PendingAuth", alert_id="alert-9"))
    document["RuleType"] = "Sync Connection Deleted"
    with pytest.raises(UnsupportedEvent) as caught:
        parse_event(orjson.dumps(document))
    assert (caught.value.event_type, caught.value.event_id) == \
        ("Sync Connection Deleted", "alert-9")


_CLIENT = {"ClientId": "bae71d36-ff47-420a-b4a6-f8c9ddf41140", "ClientName": "Bank of Dave",
           "RuleId": "70af3071-65d9-4ec3-b3cb-5283e8d55dac",
           "AlertId": "a9367074-b5c3-42c4-9be4-be129f43577e"}
# Bodies of other legacy rule types as Codat's docs publish them
# (codatio/codat-docs docs/using-the-api/webhooks/legacy/core-rules-types.md).
OTHER_LEGACY_BODIES = {
    "Data sync completed": {
        **_CLIENT, "CompanyId": "8a210b68-6988-11ed-a1eb-0242ac120002",
        "DataConnectionId": "2e9d2c44-f675-40ba-8049-353bfcb5e171",
        "RuleType": "Data sync completed", "Message": "Data sync of type creditNotes completed",
        "Data": {"dataType": "creditNotes", "datasetId": "1541a5ee-0d84-4b6e-a7f7-c07c1f216333"}},
    "Sync Connection Deleted": {
        **_CLIENT, "CompanyId": "8a210b68-6988-11ed-a1eb-0242ac120002",
        "RuleType": "Sync Connection Deleted", "Message": "Sync connection deleted"},
    "Rate Limit Reached": {
        **_CLIENT, "RuleType": "Rate Limit Reached", "Message": "quota reached",
        "Data": {"DailyQuota": 1000, "ExpiresUtc": "2023-05-03T00:00:00Z"}},
}


@pytest.mark.parametrize("rule_type", sorted(OTHER_LEGACY_BODIES))
def test_legacy_body_of_another_rule_type_as_published_is_unsupported(rule_type: str) -> None:
    with pytest.raises(UnsupportedEvent) as caught:
        parse_event(orjson.dumps(OTHER_LEGACY_BODIES[rule_type]))
    assert (caught.value.event_type, caught.value.event_id) == (rule_type, _CLIENT["AlertId"])


# --- unusable input ----------------------------------------------------------------------------

def _drop(key: str) -> dict[str, Any]:
    document = _minimal()
    del document[key]
    return document


def _connection(**fields: Any) -> dict[str, Any]:
    document = _minimal()
    document["payload"]["connection"].update(fields)
    return document


UNUSABLE: dict[str, tuple[bytes | dict[str, Any], str]] = {
    "empty body": (b"", "not JSON"),
    "not json": (b"this is not json", "not JSON"),
    "truncated json": (b'{"id": "evt-1", ', "not JSON"),
    "array": (b"[1, 2, 3]", "not a JSON object"),
    "string": (b'"connection.created"', "not a JSON object"),
    "null": (b"null", "not a JSON object"),
    "missing id": (_drop("id"), "id: Field required"),
    "missing generatedDate": (_drop("generatedDate"), "generatedDate: Field required"),
    "missing payload": (_drop("payload"), "payload: Field required"),
    "missing eventType and type": (_drop("eventType"), "eventType: Field required"),
    "invalid generatedDate": (_minimal(generatedDate="2026-13-45T00:00:00Z"), "generatedDate"),
    "impossible generatedDate": (_minimal(generatedDate="2024-09-01T23:59:99Z"),
                                 "generatedDate"),
    "words as generatedDate": (_minimal(generatedDate="yesterday"), "generatedDate"),
    "empty generatedDate": (_minimal(generatedDate=""), "generatedDate"),
    "number as generatedDate": (_minimal(generatedDate=1730462400), "generatedDate"),
    "unknown status": (_connection(status="Frobnicated"),
                       "unknown connection status 'Frobnicated' (known: PendingAuth, Linked, "
                       "Unlinked, Deauthorized)"),
    "lowercase status": (_connection(status="linked"), "unknown connection status 'linked'"),
    "number as id": (_minimal(id=123), "id: Value error, an id is 1 to 128 printable ASCII"),
    "number as eventType": (_minimal(eventType=5), "eventType"),
    "string as payload": (_minimal(payload="x"), "payload"),
    "no connection": (_minimal(payload={"referenceCompany": {"id": "c"}}), "connection"),
    "no referenceCompany": (_minimal(payload={"connection": {"id": "x", "status": "Linked"}}),
                            "referenceCompany"),
    "number as connection status": (_connection(status=5), "status"),
    "number as tag value": (_minimal(payload={"referenceCompany": {"id": "c", "tags": {"a": 1}},
                                              "connection": {"id": "x", "status": "Linked"}}),
                            "referenceCompany.tags.a"),
    "dataTypes not a list": (_minimal(eventType="read.completed",
                                      payload={"referenceCompany": {"id": "c"},
                                               "dataTypes": {"x": 1}}), "dataTypes"),
    "quota not a number": (_minimal(eventType="client.rateLimit.reached",
                                    payload={"dailyQuota": "lots"}), "dailyQuota"),
    "write without id": (_minimal(eventType="bills.write.successful",
                                  payload={"referenceCompany": {"id": "c"}}), "id"),
}


@pytest.mark.parametrize("case", sorted(UNUSABLE))
def test_unusable_input_raises_with_a_clear_message(case: str) -> None:
    body, message = UNUSABLE[case]
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    with pytest.raises(UnusableDelivery) as caught:
        parse_event(raw)
    assert message in str(caught.value)
    assert not isinstance(caught.value, UnsupportedEvent)


def test_shape_errors_say_it_is_not_a_codat_event() -> None:
    with pytest.raises(UnusableDelivery, match="does not have the shape of a Codat event"):
        parse_event(orjson.dumps(_drop("payload")))


# --- date forms (CONTRACT section 1) ----------------------------------------------------------

@pytest.mark.parametrize(("text", "expected"), [
    ("2022-10-27T09:53:29Z", datetime(2022, 10, 27, 9, 53, 29, tzinfo=UTC)),
    ("2022-10-27T10:22:43.6464237Z", datetime(2022, 10, 27, 10, 22, 43, 646423, tzinfo=UTC)),
    ("2022-10-27T10:22:43.5Z", datetime(2022, 10, 27, 10, 22, 43, 500000, tzinfo=UTC)),
    ("2022-10-27T11:53:29+02:00",
     datetime(2022, 10, 27, 11, 53, 29, tzinfo=timezone(timedelta(hours=2)))),
    ("2022-10-27T04:53:29-05:00", datetime(2022, 10, 27, 9, 53, 29, tzinfo=UTC)),
    # Naive: the parser reads it as UTC (it needs an aware time to compare with the stored one).
    ("2021-11-15T01:00:00", datetime(2021, 11, 15, 1, tzinfo=UTC)),
    ("2022-10-27", datetime(2022, 10, 27, tzinfo=UTC)),
])
def test_generated_date_forms_all_parse(text: str, expected: datetime) -> None:
    parsed = parse_event(orjson.dumps(_minimal(generatedDate=text)))
    assert parsed.meta.generated_at == expected
    assert parsed.meta.generated_at is not None and parsed.meta.generated_at.tzinfo is not None


@pytest.mark.parametrize("text", ["2022-10-27T10:22:43.6464237Z", "2021-11-15T01:00:00",
                                  "2022-10-27T11:53:29+02:00"])
def test_connection_date_forms_all_parse(text: str) -> None:
    parsed = parse_event(orjson.dumps(_connection(created=text, lastSync=text)))
    assert isinstance(parsed, ConnectionEvent)
    assert parsed.connection.created is not None and parsed.connection.created.tzinfo
    assert parsed.connection.last_sync == parsed.connection.created


def test_an_invalid_informational_date_does_not_make_the_body_unusable() -> None:
    parsed = parse_event(orjson.dumps(_connection(created="not a date", lastSync=42)))
    assert isinstance(parsed, ConnectionEvent)
    assert (parsed.connection.created, parsed.connection.last_sync) == (None, None)
