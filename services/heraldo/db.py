"""The database: one schema shared by the batch service (customers, invoices, job repository)
and the notifiers (delivery log), on PostgreSQL or, where none is reachable, an embedded SQLite
file.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from heraldo.errors import Unavailable

logger = logging.getLogger(__name__)

#: Where the embedded default keeps its file when DATABASE_URL is not set.
DEFAULT_SQLITE_PATH = Path("var") / "heraldo.db"

metadata = sa.MetaData()

customers = sa.Table(
    "customers", metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("email", sa.String(320)),
    sa.Column("locale", sa.String(16), nullable=False, server_default="en-GB"),
    sa.Column("country", sa.String(64)),
)

invoices = sa.Table(
    "invoices", metadata,
    # A dense surrogate key: the batch reader pages on it (keyset, never OFFSET).
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True,
              autoincrement=True),
    sa.Column("number", sa.String(32), nullable=False, unique=True),
    # invoice | credit_note | adjustment
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("customer_id", sa.String(32), sa.ForeignKey("customers.id")),
    sa.Column("country", sa.String(64)),
    sa.Column("issue_date", sa.Date, nullable=False),
    sa.Column("due_date", sa.Date, nullable=False),
    sa.Column("amount", sa.Numeric(14, 2), nullable=False),
    sa.Column("currency", sa.String(3), nullable=False, server_default="GBP"),
    # open | paid: only open documents are notified.
    sa.Column("status", sa.String(8), nullable=False, server_default="open"),
)
sa.Index("invoices_issue_date", invoices.c.issue_date)

job_instances = sa.Table(
    "job_instances", metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("job_name", sa.String(100), nullable=False),
    # The canonical JSON of the identifying parameters: same name and key, same instance.
    sa.Column("parameters_key", sa.Text, nullable=False),
    sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
    # 1 for the first instance of a selection; StartJob with new_instance adds the next one, so a
    # completed selection can be run again on purpose without weakening the refusal by default.
    sa.Column("run_number", sa.Integer, nullable=False, server_default="1"),
    sa.UniqueConstraint("job_name", "parameters_key", "run_number",
                        name="job_instances_identity"),
)

job_executions = sa.Table(
    "job_executions", metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("instance_id", sa.String(40), sa.ForeignKey("job_instances.id"), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("parameters", sa.Text, nullable=False),
    sa.Column("selected", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("processed", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("sent", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("skipped", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("failed", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("duplicate", sa.BigInteger, nullable=False, server_default="0"),
    # Of ``processed``, those carried over from earlier executions of the instance: a restart's
    # rate counts only what it processed itself.
    sa.Column("carried_processed", sa.BigInteger, nullable=False, server_default="0"),
    # The last invoice id whose outcome is committed: a restart reads from the next one.
    sa.Column("checkpoint", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("stop_requested", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("exit_message", sa.Text, nullable=False, server_default=""),
    # COMPLETED, STOPPED, FAILED, SKIP_LIMIT_EXCEEDED, ABANDONED: what scripts branch on.
    sa.Column("exit_code", sa.String(32), nullable=False, server_default="UNKNOWN"),
    sa.Column("owner", sa.String(100)),
    sa.Column("heartbeat_time", sa.DateTime(timezone=True)),
    sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
    sa.Column("start_time", sa.DateTime(timezone=True)),
    sa.Column("end_time", sa.DateTime(timezone=True)),
)
sa.Index("job_executions_instance", job_executions.c.instance_id)

job_outcomes = sa.Table(
    "job_outcomes", metadata,
    sa.Column("instance_id", sa.String(40), primary_key=True),
    sa.Column("invoice_id", sa.BigInteger, primary_key=True),
    sa.Column("execution_id", sa.String(40), nullable=False),
    sa.Column("notification_id", sa.String(80), nullable=False),
    # sent | duplicate | skipped | failed
    sa.Column("outcome", sa.String(16), nullable=False),
    sa.Column("reason", sa.String(200), nullable=False, server_default=""),
    sa.Column("replica_id", sa.String(100), nullable=False, server_default=""),
    sa.Column("smtp_code", sa.Integer, nullable=False, server_default="0"),
    # The step execution (partition) and the batch replica that recorded the outcome.
    sa.Column("step_id", sa.String(40), nullable=False, server_default=""),
    sa.Column("batch_replica", sa.String(100), nullable=False, server_default=""),
)

# Running counts of an execution's outcomes, by skip or failure reason (kind "reason"), by the
# notifier replica that sent them (kind "replica") and by notice on sent or already sent ones
# (kind "notice": a possible copy), added to by each chunk's commit. Watching a job
# reads these few rows; counting them from job_outcomes instead cost a scan of every outcome so far
# on each poll, which for a large job took more of PostgreSQL than the job itself.
job_breakdown = sa.Table(
    "job_breakdown", metadata,
    sa.Column("execution_id", sa.String(40), sa.ForeignKey("job_executions.id"),
              primary_key=True),
    sa.Column("kind", sa.String(16), primary_key=True),
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("count", sa.BigInteger, nullable=False),
)

# One row per partition of a job execution, Spring Batch's step execution: the unit a batch replica
# claims, with its own lease (owner + heartbeat), checkpoint and counts.
step_executions = sa.Table(
    "step_executions", metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("execution_id", sa.String(40), sa.ForeignKey("job_executions.id"), nullable=False),
    sa.Column("instance_id", sa.String(40), nullable=False),
    sa.Column("step_name", sa.String(100), nullable=False),
    sa.Column("partition_index", sa.Integer, nullable=False),
    # The partition holds the selected invoices with after_id < id <= last_id.
    sa.Column("after_id", sa.BigInteger, nullable=False),
    sa.Column("last_id", sa.BigInteger, nullable=False),
    # The last invoice id whose outcome is committed: work resumes after it.
    sa.Column("checkpoint", sa.BigInteger, nullable=False),
    # PENDING | STARTED | COMPLETED | STOPPED | FAILED
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("owner", sa.String(100)),
    sa.Column("heartbeat_time", sa.DateTime(timezone=True)),
    sa.Column("read_count", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("write_count", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("filter_count", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("skip_count", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("commit_count", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("rollback_count", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("exit_code", sa.String(32), nullable=False, server_default="UNKNOWN"),
    sa.Column("exit_message", sa.Text, nullable=False, server_default=""),
    sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
    sa.Column("start_time", sa.DateTime(timezone=True)),
    sa.Column("end_time", sa.DateTime(timezone=True)),
    sa.UniqueConstraint("execution_id", "partition_index", name="step_executions_partition"),
)
sa.Index("step_executions_status", step_executions.c.status)
sa.Index("step_executions_instance", step_executions.c.instance_id)

deliveries = sa.Table(
    "deliveries", metadata,
    sa.Column("notification_id", sa.String(80), primary_key=True),
    # sending | sent | temporary_failure | permanent_failure
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("smtp_code", sa.Integer, nullable=False, server_default="0"),
    sa.Column("detail", sa.Text, nullable=False, server_default=""),
    sa.Column("message_id", sa.String(200), nullable=False),
    sa.Column("replica_id", sa.String(100), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="1"),
    sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
    sa.Column("update_time", sa.DateTime(timezone=True), nullable=False),
    # Some attempt was taken over from a replica that died holding it: a first copy may exist.
    sa.Column("possible_copy", sa.Boolean, nullable=False, server_default=sa.false()),
)


def database_url(url: str = "") -> str:
    """``url``, else ``DATABASE_URL``, as an async SQLAlchemy URL; else the embedded SQLite file.

    ``postgresql://`` and ``postgres://`` URLs get the asyncpg driver.
    """
    url = url or os.environ.get("DATABASE_URL", "")
    if not url:
        DEFAULT_SQLITE_PATH.parent.mkdir(parents=True, exist_ok=True)
        return f"sqlite+aiosqlite:///{DEFAULT_SQLITE_PATH.resolve()}"
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix):]
    return url


#: asyncpg prepares each statement once per connection, and after a few runs PostgreSQL reuses a
#: generic plan made for the table as it was then. A plan made while ``deliveries`` or
#: ``job_outcomes`` was empty scans the whole table, and keeps doing so as it grows (the delivery
#: log's record went from 1 ms to 100 ms within one 20,000-email job): planning each execution
#: afresh costs a few dozen microseconds and follows the table's size.
POSTGRES_SERVER_SETTINGS = {"plan_cache_mode": "force_custom_plan"}


def create_engine(url: str, *, pool_size: int = 5, pre_ping: bool = True) -> AsyncEngine:
    """An engine for ``url``. ``pre_ping`` checks each pooled PostgreSQL connection before
    lending it, a round trip that a caller which retries on a dead connection can spare."""
    if url.startswith("sqlite"):
        engine = create_async_engine(url, connect_args={"timeout": 30})

        # Several processes share the file: WAL lets readers run beside the one writer, and
        # busy_timeout makes a writer wait for the lock instead of failing at once.
        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record):
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        return engine
    return create_async_engine(
        url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=pre_ping,
        connect_args={"server_settings": POSTGRES_SERVER_SETTINGS})


def asyncpg_dsn(url: sa.engine.URL) -> str:
    """The plain ``postgresql://`` DSN of an engine's URL, for a connection made with asyncpg."""
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def is_postgres(engine: AsyncEngine) -> bool:
    return engine.dialect.name == "postgresql"


def dialect_insert(bind: AsyncEngine | AsyncConnection):
    """The INSERT construct of ``bind``'s dialect: the one with ON CONFLICT, on both databases."""
    return (postgresql if bind.dialect.name == "postgresql" else sqlite).insert


def describe(url: str) -> str:
    """The URL without its password, for log lines and error messages."""
    return sa.engine.make_url(url).render_as_string(hide_password=True)


async def create_schema(engine: AsyncEngine) -> None:
    """Brings the schema to the newest migration (see ``heraldo.migrations``).

    Raises Unavailable, naming the database, when it cannot connect.
    """
    from heraldo.migrations import upgrade

    try:
        await upgrade(engine)
    except (OSError, sa.exc.SQLAlchemyError) as exc:
        raise Unavailable(f"cannot reach the database {describe(str(engine.url))}: {exc}") from exc
