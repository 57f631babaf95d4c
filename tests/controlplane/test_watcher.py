"""The Consul watcher and the control plane process, against the development Consul stand-in."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

import consul
import grpc
import pytest

from heraldo.controlplane import ConsulHealthWatcher, EndpointSnapshots
from heraldo.registry import ConsulAddress

from .conftest import AdsClient, eventually, free_port

SERVICES = {"notifier": "heraldo-notifier", "batch": "heraldo-batch"}
PROCESS_TIMEOUT_S = 30.0


async def _register(client, instance_id: str, port: int, service: str = "heraldo-notifier"):
    """A replica with a TTL check that passes until the test says otherwise."""
    await client.agent.service.register(service, service_id=instance_id, address="127.0.0.1",
                                        port=port, check=consul.Check.ttl("300s"))
    await client.agent.check.ttl_pass(f"service:{instance_id}")


def _ports(snapshots: EndpointSnapshots, cluster: str = "notifier") -> set[int] | None:
    endpoints = snapshots.snapshot().clusters.get(cluster)
    return None if endpoints is None else {ep.port for ep in endpoints}


@pytest.fixture
async def consul_client(consul_dev):
    client = ConsulAddress("127.0.0.1", consul_dev.port).client()
    yield client
    await client.close()


@pytest.fixture
async def watched(consul_client):
    """EndpointSnapshots kept current by a running watcher with short waits and backoffs."""
    snapshots = EndpointSnapshots(SERVICES)
    watcher = ConsulHealthWatcher(client=consul_client, snapshots=snapshots, services=SERVICES,
                                  blocking_wait_s=5, retry_backoff_s=0.1,
                                  retry_backoff_max_s=0.5, recovery_grace_s=1.0)
    watcher.start()
    await eventually(lambda: _ports(snapshots) == set() and _ports(snapshots, "batch") == set(),
                     "the first (empty) answer for both services")
    yield snapshots
    await watcher.stop()


async def test_replicas_join_and_leave_with_their_health(consul_client, watched):
    # When two replicas register and pass their checks
    await _register(consul_client, "notifier-1", 50061)
    await _register(consul_client, "notifier-2", 50062)

    # Then both are endpoints
    await eventually(lambda: _ports(watched) == {50061, 50062}, "both replicas")
    version = watched.version

    # When one fails its health check, it leaves
    await consul_client.agent.check.ttl_fail("service:notifier-1", "stuck")
    await eventually(lambda: _ports(watched) == {50062}, "the failing replica to leave")

    # When the other deregisters, the cluster is empty
    await consul_client.agent.service.deregister("notifier-2")
    await eventually(lambda: _ports(watched) == set(), "the deregistered replica to leave")
    assert watched.version > version
    assert _ports(watched, "batch") == set()


async def test_last_endpoints_stay_while_consul_is_down(consul_dev, consul_client, watched,
                                                        caplog):
    caplog.set_level(logging.WARNING, logger="heraldo.controlplane")
    await _register(consul_client, "notifier-1", 50061)
    await eventually(lambda: _ports(watched) == {50061}, "the replica")
    version = watched.version

    # When Consul goes away
    await consul_dev.stop()
    await eventually(lambda: any("consul query failed" in r.getMessage()
                                 for r in caplog.records), "the watcher to notice")

    # Then the last known endpoints are still served
    assert _ports(watched) == {50061}
    assert watched.version == version

    # When Consul comes back (empty: the stand-in keeps no state) and a replica registers
    await consul_dev.start()
    await _register(consul_client, "notifier-3", 50063)

    # Then the watcher follows the new catalog, whatever the restarted index
    await eventually(lambda: _ports(watched) == {50063}, "the new catalog")


async def test_a_consul_back_from_an_outage_removes_nothing_during_the_grace(
        consul_dev, consul_client, caplog):
    # Given a watcher with a grace long enough to observe, and one replica it serves
    caplog.set_level(logging.INFO, logger="heraldo.controlplane")
    snapshots = EndpointSnapshots(SERVICES)
    watcher = ConsulHealthWatcher(client=consul_client, snapshots=snapshots, services=SERVICES,
                                  blocking_wait_s=5, retry_backoff_s=0.1,
                                  retry_backoff_max_s=0.5, recovery_grace_s=30.0)
    watcher.start()
    try:
        await _register(consul_client, "notifier-1", 50061)
        await eventually(lambda: _ports(snapshots) == {50061}, "the replica")

        # When Consul restarts empty (the stand-in forgets services) and another replica
        # registers before the first one has
        await consul_dev.stop()
        await eventually(lambda: any("consul query failed" in r.getMessage()
                                     for r in caplog.records), "the watcher to notice")
        await consul_dev.start()
        await _register(consul_client, "notifier-3", 50063)

        # Then the newcomer is added and the absent one is kept for now
        await eventually(lambda: _ports(snapshots) == {50061, 50063}, "both replicas")
        assert any("consul reachable again" in r.getMessage() for r in caplog.records)
    finally:
        await watcher.stop()


async def test_process_exits_with_one_line_when_consul_is_unreachable():
    env = {**os.environ, "CONSUL_HTTP_ADDR": f"127.0.0.1:{free_port()}",
           "HERALDO_GRPC_PORT": "0"}

    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "heraldo.controlplane", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, stderr = await asyncio.wait_for(process.communicate(), PROCESS_TIMEOUT_S)

    assert process.returncode == 2
    lines = stderr.decode().strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("heraldo-controlplane: cannot reach Consul at http://127.0.0.1:")


async def test_process_serves_consul_replicas_over_ads(consul_dev, consul_client, tmp_path):
    port = free_port()
    env = {**os.environ, "CONSUL_HTTP_ADDR": consul_dev.address, "HERALDO_GRPC_PORT": str(port),
           "HERALDO_INSTANCE_ID": "controlplane-test", "HERALDO_METRICS_PORT": "0"}
    log_path = tmp_path / "controlplane.log"
    with log_path.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "heraldo.controlplane", env=env,
            stdout=log, stderr=asyncio.subprocess.STDOUT)
    try:
        # Given the control plane registered (and health-checked) in Consul, and a replica
        async def registered() -> bool:
            assert process.returncode is None, log_path.read_text()
            _, entries = await consul_client.health.service("heraldo-controlplane", passing=True)
            return len(entries) == 1

        await eventually(registered, "the control plane to pass its Consul check")
        await _register(consul_client, "notifier-1", 50061)

        # When an ADS client subscribes to the notifier cluster
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            client = AdsClient(channel)
            await client.request(names=["notifier"])
            _, clusters = await client.response()
            # the first answer may predate the replica's registration
            while clusters != {"notifier": {50061}}:
                _, clusters = await client.response()
            client.call.cancel()

        # Then it got the replica; and SIGTERM ends the process cleanly and deregisters it
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), PROCESS_TIMEOUT_S) == 0
        _, entries = await consul_client.health.service("heraldo-controlplane")
        assert entries == []
        log = log_path.read_text()
        assert "snapshot changed cluster=notifier" in log
        assert "envoy connected node=unit-node" in log
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
