"""The job runner: a chunk-oriented step (read, process, write, commit) with stop and heartbeat."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from heraldo.batch.processor import process_chunk
from heraldo.batch.repository import (
    COMPLETED,
    FAILED,
    STOPPED,
    Execution,
    JobRepository,
    Outcome,
)
from heraldo.batch.writer import MeshWriter
from heraldo.errors import HeraldoError
from heraldo.v1 import notification_pb2

logger = logging.getLogger(__name__)

OUTCOME_BY_STATUS = {
    notification_pb2.DELIVERY_STATUS_SENT: "sent",
    notification_pb2.DELIVERY_STATUS_DUPLICATE: "duplicate",
    notification_pb2.DELIVERY_STATUS_TEMPORARY_FAILURE: "failed",
    notification_pb2.DELIVERY_STATUS_PERMANENT_FAILURE: "failed",
    notification_pb2.DELIVERY_STATUS_REJECTED: "skipped",
}


def outcome_reason(result: notification_pb2.DeliveryResult) -> str:
    """A short, groupable reason: the SMTP code class rather than the server's free text."""
    status = result.status
    if status == notification_pb2.DELIVERY_STATUS_PERMANENT_FAILURE:
        return f"rejected by mail server ({result.smtp_code or 'no code'})"
    if status == notification_pb2.DELIVERY_STATUS_TEMPORARY_FAILURE:
        return f"temporary failure after retries ({result.smtp_code or 'network'})"
    if status == notification_pb2.DELIVERY_STATUS_REJECTED:
        return f"rejected by notifier: {result.detail}"
    return ""


class JobRunner:
    """Runs one execution to its end: COMPLETED, STOPPED (asked to) or FAILED (with the reason)."""

    def __init__(self, *, repository: JobRepository, writer: MeshWriter, default_chunk_size: int,
                 heartbeat_interval_s: float) -> None:
        self.repository = repository
        self.writer = writer
        self.default_chunk_size = default_chunk_size
        self.heartbeat_interval_s = heartbeat_interval_s

    async def run(self, execution: Execution) -> None:
        started = time.perf_counter()
        logger.info("job started job_id=%s instance=%s name=%s selected=%d checkpoint=%d",
                    execution.id, execution.instance_id, execution.job_name, execution.selected,
                    execution.checkpoint)
        heartbeat = asyncio.create_task(self._beat(execution.id))
        status, message = FAILED, ""
        try:
            status = await self._run_step(execution)
            message = "stopped on request" if status == STOPPED else ""
        except HeraldoError as exc:
            message = str(exc)
        except Exception as exc:  # noqa: BLE001 - a job must end FAILED, never stay STARTED
            logger.exception("job crashed job_id=%s", execution.id)
            message = f"internal error: {type(exc).__name__}: {exc}"
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
        await self.repository.finish(execution.id, status, message)
        final = await self.repository.get(execution.id)
        logger.info("job %s job_id=%s sent=%d duplicate=%d skipped=%d failed=%d elapsed_s=%.1f%s",
                    status.lower(), final.id, final.sent, final.duplicate, final.skipped,
                    final.failed, time.perf_counter() - started,
                    f" message={message!r}" if message else "")

    async def _run_step(self, execution: Execution) -> str:
        params = execution.params
        chunk_size = params.chunk_size or self.default_chunk_size
        checkpoint = execution.checkpoint
        while True:
            rows = await self.repository.read_chunk(params, after_id=checkpoint, limit=chunk_size)
            if not rows:
                return COMPLETED
            processed = process_chunk(rows, instance_id=execution.instance_id,
                                      job_id=execution.id, template=params.template)
            outcomes = list(processed.skipped)
            if processed.requests:
                results = await self.writer.deliver([request for _, request in processed.requests])
                for row, request in processed.requests:
                    result = results[request.notification_id]
                    outcomes.append(Outcome(
                        row.id, request.notification_id, OUTCOME_BY_STATUS.get(result.status,
                                                                               "failed"),
                        outcome_reason(result), result.replica_id, result.smtp_code))
            checkpoint = rows[-1].id
            stop_requested = await self.repository.commit_chunk(
                execution.id, execution.instance_id, outcomes, checkpoint)
            logger.debug("chunk committed job_id=%s checkpoint=%d items=%d",
                         execution.id, checkpoint, len(rows))
            if stop_requested:
                return STOPPED

    async def _beat(self, execution_id: str) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_interval_s)
            try:
                await self.repository.heartbeat(execution_id)
            except Exception as exc:  # noqa: BLE001 - a missed beat is retried next interval
                logger.warning("heartbeat failed job_id=%s: %s", execution_id, exc)
