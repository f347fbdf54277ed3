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
# Dataset statuses that mean a read is under way (contract section 5.1); any other status that
# is not Complete means the read ended without the data (an error, NotSupported, Cancelled...).
READING: frozenset[str] = frozenset({
    "Initial", "Queued", "Fetching", "MapQueued", "Mapping", "ProcessingQueued", "Processing",
    "ValidationQueued", "Validating"})


@dataclass(frozen=True, slots=True)
class Readiness:
    ready: bool
    missing: tuple[str, ...]  # data types not yet read successfully
    failed: tuple[str, ...]  # data types whose last read ended in an error status


def assess_readiness(statuses: Mapping[str, str]) -> Readiness:
    """Async Bill Pay is ready once every Bill Pay data type has a completed read."""
    missing = tuple(t for t in BILL_PAY_DATA_TYPES if statuses.get(t) != _DONE)
    failed = tuple(t for t in missing if t in statuses and statuses[t] not in READING)
    return Readiness(not missing, missing, failed)
