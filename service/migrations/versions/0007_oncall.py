"""Indexes for the on-call page and CLI: search by event id and company name, a company's
deliveries and jobs newest first, connections in a state most recently changed first.

Each is what keeps one read of a page keyed (see ``schemas/tables.py``), so that the
page stays as fast with a million deliveries stored as with none.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-25

"""

from collections.abc import Sequence

from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_INDEXES = (
    ("ix_deliveries_event_id", "deliveries", ["event_id"]),
    ("ix_deliveries_company_id_received_at", "deliveries", ["company_id", "received_at"]),
    ("ix_outbox_company_id_created_at", "outbox", ["company_id", "created_at"]),
    ("ix_companies_name_id", "companies", ["name", "id"]),
    ("ix_connections_status_deleted_updated_at", "connections",
     ["status", "deleted", "updated_at"]),
)


def upgrade() -> None:
    """Upgrade schema."""
    for name, table, columns in _INDEXES:
        op.create_index(name, table, columns, unique=False)


def downgrade() -> None:
    """Downgrade schema."""
    for name, table, _ in reversed(_INDEXES):
        op.drop_index(name, table_name=table)
