"""Running counts of each execution's outcomes by reason and by replica, filled from the outcomes
already recorded.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "job_breakdown",
        sa.Column("execution_id", sa.String(40), sa.ForeignKey("job_executions.id"),
                  primary_key=True),
        sa.Column("kind", sa.String(16), primary_key=True),
        sa.Column("name", sa.String(200), primary_key=True),
        sa.Column("count", sa.BigInteger, nullable=False),
    )
    op.execute("""
        INSERT INTO job_breakdown (execution_id, kind, name, count)
        SELECT execution_id, 'reason', reason, count(*) FROM job_outcomes
        WHERE outcome IN ('skipped', 'failed') GROUP BY execution_id, reason
        UNION ALL
        SELECT execution_id, 'replica', replica_id, count(*) FROM job_outcomes
        WHERE outcome = 'sent' GROUP BY execution_id, replica_id
    """)


def downgrade() -> None:
    op.drop_table("job_breakdown")
