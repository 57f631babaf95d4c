"""The job repository: job instances, executions, step executions (partitions), per-invoice
outcomes and the invoice reader.

A job execution's invoices are split into partitions, one ``step_executions`` row each. Any batch
replica claims a partition (``SELECT ... FOR UPDATE SKIP LOCKED`` on PostgreSQL), holds it by a
lease it renews with heartbeats, and commits each chunk's outcomes with the partition's checkpoint
in one transaction. A partition whose lease ran out (its replica died) is claimed again by
another replica and resumes from its checkpoint.

On SQLite there is no ``SKIP LOCKED``: the claim is a conditional update that only one writer
wins, which is correct but serialises every replica on the database's single write lock; the
embedded database is meant for one batch replica.
"""

from __future__ import annotations

import collections
import datetime as dt
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from heraldo.batch.params import JobParams
from heraldo.convert import utcnow
from heraldo.db import (
    customers,
    dialect_insert,
    invoices,
    job_breakdown,
    job_executions,
    job_instances,
    job_outcomes,
    step_executions,
)
from heraldo.errors import Conflict, FailedPrecondition, NotFound

logger = logging.getLogger(__name__)

STARTING, STARTED, STOPPING = "STARTING", "STARTED", "STOPPING"
STOPPED, COMPLETED, FAILED = "STOPPED", "COMPLETED", "FAILED"
PENDING = "PENDING"
RUNNING_STATUSES = (STARTING, STARTED, STOPPING)
TERMINAL_STATUSES = (STOPPED, COMPLETED, FAILED)
COUNTERS = ("processed", "sent", "skipped", "failed", "duplicate")
STEP_COUNTERS = ("read_count", "write_count", "filter_count", "skip_count", "commit_count",
                 "rollback_count")
STEP_NAME = "notify"
#: The kinds of ``job_breakdown`` rows: outcomes by skip or failure reason, sent ones by replica,
#: sent or already sent ones by notice (a possible copy).
REASON, REPLICA, NOTICE = "reason", "replica", "notice"
SKIP_LIMIT_EXCEEDED, ABANDONED = "SKIP_LIMIT_EXCEEDED", "ABANDONED"


class LeaseLost(Exception):
    """Another replica took the partition over (this one was presumed dead): stop working on it."""


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
    carried_processed: int
    checkpoint: int
    stop_requested: bool
    exit_message: str
    owner: str | None
    heartbeat_time: dt.datetime | None
    create_time: dt.datetime
    start_time: dt.datetime | None
    end_time: dt.datetime | None
    exit_code: str = "UNKNOWN"


@dataclass(frozen=True)
class Step:
    """A partition of a job execution: its key range, checkpoint, lease and counts."""

    id: str
    execution_id: str
    instance_id: str
    step_name: str
    partition_index: int
    after_id: int
    last_id: int
    checkpoint: int
    status: str
    owner: str | None
    heartbeat_time: dt.datetime | None
    read_count: int
    write_count: int
    filter_count: int
    skip_count: int
    commit_count: int
    rollback_count: int
    exit_code: str
    exit_message: str
    create_time: dt.datetime
    start_time: dt.datetime | None
    end_time: dt.datetime | None


@dataclass(frozen=True)
class ChunkCommit:
    """What the worker needs to know after a commit: the job's status and its skips so far."""

    job_status: str
    skips: int


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
    #: Skipped on purpose (not a problem with the invoice): counted as filtered, not skipped.
    filtered: bool = False
    #: Handed to the notifiers (whatever they answered).
    written: bool = False


@dataclass(frozen=True)
class Breakdown:
    """A job's outcomes beyond its counts: see ``JobRepository.breakdown``."""

    reasons: dict[str, int]
    sent_by_replica: dict[str, int]
    notices: dict[str, int]


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
                               owner: str, partitions: int, new_instance: bool = False,
                               instance_id: str | None = None,
                               stale_after_s: float = 30.0) -> Execution:
        """Creates the instance if new, an execution, and its partitions.

        A first execution splits the selection into ``partitions``; a restart carries over the
        previous execution's unfinished partitions with their checkpoints. ``instance_id`` names
        the instance to restart; without it, the newest instance of the name and parameters.

        Raises:
            FailedPrecondition: the instance already completed (and ``new_instance`` is false),
                or one of its executions runs.
        """
        now = utcnow()
        key = params.identity_key()
        async with self.engine.begin() as conn:
            which = ((job_instances.c.id == instance_id,) if instance_id is not None else
                     (job_instances.c.job_name == job_name, job_instances.c.parameters_key == key))
            instance = (await conn.execute(
                sa.select(job_instances.c.id, job_instances.c.run_number).where(*which)
                .order_by(job_instances.c.run_number.desc()).limit(1))).first()
            previous = None
            if instance is not None:
                previous = await self._latest_execution(conn, instance.id)
            if previous is not None and previous.status in RUNNING_STATUSES:
                self._refuse_unless_restartable(previous)
            if instance is None or new_instance:
                instance_id, previous = new_id("ji"), None
                await conn.execute(job_instances.insert().values(
                    id=instance_id, job_name=job_name, parameters_key=key, create_time=now,
                    run_number=instance.run_number + 1 if instance is not None else 1))
            else:
                instance_id = instance.id
            if previous is not None:
                self._refuse_unless_restartable(previous)
                await self._refuse_while_partitions_live(conn, previous, stale_after_s)

            execution_id = new_id("job")
            carried = {name: getattr(previous, name) for name in COUNTERS} if previous else {}
            await conn.execute(job_executions.insert().values(
                id=execution_id, instance_id=instance_id, status=STARTED,
                parameters=params.to_json(), selected=selected,
                carried_processed=previous.processed if previous else 0,
                checkpoint=previous.checkpoint if previous else 0, owner=owner,
                heartbeat_time=now, create_time=now, start_time=now, **carried))
            ranges = await self._partition_ranges(conn, params, previous, partitions)
            if ranges:
                await conn.execute(step_executions.insert(), [
                    {"id": new_id("step"), "execution_id": execution_id,
                     "instance_id": instance_id, "step_name": STEP_NAME,
                     "partition_index": index, "after_id": after_id, "last_id": last_id,
                     "checkpoint": checkpoint, "status": PENDING, "create_time": now}
                    for index, (after_id, last_id, checkpoint) in enumerate(ranges)])
        return await self.get(execution_id)

    @staticmethod
    def _refuse_unless_restartable(previous: Execution) -> None:
        if previous.status == COMPLETED:
            raise Conflict(
                f"job instance {previous.instance_id} already completed as job {previous.id}; "
                "ask for a new instance (newInstance in REST, --new-instance in the CLI), or "
                "change the parameters or the job name, to run it again")
        if previous.status in RUNNING_STATUSES:
            raise Conflict(
                f"job instance {previous.instance_id} is already running as job {previous.id}")

    async def _refuse_while_partitions_live(self, conn: AsyncConnection, previous: Execution,
                                            stale_after_s: float) -> None:
        # A replica may still be finishing its chunk in flight of a job that just failed or
        # stopped; a copy of that partition must not run beside it. A dead replica's lease
        # does not count.
        cutoff = utcnow() - dt.timedelta(seconds=stale_after_s)
        holder = (await conn.execute(sa.select(
            step_executions.c.partition_index, step_executions.c.owner).where(
            step_executions.c.execution_id == previous.id,
            step_executions.c.status == STARTED,
            step_executions.c.heartbeat_time >= cutoff).limit(1))).first()
        if holder is not None:
            raise FailedPrecondition(
                f"job {previous.id} is still finishing partition {holder.partition_index} on "
                f"{holder.owner}; try again when it has ended")

    async def _partition_ranges(self, conn: AsyncConnection, params: JobParams,
                                previous: Execution | None,
                                partitions: int) -> list[tuple[int, int, int]]:
        """(after_id, last_id, checkpoint) of each partition of a new execution."""
        if previous is not None:
            steps = (await conn.execute(sa.select(step_executions).where(
                step_executions.c.execution_id == previous.id).order_by(
                step_executions.c.partition_index))).all()
            if steps:
                return [(step.after_id, step.last_id, step.checkpoint) for step in steps
                        if step.status != COMPLETED]
        # A first run, or a restart of an execution from before partitions existed: split what is
        # left after its checkpoint.
        start_after = previous.checkpoint if previous is not None else 0
        return await _split(conn, params, start_after=start_after, partitions=partitions)

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

    async def read_chunk(self, params: JobParams, *, after_id: int, limit: int,
                         last_id: int | None = None) -> list[InvoiceRow]:
        """Keyset paging on the invoice id: each chunk costs the same, however deep the job is."""
        bounds = [invoices.c.id > after_id]
        if last_id is not None:
            bounds.append(invoices.c.id <= last_id)
        query = (
            sa.select(invoices.c.id, invoices.c.number, invoices.c.kind, invoices.c.issue_date,
                      invoices.c.due_date, invoices.c.amount, invoices.c.currency,
                      invoices.c.customer_id, customers.c.name.label("customer_name"),
                      customers.c.email, customers.c.locale)
            .select_from(invoices.outerjoin(customers, customers.c.id == invoices.c.customer_id))
            .where(*bounds, *_selection(params))
            .order_by(invoices.c.id)
            .limit(limit)
        )
        async with self.engine.connect() as conn:
            return [InvoiceRow(**row._mapping) for row in await conn.execute(query)]

    async def claim_step(self, owner: str, *, stale_after_s: float) -> Step | None:
        """Claims a partition of a running job: a PENDING one, or one whose lease ran out.

        Raises nothing when there is no work: returns None.
        """
        now = utcnow()
        cutoff = now - dt.timedelta(seconds=stale_after_s)
        steps = step_executions.c
        claimable = sa.or_(
            steps.status == PENDING,
            sa.and_(steps.status == STARTED, steps.heartbeat_time < cutoff))
        async with self.engine.begin() as conn:
            candidate = (await conn.execute(
                sa.select(steps.id, steps.owner).select_from(step_executions.join(
                    job_executions, job_executions.c.id == steps.execution_id))
                .where(claimable, job_executions.c.status == STARTED)
                .order_by(steps.create_time, steps.partition_index).limit(1)
                .with_for_update(skip_locked=True, of=step_executions))).first()
            if candidate is None:
                return None
            # The condition is checked again by the update itself: on SQLite, which has no row
            # locks, two replicas may pick the same candidate, and only one update matches.
            claimed = await conn.execute(step_executions.update().where(
                steps.id == candidate.id, claimable).values(
                status=STARTED, owner=owner, heartbeat_time=now,
                start_time=sa.func.coalesce(steps.start_time, now)))
            if claimed.rowcount != 1:
                return None
            step = _to_step((await conn.execute(
                sa.select(step_executions).where(steps.id == candidate.id))).one())
        logger.info("partition claimed job_id=%s partition=%d step_id=%s replica=%s "
                    "checkpoint=%d%s", step.execution_id, step.partition_index, step.id, owner,
                    step.checkpoint,
                    f" taken_over_from={candidate.owner}" if candidate.owner else "")
        return step

    async def commit_chunk(self, step: Step, outcomes: Sequence[Outcome], checkpoint: int, *,
                           owner: str, read: int) -> ChunkCommit:
        """Records a chunk's outcomes and moves the partition's checkpoint in one transaction.

        An outcome already recorded for the instance (a chunk redone after a crash) keeps its
        first record.

        Raises:
            LeaseLost: another replica holds the partition now; nothing was written.
        """
        steps = step_executions.c
        async with self.engine.begin() as conn:
            # Locking the partition row first fences out a replica that lost its lease.
            holder = await conn.scalar(sa.select(steps.owner).where(
                steps.id == step.id, steps.status == STARTED).with_for_update())
            if holder != owner:
                raise LeaseLost(f"partition {step.partition_index} of job {step.execution_id} "
                                f"is held by {holder or 'nobody'} now")
            existing = set()
            if outcomes:
                existing = set((await conn.execute(sa.select(job_outcomes.c.invoice_id).where(
                    job_outcomes.c.instance_id == step.instance_id,
                    job_outcomes.c.invoice_id.in_([o.invoice_id for o in outcomes])))).scalars())
            fresh = [o for o in outcomes if o.invoice_id not in existing]
            if fresh:
                await conn.execute(job_outcomes.insert(), [
                    {"instance_id": step.instance_id, "execution_id": step.execution_id,
                     "invoice_id": o.invoice_id, "notification_id": o.notification_id,
                     "outcome": o.outcome, "reason": o.reason, "replica_id": o.replica_id,
                     "smtp_code": o.smtp_code, "step_id": step.id, "batch_replica": owner}
                    for o in fresh])
            await conn.execute(step_executions.update().where(steps.id == step.id).values(
                checkpoint=checkpoint, heartbeat_time=utcnow(),
                read_count=steps.read_count + read,
                write_count=steps.write_count + sum(1 for o in fresh if o.written),
                filter_count=steps.filter_count + sum(1 for o in fresh if o.filtered),
                skip_count=steps.skip_count + sum(
                    1 for o in fresh if o.outcome == "skipped" and not o.filtered),
                commit_count=steps.commit_count + 1))

            totals = ChunkTotals.of(fresh)
            columns = job_executions.c
            increments = {name: columns[name] + totals.counts.get(name, 0)
                          for name in COUNTERS if name != "processed"}
            await conn.execute(job_executions.update().where(
                columns.id == step.execution_id).values(
                processed=columns.processed + totals.processed, heartbeat_time=utcnow(),
                **increments))
            # After the job's row is locked above, so commits of one job add in turn.
            counts = breakdown_counts(fresh)
            if counts:
                await conn.execute(self._add_to_breakdown(step.execution_id, counts))
            job_status = await conn.scalar(
                sa.select(columns.status).where(columns.id == step.execution_id))
            skips = await conn.scalar(sa.select(sa.func.coalesce(sa.func.sum(steps.skip_count), 0))
                                      .where(steps.instance_id == step.instance_id))
        return ChunkCommit(job_status=job_status, skips=int(skips))

    async def record_rollback(self, step_id: str) -> None:
        """Counts a chunk that was read but not committed (its write failed)."""
        async with self.engine.begin() as conn:
            await conn.execute(step_executions.update().where(
                step_executions.c.id == step_id).values(
                rollback_count=step_executions.c.rollback_count + 1))

    async def end_step(self, step_id: str, status: str, *, owner: str, message: str = "") -> None:
        """Ends a partition this replica holds: COMPLETED, STOPPED or FAILED.

        PENDING releases it instead, for another replica to claim (graceful shutdown).
        """
        steps = step_executions.c
        values = {"status": status, "exit_message": message}
        if status == PENDING:
            values.update(owner=owner, heartbeat_time=None)
        else:
            values.update(exit_code=status, end_time=utcnow())
        async with self.engine.begin() as conn:
            await conn.execute(step_executions.update().where(
                steps.id == step_id, steps.owner == owner, steps.status == STARTED,
            ).values(**values))

    async def fail_job(self, execution_id: str, message: str, *, exit_code: str = FAILED) -> bool:
        """Ends a running execution FAILED at once; its other partitions stop after their chunk.

        Returns whether this call ended it (another replica may have failed it first).
        """
        columns = job_executions.c
        async with self.engine.begin() as conn:
            result = await conn.execute(job_executions.update().where(
                columns.id == execution_id, columns.status.in_(RUNNING_STATUSES)).values(
                status=FAILED, exit_code=exit_code, exit_message=message, end_time=utcnow()))
        return result.rowcount > 0

    async def finalize(self, execution_id: str, *, stale_after_s: float) -> str | None:
        """Ends the execution when its partitions allow: COMPLETED when every one completed (a
        stop asked too late to stop anything changes nothing), STOPPED when a stop was asked and
        no live replica still works on one.

        Returns the status it set, or None when the execution goes on (or had already ended).
        Several replicas may call this at once: the conditional update lets one of them win.
        """
        cutoff = utcnow() - dt.timedelta(seconds=stale_after_s)
        steps, columns = step_executions.c, job_executions.c
        of_execution = steps.execution_id == columns.id
        unfinished = sa.exists().where(of_execution, steps.status != COMPLETED)
        live = sa.exists().where(of_execution, steps.status == STARTED,
                                 steps.heartbeat_time >= cutoff)
        async with self.engine.begin() as conn:
            for status, condition in ((COMPLETED, sa.and_(
                                          columns.status.in_((STARTED, STOPPING)), ~unfinished)),
                                      (STOPPED, sa.and_(columns.status == STOPPING, ~live))):
                result = await conn.execute(job_executions.update().where(
                    columns.id == execution_id, condition).values(
                    status=status, exit_code=status, end_time=utcnow(),
                    exit_message="" if status == COMPLETED else "stopped on request"))
                if result.rowcount:
                    return status
        return None

    async def running_execution_ids(self) -> list[str]:
        async with self.engine.connect() as conn:
            return list((await conn.execute(sa.select(job_executions.c.id).where(
                job_executions.c.status.in_((STARTED, STOPPING))))).scalars())

    async def steps(self, execution_id: str) -> list[Step]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(sa.select(step_executions).where(
                step_executions.c.execution_id == execution_id).order_by(
                step_executions.c.partition_index))
            return [_to_step(row) for row in rows]

    async def find_instance(self, job_name: str, params: JobParams) -> str | None:
        async with self.engine.connect() as conn:
            return await conn.scalar(sa.select(job_instances.c.id).where(
                job_instances.c.job_name == job_name,
                job_instances.c.parameters_key == params.identity_key()).order_by(
                job_instances.c.run_number.desc()).limit(1))

    async def abandon_if_stale(self, instance_id: str, *, stale_after_s: float) -> bool:
        """Marks the instance's running execution FAILED (ABANDONED) when no replica works on it.

        A process killed with SIGKILL leaves its execution STARTED; without this, no one could
        restart it. Any live replica's heartbeat keeps the execution's heartbeat fresh.
        """
        cutoff = utcnow() - dt.timedelta(seconds=stale_after_s)
        columns = job_executions.c
        async with self.engine.begin() as conn:
            result = await conn.execute(job_executions.update().where(
                columns.instance_id == instance_id, columns.status.in_(RUNNING_STATUSES),
                columns.heartbeat_time < cutoff).values(
                status=FAILED, exit_code=ABANDONED, end_time=utcnow(),
                exit_message=f"abandoned: no heartbeat for {stale_after_s:g} s "
                             "(its batch process died)"))
            return result.rowcount > 0

    async def heartbeat(self, owner: str) -> int:
        """Renews the leases of the partitions ``owner`` holds, and their executions' heartbeat.

        Returns how many partitions it renewed.
        """
        now = utcnow()
        steps = step_executions.c
        async with self.engine.begin() as conn:
            held = steps.owner == owner
            renewed = await conn.execute(step_executions.update().where(
                held, steps.status == STARTED).values(heartbeat_time=now))
            await conn.execute(job_executions.update().where(
                job_executions.c.id.in_(sa.select(steps.execution_id).where(
                    held, steps.status == STARTED))).values(heartbeat_time=now))
        return renewed.rowcount

    async def request_stop(self, execution_id: str) -> Execution:
        """Asks a running job to stop; a job already stopping is returned as it is.

        Raises:
            NotFound: no such job.
            FailedPrecondition: the job has ended.
        """
        execution = await self.get(execution_id)
        if execution.status == STOPPING:
            return execution
        if execution.status not in (STARTING, STARTED):
            raise FailedPrecondition(f"job {execution_id} is {execution.status}, not running")
        async with self.engine.begin() as conn:
            await conn.execute(job_executions.update().where(
                job_executions.c.id == execution_id,
                job_executions.c.status.in_((STARTING, STARTED))).values(
                stop_requested=True, status=STOPPING))
        return await self.get(execution_id)

    async def breakdown(self, execution: Execution) -> Breakdown:
        """Skipped and failed invoices by reason, sent ones by replica and by notice, up to and
        including ``execution``: the same span as its counts, which carry over from the
        executions it restarted, and never a later restart's."""
        counts = job_breakdown.c
        so_far = sa.select(job_executions.c.id).where(
            job_executions.c.instance_id == execution.instance_id,
            job_executions.c.create_time <= execution.create_time)
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                sa.select(counts.kind, counts.name, sa.func.sum(counts.count))
                .where(counts.execution_id.in_(so_far)).group_by(counts.kind, counts.name))
            totals: dict[str, dict[str, int]] = {REASON: {}, REPLICA: {}, NOTICE: {}}
            for kind, name, count in rows:
                totals[kind][name] = int(count)
        return Breakdown(reasons=totals[REASON], sent_by_replica=totals[REPLICA],
                         notices=totals[NOTICE])

    def _add_to_breakdown(self, execution_id: str, counts: dict[tuple[str, str], int]):
        """An upsert adding ``counts`` to the execution's breakdown rows."""
        statement = dialect_insert(self.engine)(job_breakdown).values([
            {"execution_id": execution_id, "kind": kind, "name": name, "count": count}
            for (kind, name), count in sorted(counts.items())])
        return statement.on_conflict_do_update(
            index_elements=["execution_id", "kind", "name"],
            set_={"count": job_breakdown.c.count + statement.excluded.count})


def breakdown_counts(outcomes: Sequence[Outcome]) -> dict[tuple[str, str], int]:
    """What a chunk adds to the breakdown: skipped and failed by reason, sent by replica, and
    sent or already sent by notice when there is one."""
    counts: collections.Counter[tuple[str, str]] = collections.Counter()
    for outcome in outcomes:
        if outcome.outcome in ("skipped", "failed"):
            counts[REASON, outcome.reason] += 1
        elif outcome.outcome == "sent":
            counts[REPLICA, outcome.replica_id] += 1
        if outcome.outcome in ("sent", "duplicate") and outcome.reason:
            counts[NOTICE, outcome.reason] += 1
    return counts


async def _split(conn: AsyncConnection, params: JobParams, *, start_after: int,
                 partitions: int) -> list[tuple[int, int, int]]:
    """Splits the selected invoices after ``start_after`` into ranges of about equal counts.

    Boundaries are every n-th selected id (a window function, so a country filter that leaves
    gaps in the ids still gives even partitions).
    """
    selected = sa.select(invoices.c.id, sa.func.row_number().over(
        order_by=invoices.c.id).label("rank")).where(
        invoices.c.id > start_after, *_selection(params)).subquery()
    total, last_id = (await conn.execute(
        sa.select(sa.func.count(), sa.func.max(selected.c.id)))).one()
    if not total:
        return []
    size = -(-total // max(1, min(partitions, total)))
    bounds = list((await conn.execute(
        sa.select(selected.c.id).where(selected.c.rank % size == 0, selected.c.id < last_id)
        .order_by(selected.c.id))).scalars())
    edges = [start_after, *bounds, last_id]
    return [(low, high, low) for low, high in zip(edges, edges[1:], strict=False)]


def _to_step(row) -> Step:
    return Step(**row._mapping)


def _selection(params: JobParams) -> list:
    conditions = [invoices.c.status == "open", invoices.c.kind.in_(params.kinds)]
    if params.issued_from:
        conditions.append(invoices.c.issue_date >= params.issued_from)
    if params.issued_to:
        conditions.append(invoices.c.issue_date <= params.issued_to)
    if params.countries:
        conditions.append(invoices.c.country.in_(params.countries))
    return conditions
