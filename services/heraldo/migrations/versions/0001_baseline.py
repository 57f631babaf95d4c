"""Baseline: customers, invoices, job instances, executions, outcomes and the delivery log.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer, "sqlite")


def _counter(name: str) -> sa.Column:
    return sa.Column(name, sa.BigInteger, nullable=False, server_default="0")


def upgrade() -> None:
    op.create_table(
        "customers",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("email", sa.String(320)),
        sa.Column("locale", sa.String(16), nullable=False, server_default="en-GB"),
        sa.Column("country", sa.String(64)),
    )
    op.create_table(
        "invoices",
        sa.Column("id", BIG_ID, primary_key=True, autoincrement=True),
        sa.Column("number", sa.String(32), nullable=False, unique=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("customer_id", sa.String(32), sa.ForeignKey("customers.id")),
        sa.Column("country", sa.String(64)),
        sa.Column("issue_date", sa.Date, nullable=False),
        sa.Column("due_date", sa.Date, nullable=False),
        sa.Column("amount", sa.Numeric(14, 2), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False, server_default="GBP"),
        sa.Column("status", sa.String(8), nullable=False, server_default="open"),
    )
    op.create_index("invoices_issue_date", "invoices", ["issue_date"])
    op.create_table(
        "job_instances",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("job_name", sa.String(100), nullable=False),
        sa.Column("parameters_key", sa.Text, nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("job_name", "parameters_key", name="job_instances_identity"),
    )
    op.create_table(
        "job_executions",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("instance_id", sa.String(40), sa.ForeignKey("job_instances.id"),
                  nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("parameters", sa.Text, nullable=False),
        *(_counter(name) for name in ("selected", "processed", "sent", "skipped", "failed",
                                      "duplicate", "checkpoint")),
        sa.Column("stop_requested", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("exit_message", sa.Text, nullable=False, server_default=""),
        sa.Column("owner", sa.String(100)),
        sa.Column("heartbeat_time", sa.DateTime(timezone=True)),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("start_time", sa.DateTime(timezone=True)),
        sa.Column("end_time", sa.DateTime(timezone=True)),
    )
    op.create_index("job_executions_instance", "job_executions", ["instance_id"])
    op.create_table(
        "job_outcomes",
        sa.Column("instance_id", sa.String(40), primary_key=True),
        sa.Column("invoice_id", sa.BigInteger, primary_key=True),
        sa.Column("execution_id", sa.String(40), nullable=False),
        sa.Column("notification_id", sa.String(80), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(200), nullable=False, server_default=""),
        sa.Column("replica_id", sa.String(100), nullable=False, server_default=""),
        sa.Column("smtp_code", sa.Integer, nullable=False, server_default="0"),
    )
    op.create_table(
        "deliveries",
        sa.Column("notification_id", sa.String(80), primary_key=True),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("smtp_code", sa.Integer, nullable=False, server_default="0"),
        sa.Column("detail", sa.Text, nullable=False, server_default=""),
        sa.Column("message_id", sa.String(200), nullable=False),
        sa.Column("replica_id", sa.String(100), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="1"),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("update_time", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    for table in ("deliveries", "job_outcomes", "job_executions", "job_instances", "invoices",
                  "customers"):
        op.drop_table(table)
