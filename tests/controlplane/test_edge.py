"""The edge listener: REST/JSON through Envoy's transcoder, native gRPC passing through, and the
guards in front of both (bearer tokens, a rate limit, a size limit, JSON errors)."""

from __future__ import annotations

import asyncio

import aiohttp
import grpc
import pytest

from heraldo.mesh.credentials import generate
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
        async with session.post(url, json=_notification("jane@example.com"),
                                headers=edge.auth) as response:
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
        async with session.post(url, json=_notification(""), headers=edge.auth) as response:
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

    result = await stub.Send(request, timeout=10, metadata=edge.grpc_auth)

    assert result.replica_id == "notifier-1"
    assert result.notification_id == "n-1"


async def _call(edge, method: str, path: str, **kwargs) -> tuple[int, str, dict]:
    async with aiohttp.ClientSession() as session:
        async with session.request(method, f"http://127.0.0.1:{edge.edge_port}{path}",
                                   **kwargs) as response:
            return (response.status, response.content_type,
                    await response.json(content_type=None))


@pytest.mark.parametrize("headers", [
    {},
    {"Authorization": "Bearer not.a.token"},
    {"Authorization": "Basic dXNlcjpwYXNz"},
], ids=["none", "garbage", "basic"])
async def test_rest_without_a_valid_token_is_401_json_and_reaches_nobody(edge, replica, headers):
    status, content_type, body = await _call(
        edge, "POST", SEND_PATH, json=_notification("jane@example.com"), headers=headers)

    assert status == 401
    assert content_type == "application/json"
    assert body["code"] == grpc.StatusCode.UNAUTHENTICATED.value[0]
    assert body["message"]
    assert replica.servicer.calls == 0


async def test_a_token_signed_with_another_key_is_refused(edge, replica, tmp_path):
    # Given a well-formed token from a key set this Envoy does not know
    stranger = generate(tmp_path / "stranger")

    status, _, body = await _call(edge, "POST", SEND_PATH, json=_notification("jane@example.com"),
                                  headers=stranger.headers)

    assert status == 401
    assert body["code"] == grpc.StatusCode.UNAUTHENTICATED.value[0]
    assert replica.servicer.calls == 0


async def test_native_grpc_without_a_token_is_unauthenticated(edge, replica):
    stub = notification_pb2_grpc.NotifierServiceStub(edge.edge_channel())

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.Send(notification_pb2.NotificationRequest(notification_id="n-1"), timeout=10)

    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert replica.servicer.calls == 0


@pytest.mark.parametrize(("method", "path", "payload", "status", "code"), [
    ("POST", SEND_PATH, "{not json", 400, grpc.StatusCode.INVALID_ARGUMENT),
    ("POST", SEND_PATH, '{"recipient": "jane"}', 400, grpc.StatusCode.INVALID_ARGUMENT),
    ("GET", "/v1/jobs?colour=blue", None, 400, grpc.StatusCode.INVALID_ARGUMENT),
    ("GET", "/v1/no/such/thing", None, 404, grpc.StatusCode.NOT_FOUND),
    ("POST", "/v1/no/such/thing", "{}", 404, grpc.StatusCode.NOT_FOUND),
    # The batch cluster is empty in these tests: Envoy's own 503 is JSON too.
    ("GET", "/v1/jobs", None, 503, grpc.StatusCode.UNAVAILABLE),
], ids=["bad-json", "wrong-type", "unknown-query-parameter", "unknown-path", "unknown-post",
        "no-upstream"])
async def test_envoys_own_errors_are_json_status(edge, method, path, payload, status, code):
    headers = {**edge.auth, "Content-Type": "application/json"}

    got_status, content_type, body = await _call(edge, method, path, data=payload,
                                                 headers=headers)

    assert (got_status, content_type) == (status, "application/json")
    assert body["code"] == code.value[0]
    assert body["message"]


async def test_a_body_over_a_mebibyte_is_413(edge, replica):
    oversized = _notification("jane@example.com") | {"invoiceNumber": "9" * (1024 * 1024)}

    status, content_type, body = await _call(edge, "POST", SEND_PATH, json=oversized,
                                             headers=edge.auth)

    assert (status, content_type) == (413, "application/json")
    assert body["code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert replica.servicer.calls == 0


@pytest.mark.parametrize("edge_rate_limit", [(1, 3)], ids=["3-burst"])
async def test_the_rate_limit_turns_a_burst_away_with_429(edge, edge_rate_limit):
    # Given a bucket of three tokens refilled at one a second, and far more requests at once
    async def one() -> tuple[int, str, dict]:
        return await _call(edge, "POST", SEND_PATH, json=_notification("jane@example.com"),
                           headers=edge.auth)

    answers = await asyncio.gather(*(one() for _ in range(12)))

    # Then some pass and the rest get a JSON 429 (how many pass depends on refills meanwhile)
    statuses = [status for status, _, _ in answers]
    assert 200 in statuses and 429 in statuses, statuses
    limited = next(body for status, _, body in answers if status == 429)
    assert limited["code"] == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
