"""End to end: a job started over REST flows through Envoy to three notifiers and the SMTP sink."""

from __future__ import annotations

import asyncio
from collections import Counter

import grpc
import httpx
import pytest
import sqlalchemy as sa
from google.protobuf import descriptor_pool
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from heraldo import db
from heraldo.importer import load_demo
from heraldo.mesh.__main__ import follow_job, run_demo, start_job_over_rest

pytestmark = pytest.mark.mesh

DEMO_INVOICES = 1300


async def notifiable_numbers(database_url: str) -> set[str]:
    """Open invoices whose customer has a usable address: computed here, not by the batch."""
    from email_validator import EmailNotValidError, validate_email

    engine = db.create_engine(db.database_url(database_url))
    try:
        await load_demo(engine, invoices=DEMO_INVOICES)
        async with engine.connect() as conn:
            rows = await conn.execute(
                sa.select(db.invoices.c.number, db.customers.c.email)
                .join(db.customers, db.customers.c.id == db.invoices.c.customer_id)
                .where(db.invoices.c.status == "open", db.invoices.c.kind == "invoice",
                       db.invoices.c.amount > 0))
            numbers = set()
            for number, email in rows:
                try:
                    validate_email(email or "", check_deliverability=False)
                except EmailNotValidError:
                    continue
                numbers.add(number)
            return numbers
    finally:
        await engine.dispose()


async def run_job(mesh, job_name: str) -> dict:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        job = await start_job_over_rest(session, mesh.edge_url, job_name,
                                        headers=mesh.auth_headers)
        return await follow_job(session, mesh.edge_url, job["jobId"], show=lambda _: None,
                                headers=mesh.auth_headers)


def test_every_notifiable_invoice_reaches_the_sink_once_spread_over_three_replicas(mesh):
    # Given the demo set, and the invoices that should be notified, computed independently
    expected = asyncio.run(notifiable_numbers(mesh.database_url))
    assert len(expected) >= 1000

    # When a job runs over REST through Envoy's edge
    job = asyncio.run(run_job(mesh, "mesh-demo"))

    # Then each expected invoice arrived at the sink exactly once, and nothing else did
    messages = httpx.get(f"{mesh.sink_url}/api/messages").json()
    arrivals = Counter(message["notification_id"].rsplit(".", 1)[1] for message in messages)
    assert job["status"] == "JOB_STATUS_COMPLETED"
    assert set(arrivals) == expected
    assert set(arrivals.values()) == {1}
    assert int(job["counts"]["sent"]) == len(expected)
    counts = job["counts"]
    assert int(counts["sent"]) + int(counts.get("skipped", 0)) + int(counts.get("failed", 0)) \
        == int(counts["selected"])
    # and the round robin gave every replica a fair share
    by_replica = {replica: int(count) for replica, count in job["sentByReplica"].items()}
    assert set(by_replica) == set(mesh.notifier_ids())
    assert min(by_replica.values()) >= 0.2 * len(expected)


def test_rest_errors_are_json_with_the_right_status(mesh):
    auth = mesh.auth_headers
    bad = httpx.post(f"{mesh.edge_url}/v1/jobs", headers=auth,
                     json={"jobName": "bad", "parameters": {"template": "nope"}})
    missing_name = httpx.post(f"{mesh.edge_url}/v1/jobs", json={}, headers=auth)
    unknown = httpx.get(f"{mesh.edge_url}/v1/jobs/job-does-not-exist", headers=auth)

    assert bad.status_code == 400
    assert "parameters.template" in bad.json()["message"]
    assert missing_name.status_code == 400
    assert "job_name" in missing_name.json()["message"]
    assert unknown.status_code == 404
    assert "job-does-not-exist" in unknown.json()["message"]


def test_grpc_clients_discover_the_api_through_reflection_at_the_edge(mesh):
    # What grpcurl does: list the services, then resolve a method and its messages by name.
    with grpc.insecure_channel(f"127.0.0.1:{mesh.ports.edge}") as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = database.get_services()
        pool = descriptor_pool.DescriptorPool(database)
        start_job = pool.FindServiceByName("heraldo.v1.BatchService").methods_by_name["StartJob"]

    assert {"heraldo.v1.BatchService", "heraldo.v1.NotifierService"} <= set(services)
    job_name = start_job.input_type.fields_by_name["job_name"]
    assert job_name.type == job_name.TYPE_STRING


def test_job_control_without_credentials_is_401_and_starts_nothing(mesh):
    auth = mesh.auth_headers
    before = httpx.get(f"{mesh.edge_url}/v1/jobs", headers=auth).json().get("jobs", [])

    refused = httpx.post(f"{mesh.edge_url}/v1/jobs", json={"jobName": "no-credentials"})

    assert refused.status_code == 401
    assert refused.headers["content-type"] == "application/json"
    assert refused.json()["code"] == grpc.StatusCode.UNAUTHENTICATED.value[0]
    after = httpx.get(f"{mesh.edge_url}/v1/jobs", headers=auth).json().get("jobs", [])
    assert len(after) == len(before)
    assert all(job.get("jobName") != "no-credentials" for job in after)


def test_unknown_fields_in_a_rest_body_are_refused_by_name(mesh):
    misspelt = httpx.post(f"{mesh.edge_url}/v1/jobs", headers=mesh.auth_headers,
                          json={"jobName": "typo", "parameters": {"chunkSise": 5}})
    top_level = httpx.post(f"{mesh.edge_url}/v1/jobs", headers=mesh.auth_headers,
                           json={"jobName": "typo", "priority": "high"})
    listed = httpx.get(f"{mesh.edge_url}/v1/jobs", headers=mesh.auth_headers).json()

    assert misspelt.status_code == 400
    assert misspelt.json()["message"] == "parameters.chunkSise: unknown field"
    assert top_level.status_code == 400
    assert top_level.json()["message"] == "priority: unknown field"
    assert all(job["jobName"] != "typo" for job in listed.get("jobs", []))


def test_make_run_can_be_repeated_in_the_same_checkout(mesh, capsys):
    # The sink keeps the mail of earlier jobs (this module's included): each run checks its own.
    first = asyncio.run(run_demo(mesh, DEMO_INVOICES))
    second = asyncio.run(run_demo(mesh, DEMO_INVOICES))

    printed = capsys.readouterr()
    assert (first, second) == (0, 0), printed.err
    assert printed.out.count("SMTP sink: ") == 2


def test_a_delivery_stream_through_the_edge_is_answered_group_by_group(mesh):
    # An interactive client sends a group and waits for its results before the next: the edge
    # must pass each message on as it comes rather than hold the stream until it ends.
    from google.type import money_pb2

    from heraldo.v1 import notification_pb2 as pb
    from heraldo.v1 import notification_pb2_grpc

    def group(n: int) -> pb.NotificationBatch:
        return pb.NotificationBatch(requests=[pb.NotificationRequest(
            notification_id=f"edge-stream:{n}", invoice_number=f"EDGE{n}",
            recipient=pb.Recipient(name="Jane Doe", email="jane@example.com"),
            amount=money_pb2.Money(currency_code="GBP", units=10))])

    async def converse() -> list[list[int]]:
        metadata = tuple((name.lower(), value) for name, value in mesh.auth_headers.items())
        async with grpc.aio.insecure_channel(f"127.0.0.1:{mesh.ports.edge}") as channel:
            call = notification_pb2_grpc.NotifierServiceStub(channel).DeliverBatches(
                metadata=metadata, timeout=30)
            answers = []
            for n in range(3):
                await call.write(group(n))
                answer = await call.read()
                answers.append([result.status for result in answer.results])
            await call.done_writing()
            return answers

    assert asyncio.run(converse()) == [[pb.DELIVERY_STATUS_SENT]] * 3


@pytest.mark.parametrize(("body", "message"), [
    ({"jobName": "loose", "newInstance": "yes"},
     "newInstance: Expected true or false without quotes"),
    ({"jobName": "loose", "parameters": {"countries": "United Kingdom"}},
     "parameters.countries: repeated field countries must be in []"),
])
def test_a_value_the_transcoder_would_bend_is_refused_by_name(mesh, body, message):
    # Envoy reads "yes" as true and a lone string as a list; the service refuses both.
    refused = httpx.post(f"{mesh.edge_url}/v1/jobs", headers=mesh.auth_headers, json=body)
    listed = httpx.get(f"{mesh.edge_url}/v1/jobs", headers=mesh.auth_headers).json()

    assert refused.status_code == 400
    assert refused.json()["message"].startswith(message)
    assert all(job["jobName"] != "loose" for job in listed.get("jobs", []))


def test_the_edge_serves_the_console_without_credentials_and_nothing_beside_it(mesh):
    page = httpx.get(f"{mesh.edge_url}/console/")
    bare = httpx.get(f"{mesh.edge_url}/console", follow_redirects=False)
    beside = httpx.get(f"{mesh.edge_url}/consolex")

    assert page.status_code == 200 and "console.js" in page.text
    assert bare.status_code == 302
    # A path that only starts like the console's is no part of it: credentials are asked for.
    assert beside.status_code == 401
