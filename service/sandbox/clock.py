"""Time as Codat writes it: aware UTC datetimes, ISO-8601 strings ending in ``Z``."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta


def utcnow() -> datetime:
    """The current time, timezone-aware, in UTC."""
    return datetime.now(UTC)


def iso(moment: datetime) -> str:
    """``2024-08-08T17:10:34.015Z``: UTC with millisecond precision, as in Codat's examples."""
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def next_midnight(moment: datetime) -> datetime:
    """The next 00:00 UTC, when Codat resets the daily request quota."""
    day = moment.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return day + timedelta(days=1)
