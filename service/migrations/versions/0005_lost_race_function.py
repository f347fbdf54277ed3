"""A function the delivery path's one-statement commit calls to undo itself (PostgreSQL only).

On PostgreSQL a batch of connection events is first tried as ONE statement that commits on its
own, decided from rows read just before it without a lock. If any of those rows changed in
between (another replica, the worker), the statement calls this function, which raises: the
statement's writes are undone with it and the batch runs again under row locks. The error is a
serialization failure (40001): what happened, and what a client retries.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24

"""

from collections.abc import Sequence

from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("""
CREATE OR REPLACE FUNCTION codat_hooks_lost_race(detail text) RETURNS boolean
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    RAISE EXCEPTION 'codat-hooks: %', detail USING ERRCODE = 'serialization_failure';
END $$""")


def downgrade() -> None:
    """Downgrade schema."""
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP FUNCTION IF EXISTS codat_hooks_lost_race(text)")
