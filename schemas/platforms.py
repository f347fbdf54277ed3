"""Accounting platforms Bill Pay supports, by mode (contract section 3)."""

from __future__ import annotations

from enum import StrEnum


class BillPayMode(StrEnum):
    ASYNC = "async"  # Sync for Payables v1: cached reads, push operations
    SYNC = "sync"  # Sync for Payables v2: real-time reads and writes


PLATFORM_NAMES: dict[str, str] = {
    "fbrh": "FreeAgent", "pdvj": "MYOB Business", "akxx": "Oracle NetSuite",
    "pqsw": "QuickBooks Desktop", "qhyg": "QuickBooks Online", "knfz": "Sage Intacct",
    "gbol": "Xero", "rwuv": "Zoho Books", "ndsk": "QuickBooks Online Sandbox",
}

SUPPORTED_PLATFORMS: dict[BillPayMode, frozenset[str]] = {
    BillPayMode.ASYNC: frozenset({"pdvj", "akxx", "pqsw", "qhyg", "knfz", "gbol"}),
    BillPayMode.SYNC: frozenset({"fbrh", "akxx", "qhyg", "knfz", "gbol", "rwuv"}),
}
