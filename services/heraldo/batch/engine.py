"""The partition worker: claims partitions of running jobs and runs each as a chunk-oriented step
(read, process, write, commit), with leases, skip limit, stop and graceful release.

Every batch replica runs one worker. It learns of new work by polling the partition table every
``poll_interval_s`` (and at once when its own replica starts a job), so replicas need no channel
between them: the database is the only coordinator.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from prometheus_client import Counter, Gauge, Histogram

from heraldo.batch.processor import NOT_POSITIVE, process_chunk
from heraldo.batch.repository import (
    COMPLETED,
    FAILED,
    PENDING,
    SKIP_LIMIT_EXCEEDED,
    STARTED,
    STOPPED,
    Execution,
    JobRepository,
    LeaseLost,
    Outcome,
    Step,
)
from heraldo.batch.writer import MeshWriter
from heraldo.errors import HeraldoError
from heraldo.v1 import notification_pb2

logger = logging.getLogger(__name__)

# Job-level series carry no job id: ids are unbounded, and a job's own progress is in GetJob.
JOBS_RUNNING = Gauge("heraldo_batch_jobs_running",
                     "Job partitions (step executions) running in this process")
JOBS_FINISHED = Counter("heraldo_batch_jobs_finished_total", "Job executions ended, by status",
                        ["status"])
ITEMS_SELECTED = Counter("heraldo_batch_items_selected_total",
                         "Invoices left to process when a partition was claimed")
ITEMS_PROCESSED = Counter("heraldo_batch_items_processed_total",
                          "Invoices processed and committed, by outcome and reason "
                          "(for sent and duplicate, empty or the possible-copy notice)",
                          ["outcome", "reason"])
CHUNK_SECONDS = Histogram("heraldo_batch_chunk_seconds",
                          "One chunk: read, process, deliver and commit",
                          buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))

OUTCOME_BY_STATUS = {
    notification_pb2.DELIVERY_STATUS_SENT: "sent",
    notification_pb2.DELIVERY_STATUS_DUPLICATE: "duplicate",
    notification_pb2.DELIVERY_STATUS_TEMPORARY_FAILURE: "failed",
    notification_pb2.DELIVERY_STATUS_PERMANENT_FAILURE: "failed",
    notification_pb2.DELIVERY_STATUS_REJECTED: "skipped",
}


#: The notice on a notification sent after the replica first holding it died: that replica
#: may or may not have handed it to the SMTP server; the log cannot tell, so it is flagged.
POSSIBLE_COPY = ("sent after the replica first holding it died, which may have sent a copy "
                 "(same Message-ID)")


def outcome_reason(result: notification_pb2.DeliveryResult) -> str:
    """A short, groupable reason: the SMTP code class rather than the server's free text."""
    status = result.status
    if status == notification_pb2.DELIVERY_STATUS_PERMANENT_FAILURE:
        return f"rejected by mail server ({result.smtp_code or 'no code'})"
    if status == notification_pb2.DELIVERY_STATUS_TEMPORARY_FAILURE:
        return f"temporary failure after retries ({result.smtp_code or 'network'})"
    if status == notification_pb2.DELIVERY_STATUS_REJECTED:
        return f"rejected by notifier: {result.detail}"
    if result.possible_copy and status in (notification_pb2.DELIVERY_STATUS_SENT,
                                           notification_pb2.DELIVERY_STATUS_DUPLICATE):
        # A duplicate too: the result that said "sent" may have been lost on its way here.
        return POSSIBLE_COPY
    return ""


class PartitionWorker:
    """Runs partitions of any running job, up to ``max_partitions`` at a time in this replica.

    A partition ends COMPLETED (its range is done), STOPPED (its job was stopped or failed
    elsewhere, after the chunk in flight), FAILED (its job fails with the reason), or is released
    back to PENDING when this replica shuts down.
    """

    def __init__(self, *, repository: JobRepository, writer: MeshWriter, replica_id: str,
                 default_chunk_size: int, heartbeat_interval_s: float, stale_after_s: float,
                 poll_interval_s: float, max_partitions: int) -> None:
        self.repository = repository
        self.writer = writer
        self.replica_id = replica_id
        self.default_chunk_size = default_chunk_size
        self.heartbeat_interval_s = heartbeat_interval_s
        self.stale_after_s = stale_after_s
        self.poll_interval_s = poll_interval_s
        self.max_partitions = max_partitions
        self._running: dict[str, asyncio.Task] = {}
        self._wake = asyncio.Event()
        self._releasing = False
        self._loops: list[asyncio.Task] = []

    def start(self) -> None:
        self._loops = [asyncio.create_task(self._poll_loop(), name="partition-poll"),
                       asyncio.create_task(self._beat_loop(), name="partition-heartbeat")]

    def wake(self) -> None:
        """Looks for work now rather than at the next poll (this replica just started a job)."""
        self._wake.set()

    async def close(self, grace_s: float) -> None:
        """Finishes each running partition's chunk in flight, then releases it to other replicas.

        Partitions still running after ``grace_s`` are cancelled; their leases run out and another
        replica takes them over from their checkpoints.
        """
        self._releasing = True
        for loop in self._loops:
            loop.cancel()
        for loop in self._loops:
            with contextlib.suppress(asyncio.CancelledError):
                await loop
        tasks = list(self._running.values())
        if not tasks:
            return
        started = time.perf_counter()
        _, pending = await asyncio.wait(tasks, timeout=grace_s)
        for task in pending:
            task.cancel()
        logger.info("partitions released replica=%s finished=%d cancelled=%d waited_s=%.1f",
                    self.replica_id, len(tasks) - len(pending), len(pending),
                    time.perf_counter() - started)

    async def _poll_loop(self) -> None:
        while True:
            try:
                await self._fill()
            except Exception as exc:  # noqa: BLE001 - the database may be briefly unreachable
                logger.warning("partition poll failed replica=%s: %s", self.replica_id, exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_interval_s)
            self._wake.clear()

    async def _fill(self) -> None:
        # Executions whose last partitions ended elsewhere, or that were stopped while only dead
        # replicas held partitions, are ended here: whichever replica polls first does it.
        for execution_id in await self.repository.running_execution_ids():
            await self._finalize(execution_id)
        while len(self._running) < self.max_partitions and not self._releasing:
            step = await self.repository.claim_step(self.replica_id,
                                                    stale_after_s=self.stale_after_s)
            if step is None:
                return
            task = asyncio.create_task(self._run_partition(step), name=f"partition-{step.id}")
            self._running[step.id] = task
            task.add_done_callback(lambda _, step_id=step.id: self._on_partition_done(step_id))

    def _on_partition_done(self, step_id: str) -> None:
        self._running.pop(step_id, None)
        # A free slot: look for more work at once.
        self._wake.set()

    async def _beat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_interval_s)
            if not self._running:
                continue
            try:
                await self.repository.heartbeat(self.replica_id)
            except Exception as exc:  # noqa: BLE001 - a missed beat is retried next interval
                logger.warning("heartbeat failed replica=%s: %s", self.replica_id, exc)

    async def _run_partition(self, step: Step) -> None:
        JOBS_RUNNING.inc()
        try:
            execution = await self.repository.get(step.execution_id)
            status, message = await self._run_step(execution, step)
        except LeaseLost as exc:
            logger.warning("partition lost job_id=%s partition=%d replica=%s: %s",
                           step.execution_id, step.partition_index, self.replica_id, exc)
            return
        except Exception as exc:  # noqa: BLE001 - a partition must end, never stay STARTED
            logger.exception("partition crashed job_id=%s partition=%d", step.execution_id,
                             step.partition_index)
            status, message = FAILED, f"internal error: {type(exc).__name__}: {exc}"
        finally:
            JOBS_RUNNING.dec()
        await self.repository.end_step(step.id, status, owner=self.replica_id, message=message)
        logger.info("partition %s job_id=%s partition=%d replica=%s%s",
                    "released" if status == PENDING else status.lower(), step.execution_id,
                    step.partition_index, self.replica_id,
                    f" message={message!r}" if message else "")
        if status == FAILED and await self.repository.fail_job(step.execution_id, message):
            await self._log_end(step.execution_id)
        await self._finalize(step.execution_id)

    async def _run_step(self, execution: Execution, step: Step) -> tuple[str, str]:
        """Returns the partition's end status and message."""
        params = execution.params
        chunk_size = params.chunk_size or self.default_chunk_size
        checkpoint = step.checkpoint
        while True:
            if self._releasing:
                return PENDING, "released by a replica shutting down"
            chunk_started = time.perf_counter()
            rows = await self.repository.read_chunk(params, after_id=checkpoint, limit=chunk_size,
                                                    last_id=step.last_id)
            if not rows:
                return COMPLETED, ""
            try:
                outcomes = await self._process_and_write(execution, rows)
            except HeraldoError as exc:
                await self.repository.record_rollback(step.id)
                return FAILED, str(exc)
            checkpoint = rows[-1].id
            commit = await self.repository.commit_chunk(step, outcomes, checkpoint,
                                                        owner=self.replica_id, read=len(rows))
            # Counted after the commit, so a chunk that fails and is redone is not counted twice.
            for outcome in outcomes:
                ITEMS_PROCESSED.labels(outcome.outcome, outcome.reason).inc()
            CHUNK_SECONDS.observe(time.perf_counter() - chunk_started)
            logger.debug("chunk committed job_id=%s partition=%d checkpoint=%d items=%d",
                         execution.id, step.partition_index, checkpoint, len(rows))
            limit = params.skip_limit
            if 0 <= limit < commit.skips:
                message = (f"skip limit exceeded: {commit.skips} invoices skipped, more than "
                           f"the job parameter skip_limit={limit} allows")
                if await self.repository.fail_job(execution.id, message,
                                                  exit_code=SKIP_LIMIT_EXCEEDED):
                    await self._log_end(execution.id)
                return STOPPED, message
            if commit.job_status != STARTED:
                return STOPPED, f"job is {commit.job_status}"

    async def _process_and_write(self, execution: Execution, rows) -> list[Outcome]:
        processed = process_chunk(rows, instance_id=execution.instance_id,
                                  job_id=execution.id, template=execution.params.template)
        outcomes = [Outcome(o.invoice_id, o.notification_id, o.outcome, o.reason,
                            filtered=o.reason == NOT_POSITIVE) for o in processed.skipped]
        if not processed.requests:
            return outcomes
        results = await self.writer.deliver([request for _, request in processed.requests])
        for row, request in processed.requests:
            result = results[request.notification_id]
            outcomes.append(Outcome(
                row.id, request.notification_id, OUTCOME_BY_STATUS.get(result.status, "failed"),
                outcome_reason(result), result.replica_id, result.smtp_code, written=True))
        return outcomes

    async def _finalize(self, execution_id: str) -> None:
        if await self.repository.finalize(execution_id, stale_after_s=self.stale_after_s):
            await self._log_end(execution_id)

    async def _log_end(self, execution_id: str) -> None:
        final = await self.repository.get(execution_id)
        JOBS_FINISHED.labels(final.status.lower()).inc()
        start = final.start_time or final.create_time
        elapsed_s = (final.end_time.replace(tzinfo=None) - start.replace(tzinfo=None)
                     ).total_seconds() if final.end_time else 0.0
        logger.info("job %s job_id=%s exit_code=%s sent=%d duplicate=%d skipped=%d failed=%d "
                    "elapsed_s=%.1f%s", final.status.lower(), final.id, final.exit_code,
                    final.sent, final.duplicate, final.skipped, final.failed, elapsed_s,
                    f" message={final.exit_message!r}" if final.exit_message else "")
