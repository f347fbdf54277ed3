"""Indexes the on-call page and CLI read along (migration 0007_oncall creates them).

Kept apart from :mod:`schemas.tables` so that the tables' module stays the delivery path's;
importing this module adds the indexes to the tables' metadata (what alembic compares the
migrated schema with). Every one serves a keyed or bounded read of a page:

- ``deliveries (event_id)``: the search finds a delivery by Codat's event id;
- ``deliveries (company_id, received_at)``: a company's timeline, newest deliveries first;
- ``outbox (company_id, created_at)``: a company's jobs, newest first;
- ``companies (name, id)``: the search by the start of a company's name;
- ``connections (status, deleted, updated_at)``: connections in one state, most recently
  changed first; and the count of each state, from the index alone.
"""

from __future__ import annotations

import sqlalchemy as sa

from schemas.tables import Company, Connection, Delivery, OutboxJob


def _table(model: type) -> sa.Table:
    table: sa.Table = model.__table__  # type: ignore[attr-defined]
    return table


def _index(name: str, model: type, *columns: str) -> sa.Index:
    table = _table(model)
    for index in table.indexes:
        if index.name == name:  # imported twice (e.g. reloaded): attach once
            return index
    return sa.Index(name, *(table.c[c] for c in columns))


DELIVERIES_EVENT_ID = _index("ix_deliveries_event_id", Delivery, "event_id")
DELIVERIES_COMPANY = _index("ix_deliveries_company_id_received_at", Delivery, "company_id",
                            "received_at")
OUTBOX_COMPANY = _index("ix_outbox_company_id_created_at", OutboxJob, "company_id", "created_at")
COMPANIES_NAME = _index("ix_companies_name_id", Company, "name", "id")
CONNECTIONS_STATE = _index("ix_connections_status_deleted_updated_at", Connection, "status",
                           "deleted", "updated_at")
