"""Whether a company is ready for Bill Pay, from what we know of its reads (a pure decision)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

# The data types Codat's Bill Pay guide sets to "fetch on first link" (contract section 5.1).
BILL_PAY_DATA_TYPES: tuple[str, ...] = (
    "bankAccounts", "bills", "billPayments", "chartOfAccounts", "company", "paymentMethods",
    "suppliers",
)
_DONE = "Complete"


@dataclass(frozen=True, slots=True)
class Readiness:
    ready: bool
    missing: tuple[str, ...]  # data types not yet read successfully
    failed: tuple[str, ...]  # data types whose last read ended in an error status


def assess_readiness(statuses: Mapping[str, str]) -> Readiness:
    """Async Bill Pay is ready once every Bill Pay data type has a completed read."""
    missing = tuple(t for t in BILL_PAY_DATA_TYPES if statuses.get(t) != _DONE)
    failed = tuple(t for t in missing if statuses.get(t, "").endswith("Error"))
    return Readiness(not missing, missing, failed)
