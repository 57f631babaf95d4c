"""Envoy balances Deliver streams over the endpoints the control plane serves it over ADS."""

from __future__ import annotations

import pytest

from heraldo.controlplane import EndpointSnapshots

from .conftest import AdsServer, EnvoyProcess, Replica, eventually

STREAMS = 30


async def _wait_applied(envoy: EnvoyProcess, ads_server: AdsServer,
                        snapshots: EndpointSnapshots, expected: set[str]) -> None:
    """Until Envoy has ACKed the current version and holds exactly ``expected`` notifiers."""
    version = str(snapshots.version)
    await eventually(lambda: ads_server.accepted_version(envoy.node_id) == version,
                     f"envoy to accept version {version}")

    async def holds_expected() -> bool:
        return await envoy.hosts("notifier") == expected

    await eventually(holds_expected, f"envoy's notifier cluster to hold {sorted(expected)}")


@pytest.fixture
async def three_replicas(snapshots, start_replica) -> list[Replica]:
    """Three fake notifiers, in the snapshot before Envoy starts."""
    replicas = [await start_replica(f"notifier-{n}") for n in range(1, 4)]
    snapshots.set_endpoints("notifier", [r.endpoint for r in replicas])
    snapshots.set_endpoints("batch", [])
    return replicas


async def test_streams_follow_the_endpoints_served_over_ads(
        snapshots, three_replicas, start_replica, ads_server, envoy):
    # Given three replicas served as the notifier cluster
    replicas = three_replicas
    await _wait_applied(envoy, ads_server, snapshots, {r.endpoint.address for r in replicas})

    # When 30 separate streams go through the mesh listener
    spread = await envoy.deliver_streams(STREAMS)

    # Then every replica gets a fair share of them
    assert set(spread) == {r.replica_id for r in replicas}
    assert min(spread.values()) >= STREAMS / 5, spread

    # When one replica leaves the snapshot
    gone, *staying = replicas
    snapshots.set_endpoints("notifier", [r.endpoint for r in staying])
    await _wait_applied(envoy, ads_server, snapshots, {r.endpoint.address for r in staying})

    # Then new streams no longer reach it (its server still runs, so only EDS keeps it out)
    spread = await envoy.deliver_streams(STREAMS)
    assert gone.replica_id not in spread, spread
    assert set(spread) == {r.replica_id for r in staying}
    assert min(spread.values()) >= STREAMS / 5, spread

    # When a fourth replica joins
    fourth = await start_replica("notifier-4")
    serving = [*staying, fourth]
    snapshots.set_endpoints("notifier", [r.endpoint for r in serving])
    await _wait_applied(envoy, ads_server, snapshots, {r.endpoint.address for r in serving})

    # Then it receives its share of new streams
    spread = await envoy.deliver_streams(STREAMS)
    assert set(spread) == {r.replica_id for r in serving}
    assert min(spread.values()) >= STREAMS / 5, spread


async def test_envoy_connecting_later_gets_the_current_snapshot(
        snapshots, start_replica, ads_server, envoy):
    # Given an Envoy that started while the control plane knew nothing (its initial fetch timed
    # out and it became ready with empty clusters)
    replica = await start_replica("notifier-1")

    # When the first endpoints arrive
    snapshots.set_endpoints("notifier", [replica.endpoint])
    snapshots.set_endpoints("batch", [])
    await _wait_applied(envoy, ads_server, snapshots, {replica.endpoint.address})

    # Then streams reach the replica, and the empty batch cluster holds no host
    assert await envoy.deliver_streams(3) == {"notifier-1": 3}
    assert await envoy.hosts("batch") == set()
