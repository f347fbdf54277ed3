"""The change feed and push subscriptions.

- ``changes``: every change of a connection's state or a company's readiness, numbered in an
  order that follows commit order for each connection (AUTOINCREMENT on SQLite, so an id is
  never reused; a sequence on PostgreSQL);
- ``feed_state``: the floor under which changes were pruned (a cursor below it gets 410);
- ``subscriber_cursors``: how far each push subscriber's changes went to the outbox;
- ``outbox.sequence`` and ``ordinal``: jobs of one sequence (a subscriber's pushes about one
  connection) are claimed one at a time, in order.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-29

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table(
        "changes",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False,
                  primary_key=True, autoincrement=True),
        sa.Column("type", sa.String(), nullable=False),
        sa.Column("at", _TS, nullable=False),
        sa.Column("company_id", sa.String(), nullable=False),
        sa.Column("connection_id", sa.String(), nullable=True),
        sa.Column("data", sa.JSON(), nullable=True),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "feed_state",
        sa.Column("id", sa.Integer(), nullable=False, primary_key=True),
        sa.Column("floor", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
    )
    op.create_table(
        "subscriber_cursors",
        sa.Column("name", sa.String(), nullable=False, primary_key=True),
        sa.Column("position", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
    )
    with op.batch_alter_table("outbox") as batch_op:
        batch_op.add_column(sa.Column("sequence", sa.String(), nullable=True))
        batch_op.add_column(sa.Column("ordinal", sa.BigInteger(), nullable=True))
        batch_op.create_index("ix_outbox_sequence", ["sequence", "ordinal"], unique=False,
                              sqlite_where=sa.text("sequence IS NOT NULL"),
                              postgresql_where=sa.text("sequence IS NOT NULL"))


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("outbox") as batch_op:
        batch_op.drop_index("ix_outbox_sequence")
        batch_op.drop_column("ordinal")
        batch_op.drop_column("sequence")
    op.drop_table("subscriber_cursors")
    op.drop_table("feed_state")
    op.drop_table("changes")
