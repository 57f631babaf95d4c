"""The ADS protocol as a client sees it: subscriptions, versions, ACKs, NACKs and stale nonces."""

from __future__ import annotations

import logging

import grpc
import pytest

from heraldo.controlplane import Endpoint

from .conftest import NODE_ID, AdsClient, eventually

ONE = Endpoint("127.0.0.1", 50061, "notifier-1")
TWO = Endpoint("127.0.0.1", 50062, "notifier-2")
THREE = Endpoint("127.0.0.1", 50063, "notifier-3")
BATCH = Endpoint("127.0.0.1", 50051, "batch-1")


@pytest.fixture
async def client(ads_server):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{ads_server.port}") as channel:
        client = AdsClient(channel)
        yield client
        client.call.cancel()


async def test_answers_only_the_subscribed_clusters(snapshots, client):
    snapshots.set_endpoints("notifier", [ONE, TWO])
    snapshots.set_endpoints("batch", [BATCH])

    await client.request(names=["notifier"])
    response, clusters = await client.response()

    assert clusters == {"notifier": {50061, 50062}}
    assert response.version_info == str(snapshots.version)
    assert response.nonce


async def test_an_empty_subscription_means_every_cluster(snapshots, client):
    snapshots.set_endpoints("notifier", [ONE])
    snapshots.set_endpoints("batch", [BATCH])

    await client.request(names=[])
    _, clusters = await client.response()

    assert clusters == {"notifier": {50061}, "batch": {50051}}


async def test_the_first_answer_waits_for_a_snapshot(snapshots, client):
    # Given a stream whose request came before anything was known
    await client.request()

    # When the first endpoints arrive
    snapshots.set_endpoints("notifier", [ONE])

    # Then they are the first answer
    response, clusters = await client.response()
    assert clusters == {"notifier": {50061}}
    assert response.version_info == "1"


async def test_a_cluster_whose_last_replica_left_is_sent_empty(snapshots, client):
    snapshots.set_endpoints("notifier", [ONE])
    await client.request()
    first, _ = await client.response()
    await client.request(version=first.version_info, nonce=first.nonce)

    snapshots.set_endpoints("notifier", [])
    _, clusters = await client.response()

    # Left out, Envoy would keep the old hosts: EDS omissions are not deletions.
    assert clusters == {"notifier": set()}


async def test_a_nack_keeps_the_last_accepted_version(snapshots, ads_server, client, caplog):
    caplog.set_level(logging.INFO, logger="heraldo.controlplane")
    snapshots.set_endpoints("notifier", [ONE])
    await client.request()
    accepted, _ = await client.response()
    await client.request(version=accepted.version_info, nonce=accepted.nonce)

    # Given a newer version that Envoy rejects
    snapshots.set_endpoints("notifier", [ONE, TWO])
    rejected, _ = await client.response()
    await client.request(version=accepted.version_info, nonce=rejected.nonce,
                         error="malformed IP address: not-an-ip")

    # Then the control plane records the rejection and keeps the accepted version
    def rejection_seen() -> bool:
        return any(s.rejected_version == rejected.version_info
                   for s in ads_server.servicer.streams())

    await eventually(rejection_seen, "the NACK to be processed")
    (status,) = ads_server.servicer.streams()
    assert status.accepted_version == accepted.version_info
    assert status.rejected_error == "malformed IP address: not-an-ip"
    assert any(record.levelname == "WARNING" and f"version={rejected.version_info}" in
               record.getMessage() and "malformed IP address" in record.getMessage()
               for record in caplog.records)

    # And the rejected version is not resent: the next answer is the next real change
    snapshots.set_endpoints("notifier", [ONE, THREE])
    following, clusters = await client.response()
    assert int(following.version_info) > int(rejected.version_info)
    assert clusters == {"notifier": {50061, 50063}}
    await client.request(version=following.version_info, nonce=following.nonce)
    await eventually(lambda: ads_server.accepted_version(NODE_ID) == following.version_info,
                     "the ACK of the following version")


async def test_a_stale_nonce_is_ignored(snapshots, ads_server, client):
    snapshots.set_endpoints("notifier", [ONE])
    snapshots.set_endpoints("batch", [BATCH])
    await client.request()
    first, _ = await client.response()
    snapshots.set_endpoints("notifier", [TWO])
    second, _ = await client.response()

    # When a request answers the older response (Envoy had not seen the newer one yet)
    await client.request(names=["notifier", "batch"], version=first.version_info,
                         nonce=first.nonce)
    # and then the newer one is ACKed
    await client.request(version=second.version_info, nonce=second.nonce)

    # Then only the ACK counts: the stale subscription change did not trigger an answer
    await eventually(lambda: ads_server.accepted_version(NODE_ID) == second.version_info,
                     "the ACK of the second version")
    (status,) = ads_server.servicer.streams()
    assert status.subscribed == ("notifier",)
    snapshots.set_endpoints("notifier", [THREE])
    third, clusters = await client.response()
    assert clusters == {"notifier": {50063}}


async def test_a_write_without_a_change_sends_nothing(snapshots, client):
    snapshots.set_endpoints("notifier", [ONE, TWO])
    await client.request()
    first, _ = await client.response()
    await client.request(version=first.version_info, nonce=first.nonce)

    # Same replicas in another order, as a blocking query that timed out returns them
    assert snapshots.set_endpoints("notifier", [TWO, ONE]) is False
    snapshots.set_endpoints("notifier", [ONE])

    second, clusters = await client.response()
    assert int(second.version_info) == int(first.version_info) + 1
    assert clusters == {"notifier": {50061}}
