"""Executions remember the processed count a restart carried over, for a rate of their own.

Executions restarted before this revision keep 0: their rate still counts the carried invoices.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("job_executions", sa.Column("carried_processed", sa.BigInteger,
                                              nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("job_executions") as table:
        table.drop_column("carried_processed")
