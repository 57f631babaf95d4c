"""The batch service over real gRPC, on a real PostgreSQL database, against recording notifiers."""

from __future__ import annotations

import asyncio

import grpc
import pytest
import sqlalchemy as sa

from heraldo.batch.engine import POSSIBLE_COPY
from heraldo.batch.params import JobParams
from heraldo.batch.repository import JobRepository
from heraldo.db import job_outcomes
from heraldo.runtime import StatusInterceptor
from heraldo.v1 import batch_pb2, batch_pb2_grpc

from .conftest import build_servicer, insert_invoices

TERMINAL = {batch_pb2.JOB_STATUS_COMPLETED, batch_pb2.JOB_STATUS_FAILED,
            batch_pb2.JOB_STATUS_STOPPED}


@pytest.fixture
async def batch(engine, notifier):
    servicer, channel = build_servicer(engine, notifier.address)
    server = grpc.aio.server(interceptors=[StatusInterceptor()])
    batch_pb2_grpc.add_BatchServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    client_channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    yield batch_pb2_grpc.BatchServiceStub(client_channel)
    await servicer.shutdown(5)
    await client_channel.close()
    await channel.close()
    await server.stop(0)


async def wait_for_end(stub, job_id: str) -> batch_pb2.Job:
    async for event in stub.WatchJob(batch_pb2.WatchJobRequest(job_id=job_id), timeout=60):
        if event.job.status in TERMINAL:
            return event.job
    raise AssertionError("WatchJob ended before the job did")


async def outcomes(engine) -> dict[str, str]:
    async with engine.connect() as conn:
        rows = await conn.execute(sa.select(job_outcomes.c.notification_id,
                                            job_outcomes.c.outcome))
        return {nid.split(".", 1)[1]: outcome for nid, outcome in rows}


async def test_a_job_notifies_every_eligible_invoice_once_and_records_the_rest(
        engine, notifier, batch):
    # Given 100 invoices, some without customer or with a bad address
    expected = await insert_invoices(engine, 100)

    # When a job runs over them
    started = await batch.StartJob(batch_pb2.StartJobRequest(job_name="monthly"))
    job = await wait_for_end(batch, started.job_id)

    # Then each eligible invoice reached a notifier exactly once and every outcome is recorded
    sent = [number for number, outcome in expected.items() if outcome == "sent"]
    assert job.status == batch_pb2.JOB_STATUS_COMPLETED
    assert job.counts.selected == len(expected) == job.counts.processed
    assert job.counts.sent == len(sent)
    assert job.counts.sent + job.counts.skipped == job.counts.selected
    assert sorted(nid.split(".", 1)[1] for nid in notifier.received) == sorted(sent)
    assert set(notifier.received.values()) == {1}
    assert await outcomes(engine) == expected
    # every 10th has no customer; every 15th has a bad address unless it has no customer either
    assert dict(job.reasons) == {"no customer": 10, "invalid email address": 3}
    assert dict(job.sent_by_replica) == {"fake-1": len(sent)}


async def test_a_possible_copy_is_counted_as_sent_and_shown_as_a_notice(engine, notifier, batch):
    expected = await insert_invoices(engine, 30)
    sent = sorted(number for number, outcome in expected.items() if outcome == "sent")
    notifier.possible_copies = set(sent[:2])

    started = await batch.StartJob(batch_pb2.StartJobRequest(job_name="monthly"))
    job = await wait_for_end(batch, started.job_id)

    assert job.counts.sent == len(sent)
    assert dict(job.notices) == {POSSIBLE_COPY: 2}
    assert POSSIBLE_COPY not in job.reasons
    async with engine.connect() as conn:
        flagged = (await conn.execute(sa.select(job_outcomes.c.notification_id).where(
            job_outcomes.c.reason == POSSIBLE_COPY))).scalars().all()
    assert sorted(nid.split(".", 1)[1] for nid in flagged) == sent[:2]


async def test_a_chunk_goes_out_over_several_streams(engine, notifier, batch):
    await insert_invoices(engine, 20)

    started = await batch.StartJob(batch_pb2.StartJobRequest(
        job_name="spread", parameters=batch_pb2.JobParameters(chunk_size=20)))
    await wait_for_end(batch, started.job_id)

    # 20 invoices, 16 of them notifiable, in one chunk over streams_per_chunk (6) streams
    assert notifier.streams == 6


async def test_temporary_failures_are_retried_and_then_sent(engine, notifier, batch):
    expected = await insert_invoices(engine, 30)
    notifier.fail_once = {"T000000", "T000001", "T000002"}

    started = await batch.StartJob(batch_pb2.StartJobRequest(job_name="retry"))
    job = await wait_for_end(batch, started.job_id)

    assert job.status == batch_pb2.JOB_STATUS_COMPLETED
    assert job.counts.sent == sum(1 for outcome in expected.values() if outcome == "sent")
    assert notifier.fail_once == set()
    assert [notifier.received[f"{nid}"] for nid in notifier.received
            if nid.endswith((".T000000", ".T000001", ".T000002"))] == [2, 2, 2]


async def test_bad_parameters_are_invalid_argument_and_create_nothing(engine, batch):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await batch.StartJob(batch_pb2.StartJobRequest(
            job_name="bad", parameters=batch_pb2.JobParameters(template="nope")))

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "parameters.template" in caught.value.details()
    listed = await batch.ListJobs(batch_pb2.ListJobsRequest())
    assert list(listed.jobs) == []


async def test_unknown_job_is_not_found(batch):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await batch.GetJob(batch_pb2.GetJobRequest(job_id="job-missing"))

    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_completed_instance_is_refused_the_second_time(engine, batch):
    await insert_invoices(engine, 10)
    first = await batch.StartJob(batch_pb2.StartJobRequest(job_name="once"))
    await wait_for_end(batch, first.job_id)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await batch.StartJob(batch_pb2.StartJobRequest(job_name="once"))
    # Naming the template, the default one here, selects the same invoices: the same instance
    with pytest.raises(grpc.aio.AioRpcError) as named_template:
        await batch.StartJob(batch_pb2.StartJobRequest(
            job_name="once", parameters=batch_pb2.JobParameters(template="invoice")))

    for refusal in (caught.value, named_template.value):
        assert refusal.code() == grpc.StatusCode.ALREADY_EXISTS
        assert "already completed" in refusal.details()


async def test_stop_then_restart_resumes_from_the_checkpoint(engine, notifier, batch):
    expected = await insert_invoices(engine, 200)
    notifier.gate = asyncio.Event()

    # The stop is asked while the first chunk is in flight, so that chunk completes first
    started = await batch.StartJob(batch_pb2.StartJobRequest(
        job_name="stoppable", parameters=batch_pb2.JobParameters(chunk_size=5)))
    await asyncio.wait_for(notifier.holding.wait(), timeout=30)
    stopping = await batch.StopJob(batch_pb2.StopJobRequest(job_id=started.job_id))
    asked_again = await batch.StopJob(batch_pb2.StopJobRequest(job_id=started.job_id))
    notifier.gate.set()
    stopped = await wait_for_end(batch, started.job_id)
    restarted = await batch.RestartJob(batch_pb2.RestartJobRequest(job_id=started.job_id))
    finished = await wait_for_end(batch, restarted.job_id)

    assert stopping.status == asked_again.status == batch_pb2.JOB_STATUS_STOPPING
    assert stopping.seconds_left == -1  # it ends after its chunk in flight, not the selection
    assert stopped.status == batch_pb2.JOB_STATUS_STOPPED
    assert 0 < stopped.counts.processed < len(expected)
    assert finished.status == batch_pb2.JOB_STATUS_COMPLETED
    assert finished.counts.processed == len(expected)
    assert set(notifier.received.values()) == {1}
    assert await outcomes(engine) == expected
    # The stopped run, shown after the restart, still adds up on its own
    shown = await batch.GetJob(batch_pb2.GetJobRequest(job_id=started.job_id))
    assert sum(shown.sent_by_replica.values()) == shown.counts.sent
    assert sum(shown.reasons.values()) == shown.counts.skipped + shown.counts.failed
    assert sum(finished.reasons.values()) == finished.counts.skipped + finished.counts.failed
    # The restart's rate is of the invoices it processed itself, not of those carried over
    elapsed_s = (finished.end_time.ToDatetime() - finished.start_time.ToDatetime()).total_seconds()
    processed_by_restart = finished.counts.processed - stopped.counts.processed
    assert round(finished.rate_per_second * elapsed_s) == processed_by_restart


async def test_list_jobs_pages_newest_first(engine, batch):
    await insert_invoices(engine, 3)
    ids = []
    for name in ("a", "b", "c"):
        job = await batch.StartJob(batch_pb2.StartJobRequest(job_name=name))
        await wait_for_end(batch, job.job_id)
        ids.append(job.job_id)

    first = await batch.ListJobs(batch_pb2.ListJobsRequest(page_size=2))
    second = await batch.ListJobs(batch_pb2.ListJobsRequest(
        page_size=2, page_token=first.next_page_token))

    assert [job.job_id for job in first.jobs] + [job.job_id for job in second.jobs] == ids[::-1]
    assert second.next_page_token == ""


async def test_a_stop_asked_after_the_last_partition_completed_leaves_the_job_completed(engine):
    repository = JobRepository(engine)
    await insert_invoices(engine, 4)
    execution = await repository.create_execution("late-stop", JobParams(), selected=4,
                                                  owner="test", partitions=1)
    step = await repository.claim_step("test", stale_after_s=30)
    await repository.end_step(step.id, "COMPLETED", owner="test")

    await repository.request_stop(execution.id)
    status = await repository.finalize(execution.id, stale_after_s=30)

    assert status == "COMPLETED"
    assert (await repository.get(execution.id)).status == "COMPLETED"
