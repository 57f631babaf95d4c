"""The job repository: job instances, executions, per-invoice outcomes and the invoice reader."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from heraldo.batch.params import JobParams
from heraldo.convert import utcnow
from heraldo.db import customers, invoices, job_executions, job_instances, job_outcomes
from heraldo.errors import FailedPrecondition, NotFound

STARTING, STARTED, STOPPING = "STARTING", "STARTED", "STOPPING"
STOPPED, COMPLETED, FAILED = "STOPPED", "COMPLETED", "FAILED"
RUNNING_STATUSES = (STARTING, STARTED, STOPPING)
TERMINAL_STATUSES = (STOPPED, COMPLETED, FAILED)
COUNTERS = ("processed", "sent", "skipped", "failed", "duplicate")


@dataclass(frozen=True)
class Execution:
    id: str
    instance_id: str
    job_name: str
    status: str
    params: JobParams
    selected: int
    processed: int
    sent: int
    skipped: int
    failed: int
    duplicate: int
    checkpoint: int
    stop_requested: bool
    exit_message: str
    owner: str | None
    heartbeat_time: dt.datetime | None
    create_time: dt.datetime
    start_time: dt.datetime | None
    end_time: dt.datetime | None


@dataclass(frozen=True)
class InvoiceRow:
    id: int
    number: str
    kind: str
    issue_date: dt.date
    due_date: dt.date
    amount: object
    currency: str
    customer_id: str | None
    customer_name: str | None
    email: str | None
    locale: str | None


@dataclass(frozen=True)
class Outcome:
    invoice_id: int
    notification_id: str
    outcome: str  # sent | duplicate | skipped | failed
    reason: str = ""
    replica_id: str = ""
    smtp_code: int = 0


@dataclass
class ChunkTotals:
    processed: int = 0
    counts: dict[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, outcomes: Sequence[Outcome]) -> ChunkTotals:
        totals = cls(processed=len(outcomes))
        for outcome in outcomes:
            totals.counts[outcome.outcome] = totals.counts.get(outcome.outcome, 0) + 1
        return totals


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:16]}"


def _execution_query():
    return sa.select(job_executions, job_instances.c.job_name).join(
        job_instances, job_instances.c.id == job_executions.c.instance_id)


def _to_execution(row) -> Execution:
    values = dict(row._mapping)
    values["params"] = JobParams.from_json(values.pop("parameters"))
    return Execution(**values)


class JobRepository:
    """Every read and write of job state goes through here, each in its own short transaction."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def get(self, execution_id: str) -> Execution:
        """Raises NotFound naming the id."""
        async with self.engine.connect() as conn:
            row = (await conn.execute(
                _execution_query().where(job_executions.c.id == execution_id))).first()
        if row is None:
            raise NotFound(f"job {execution_id!r} does not exist")
        return _to_execution(row)

    async def list(self, *, limit: int, before: tuple[dt.datetime, str] | None) -> list[Execution]:
        query = _execution_query().order_by(
            job_executions.c.create_time.desc(), job_executions.c.id.desc()).limit(limit)
        if before is not None:
            create_time, execution_id = before
            query = query.where(sa.or_(
                job_executions.c.create_time < create_time,
                sa.and_(job_executions.c.create_time == create_time,
                        job_executions.c.id < execution_id)))
        async with self.engine.connect() as conn:
            return [_to_execution(row) for row in await conn.execute(query)]

    async def create_execution(self, job_name: str, params: JobParams, *, selected: int,
                               owner: str) -> Execution:
        """Creates the instance if new, and an execution that resumes where the last one ended.

        Raises:
            FailedPrecondition: the instance already completed, or one of its executions runs.
        """
        now = utcnow()
        key = params.identity_key()
        async with self.engine.begin() as conn:
            instance_id = await conn.scalar(sa.select(job_instances.c.id).where(
                job_instances.c.job_name == job_name, job_instances.c.parameters_key == key))
            previous = None
            if instance_id is None:
                instance_id = new_id("ji")
                await conn.execute(job_instances.insert().values(
                    id=instance_id, job_name=job_name, parameters_key=key, create_time=now))
            else:
                previous = await self._latest_execution(conn, instance_id)
            if previous is not None:
                self._refuse_unless_restartable(previous)

            execution_id = new_id("job")
            carried = {name: getattr(previous, name) for name in COUNTERS} if previous else {}
            await conn.execute(job_executions.insert().values(
                id=execution_id, instance_id=instance_id, status=STARTED,
                parameters=params.to_json(), selected=selected,
                checkpoint=previous.checkpoint if previous else 0, owner=owner,
                heartbeat_time=now, create_time=now, start_time=now, **carried))
        return await self.get(execution_id)

    @staticmethod
    def _refuse_unless_restartable(previous: Execution) -> None:
        if previous.status == COMPLETED:
            raise FailedPrecondition(
                f"job instance {previous.instance_id} already completed as job {previous.id}; "
                "change the parameters or the job name to run it again")
        if previous.status in RUNNING_STATUSES:
            raise FailedPrecondition(
                f"job instance {previous.instance_id} is already running as job {previous.id}")

    async def _latest_execution(self, conn: AsyncConnection, instance_id: str) -> Execution | None:
        row = (await conn.execute(_execution_query().where(
            job_executions.c.instance_id == instance_id).order_by(
            job_executions.c.create_time.desc()).limit(1))).first()
        return _to_execution(row) if row is not None else None

    async def latest_of_instance(self, instance_id: str) -> Execution | None:
        async with self.engine.connect() as conn:
            return await self._latest_execution(conn, instance_id)

    async def count_selected(self, params: JobParams) -> int:
        query = sa.select(sa.func.count()).select_from(invoices).where(*_selection(params))
        async with self.engine.connect() as conn:
            return int(await conn.scalar(query))

    async def read_chunk(self, params: JobParams, *, after_id: int, limit: int) -> list[InvoiceRow]:
        """Keyset paging on the invoice id: each chunk costs the same, however deep the job is."""
        query = (
            sa.select(invoices.c.id, invoices.c.number, invoices.c.kind, invoices.c.issue_date,
                      invoices.c.due_date, invoices.c.amount, invoices.c.currency,
                      invoices.c.customer_id, customers.c.name.label("customer_name"),
                      customers.c.email, customers.c.locale)
            .select_from(invoices.outerjoin(customers, customers.c.id == invoices.c.customer_id))
            .where(invoices.c.id > after_id, *_selection(params))
            .order_by(invoices.c.id)
            .limit(limit)
        )
        async with self.engine.connect() as conn:
            return [InvoiceRow(**row._mapping) for row in await conn.execute(query)]

    async def commit_chunk(self, execution_id: str, instance_id: str, outcomes: Sequence[Outcome],
                           checkpoint: int) -> bool:
        """Records a chunk's outcomes and moves the checkpoint in one transaction.

        Returns whether a stop was requested meanwhile. An outcome already recorded for the
        instance (a chunk redone after a crash) keeps its first record.
        """
        async with self.engine.begin() as conn:
            existing = set()
            if outcomes:
                existing = set((await conn.execute(sa.select(job_outcomes.c.invoice_id).where(
                    job_outcomes.c.instance_id == instance_id,
                    job_outcomes.c.invoice_id.in_([o.invoice_id for o in outcomes])))).scalars())
            fresh = [o for o in outcomes if o.invoice_id not in existing]
            if fresh:
                await conn.execute(job_outcomes.insert(), [
                    {"instance_id": instance_id, "execution_id": execution_id,
                     "invoice_id": o.invoice_id, "notification_id": o.notification_id,
                     "outcome": o.outcome, "reason": o.reason, "replica_id": o.replica_id,
                     "smtp_code": o.smtp_code} for o in fresh])
            totals = ChunkTotals.of(fresh)
            columns = job_executions.c
            increments = {name: columns[name] + totals.counts.get(name, 0)
                          for name in COUNTERS if name != "processed"}
            await conn.execute(job_executions.update().where(columns.id == execution_id).values(
                processed=columns.processed + totals.processed, checkpoint=checkpoint,
                heartbeat_time=utcnow(), **increments))
            return bool(await conn.scalar(
                sa.select(columns.stop_requested).where(columns.id == execution_id)))

    async def find_instance(self, job_name: str, params: JobParams) -> str | None:
        async with self.engine.connect() as conn:
            return await conn.scalar(sa.select(job_instances.c.id).where(
                job_instances.c.job_name == job_name,
                job_instances.c.parameters_key == params.identity_key()))

    async def abandon_if_stale(self, instance_id: str, *, stale_after_s: float) -> bool:
        """Marks the instance's running execution FAILED when its heartbeat stopped.

        A process killed with SIGKILL leaves its execution STARTED; without this, no one could
        ever restart it.
        """
        cutoff = utcnow() - dt.timedelta(seconds=stale_after_s)
        columns = job_executions.c
        async with self.engine.begin() as conn:
            result = await conn.execute(job_executions.update().where(
                columns.instance_id == instance_id, columns.status.in_(RUNNING_STATUSES),
                columns.heartbeat_time < cutoff).values(
                status=FAILED, end_time=utcnow(),
                exit_message=f"abandoned: no heartbeat for {stale_after_s:g} s "
                             "(its batch process died)"))
            return result.rowcount > 0

    async def heartbeat(self, execution_id: str) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(job_executions.update().where(
                job_executions.c.id == execution_id).values(heartbeat_time=utcnow()))

    async def finish(self, execution_id: str, status: str, message: str = "") -> None:
        async with self.engine.begin() as conn:
            await conn.execute(job_executions.update().where(
                job_executions.c.id == execution_id).values(
                status=status, exit_message=message, end_time=utcnow()))

    async def request_stop(self, execution_id: str) -> Execution:
        """Raises NotFound, or FailedPrecondition when the job is not running."""
        execution = await self.get(execution_id)
        if execution.status not in (STARTING, STARTED):
            raise FailedPrecondition(f"job {execution_id} is {execution.status}, not running")
        async with self.engine.begin() as conn:
            await conn.execute(job_executions.update().where(
                job_executions.c.id == execution_id,
                job_executions.c.status.in_((STARTING, STARTED))).values(
                stop_requested=True, status=STOPPING))
        return await self.get(execution_id)

    async def breakdown(self, instance_id: str) -> tuple[dict[str, int], dict[str, int]]:
        """Skipped and failed invoices by reason, and sent ones by replica, for the instance."""
        outcomes = job_outcomes.c
        async with self.engine.connect() as conn:
            reasons = await conn.execute(
                sa.select(outcomes.reason, sa.func.count()).where(
                    outcomes.instance_id == instance_id,
                    outcomes.outcome.in_(("skipped", "failed"))).group_by(outcomes.reason))
            replicas = await conn.execute(
                sa.select(outcomes.replica_id, sa.func.count()).where(
                    outcomes.instance_id == instance_id,
                    outcomes.outcome == "sent").group_by(outcomes.replica_id))
            return ({reason: count for reason, count in reasons},
                    {replica: count for replica, count in replicas})


def _selection(params: JobParams) -> list:
    conditions = [invoices.c.status == "open", invoices.c.kind.in_(params.kinds)]
    if params.issued_from:
        conditions.append(invoices.c.issue_date >= params.issued_from)
    if params.issued_to:
        conditions.append(invoices.c.issue_date <= params.issued_to)
    if params.countries:
        conditions.append(invoices.c.country.in_(params.countries))
    return conditions
