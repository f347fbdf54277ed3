"""The order of Codat's words about a connection: instants at full precision, and order keys.

Svix reorders and redelivers, so a connection's stored state must not depend on the order its
events arrive in: it is the state of the *newest* word received, by a total order that arrival
cannot change. That order is the order key, a text that sorts (byte for byte, as ``str`` does and
as PostgreSQL's ``COLLATE "C"`` and SQLite's BINARY do) as:

1. the rank of the state the word asks for: ``PendingAuth`` < every other status < ``Deleted``.
   Nothing returns to PendingAuth once anything else has been heard of a connection, and nothing
   leaves Deleted, whatever the clocks say;
2. the instant the word was true (an event's ``generatedDate`` at all its 7 fractional digits; the
   creation time inside a legacy delivery's svix message id; the moment Codat answered a
   reconcile or an onboarding call);
3. a tie-break no delivery order can change (the event id; the job or call that asked Codat).

For example ``1 2026-11-01T12:00:00.1234567Z 5f0c...``.
"""

from __future__ import annotations

import re
import struct
from datetime import UTC, datetime, timedelta

from ksuid import KsuidMs

from schemas.state import State

# Sortable UTC text, always 28 characters: "YYYY-MM-DDTHH:MM:SS.fffffffZ".
_INSTANT = "{:04d}-{:02d}-{:02d}T{:02d}:{:02d}:{:02d}.{:07d}Z"
_ISO = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2}):(\d{2})(?:[.,](\d+))?"
    r"(Z|z|[+-]\d{2}:?\d{2})?")
_RANK = {State.PENDING_AUTH: "0", State.DELETED: "2"}
# In a key: the rank (1 character), a space, the instant (28), a space, the tie-break.
_TIME_AT = 2


def instant_of(moment: datetime, extra_digit: int = 0) -> str:
    """A datetime (aware; naive is taken as UTC) as sortable UTC text; ``extra_digit`` is the
    seventh fractional digit, which a datetime cannot hold."""
    utc = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return _INSTANT.format(utc.year, utc.month, utc.day, utc.hour, utc.minute, utc.second,
                           utc.microsecond * 10 + extra_digit)


def parse_instant(text: str) -> tuple[str, datetime]:
    """Codat's ISO-8601 date-time -> (sortable UTC text at 100 ns, the datetime to microseconds).

    Raises ValueError for text that is not a date-time, or one outside what UTC can hold (a date
    in year 9999 with a negative offset is in year 10000 in UTC). A value without a zone is taken
    as UTC: ``generatedDate`` is documented as UTC.
    """
    match = _ISO.fullmatch(text.strip())
    if match is None:
        moment = datetime.fromisoformat(text)  # other ISO forms (a date alone, basic format)
        return instant_of(moment), _utc(moment)
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    digits = (match[7] or "")[:7].ljust(7, "0")
    local = datetime(year, month, day, hour, minute, second, int(digits[:6]))
    zone = match[8]
    try:
        if zone and zone not in ("Z", "z"):
            sign = -1 if zone[0] == "-" else 1
            hours, minutes = int(zone[1:3]), int(zone[-2:])
            local -= sign * timedelta(hours=hours, minutes=minutes)
    except OverflowError:
        raise ValueError(f"{text!r} is outside the range of UTC date-times") from None
    return instant_of(local, int(digits[6])), local.replace(tzinfo=UTC)


def _utc(moment: datetime) -> datetime:
    try:
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    except OverflowError:
        raise ValueError(f"{moment} is outside the range of UTC date-times") from None


def order_key(state: State, instant: str, tiebreak: str) -> str:
    """The order key of a word that ``state`` held at ``instant`` (see the module docstring)."""
    return f"{_RANK.get(state, '1')} {instant} {tiebreak}"


def later_in_time(key: str, other: str) -> bool:
    """``key``'s instant and tie-break come after ``other``'s, whatever their ranks: a word that
    loses only by its rank (PendingAuth after Linked, anything after Deleted) is *rejected*, one
    that is simply older is *superseded*."""
    return key[_TIME_AT:] > other[_TIME_AT:]


def instant_in(key: str) -> str:
    return key[_TIME_AT:_TIME_AT + 28]


# --- svix message ids --------------------------------------------------------------------------
# A svix message id is "msg_" + a base62 KsuidMs: 4 bytes of seconds since 1,400,000,000, one
# byte of milliseconds in 4 ms units (0-249), 15 random bytes. Its time is the message's creation
# time, the same on every retry (../shared/notes/svix-message-ids.md). Codat's own documented
# example id does not parse: every caller must cope with None.

_MSG_PREFIX = "msg_"
_KSUID_TEXT = re.compile(r"[0-9A-Za-z]{27}")
_KSUID_EPOCH = 1_400_000_000
# How far a message's creation time may be from the delivery attempt's signed timestamp and still
# be believed: Svix retries for about 28 hours and a recovery may resend messages weeks old;
# nothing is created after it is sent (beyond the clock skew the signature check allows).
MESSAGE_AGE_LIMIT = timedelta(days=90)
MESSAGE_SKEW_LIMIT = timedelta(minutes=5)


def message_instant(message_id: str, attempt_timestamp: int) -> str | None:
    """The creation instant inside a svix message id (4 ms precision), or None when the id does
    not parse or names a time that the attempt's signed timestamp makes implausible."""
    if not message_id.startswith(_MSG_PREFIX):
        return None
    text = message_id[len(_MSG_PREFIX):]
    if _KSUID_TEXT.fullmatch(text) is None:
        return None
    try:
        raw = bytes(KsuidMs.from_base62(text))
    except (OverflowError, ValueError):  # a value above 2**160 does not fit 20 bytes
        return None
    seconds, quarter_ms = struct.unpack(">LB", raw[:5])
    if quarter_ms > 249:
        return None
    created = datetime.fromtimestamp(_KSUID_EPOCH + seconds, UTC) \
        + timedelta(milliseconds=quarter_ms * 4)
    attempt = datetime.fromtimestamp(attempt_timestamp, UTC)
    if not attempt - MESSAGE_AGE_LIMIT <= created <= attempt + MESSAGE_SKEW_LIMIT:
        return None
    return instant_of(created)


def new_message_id(created: datetime | None = None) -> str:
    """A svix message id minted the way Svix mints them (for the sandbox)."""
    return _MSG_PREFIX + str(KsuidMs(created))
