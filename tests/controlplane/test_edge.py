"""The edge listener: REST/JSON through Envoy's transcoder, and native gRPC passing through."""

from __future__ import annotations

import aiohttp
import grpc
import pytest

from heraldo.v1 import notification_pb2, notification_pb2_grpc

from .conftest import eventually

SEND_PATH = "/v1/notifications:send"


@pytest.fixture
async def replica(snapshots, start_replica):
    """One fake notifier, in the snapshot before Envoy starts, so Envoy's first fetch gets it."""
    replica = await start_replica("notifier-1")
    snapshots.set_endpoints("notifier", [replica.endpoint])
    snapshots.set_endpoints("batch", [])
    return replica


@pytest.fixture
async def edge(replica, envoy):
    """Envoy with one fake notifier in its notifier cluster."""

    async def holds_replica() -> bool:
        return await envoy.hosts("notifier") == {replica.endpoint.address}

    await eventually(holds_replica, "envoy's notifier cluster to hold the replica")
    return envoy


def _notification(email: str) -> dict:
    return {
        "notificationId": "inv-536365-job-1",
        "invoiceNumber": "536365",
        "kind": "DOCUMENT_KIND_INVOICE",
        "recipient": {"customerId": "17850", "email": email, "locale": "en-GB"},
        "amount": {"currencyCode": "GBP", "units": "139", "nanos": 120000000},
    }


async def test_rest_send_is_transcoded_to_grpc_and_back(edge):
    url = f"http://127.0.0.1:{edge.edge_port}{SEND_PATH}"

    async with aiohttp.ClientSession() as session:
        async with session.post(url, json=_notification("jane@example.com")) as response:
            status, content_type, body = (response.status, response.content_type,
                                          await response.json(content_type=None))

    assert status == 200
    assert content_type == "application/json"
    assert body["notificationId"] == "inv-536365-job-1"
    assert body["status"] == "DELIVERY_STATUS_SENT"
    assert body["replicaId"] == "notifier-1"
    # always_print_primitive_fields: zero values are present, so clients need no defaults
    assert body["smtpCode"] == 0


async def test_rest_invalid_argument_becomes_400_with_a_json_status(edge):
    url = f"http://127.0.0.1:{edge.edge_port}{SEND_PATH}"

    async with aiohttp.ClientSession() as session:
        async with session.post(url, json=_notification("")) as response:
            status, content_type, body = (response.status, response.content_type,
                                          await response.json(content_type=None))

    assert status == 400
    assert content_type == "application/json"
    assert body["code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert body["message"] == "recipient.email: required"


async def test_native_grpc_send_passes_through_the_edge(edge):
    stub = notification_pb2_grpc.NotifierServiceStub(edge.edge_channel())
    request = notification_pb2.NotificationRequest(
        notification_id="n-1", recipient=notification_pb2.Recipient(email="jane@example.com"))

    result = await stub.Send(request, timeout=10)

    assert result.replica_id == "notifier-1"
    assert result.notification_id == "n-1"
