"""Batch engine: step executions (partitions with leases and checkpoints), exit codes, instance
run numbers, and which step and batch replica recorded each outcome.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

STEP_COUNTERS = ("read_count", "write_count", "filter_count", "skip_count", "commit_count",
                 "rollback_count")


def upgrade() -> None:
    with op.batch_alter_table("job_instances") as batch:
        batch.add_column(sa.Column("run_number", sa.Integer, nullable=False, server_default="1"))
        batch.drop_constraint("job_instances_identity", type_="unique")
        batch.create_unique_constraint("job_instances_identity",
                                       ["job_name", "parameters_key", "run_number"])
    op.add_column("job_executions", sa.Column("exit_code", sa.String(32), nullable=False,
                                              server_default="UNKNOWN"))
    op.add_column("job_outcomes", sa.Column("step_id", sa.String(40), nullable=False,
                                            server_default=""))
    op.add_column("job_outcomes", sa.Column("batch_replica", sa.String(100), nullable=False,
                                            server_default=""))
    op.create_table(
        "step_executions",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("execution_id", sa.String(40), sa.ForeignKey("job_executions.id"),
                  nullable=False),
        sa.Column("instance_id", sa.String(40), nullable=False),
        sa.Column("step_name", sa.String(100), nullable=False),
        sa.Column("partition_index", sa.Integer, nullable=False),
        sa.Column("after_id", sa.BigInteger, nullable=False),
        sa.Column("last_id", sa.BigInteger, nullable=False),
        sa.Column("checkpoint", sa.BigInteger, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("owner", sa.String(100)),
        sa.Column("heartbeat_time", sa.DateTime(timezone=True)),
        *(sa.Column(name, sa.BigInteger, nullable=False, server_default="0")
          for name in STEP_COUNTERS),
        sa.Column("exit_code", sa.String(32), nullable=False, server_default="UNKNOWN"),
        sa.Column("exit_message", sa.Text, nullable=False, server_default=""),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("start_time", sa.DateTime(timezone=True)),
        sa.Column("end_time", sa.DateTime(timezone=True)),
        sa.UniqueConstraint("execution_id", "partition_index", name="step_executions_partition"),
    )
    op.create_index("step_executions_status", "step_executions", ["status"])
    op.create_index("step_executions_instance", "step_executions", ["instance_id"])


def downgrade() -> None:
    op.drop_table("step_executions")
    with op.batch_alter_table("job_outcomes") as batch:
        batch.drop_column("batch_replica")
        batch.drop_column("step_id")
    with op.batch_alter_table("job_executions") as batch:
        batch.drop_column("exit_code")
    with op.batch_alter_table("job_instances") as batch:
        batch.drop_constraint("job_instances_identity", type_="unique")
        batch.create_unique_constraint("job_instances_identity", ["job_name", "parameters_key"])
        batch.drop_column("run_number")
