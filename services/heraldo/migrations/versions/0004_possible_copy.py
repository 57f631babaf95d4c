"""Deliveries remember that an attempt was taken over from a replica that died holding it, so
every later answer for the notification can say a first copy may have gone out.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("deliveries", sa.Column("possible_copy", sa.Boolean, nullable=False,
                                          server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("deliveries") as table:
        table.drop_column("possible_copy")
