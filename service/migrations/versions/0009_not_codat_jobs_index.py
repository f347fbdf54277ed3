"""An index of the outbox jobs that do not call Codat (pushes), in claim order.

While Codat calls wait (its rate limit reached, or the breaker open), the worker claims only
jobs that do not call Codat. Found through ``ix_outbox_status_next_attempt_at``, that claim
walked every due Codat job to skip it: 6 ms a claim with 50,000 pending on SQLite, in the one
writer the deliveries share, and a worker with pushes to run claims again at once. This index
holds the other jobs alone (its condition is ``schemas.commands.NOT_CODAT_JOBS_SQL``, as the
claim states it), so a Codat job costs it nothing.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-29

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_WHERE = "kind IN ('push_change')"  # NOT_CODAT_JOBS_SQL when this revision was written


def upgrade() -> None:
    """Upgrade schema."""
    op.create_index("ix_outbox_not_codat_status_next_attempt_at", "outbox",
                    ["status", "next_attempt_at", "id"], unique=False,
                    sqlite_where=sa.text(_WHERE), postgresql_where=sa.text(_WHERE))


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_index("ix_outbox_not_codat_status_next_attempt_at", table_name="outbox")
