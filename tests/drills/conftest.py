"""Failure drills: the whole local mesh on free ports, a job in flight, one component hurt.

Every drill checks at the SMTP sink that each notifiable invoice arrived exactly once, and
reports how long delivery stalled (printed, and written to ``drill.json`` in the test's tmp dir).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
import sqlalchemy as sa

from heraldo import db
from heraldo.batch.engine import POSSIBLE_COPY
from heraldo.importer import load_demo
from heraldo.mesh.__main__ import TERMINAL, start_job_over_rest
from heraldo.mesh.supervisor import LocalMesh, MeshPorts, envoy_healthy_hosts

DEMO_INVOICES = 1300
#: Small chunks make the job long enough to be hurt in the middle, and each stall visible.
CHUNK_SIZE = 40
#: A paced job (about six seconds for the demo invoices) leaves time for a disruption to land
#: in its middle and for the mesh to react before it ends, however fast the machine is.
DRILL_RATE_PER_S = "200"
SAMPLE_INTERVAL_S = 0.1
JOB_TIMEOUT_S = 240.0


@pytest.fixture(scope="module")
def drill_mesh(tmp_path_factory, mesh_database):
    """One mesh for every drill of a module, with the demo invoices loaded once.

    Each drill leaves the mesh whole again (what it stopped is started again), so the next one
    starts from three (or more) healthy replicas.
    """
    mesh = LocalMesh(workdir=tmp_path_factory.mktemp("drill-mesh"), ports=MeshPorts.free(),
                     database_url=mesh_database,
                     kv_overrides={"config/notifier/rate_per_s": DRILL_RATE_PER_S})
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("CONSUL_HTTP_ADDR", raising=False)
        asyncio.run(mesh.start())
    try:
        asyncio.run(_load(mesh))
        yield mesh
    finally:
        mesh.stop()


async def _load(mesh: LocalMesh) -> None:
    engine = db.create_engine(db.database_url(mesh.database_url))
    try:
        await load_demo(engine, invoices=DEMO_INVOICES)
    finally:
        await engine.dispose()


@dataclass
class DrillReport:
    """What one drill saw; ``stall_s`` is the longest time no email reached the sink after the
    disruption, while the job was still running."""

    drill: str
    job_id: str = ""
    status: str = ""
    counts: dict[str, int] = field(default_factory=dict)
    #: The job's notices on sent notifications (e.g. possible copies), as it reports them, and
    #: the notification ids it flagged as possible copies.
    notices: dict[str, int] = field(default_factory=dict)
    flagged: list[str] = field(default_factory=list)
    disrupted_at_processed: int = 0
    job_seconds: float = 0.0
    stall_s: float = 0.0
    notes: list[str] = field(default_factory=list)
    #: Notification ids that reached the sink more than once, and those among them whose copies
    #: do not all carry one Message-ID (a receiver could not tell they are the same email).
    resent: list[str] = field(default_factory=list)
    resent_with_new_message_id: list[str] = field(default_factory=list)


async def _json(session: aiohttp.ClientSession, url: str, **kwargs) -> dict:
    async with session.get(url, **kwargs) as response:
        return await response.json(content_type=None)


async def _flagged_as_possible_copies(mesh: LocalMesh, job_id: str) -> list[str]:
    engine = db.create_engine(db.database_url(mesh.database_url))
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(sa.select(db.job_outcomes.c.notification_id).where(
                db.job_outcomes.c.execution_id == job_id,
                db.job_outcomes.c.reason == POSSIBLE_COPY))
            return sorted(rows.scalars())
    finally:
        await engine.dispose()


async def _sink_count(session: aiohttp.ClientSession, mesh: LocalMesh) -> int:
    return int((await _json(session, f"{mesh.sink_url}/api/stats")).get("count", 0))


async def run_drill(mesh: LocalMesh, tmp_path: Path, name: str,
                    disrupt: Callable[[DrillReport], Awaitable[None]],
                    after_fraction: float = 0.2) -> tuple[DrillReport, Counter[str]]:
    """Starts a job, calls ``disrupt`` once a fraction of it is processed, follows it to its end.

    Returns the report (also written to ``tmp_path/drill.json`` and printed) and, per
    notification id of this job, how many emails the sink received.
    """
    report = DrillReport(drill=name)
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        before = Counter(message["notification_id"]
                         for message in await _json(session, f"{mesh.sink_url}/api/messages"))
        started = time.monotonic()
        job = await start_job_over_rest(session, mesh.edge_url,
                                        f"drill-{name}-{uuid.uuid4().hex[:6]}",
                                        chunk_size=CHUNK_SIZE, headers=mesh.auth_headers)
        report.job_id = job["jobId"]
        job_url = f"{mesh.edge_url}/v1/jobs/{report.job_id}"

        samples: list[tuple[float, int]] = []
        done = asyncio.Event()

        async def sample() -> None:
            while not done.is_set():
                try:
                    samples.append((time.monotonic(), await _sink_count(session, mesh)))
                except (aiohttp.ClientError, TimeoutError):
                    pass
                await asyncio.sleep(SAMPLE_INTERVAL_S)

        sampler = asyncio.create_task(sample())
        disrupted_at = None
        try:
            deadline = started + JOB_TIMEOUT_S
            while time.monotonic() < deadline:
                try:
                    job = await _json(session, job_url, headers=mesh.auth_headers)
                except (aiohttp.ClientError, TimeoutError):
                    # The edge itself may be what the drill restarts.
                    await asyncio.sleep(0.2)
                    continue
                counts = job.get("counts", {})
                processed = int(counts.get("processed", 0))
                selected = int(counts.get("selected", 0))
                if disrupted_at is None and (job.get("status") in TERMINAL or (
                        selected and processed >= after_fraction * selected)):
                    report.disrupted_at_processed = processed
                    if job.get("status") in TERMINAL:
                        report.notes.append("the job ended before the disruption")
                    disrupted_at = time.monotonic()
                    await disrupt(report)
                if job.get("status") in TERMINAL and disrupted_at is not None:
                    break
                await asyncio.sleep(0.2)
            else:
                pytest.fail(f"drill {name}: job {report.job_id} did not end in {JOB_TIMEOUT_S} s")
        finally:
            done.set()
            await sampler
        report.job_seconds = round(time.monotonic() - started, 2)
        report.status = job.get("status", "")
        report.counts = {key: int(value) for key, value in job.get("counts", {}).items()}
        report.notices = {key: int(value) for key, value in job.get("notices", {}).items()}
        report.flagged = await _flagged_as_possible_copies(mesh, report.job_id)
        report.stall_s = round(_longest_stall(samples, disrupted_at), 2)
        messages = await _json(session, f"{mesh.sink_url}/api/messages")

    # Drills run one after another: what the sink held before this job is not this job's.
    arrivals = Counter(message["notification_id"] for message in messages) - before
    report.resent = sorted(nid for nid, count in arrivals.items() if count > 1)
    report.resent_with_new_message_id = sorted(
        nid for nid in report.resent
        if len({m["message_id"] for m in messages if m["notification_id"] == nid}) > 1)
    (tmp_path / "drill.json").write_text(json.dumps(report.__dict__, indent=2))
    print(f"\n  drill {name}: {json.dumps(report.__dict__)}")
    return report, arrivals


def _longest_stall(samples: list[tuple[float, int]], since: float | None) -> float:
    """The longest time between two increases of the sink's count after ``since``."""
    if since is None:
        return 0.0
    longest = 0.0
    last_change = since
    previous = None
    for moment, count in samples:
        if previous is not None and count > previous:
            if moment >= since:
                longest = max(longest, moment - last_change)
            last_change = max(moment, since)
        previous = count
    return longest


async def wait_for(check: Callable[[], Awaitable[bool]], what: str, timeout_s: float = 60) -> float:
    """Polls ``check`` until true; returns the seconds it took (fails the test at the deadline)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        try:
            if await check():
                return time.monotonic() - started
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError):
            pass
        await asyncio.sleep(0.1)
    pytest.fail(f"timed out after {timeout_s:g} s waiting for {what}")


async def notifier_hosts(mesh: LocalMesh) -> set[str]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3)) as session:
        return await envoy_healthy_hosts(session, mesh.ports.envoy_admin, "notifier")
