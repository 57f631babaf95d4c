"""Failure drills in the middle of a job; each one ends with every invoice at the sink once.

The drills share one mesh (``drill_mesh``) and run in the order written; each leaves the mesh
whole again. Timings are reported, never asserted: this machine is shared and noisy.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import aiohttp
import pytest

from .conftest import DRILL_RATE_PER_S, DrillReport, notifier_hosts, run_drill, wait_for

pytestmark = [pytest.mark.drills, pytest.mark.mesh]

#: How long the Consul drill keeps Consul down.
CONSUL_OUTAGE_S = 15.0
#: The cluster's pace while a new replica starts: about a minute of work left for it to join.
JOINING_RATE_PER_S = "15"


def assert_nothing_lost(report: DrillReport, arrivals: Counter[str]) -> None:
    """Every notifiable invoice reached the sink at least once, and the job says so."""
    assert report.status == "JOB_STATUS_COMPLETED", report
    delivered = report.counts.get("sent", 0) + report.counts.get("duplicate", 0)
    assert report.counts.get("failed", 0) == 0, report
    assert len(arrivals) == delivered, report
    assert delivered + report.counts.get("skipped", 0) == report.counts.get("selected", 0), report


def assert_nothing_lost_or_doubled(report: DrillReport, arrivals: Counter[str]) -> None:
    """Every notifiable invoice reached the sink exactly once.

    A retried request whose first attempt did get through is counted ``duplicate`` by the job
    (the notifier recognised it and sent nothing): its one email is among the arrivals.
    """
    assert report.status == "JOB_STATUS_COMPLETED", report
    delivered = report.counts.get("sent", 0) + report.counts.get("duplicate", 0)
    doubled = {nid: count for nid, count in arrivals.items() if count > 1}
    assert not doubled, f"emailed more than once: {doubled}"
    assert report.counts.get("failed", 0) == 0, report
    assert len(arrivals) == delivered, report
    assert delivered + report.counts.get("skipped", 0) == report.counts.get("selected", 0), report


async def _drill_kill_notifier(mesh, tmp_path):
    victim = mesh.notifier_ids()[0]

    async def disrupt(report: DrillReport) -> None:
        mesh.kill(victim)
        # A process supervisor (compose's restart policy) would bring it back: so do we, once
        # the mesh has noticed. Its own claims left in flight are taken over on restart.
        seconds = await wait_for(lambda: _fewer_hosts(mesh), "Envoy to drop the killed replica")
        report.notes.append(f"killed {victim}; Envoy dropped it after {seconds:.2f} s")
        mesh.start_component(victim)

    report, arrivals = await run_drill(mesh, tmp_path, "kill-notifier", disrupt)
    await wait_for(lambda: _hosts_at_least(mesh, mesh.notifiers), "the replica to be back")
    return report, arrivals


async def _fewer_hosts(mesh) -> bool:
    return len(await notifier_hosts(mesh)) < mesh.notifiers


async def _hosts_at_least(mesh, count: int) -> bool:
    return len(await notifier_hosts(mesh)) >= count


def test_kill_9_one_notifier(drill_mesh, tmp_path):
    report, arrivals = asyncio.run(_drill_kill_notifier(drill_mesh, tmp_path))

    # Nothing is lost. A replica killed between the SMTP server's "250 accepted" and its record
    # of it leaves those few notifications in doubt; another replica sends them again once the
    # claim is orphaned, with the same Message-ID, so receivers can recognise the copy. That
    # window, and only it, may double a mail: the count is in the report.
    assert_nothing_lost(report, arrivals)
    assert report.resent_with_new_message_id == []
    # and the job flags every mail that went out twice, among those that may have.
    assert set(report.resent) <= set(report.flagged), report
    assert sum(report.notices.values()) == len(report.flagged), report


async def _drill_consul_outage(mesh, tmp_path):
    async def disrupt(report: DrillReport) -> None:
        mesh.stop_component("consul")
        await asyncio.sleep(CONSUL_OUTAGE_S)
        mesh.start_component("consul")
        up_s = await wait_for(lambda: _consul_answers(mesh), "Consul to answer again")
        seconds = await wait_for(lambda: _all_registered(mesh),
                                 "every service to register again")
        report.notes.append(f"consul down {CONSUL_OUTAGE_S:g} s, answering {up_s:.2f} s after "
                            f"its start; every service registered and passing {seconds:.2f} s "
                            "after that")

    return await run_drill(mesh, tmp_path, "consul-outage", disrupt, after_fraction=0.1)


async def _consul_answers(mesh) -> bool:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3)) as session:
        async with session.get(f"{mesh.consul_address.url}/v1/status/leader") as response:
            return response.status == 200


async def _all_registered(mesh) -> bool:
    expected = {"heraldo-batch": 1, "heraldo-notifier": mesh.notifiers, "heraldo-controlplane": 1}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3)) as session:
        for service, count in expected.items():
            url = f"{mesh.consul_address.url}/v1/health/service/{service}?passing=1"
            async with session.get(url) as response:
                if response.status != 200 or len(await response.json()) < count:
                    return False
    return True


def test_consul_down_for_15_seconds(drill_mesh, tmp_path):
    report, arrivals = asyncio.run(_drill_consul_outage(drill_mesh, tmp_path))

    assert_nothing_lost_or_doubled(report, arrivals)


async def _drill_restart(mesh, tmp_path, component: str):
    async def disrupt(report: DrillReport) -> None:
        mesh.restart(component)
        report.notes.append(f"restarted {component}")

    report, arrivals = await run_drill(mesh, tmp_path, f"restart-{component}", disrupt)
    await wait_for(lambda: _hosts_at_least(mesh, mesh.notifiers),
                   "Envoy to hold every replica again")
    return report, arrivals


@pytest.mark.parametrize("component", ["controlplane", "envoy"])
def test_restart_in_the_middle_of_a_job(drill_mesh, tmp_path, component):
    report, arrivals = asyncio.run(_drill_restart(drill_mesh, tmp_path, component))

    assert_nothing_lost_or_doubled(report, arrivals)


async def _set_cluster_rate(mesh, rate_per_s: str) -> None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        url = f"{mesh.consul_address.url}/v1/kv/config/notifier/rate_per_s"
        async with session.put(url, data=rate_per_s) as response:
            assert response.status == 200, await response.text()


async def _drill_add_notifier(mesh, tmp_path):
    added: list[str] = []

    async def disrupt(report: DrillReport) -> None:
        # A replica can take seconds to start on a busy machine; the paced job would end first.
        # The running replicas slow down until the new one is in Envoy, so work is left for it.
        await _set_cluster_rate(mesh, JOINING_RATE_PER_S)
        try:
            added.append(mesh.add_notifier())
            seconds = await wait_for(lambda: _hosts_at_least(mesh, mesh.notifiers),
                                     "Envoy to route to the new replica")
        finally:
            await _set_cluster_rate(mesh, DRILL_RATE_PER_S)
        report.notes.append(f"added {added[0]}; in Envoy after {seconds:.2f} s")

    report, arrivals = await run_drill(mesh, tmp_path, "add-notifier", disrupt)
    return report, arrivals, added[0]


def test_a_fourth_notifier_joins_and_receives_streams(drill_mesh, tmp_path):
    report, arrivals, added = asyncio.run(_drill_add_notifier(drill_mesh, tmp_path))

    assert_nothing_lost_or_doubled(report, arrivals)
    log = drill_mesh.child(added).log_path.read_text(errors="replace")
    assert "rpc=/heraldo.v1.NotifierService/DeliverBatches" in log, "the new replica got no stream"
