"""The Verifier and signed_headers directly, with real svix signatures.

svix's ``Webhook.verify`` checks the timestamp against the REAL clock with a fixed five-minute
window (standardwebhooks ``__verify_timestamp``); ``Verifier.verify(now=...)`` moves only our own
check. So every test that expects success signs a timestamp near the real time, and freezes
``now`` at a whole second of the real time so that the edges of our window are exact.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from datetime import UTC, datetime

import pytest
from starlette.datastructures import Headers
from svix.webhooks import Webhook

from service.errors import InvalidSignature, MissingHeaders
from service.settings import parse_webhook_secrets
from service.verify import SignedHeaders, Verifier, signed_headers
from tests.factories import OTHER_SECRET, SECRET, SECRET_2, sign

# CONTRACT 6.2: the test vector from Codat's docs.
VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TIMESTAMP = 1614265330
VECTOR_BODY = b'{"test": 2432232314}'
VECTOR_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="

BODY = b'{"id": "evt-1", "eventType": "connection.created"}'


def verifier(*secrets: str, tolerance: int = 300) -> Verifier:
    return Verifier(parse_webhook_secrets(" ".join(secrets)), tolerance_seconds=tolerance)


def signed(body: bytes = BODY, *, timestamp: int | None = None, secret: str = SECRET,
           msg_id: str = "msg_1") -> SignedHeaders:
    return signed_headers(sign(body, msg_id=msg_id, timestamp=timestamp, secret=secret))


def whole_second_now() -> int:
    return int(time.time())


def secret_id(secret: str) -> str:
    [parsed] = parse_webhook_secrets(secret)
    return parsed.id


# --- Codat's documented vector -----------------------------------------------------------------

def test_svix_signs_the_documented_vector_exactly() -> None:
    moment = datetime.fromtimestamp(VECTOR_TIMESTAMP, UTC)
    assert Webhook(VECTOR_SECRET).sign(VECTOR_ID, moment, VECTOR_BODY.decode()) == \
        VECTOR_SIGNATURE


def test_the_documented_vector_is_hmac_sha256_of_id_timestamp_body() -> None:
    key = base64.b64decode(VECTOR_SECRET.removeprefix("whsec_"))
    content = f"{VECTOR_ID}.{VECTOR_TIMESTAMP}.".encode() + VECTOR_BODY
    digest = hmac.new(key, content, hashlib.sha256).digest()
    assert "v1," + base64.b64encode(digest).decode() == VECTOR_SIGNATURE


def test_the_factories_secret_is_the_documented_one() -> None:
    assert SECRET == VECTOR_SECRET


def test_the_documented_vector_is_refused_with_the_real_clock() -> None:
    headers = SignedHeaders(VECTOR_ID, str(VECTOR_TIMESTAMP), VECTOR_SIGNATURE)
    with pytest.raises(InvalidSignature) as caught:
        verifier(VECTOR_SECRET).verify(VECTOR_BODY, headers)
    assert caught.value.reason == "timestamp_too_old"


def test_the_vector_with_a_fresh_timestamp_verifies() -> None:
    now = whole_second_now()
    headers = signed(VECTOR_BODY, timestamp=now, secret=VECTOR_SECRET, msg_id=VECTOR_ID)
    assert verifier(VECTOR_SECRET).verify(VECTOR_BODY, headers, now=now) == \
        secret_id(VECTOR_SECRET)
    assert verifier(VECTOR_SECRET).verify(VECTOR_BODY, headers) == secret_id(VECTOR_SECRET)


# --- several tokens, rotation ------------------------------------------------------------------

def _other_token(body: bytes, now: int) -> str:
    return sign(body, msg_id="msg_1", timestamp=now, secret=OTHER_SECRET)["svix-signature"]


@pytest.mark.parametrize("layout", ["first", "middle", "last"])
def test_one_matching_token_among_several_is_enough(layout: str) -> None:
    now = whole_second_now()
    good = signed(timestamp=now)
    wrong = _other_token(BODY, now)
    tokens = {"first": [good.signature, wrong, "v1a,c2lnbmF0dXJl"],
              "middle": [wrong, good.signature, "v2,c2lnbmF0dXJl"],
              "last": ["v1a,c2lnbmF0dXJl", wrong, good.signature]}[layout]
    header = SignedHeaders(good.message_id, good.timestamp, " ".join(tokens))
    assert verifier(SECRET).verify(BODY, header, now=now) == secret_id(SECRET)


def test_only_non_matching_tokens_fail() -> None:
    now = whole_second_now()
    header = SignedHeaders("msg_1", str(now), f"{_other_token(BODY, now)} v1a,c2lnbmF0dXJl")
    with pytest.raises(InvalidSignature) as caught:
        verifier(SECRET).verify(BODY, header, now=now)
    assert caught.value.reason == "no_matching_signature"


def test_a_malformed_token_before_the_matching_one_does_not_hide_it() -> None:
    now = whole_second_now()
    good = signed(timestamp=now)
    header = SignedHeaders(good.message_id, good.timestamp, f"v1,abc {good.signature}")
    assert verifier(SECRET).verify(BODY, header, now=now) == secret_id(SECRET)


def test_rotation_the_second_secret_verifies_and_its_id_is_returned() -> None:
    now = whole_second_now()
    both = verifier(SECRET, SECRET_2)
    assert both.verify(BODY, signed(timestamp=now, secret=SECRET_2), now=now) == \
        secret_id(SECRET_2)
    assert both.verify(BODY, signed(timestamp=now, secret=SECRET), now=now) == secret_id(SECRET)
    assert secret_id(SECRET) != secret_id(SECRET_2)


def test_a_secret_not_configured_fails() -> None:
    now = whole_second_now()
    with pytest.raises(InvalidSignature) as caught:
        verifier(SECRET, SECRET_2).verify(BODY, signed(timestamp=now, secret=OTHER_SECRET),
                                          now=now)
    assert caught.value.reason == "no_matching_signature"


def test_secret_ids_are_stable_and_hold_no_secret_material() -> None:
    for secret in (SECRET, SECRET_2, OTHER_SECRET):
        [first] = parse_webhook_secrets(secret)
        [again] = parse_webhook_secrets(f"  {secret} ,")
        assert first.id == again.id
        assert first.id.startswith("whsec:") and len(first.id) == len("whsec:") + 12
        encoded = secret.removeprefix("whsec_")
        key = base64.b64decode(encoded)
        assert encoded[:8] not in first.id
        assert key.hex()[:8] not in first.id
        assert secret not in repr(first) and encoded not in repr(first)


def test_ids_do_not_depend_on_optional_base64_padding() -> None:
    padded = "whsec_" + base64.b64encode(b"sixteen byte key").decode()  # ends with ==
    assert padded.endswith("=")
    assert secret_id(padded) == secret_id(padded.rstrip("="))


# --- the tolerance window ----------------------------------------------------------------------

@pytest.mark.parametrize("tolerance", [1, 60, 240])
def test_window_edges_are_inclusive(tolerance: int) -> None:
    now = whole_second_now()
    check = verifier(SECRET, tolerance=tolerance)
    for offset in (-tolerance, 0, tolerance):
        assert check.verify(BODY, signed(timestamp=now + offset), now=now) == secret_id(SECRET)
    with pytest.raises(InvalidSignature) as old:
        check.verify(BODY, signed(timestamp=now - tolerance - 1), now=now)
    assert old.value.reason == "timestamp_too_old"
    with pytest.raises(InvalidSignature) as new:
        check.verify(BODY, signed(timestamp=now + tolerance + 1), now=now)
    assert new.value.reason == "timestamp_too_new"


def test_the_window_uses_the_real_clock_when_now_is_not_given() -> None:
    check = verifier(SECRET, tolerance=60)
    assert check.verify(BODY, signed()) == secret_id(SECRET)
    with pytest.raises(InvalidSignature, match="timestamp_too_old"):
        check.verify(BODY, signed(timestamp=int(time.time()) - 120))
    with pytest.raises(InvalidSignature, match="timestamp_too_new"):
        check.verify(BODY, signed(timestamp=int(time.time()) + 120))


def test_a_fractional_now_is_compared_exactly() -> None:
    now = whole_second_now()
    check = verifier(SECRET, tolerance=60)
    headers = signed(timestamp=now - 60)
    assert check.verify(BODY, headers, now=now) == secret_id(SECRET)
    with pytest.raises(InvalidSignature, match="timestamp_too_old"):
        check.verify(BODY, headers, now=now + 0.5)


# --- every failure reason ----------------------------------------------------------------------

def _case(reason: str, now: int) -> tuple[bytes, SignedHeaders]:
    good = signed(timestamp=now)
    if reason == "malformed_timestamp: words":
        return BODY, SignedHeaders(good.message_id, "yesterday", good.signature)
    if reason == "malformed_timestamp: fraction":
        return BODY, SignedHeaders(good.message_id, f"{now}.5", good.signature)
    if reason == "malformed_timestamp: negative":
        return BODY, SignedHeaders(good.message_id, "-5", good.signature)
    if reason == "malformed_timestamp: empty":
        return BODY, SignedHeaders(good.message_id, "", good.signature)
    if reason == "malformed_timestamp: non-ascii digits":
        return BODY, SignedHeaders(good.message_id, "١٦١٤٢٦٥٣٣٠", good.signature)
    if reason == "malformed_timestamp: too long":
        return BODY, SignedHeaders(good.message_id, "9" * 13, good.signature)
    if reason == "timestamp_too_old":
        return BODY, signed(timestamp=now - 301)
    if reason == "timestamp_too_new":
        return BODY, signed(timestamp=now + 301)
    if reason == "malformed_signature: garbage":
        return BODY, SignedHeaders(good.message_id, good.timestamp, "garbage")
    if reason == "malformed_signature: empty":
        return BODY, SignedHeaders(good.message_id, good.timestamp, "")
    if reason == "malformed_signature: other scheme only":
        return BODY, SignedHeaders(good.message_id, good.timestamp,
                                   good.signature.replace("v1,", "v1a,"))
    if reason == "malformed_signature: upper-case version":
        return BODY, SignedHeaders(good.message_id, good.timestamp,
                                   good.signature.replace("v1,", "V1,"))
    if reason == "no_matching_signature: another body":
        return BODY + b" ", good
    if reason == "no_matching_signature: another id":
        return BODY, SignedHeaders("msg_2", good.timestamp, good.signature)
    if reason == "no_matching_signature: another timestamp":
        return BODY, SignedHeaders(good.message_id, str(now - 1), good.signature)
    if reason == "malformed_signature: bad base64":
        return BODY, SignedHeaders(good.message_id, good.timestamp, "v1,@@not-base64@@")
    if reason == "no_matching_signature: body not utf-8":
        return BODY + b"\xff", good
    raise AssertionError(reason)


REASONS = [
    "malformed_timestamp: words", "malformed_timestamp: fraction",
    "malformed_timestamp: negative", "malformed_timestamp: empty",
    "malformed_timestamp: non-ascii digits", "malformed_timestamp: too long",
    "timestamp_too_old", "timestamp_too_new",
    "malformed_signature: garbage", "malformed_signature: empty",
    "malformed_signature: other scheme only", "malformed_signature: upper-case version",
    "no_matching_signature: another body", "no_matching_signature: another id",
    "no_matching_signature: another timestamp", "malformed_signature: bad base64",
    "no_matching_signature: body not utf-8",
]


@pytest.mark.parametrize("case", REASONS)
def test_every_failure_has_its_reason_label(case: str) -> None:
    now = whole_second_now()
    body, headers = _case(case, now)
    with pytest.raises(InvalidSignature) as caught:
        verifier(SECRET, SECRET_2).verify(body, headers, now=now)
    label = case.split(":")[0]
    assert caught.value.reason == label
    assert str(caught.value) == f"signature verification failed: {label}"
    assert caught.value.status_code == 401


def test_every_reason_label_is_exercised() -> None:
    assert {r.split(":")[0] for r in REASONS} == {
        "malformed_timestamp", "timestamp_too_old", "timestamp_too_new", "malformed_signature",
        "no_matching_signature"}


# --- signed_headers ----------------------------------------------------------------------------

def test_svix_headers_win_over_webhook_headers() -> None:
    headers = {"svix-id": "msg_svix", "svix-timestamp": "1", "svix-signature": "v1,svix",
               "webhook-id": "msg_webhook", "webhook-timestamp": "2",
               "webhook-signature": "v1,webhook"}
    assert signed_headers(headers) == SignedHeaders("msg_svix", "1", "v1,svix")


def test_webhook_headers_are_read_when_svix_ones_are_absent() -> None:
    headers = {"webhook-id": "msg_webhook", "webhook-timestamp": "2",
               "webhook-signature": "v1,webhook"}
    assert signed_headers(headers) == SignedHeaders("msg_webhook", "2", "v1,webhook")


def test_headers_are_mixed_per_name_and_case_insensitive_on_a_request() -> None:
    headers = Headers({"Svix-Id": "msg_svix", "Webhook-Timestamp": "2",
                       "SVIX-SIGNATURE": "v1,svix", "webhook-id": "msg_webhook"})
    assert signed_headers(headers) == SignedHeaders("msg_svix", "2", "v1,svix")


def test_an_empty_svix_header_falls_back_to_its_webhook_twin() -> None:
    headers = {"svix-id": "", "webhook-id": "msg_webhook", "svix-timestamp": "1",
               "svix-signature": "v1,x"}
    assert signed_headers(headers).message_id == "msg_webhook"


@pytest.mark.parametrize("missing", ["id", "timestamp", "signature"])
@pytest.mark.parametrize("prefix", ["svix", "webhook"])
def test_a_missing_header_is_named(missing: str, prefix: str) -> None:
    headers = {f"{prefix}-{name}": "x" for name in ("id", "timestamp", "signature")}
    del headers[f"{prefix}-{missing}"]
    with pytest.raises(MissingHeaders) as caught:
        signed_headers(headers)
    assert f"svix-{missing}" in str(caught.value)
    assert f"webhook-{missing}" in str(caught.value)
    assert caught.value.status_code == 400


def test_an_empty_header_counts_as_missing() -> None:
    with pytest.raises(MissingHeaders, match="svix-signature"):
        signed_headers({"svix-id": "m", "svix-timestamp": "1", "svix-signature": ""})
