"""A restarted execution remembers how many of its processed invoices it carried over, so its
rate and time left count only its own work.

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
