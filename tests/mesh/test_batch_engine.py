"""The batch engine on real processes and real data: the December 2010 Online Retail invoices go
through Envoy and three notifiers into the SMTP sink, with two batch replicas sharing the jobs,
one of them killed with SIGKILL in the middle of a job and a fresh one started in its place."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import httpx
import pytest
import sqlalchemy as sa
from email_validator import EmailNotValidError, validate_email

from heraldo import db
from heraldo.importer import import_online_retail
from heraldo.mesh.supervisor import LocalMesh, MeshPorts
from tests.datasets import ONLINE_RETAIL_MONTH

pytestmark = pytest.mark.mesh

#: Short leases so a killed replica's partition is taken over within seconds; small chunks so a
#: job lasts long enough to be killed in the middle.
KV_OVERRIDES = {
    "config/batch/heartbeat_interval_s": "0.5",
    "config/batch/stale_after_s": "3",
    "config/batch/poll_interval_s": "0.2",
    "config/batch/max_partitions": "1",
}
DEADLINE_S = 240.0
TERMINAL = ("JOB_STATUS_COMPLETED", "JOB_STATUS_FAILED", "JOB_STATUS_STOPPED")


@pytest.fixture(scope="module")
def retail_mesh(tmp_path_factory, mesh_database):
    if not ONLINE_RETAIL_MONTH.exists():
        pytest.skip(f"the Online Retail data is not at {ONLINE_RETAIL_MONTH}")
    local = LocalMesh(workdir=tmp_path_factory.mktemp("retail-mesh"), ports=MeshPorts.free(),
                      database_url=mesh_database, kv_overrides=KV_OVERRIDES)
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("CONSUL_HTTP_ADDR", raising=False)
        try:
            asyncio.run(local.start())
            asyncio.run(_import(mesh_database))
            local.start_batch_replica("batch-2")
        except BaseException:
            local.stop()
            raise
    yield local
    local.stop()


async def _import(url: str) -> None:
    engine = db.create_engine(db.database_url(url))
    try:
        await import_online_retail(engine, ONLINE_RETAIL_MONTH)
    finally:
        await engine.dispose()


async def _query(url: str, query):
    engine = db.create_engine(db.database_url(url))
    try:
        async with engine.connect() as conn:
            return (await conn.execute(query)).all()
    finally:
        await engine.dispose()


def eligible_numbers(url: str) -> tuple[set[str], int]:
    """Open invoices with a customer, a valid address and a positive amount, computed here rather
    than by the batch; and how many invoices a default job selects."""
    rows = asyncio.run(_query(url, sa.select(
        db.invoices.c.number, db.invoices.c.amount, db.customers.c.email)
        .select_from(db.invoices.outerjoin(
            db.customers, db.customers.c.id == db.invoices.c.customer_id))
        .where(db.invoices.c.status == "open", db.invoices.c.kind == "invoice")))
    eligible = set()
    for number, amount, email in rows:
        try:
            validate_email(email or "", check_deliverability=False)
        except EmailNotValidError:
            continue
        if amount > 0:
            eligible.add(number)
    return eligible, len(rows)


def instance_of(url: str, job_id: str) -> str:
    rows = asyncio.run(_query(url, sa.select(db.job_executions.c.instance_id).where(
        db.job_executions.c.id == job_id)))
    return rows[0][0]


def start(mesh: LocalMesh, job_name: str, **parameters) -> dict:
    response = httpx.post(f"{mesh.edge_url}/v1/jobs", timeout=30, headers=mesh.auth_headers,
                          json={"jobName": job_name, "parameters": parameters})
    assert response.status_code == 200, response.text
    return response.json()


def get_job(mesh: LocalMesh, job_id: str) -> dict | None:
    """The job over REST, or None while the edge still routes to a replica that just died."""
    try:
        response = httpx.get(f"{mesh.edge_url}/v1/jobs/{job_id}", timeout=10,
                             headers=mesh.auth_headers)
    except httpx.HTTPError:
        return None
    return response.json() if response.status_code == 200 else None


def wait_for(probe, what: str):
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {DEADLINE_S:.0f} s waiting for {what}")


def wait_for_end(mesh: LocalMesh, job_id: str) -> dict:
    def ended():
        job = get_job(mesh, job_id)
        return job if job and job["status"] in TERMINAL else None

    return wait_for(ended, f"job {job_id} to end")


def arrivals(mesh: LocalMesh, instance_id: str) -> Counter[str]:
    """Invoice number -> messages at the sink for the job instance."""
    messages = httpx.get(f"{mesh.sink_url}/api/messages", timeout=30).json()
    prefix = f"{instance_id}."
    return Counter(message["notification_id"].removeprefix(prefix) for message in messages
                   if message["notification_id"].startswith(prefix))


def counts_of(job: dict) -> dict[str, int]:
    return {name: int(job["counts"].get(name, 0))
            for name in ("selected", "processed", "sent", "skipped", "failed", "duplicate")}


def assert_exactly_once(mesh: LocalMesh, job: dict, eligible: set[str], selected: int) -> None:
    counts = counts_of(job)
    at_sink = arrivals(mesh, instance_of(mesh.database_url, job["jobId"]))
    assert job["status"] == "JOB_STATUS_COMPLETED", job.get("exitMessage")
    assert set(at_sink) == eligible
    assert set(at_sink.values()) == {1}
    assert counts["selected"] == selected == counts["processed"]
    assert counts["sent"] + counts["duplicate"] == len(eligible)
    assert counts["sent"] + counts["duplicate"] + counts["skipped"] + counts["failed"] \
        == counts["selected"]
    # every invoice not sent has a recorded reason
    assert sum(int(count) for count in job.get("reasons", {}).values()) == \
        counts["skipped"] + counts["failed"]


def test_a_month_of_real_invoices_is_shared_by_two_replicas_and_sent_exactly_once(retail_mesh):
    # Given the December 2010 invoices, and two batch replicas running one partition at a time
    eligible, selected = eligible_numbers(retail_mesh.database_url)
    assert len(eligible) > 1000

    # When a job over all of them runs in six partitions
    job = wait_for_end(retail_mesh, start(retail_mesh, "retail-month", partitions=6,
                                          chunkSize=40)["jobId"])

    # Then each eligible invoice reached the sink once, every other one has a reason, and both
    # replicas ran partitions
    assert_exactly_once(retail_mesh, job, eligible, selected)
    partitions = job["partitions"]
    assert len(partitions) == 6
    assert {p["replicaId"] for p in partitions} == {"batch-1", "batch-2"}
    assert sum(int(p.get("read", 0)) for p in partitions) == selected


def test_a_replica_killed_mid_job_is_taken_over_and_nothing_is_sent_twice(retail_mesh):
    eligible, selected = eligible_numbers(retail_mesh.database_url)
    started = start(retail_mesh, "retail-killed", partitions=2, chunkSize=20)

    # When the replica holding a partition is killed with SIGKILL once some chunks committed
    def holder():
        job = get_job(retail_mesh, started["jobId"])
        if not job or int(job["counts"].get("processed", 0)) < 100:
            return None
        held = [p["replicaId"] for p in job["partitions"] if p["status"] == "STARTED"]
        return held[0] if held else None

    victim = wait_for(holder, "a replica holding a partition after 100 invoices")
    killed = retail_mesh.child("batch" if victim == "batch-1" else victim)
    killed.process.kill()
    killed.process.wait()
    retail_mesh.start_batch_replica("batch-3")
    job = wait_for_end(retail_mesh, started["jobId"])

    # Then the job completed, nothing was mailed twice and nothing was missed
    assert_exactly_once(retail_mesh, job, eligible, selected)
    assert victim not in {p["replicaId"] for p in job["partitions"]}


def test_a_completed_instance_is_refused_unless_a_new_one_is_asked_for(retail_mesh):
    again = httpx.post(f"{retail_mesh.edge_url}/v1/jobs", timeout=30,
                       headers=retail_mesh.auth_headers, json={
        "jobName": "retail-month", "parameters": {"partitions": 6, "chunkSize": 40}})

    # ALREADY_EXISTS, which Envoy's transcoder turns into HTTP 409
    assert again.status_code == 409, again.text
    assert again.json()["code"] == 6
    assert "already completed" in again.json()["message"]
