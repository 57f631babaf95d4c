"""BatchService: starts, inspects, stops and restarts notification jobs."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import logging
import time

from heraldo.batch.engine import ITEMS_SELECTED, PartitionWorker
from heraldo.batch.params import parse_params, validate_job_name
from heraldo.batch.repository import (
    RUNNING_STATUSES,
    STOPPING,
    TERMINAL_STATUSES,
    Breakdown,
    Execution,
    JobRepository,
    Step,
)
from heraldo.batch.settings import MAX_PAGE_SIZE, BatchSettings
from heraldo.convert import timestamp, utcnow
from heraldo.errors import FailedPrecondition, InvalidArgument
from heraldo.v1 import batch_pb2, batch_pb2_grpc

logger = logging.getLogger(__name__)

DEFAULT_PAGE_SIZE = 50
WATCH_POLL_S = 0.5


def partition_to_proto(step: Step) -> batch_pb2.Partition:
    return batch_pb2.Partition(
        index=step.partition_index, status=step.status, replica_id=step.owner or "",
        after_id=step.after_id, last_id=step.last_id, checkpoint=step.checkpoint,
        read=step.read_count, written=step.write_count, filtered=step.filter_count,
        skipped=step.skip_count, commits=step.commit_count, rollbacks=step.rollback_count,
        exit_message=step.exit_message)


#: A job listed or just created: its breakdown is not read.
NO_BREAKDOWN = Breakdown(reasons={}, sent_by_replica={}, notices={})


def job_to_proto(execution: Execution, breakdown: Breakdown,
                 steps: list[Step] = ()) -> batch_pb2.Job:
    end = execution.end_time or utcnow()
    start = execution.start_time or execution.create_time
    elapsed_s = max((_aware(end) - _aware(start)).total_seconds(), 1e-6)
    # A restart carries the earlier executions' counts; its rate is of what it did itself.
    processed_here = execution.processed - execution.carried_processed
    rate = processed_here / elapsed_s if processed_here > 0 else 0.0
    left = execution.selected - execution.processed
    if execution.status in TERMINAL_STATUSES:
        seconds_left = 0.0
    elif execution.status == STOPPING:
        # It ends once the chunks in flight are committed, not when the selection is done.
        seconds_left = -1.0
    else:
        seconds_left = left / rate if rate > 0 else -1.0
    return batch_pb2.Job(
        job_id=execution.id, job_name=execution.job_name,
        status=batch_pb2.JobStatus.Value(f"JOB_STATUS_{execution.status}"),
        parameters=execution.params.to_proto(),
        counts=batch_pb2.JobCounts(
            selected=execution.selected, processed=execution.processed, sent=execution.sent,
            skipped=execution.skipped, failed=execution.failed, duplicate=execution.duplicate),
        reasons=breakdown.reasons, sent_by_replica=breakdown.sent_by_replica,
        notices=breakdown.notices,
        create_time=timestamp(execution.create_time), start_time=timestamp(execution.start_time),
        end_time=timestamp(execution.end_time), exit_message=execution.exit_message,
        rate_per_second=rate, seconds_left=seconds_left,
        exit_code=execution.exit_code if execution.status in TERMINAL_STATUSES else "",
        partitions=[partition_to_proto(step) for step in steps])


def _aware(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def _require_job_id(job_id: str) -> str:
    if not job_id:
        raise InvalidArgument("job_id", "is required")
    return job_id


class BatchServicer(batch_pb2_grpc.BatchServiceServicer):
    """Creates job executions and their partitions; the replicas' workers run the partitions."""

    def __init__(self, *, settings: BatchSettings, repository: JobRepository,
                 worker: PartitionWorker, owner: str) -> None:
        self.settings = settings
        self.repository = repository
        self.worker = worker
        self.owner = owner

    async def StartJob(self, request, context):
        job_name = validate_job_name(request.job_name)
        params = parse_params(request.parameters, templates=self.settings.template_names,
                              default_skip_limit=self.settings.skip_limit)
        return await self._launch(job_name, params, new_instance=request.new_instance)

    async def RestartJob(self, request, context):
        previous = await self.repository.get(_require_job_id(request.job_id))
        if await self._abandon_if_stale(previous.instance_id):
            previous = await self.repository.get(previous.id)
        latest = await self.repository.latest_of_instance(previous.instance_id)
        if latest is not None and latest.id != previous.id:
            raise FailedPrecondition(
                f"job {previous.id} was already restarted as job {latest.id}; restart that one")
        if previous.status not in ("STOPPED", "FAILED"):
            raise FailedPrecondition(
                f"job {previous.id} is {previous.status}; only STOPPED or FAILED jobs restart")
        return await self._launch(previous.job_name, previous.params,
                                  instance_id=previous.instance_id)

    async def _launch(self, job_name, params, *, new_instance: bool = False,
                      instance_id: str | None = None):
        started = time.perf_counter()
        selected = await self.repository.count_selected(params)
        if instance_id is not None:
            execution = await self.repository.create_execution(
                job_name, params, selected=selected, owner=self.owner,
                partitions=params.partitions or self.settings.partitions, instance_id=instance_id,
                stale_after_s=self.settings.stale_after_s)
        else:
            execution = await self._create(job_name, params, selected, new_instance)
        ITEMS_SELECTED.inc(max(execution.selected - execution.processed, 0))
        steps = await self.repository.steps(execution.id)
        # This replica's worker claims the first partitions at once; the others find the rest
        # at their next poll.
        self.worker.wake()
        logger.info("job started job_id=%s instance=%s name=%s selected=%d partitions=%d "
                    "new_instance=%s elapsed_ms=%.0f", execution.id, execution.instance_id,
                    job_name, selected, len(steps), new_instance,
                    1000 * (time.perf_counter() - started))
        return job_to_proto(execution, NO_BREAKDOWN, steps)

    async def _create(self, job_name, params, selected, new_instance) -> Execution:
        partitions = params.partitions or self.settings.partitions
        try:
            return await self.repository.create_execution(
                job_name, params, selected=selected, owner=self.owner, partitions=partitions,
                new_instance=new_instance, stale_after_s=self.settings.stale_after_s)
        except FailedPrecondition:
            # The instance may be held by a dead process; if so it is taken over, once.
            existing = await self.repository.find_instance(job_name, params)
            if existing is None or not await self._abandon_if_stale(existing):
                raise
            return await self.repository.create_execution(
                job_name, params, selected=selected, owner=self.owner, partitions=partitions,
                new_instance=new_instance, stale_after_s=self.settings.stale_after_s)

    async def _abandon_if_stale(self, instance_id: str) -> bool:
        return await self.repository.abandon_if_stale(
            instance_id, stale_after_s=self.settings.stale_after_s)

    async def GetJob(self, request, context):
        return await self._job(_require_job_id(request.job_id))

    async def _job(self, job_id: str) -> batch_pb2.Job:
        execution = await self.repository.get(job_id)
        return job_to_proto(execution, await self.repository.breakdown(execution),
                            await self.repository.steps(execution.id))

    async def ListJobs(self, request, context):
        if not 0 <= request.page_size <= MAX_PAGE_SIZE:
            raise InvalidArgument("page_size", f"must be between 0 and {MAX_PAGE_SIZE}")
        page_size = request.page_size or DEFAULT_PAGE_SIZE
        before = _decode_page_token(request.page_token) if request.page_token else None
        executions = await self.repository.list(limit=page_size + 1, before=before)
        page = executions[:page_size]
        token = ""
        if len(executions) > page_size:
            last = page[-1]
            token = base64.urlsafe_b64encode(
                f"{_aware(last.create_time).isoformat()}|{last.id}".encode()).decode()
        return batch_pb2.ListJobsResponse(
            jobs=[job_to_proto(execution, NO_BREAKDOWN) for execution in page],
            next_page_token=token)

    async def StopJob(self, request, context):
        execution = await self.repository.request_stop(_require_job_id(request.job_id))
        logger.info("job stopping job_id=%s", execution.id)
        return await self._job(execution.id)

    async def WatchJob(self, request, context):
        job_id = _require_job_id(request.job_id)
        previous = None
        while True:
            job = await self._job(job_id)
            if job != previous:
                yield batch_pb2.JobEvent(job=job)
                previous = job
            if job.status in (batch_pb2.JOB_STATUS_STOPPED, batch_pb2.JOB_STATUS_COMPLETED,
                              batch_pb2.JOB_STATUS_FAILED):
                return
            await asyncio.sleep(WATCH_POLL_S)

    async def shutdown(self, grace_s: float) -> None:
        """Hands this replica's partitions back after their chunk in flight: the jobs go on in
        the other replicas, or in the next one to start."""
        await self.worker.close(grace_s)


def _decode_page_token(token: str) -> tuple[dt.datetime, str]:
    try:
        stamp, job_id = base64.urlsafe_b64decode(token.encode()).decode().split("|", 1)
        return dt.datetime.fromisoformat(stamp), job_id
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidArgument("page_token", "is not a token from a previous ListJobs") from exc


__all__ = ["BatchServicer", "RUNNING_STATUSES", "job_to_proto"]
