"""The partitioned engine on a real PostgreSQL database: replicas sharing a job, a dead replica's
partition taken over, restart after a crash, the skip limit and new instances. Each batch replica
is a servicer with its own worker, in this process, writing to a recording notifier over gRPC."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
import sqlalchemy as sa

from heraldo.batch.engine import POSSIBLE_COPY, outcome_reason
from heraldo.batch.repository import NOTICE, REPLICA, JobRepository, Outcome, breakdown_counts
from heraldo.db import job_outcomes, step_executions
from heraldo.errors import FailedPrecondition
from heraldo.v1 import batch_pb2
from heraldo.v1 import notification_pb2 as pb

from .conftest import build_servicer, insert_invoices

DEADLINE_S = 60.0


async def eventually(probe, what: str, timeout_s: float = DEADLINE_S):
    """Polls ``probe`` until it returns something truthy; fails naming ``what``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = await probe()
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class Replicas:
    """Batch replicas on one database; stopped (released) at the end of the test."""

    def __init__(self, engine, address: str) -> None:
        self.engine, self.address = engine, address
        self.servicers, self.channels = [], []

    def start(self, replica_id: str, **overrides):
        servicer, channel = build_servicer(self.engine, self.address, replica_id=replica_id,
                                           **overrides)
        self.servicers.append(servicer)
        self.channels.append(channel)
        return servicer

    async def close(self) -> None:
        for servicer in self.servicers:
            await servicer.shutdown(5)
        for channel in self.channels:
            await channel.close()


@pytest.fixture
async def replicas(engine, notifier):
    group = Replicas(engine, notifier.address)
    yield group
    if notifier.gate is not None:
        notifier.gate.set()
    await group.close()


async def job_of(servicer, job_id: str) -> batch_pb2.Job:
    return await servicer.GetJob(batch_pb2.GetJobRequest(job_id=job_id), None)


async def finished(servicer, job_id: str) -> batch_pb2.Job:
    async def ended():
        job = await job_of(servicer, job_id)
        return job if job.status in (batch_pb2.JOB_STATUS_COMPLETED, batch_pb2.JOB_STATUS_FAILED,
                                     batch_pb2.JOB_STATUS_STOPPED) else None

    return await eventually(ended, f"job {job_id} to end")


async def owners(engine, *, status: str | None = None) -> list[str]:
    query = sa.select(step_executions.c.owner).where(step_executions.c.owner.is_not(None))
    if status:
        query = query.where(step_executions.c.status == status)
    async with engine.connect() as conn:
        return list((await conn.execute(query)).scalars())


async def recorded(engine) -> dict[str, tuple[str, str]]:
    """Invoice number -> (outcome, batch replica), for every recorded outcome."""
    async with engine.connect() as conn:
        rows = await conn.execute(sa.select(job_outcomes.c.notification_id,
                                            job_outcomes.c.outcome,
                                            job_outcomes.c.batch_replica))
        return {nid.split(".", 1)[1]: (outcome, replica) for nid, outcome, replica in rows}


async def test_two_replicas_share_a_job_and_the_total_is_exact(engine, notifier, replicas):
    # Given 200 invoices and two replicas that each run one partition at a time
    expected = await insert_invoices(engine, 200)
    first = replicas.start("batch-a", max_partitions=1, partitions=4, chunk_size=10)
    replicas.start("batch-b", max_partitions=1)
    notifier.gate = asyncio.Event()

    # When a job starts on one of them, and the notifier holds every answer until both replicas
    # hold a partition
    started = await first.StartJob(batch_pb2.StartJobRequest(job_name="shared"), None)
    await eventually(lambda: _both_hold(engine), "both replicas to hold a partition")
    notifier.gate.set()
    job = await finished(first, started.job_id)

    # Then both did work, the partitions cover everything once, and the counts add up
    assert job.status == batch_pb2.JOB_STATUS_COMPLETED
    assert len(job.partitions) == 4
    assert {p.replica_id for p in job.partitions} == {"batch-a", "batch-b"}
    assert all(p.status == "COMPLETED" for p in job.partitions)
    assert sum(p.read for p in job.partitions) == len(expected) == job.counts.processed
    assert job.counts.sent + job.counts.skipped == job.counts.selected == len(expected)
    assert set(notifier.received.values()) == {1}
    outcomes = await recorded(engine)
    assert {number: outcome for number, (outcome, _) in outcomes.items()} == expected
    assert {replica for _, replica in outcomes.values()} == {"batch-a", "batch-b"}


async def _both_hold(engine) -> bool:
    return set(await owners(engine, status="STARTED")) == {"batch-a", "batch-b"}


async def test_a_dead_replicas_partition_is_taken_over_from_its_checkpoint(
        engine, notifier, replicas):
    # Given a replica that committed a chunk of a job and then died without a word
    expected = await insert_invoices(engine, 120)
    doomed = replicas.start("batch-doomed", chunk_size=10)
    started = await doomed.StartJob(batch_pb2.StartJobRequest(job_name="orphaned"), None)
    await eventually(lambda: _committed(engine), "a first committed chunk")
    await _die(doomed)

    # When another replica comes up
    survivor = replicas.start("batch-survivor")
    job = await finished(survivor, started.job_id)

    # Then it took the partition over once the lease ran out, and finished it exactly
    assert job.status == batch_pb2.JOB_STATUS_COMPLETED
    assert [p.replica_id for p in job.partitions] == ["batch-survivor"]
    assert job.counts.processed == len(expected)
    outcomes = await recorded(engine)
    assert {number: outcome for number, (outcome, _) in outcomes.items()} == expected
    assert {replica for _, replica in outcomes.values()} == {"batch-doomed", "batch-survivor"}
    # the doomed replica's last chunk may have reached the notifier uncommitted: that one is sent
    # again (the real notifier deduplicates it), nothing else is
    assert sum(count - 1 for count in notifier.received.values()) <= 10


async def _committed(engine) -> bool:
    async with engine.connect() as conn:
        return bool(await conn.scalar(sa.select(sa.func.sum(step_executions.c.commit_count))))


async def _die(servicer) -> None:
    """What SIGKILL does to a replica: its tasks vanish mid-chunk and nothing is written."""
    worker = servicer.worker
    tasks = [*worker._loops, *worker._running.values()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    worker._loops, worker._releasing = [], True


async def test_restart_after_a_crash_abandons_the_dead_execution_and_resumes(
        engine, notifier, replicas):
    # Given a job whose only replica died mid-way
    expected = await insert_invoices(engine, 120)
    doomed = replicas.start("batch-doomed", chunk_size=10, partitions=3)
    started = await doomed.StartJob(batch_pb2.StartJobRequest(job_name="crashed"), None)
    await eventually(lambda: _committed(engine), "a first committed chunk")
    await _die(doomed)

    # When a new replica (not yet polling) is asked to restart it once its heartbeat is stale
    fresh = replicas.start("batch-fresh", start_worker=False)

    async def restart():
        try:
            return await fresh.RestartJob(
                batch_pb2.RestartJobRequest(job_id=started.job_id), None)
        except FailedPrecondition:
            return None

    restarted = await eventually(restart, "the dead execution to be restartable")
    fresh.worker.start()
    job = await finished(fresh, restarted.job_id)

    # Then the dead execution is FAILED as abandoned, and the new one finished from checkpoints
    dead = await job_of(fresh, started.job_id)
    assert dead.status == batch_pb2.JOB_STATUS_FAILED
    assert dead.exit_code == "ABANDONED"
    assert job.status == batch_pb2.JOB_STATUS_COMPLETED
    assert job.counts.processed == len(expected)
    # it read only what the dead execution had not committed
    assert sum(p.read for p in job.partitions) == len(expected) - dead.counts.processed
    outcomes = await recorded(engine)
    assert {number: outcome for number, (outcome, _) in outcomes.items()} == expected


async def test_stop_then_restart_resumes_every_partition_from_its_checkpoint(
        engine, notifier, replicas):
    expected = await insert_invoices(engine, 150)
    batch = replicas.start("batch-1", partitions=3, chunk_size=5)
    notifier.gate = asyncio.Event()
    started = await batch.StartJob(batch_pb2.StartJobRequest(job_name="paused"), None)
    await eventually(lambda: owners(engine, status="STARTED"), "a partition to be claimed")

    await batch.StopJob(batch_pb2.StopJobRequest(job_id=started.job_id), None)
    notifier.gate.set()
    stopped = await finished(batch, started.job_id)
    restarted = await batch.RestartJob(batch_pb2.RestartJobRequest(job_id=started.job_id), None)
    done = await finished(batch, restarted.job_id)

    assert stopped.status == batch_pb2.JOB_STATUS_STOPPED
    assert 0 < stopped.counts.processed < len(expected)
    carried = [p for p in stopped.partitions if p.status != "COMPLETED"]
    assert [(p.after_id, p.last_id) for p in done.partitions] == [
        (p.after_id, p.last_id) for p in carried]
    # each partition went on from its own checkpoint: nothing was read twice
    assert sum(p.read for p in done.partitions) == len(expected) - stopped.counts.processed
    assert done.status == batch_pb2.JOB_STATUS_COMPLETED
    assert done.counts.processed == len(expected)
    assert set(notifier.received.values()) == {1}
    # and a completed instance is refused
    with pytest.raises(FailedPrecondition, match="already completed"):
        await batch.StartJob(batch_pb2.StartJobRequest(job_name="paused"), None)


async def test_exceeding_the_skip_limit_fails_the_job_naming_it(engine, notifier, replicas):
    # 100 invoices: 13 cannot be notified (no customer, bad address)
    await insert_invoices(engine, 100)
    batch = replicas.start("batch-1", chunk_size=10)

    started = await batch.StartJob(batch_pb2.StartJobRequest(
        job_name="strict", parameters=batch_pb2.JobParameters(skip_limit=5)), None)
    job = await finished(batch, started.job_id)

    assert job.status == batch_pb2.JOB_STATUS_FAILED
    assert job.exit_code == "SKIP_LIMIT_EXCEEDED"
    assert "skip_limit=5" in job.exit_message
    assert job.counts.skipped > 5
    assert job.counts.processed < 100


async def test_the_configured_skip_limit_applies_when_the_job_does_not_say(
        engine, notifier, replicas):
    await insert_invoices(engine, 100)
    batch = replicas.start("batch-1", chunk_size=10, skip_limit=2)

    started = await batch.StartJob(batch_pb2.StartJobRequest(job_name="defaulted"), None)
    lenient = await batch.StartJob(batch_pb2.StartJobRequest(
        job_name="lenient", parameters=batch_pb2.JobParameters(skip_limit=50)), None)

    assert (await finished(batch, started.job_id)).exit_code == "SKIP_LIMIT_EXCEEDED"
    assert (await finished(batch, lenient.job_id)).status == batch_pb2.JOB_STATUS_COMPLETED


async def test_a_new_instance_runs_a_completed_selection_again(engine, notifier, replicas):
    expected = await insert_invoices(engine, 30)
    batch = replicas.start("batch-1")
    first = await batch.StartJob(batch_pb2.StartJobRequest(job_name="again"), None)
    await finished(batch, first.job_id)

    second = await batch.StartJob(batch_pb2.StartJobRequest(job_name="again", new_instance=True),
                                  None)
    job = await finished(batch, second.job_id)

    sent = sum(1 for outcome in expected.values() if outcome == "sent")
    assert job.status == batch_pb2.JOB_STATUS_COMPLETED
    assert job.counts.sent == sent
    # new notification ids: each invoice went out once per instance
    assert len(notifier.received) == 2 * sent
    assert set(notifier.received.values()) == {1}


async def test_claiming_skips_partitions_another_replica_has_locked(engine, notifier, replicas):
    # Given a job with two partitions, none claimed yet (no worker polls)
    await insert_invoices(engine, 40)
    batch = replicas.start("batch-1", start_worker=False, partitions=2)
    await batch.StartJob(batch_pb2.StartJobRequest(job_name="locked"), None)
    repository = JobRepository(engine)

    # When one transaction holds the first partition's row lock
    async with engine.connect() as conn, conn.begin():
        held = (await conn.execute(sa.select(step_executions.c.id).order_by(
            step_executions.c.partition_index).limit(1).with_for_update())).scalar_one()
        claimed = await repository.claim_step("batch-2", stale_after_s=30)

    # Then another replica's claim does not wait for it: it takes the next partition
    assert claimed is not None
    assert claimed.id != held
    assert claimed.partition_index == 1


async def test_starting_with_bad_parameters_creates_nothing(engine, replicas):
    batch = replicas.start("batch-1")
    for parameters, field in ((batch_pb2.JobParameters(skip_limit=-2), "parameters.skip_limit"),
                              (batch_pb2.JobParameters(partitions=1000), "parameters.partitions"),
                              (batch_pb2.JobParameters(template="nope"), "parameters.template")):
        with pytest.raises(Exception) as caught:
            await batch.StartJob(batch_pb2.StartJobRequest(job_name="bad",
                                                           parameters=parameters), None)
        assert getattr(caught.value, "field", None) == field

    listed = await batch.ListJobs(batch_pb2.ListJobsRequest(), None)
    assert list(listed.jobs) == []
    async with engine.connect() as conn:
        assert await conn.scalar(sa.select(sa.func.count()).select_from(step_executions)) == 0


_ = grpc  # the servicers are called directly; grpc errors are the interceptor's business


def test_a_possible_copy_is_a_notice_whether_sent_now_or_already_sent():
    results = [pb.DeliveryResult(status=pb.DELIVERY_STATUS_SENT, possible_copy=True),
               pb.DeliveryResult(status=pb.DELIVERY_STATUS_DUPLICATE, possible_copy=True),
               pb.DeliveryResult(status=pb.DELIVERY_STATUS_SENT)]
    outcomes = [Outcome(index, f"n{index}", outcome, outcome_reason(result), "notifier-1")
                for index, (outcome, result) in enumerate(zip(("sent", "duplicate", "sent"),
                                                               results, strict=True))]

    assert [outcome.reason for outcome in outcomes] == [POSSIBLE_COPY, POSSIBLE_COPY, ""]
    assert breakdown_counts(outcomes) == {(NOTICE, POSSIBLE_COPY): 2, (REPLICA, "notifier-1"): 2}
