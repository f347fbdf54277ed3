"""Codat's newest word wins: order keys, the state before the last move, Linked counts.

- ``connections.event_key``: the order key (schemas.order) of the newest word applied; a word
  is written only if its key is greater, so the state no longer depends on arrival order.
- ``connections.previous_state``: the state the newest word moved the connection from.
- ``companies.linked_count``: how many of the company's connections are Linked, kept with every
  move under the company's row lock; ``bill_pay_ready`` is true only while it is above 0.
- ``companies.deleted_key``: the order key of company.deleted, which deletes every connection of
  the company, including those whose events arrive after it.
- ``connection_history.skipped`` and ``event_key``: a move that skipped states, and the key of
  the word each row records.
- The one-statement commit no longer undoes itself: ``codat_hooks_lost_race`` goes.

Existing rows get keys from what they hold: the state's rank, ``last_event_at`` (else the last
update) and ``last_event_id``.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_KEY = sa.Text().with_variant(sa.Text(collation="C"), "postgresql")

# A stored timestamp as the 28-character instant of an order key.
_INSTANT = {
    "postgresql": "to_char({0} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US') || '0Z'",
    # SQLite keeps "YYYY-MM-DD HH:MM:SS.ffffff" (UTC), always with six digits.
    "sqlite": "replace(substr({0}, 1, 26), ' ', 'T') || '0Z'",
}
_RANK = """CASE WHEN deleted THEN '2' WHEN status = 'PendingAuth' THEN '0' ELSE '1' END"""


def upgrade() -> None:
    """Upgrade schema."""
    dialect = op.get_bind().dialect.name
    with op.batch_alter_table("connections") as batch_op:
        batch_op.add_column(sa.Column("event_key", _KEY, nullable=True))
        batch_op.add_column(sa.Column("previous_state", sa.String(), nullable=True))
    with op.batch_alter_table("companies") as batch_op:
        batch_op.add_column(sa.Column("deleted_key", _KEY, nullable=True))
        batch_op.add_column(sa.Column("linked_count", sa.Integer(), nullable=False,
                                      server_default="0"))
    with op.batch_alter_table("connection_history") as batch_op:
        batch_op.add_column(sa.Column("skipped", sa.Boolean(), nullable=False,
                                      server_default=sa.false()))
        batch_op.add_column(sa.Column("event_key", _KEY, nullable=True))

    instant = _INSTANT[dialect]
    op.execute(f"""
UPDATE connections SET event_key = {_RANK} || ' '
    || {instant.format('COALESCE(last_event_at, updated_at)')} || ' '
    || COALESCE(last_event_id, '')
WHERE status IS NOT NULL OR deleted""")
    op.execute(f"""
UPDATE companies SET deleted_key = '2 ' || {instant.format('COALESCE(deleted_at, updated_at)')}
    || ' company'
WHERE deleted""")
    op.execute("""
UPDATE companies SET linked_count = (
    SELECT COUNT(*) FROM connections c
    WHERE c.company_id = companies.id AND c.status = 'Linked' AND NOT c.deleted)""")
    op.execute("UPDATE companies SET bill_pay_ready = FALSE "
               "WHERE bill_pay_ready AND linked_count = 0")
    if dialect == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS codat_hooks_lost_race(text)")


def downgrade() -> None:
    """Downgrade schema."""
    if op.get_bind().dialect.name == "postgresql":
        op.execute("""
CREATE OR REPLACE FUNCTION codat_hooks_lost_race(detail text) RETURNS boolean
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    RAISE EXCEPTION 'codat-hooks: %', detail USING ERRCODE = 'serialization_failure';
END $$""")
    with op.batch_alter_table("connection_history") as batch_op:
        batch_op.drop_column("event_key")
        batch_op.drop_column("skipped")
    with op.batch_alter_table("companies") as batch_op:
        batch_op.drop_column("linked_count")
        batch_op.drop_column("deleted_key")
    with op.batch_alter_table("connections") as batch_op:
        batch_op.drop_column("previous_state")
        batch_op.drop_column("event_key")
