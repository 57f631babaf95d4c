"""Batch fixtures: invoices in a real PostgreSQL database, and real gRPC notifier stand-ins."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections import Counter
from decimal import Decimal

import grpc
import pytest

from heraldo.batch.engine import PartitionWorker
from heraldo.batch.repository import JobRepository
from heraldo.batch.servicer import BatchServicer
from heraldo.batch.settings import BatchSettings
from heraldo.batch.writer import MeshWriter
from heraldo.db import customers, invoices
from heraldo.v1 import notification_pb2, notification_pb2_grpc


class RecordingNotifier(notification_pb2_grpc.NotifierServiceServicer):
    """Answers every request SENT (or as ``fail_once`` says), and counts what it received.

    It stands in for the notifier so the batch engine can be tested on its own over real gRPC;
    the real notifier is exercised by the mesh tests.
    """

    def __init__(self, replica_id: str) -> None:
        self.replica_id = replica_id
        self.received: Counter[str] = Counter()
        #: Invoice numbers whose first delivery answers "451 try later".
        self.fail_once: set[str] = set()
        #: Invoice numbers answered SENT as a possible copy (an earlier attempt was cut off).
        self.possible_copies: set[str] = set()
        #: When set, every answer waits for it: a test holds replicas mid-chunk with it.
        self.gate: asyncio.Event | None = None
        #: Set once a request waits at the gate.
        self.holding = asyncio.Event()
        self.streams = 0

    async def Deliver(self, request_iterator, context):
        self.streams += 1
        async for request in request_iterator:
            yield await self._answer(request)

    async def DeliverBatches(self, request_iterator, context):
        self.streams += 1
        async for batch in request_iterator:
            yield notification_pb2.DeliveryResultBatch(
                results=[await self._answer(request) for request in batch.requests])

    async def _answer(self, request):
        if self.gate is not None:
            self.holding.set()
            await self.gate.wait()
        self.received[request.notification_id] += 1
        status = notification_pb2.DELIVERY_STATUS_SENT
        if request.invoice_number in self.fail_once:
            self.fail_once.discard(request.invoice_number)
            status = notification_pb2.DELIVERY_STATUS_TEMPORARY_FAILURE
        return notification_pb2.DeliveryResult(
            notification_id=request.notification_id, status=status,
            replica_id=self.replica_id, smtp_code=250 if status == 1 else 451,
            possible_copy=status == 1 and request.invoice_number in self.possible_copies)


@pytest.fixture
async def notifier():
    servicer = RecordingNotifier("fake-1")
    server = grpc.aio.server()
    notification_pb2_grpc.add_NotifierServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    servicer.address = f"127.0.0.1:{port}"
    yield servicer
    await server.stop(0)


def build_servicer(engine, address: str, *, replica_id: str = "test-batch",
                   start_worker: bool = True,
                   **overrides) -> tuple[BatchServicer, grpc.aio.Channel]:
    """A batch replica's servicer and worker on ``engine``, writing to ``address``."""
    settings = BatchSettings(**{"chunk_size": 7, "retry_backoff_s": 0.01,
                                "heartbeat_interval_s": 0.2, "stale_after_s": 1.0,
                                "poll_interval_s": 0.1, "partitions": 1,
                                "templates": "invoice", "mesh_address": address, **overrides})
    channel = grpc.aio.insecure_channel(address)
    repository = JobRepository(engine)
    writer = MeshWriter(channel=channel, streams_per_chunk=settings.streams_per_chunk,
                        stream_timeout_s=10, max_attempts=settings.max_attempts,
                        retry_backoff_s=settings.retry_backoff_s)
    worker = PartitionWorker(
        repository=repository, writer=writer, replica_id=replica_id,
        default_chunk_size=settings.chunk_size, heartbeat_interval_s=settings.heartbeat_interval_s,
        stale_after_s=settings.stale_after_s, poll_interval_s=settings.poll_interval_s,
        max_partitions=settings.max_partitions)
    if start_worker:
        worker.start()
    return BatchServicer(settings=settings, repository=repository, worker=worker,
                         owner=replica_id), channel


async def insert_invoices(engine, count: int, *, first_issue=dt.date(2011, 1, 1)) -> dict:
    """``count`` invoices: most notifiable, every 10th without a customer, every 15th with a bad
    address, and one credit note. Returns the expected outcome per invoice number."""
    customer_rows, invoice_rows, expected = [], [], {}
    for index in range(count):
        number = f"T{index:06d}"
        customer_id = None if index % 10 == 9 else f"C{index:05d}"
        email = "not-an-address" if index % 15 == 14 else f"c{index}@example.com"
        if customer_id:
            customer_rows.append({"id": customer_id, "name": f"Customer {index}", "email": email,
                                  "locale": "en-GB", "country": "United Kingdom"})
        kind = "credit_note" if index == 3 else "invoice"
        invoice_rows.append({
            "number": number, "kind": kind, "customer_id": customer_id,
            "country": "United Kingdom" if index % 2 else "France",
            "issue_date": first_issue + dt.timedelta(days=index % 60),
            "due_date": first_issue + dt.timedelta(days=30 + index % 60),
            "amount": Decimal("10.25") + index, "currency": "GBP"})
        if kind != "invoice":
            continue
        expected[number] = ("skipped" if customer_id is None or email == "not-an-address"
                            else "sent")
    async with engine.begin() as conn:
        await conn.execute(customers.insert(), customer_rows)
        await conn.execute(invoices.insert(), invoice_rows)
    return expected
