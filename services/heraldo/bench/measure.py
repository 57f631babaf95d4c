"""One measured run of each contender: Heraldo's mesh, the baseline script and ``smtp-source``.

Each run samples the sink's message count every SAMPLE_INTERVAL_S for the throughput plot, and the
CPU and peak memory of the processes involved from ``/proc``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import aiohttp
import asyncpg

from heraldo.bench import procstats
from heraldo.bench.sink import SmtpSink, run_smtp_source
from heraldo.bench.workloads import BenchDatabase
from heraldo.errors import Unavailable
from heraldo.mesh.__main__ import start_job_over_rest
from heraldo.mesh.supervisor import LocalMesh

logger = logging.getLogger(__name__)

SAMPLE_INTERVAL_S = 0.5
#: GetJob also counts outcomes by reason and replica: polling it often would load the batch
#: service being measured, and the job's own end time is what the figures use.
JOB_POLL_S = 1.0
#: Longer than the 250,000-invoice job takes at a hundred emails a second.
JOB_TIMEOUT_S = 4 * 3600.0
#: A busy edge (rate limit, upstream briefly gone) is asked again at the next poll.
RETRIED_HTTP_STATUSES = (429, 502, 503)
TERMINAL = ("JOB_STATUS_COMPLETED", "JOB_STATUS_FAILED", "JOB_STATUS_STOPPED")
#: The mesh processes whose CPU counts as Heraldo's cost of sending.
DATA_PATH = ("batch", "envoy", "notifier")


@dataclass
class RunResult:
    system: str  # heraldo | baseline | lean-baseline | ceiling
    run: int | str  # the measured run's number, or "profile" for the profiled one
    sent: int
    elapsed_s: float
    first_email_s: float | None = None
    latency_p50_s: float | None = None
    latency_p99_s: float | None = None
    #: The same two with the other bound of the approximation (see ``chunk_latencies``).
    latency_upper_p50_s: float | None = None
    latency_upper_p99_s: float | None = None
    cpu_s: dict[str, float] = field(default_factory=dict)
    peak_rss_mb: dict[str, float] = field(default_factory=dict)
    #: (seconds since the start, messages the sink received since the start)
    samples: list[tuple[float, int]] = field(default_factory=list)
    #: The machine's 1-minute load average as the run ended: above the CPU count, the figures
    #: measure the neighbours as much as the system.
    load_average_1m: float = field(default_factory=lambda: round(os.getloadavg()[0], 2))
    #: How busy all CPUs were during the run, whoever used them: near 100, the run was CPU-bound.
    machine_busy_percent: float | None = None
    detail: str = ""
    #: Heraldo runs: the job completed, every selected invoice has an outcome, none failed, and
    #: the sink received exactly as many messages as the job sent (none doubled, none missing).
    exactly_once: bool | None = None

    @property
    def per_second(self) -> float:
        return self.sent / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def cpu_s_per_1000(self) -> float | None:
        spent = sum(seconds for name, seconds in self.cpu_s.items()
                    if name.startswith(DATA_PATH) or name in ("baseline", "smtp-source"))
        return round(1000 * spent / self.sent, 3) if self.sent else None

    def to_json(self) -> dict:
        values = asdict(self)
        values["per_second"] = round(self.per_second, 1)
        values["cpu_s_per_1000"] = self.cpu_s_per_1000
        return values


class Sampler:
    """Records the sink's count every SAMPLE_INTERVAL_S while a run is going, and what the run
    cost the machine: all CPUs' busy share, and the CPU of the PostgreSQL server's processes
    (when it runs on this machine; one that ended during the run is missed, so the sum is a
    lower bound)."""

    def __init__(self, sink: SmtpSink) -> None:
        self.sink = sink
        self.samples: list[tuple[float, int]] = []
        self.sink_cpu_s = 0.0
        #: None when no PostgreSQL process was seen here (a server on another machine).
        self.postgres_cpu_s: float | None = None
        self.machine_busy_percent: float | None = None
        self.base = 0
        self.started = 0.0
        self._sink_before: procstats.ProcessSample | None = None
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self.base = self.sink.watch_first()
        self._sink_before = procstats.sample(self.sink.pid)
        self._machine_before = procstats.sample_machine()
        self._postgres_before = procstats.sample_all(procstats.pids_named("postgres"))
        self.started = time.perf_counter()
        self._task = asyncio.create_task(self._sample())

    async def _sample(self) -> None:
        while True:
            self.samples.append((round(time.perf_counter() - self.started, 3),
                                 self.sink.count - self.base))
            await asyncio.sleep(SAMPLE_INTERVAL_S)

    async def stop(self) -> list[tuple[float, int]]:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        self.samples.append((round(time.perf_counter() - self.started, 3),
                             self.sink.count - self.base))
        sink_after = procstats.sample(self.sink.pid)
        if self._sink_before and sink_after:
            self.sink_cpu_s = round(sink_after.cpu_s - self._sink_before.cpu_s, 3)
        self.machine_busy_percent = procstats.busy_percent(self._machine_before,
                                                           procstats.sample_machine())
        if self._postgres_before:
            postgres_after = procstats.sample_all(procstats.pids_named("postgres"))
            self.postgres_cpu_s = round(sum(procstats.cpu_used(self._postgres_before,
                                                               postgres_after).values()), 3)
        return self.samples

    @property
    def postgres(self) -> dict[str, float]:
        """The PostgreSQL server's CPU seconds as a ``cpu_s`` entry, where it was measured."""
        return {} if self.postgres_cpu_s is None else {"postgres": self.postgres_cpu_s}

    @property
    def first_email_s(self) -> float | None:
        first = self.sink.first_at
        return round(first - self.started, 4) if first is not None else None


def mesh_pids(mesh: LocalMesh) -> dict[str, int]:
    return {child.name: child.process.pid for child in mesh.children if child.process}


async def run_heraldo(mesh: LocalMesh, sink: SmtpSink, database: BenchDatabase, *,
                      run: int | str, chunk_size: int, workload: str) -> RunResult:
    """Starts a job over REST through Envoy's edge and waits for it to end.

    ``run`` is the measured run's number, or a label such as "profile" for one that is not.
    """
    await database.forget_jobs()
    pids = mesh_pids(mesh)
    before = procstats.sample_all(pids)
    sampler = Sampler(sink)
    job_name = f"bench-{workload}-{run}-{uuid.uuid4().hex[:6]}"
    async with aiohttp.ClientSession(headers=edge_headers(mesh)) as session:
        posted_at = dt.datetime.now(dt.UTC)
        sampler.start()
        job = await start_job_over_rest(session, mesh.edge_url, job_name)
        logger.info("heraldo run started workload=%s run=%s job_id=%s", workload, run,
                    job["jobId"])
        job = await _wait_for_job(session, mesh.edge_url, job["jobId"])
    samples = await sampler.stop()
    received = samples[-1][1] if samples else 0
    after = procstats.sample_all(pids)

    # The batch service stamps the end on this machine's clock, the one posted_at was read from.
    execution = await _execution_times(database.url, job["jobId"])
    elapsed_s = (execution["end_time"] - posted_at).total_seconds()
    sent = int(job.get("counts", {}).get("sent", 0))
    lower, upper = await chunk_latencies(database.url, job["jobId"], chunk_size)
    result = RunResult(
        system="heraldo", run=run, sent=sent, elapsed_s=round(elapsed_s, 3),
        first_email_s=sampler.first_email_s, samples=samples,
        cpu_s={**procstats.cpu_used(before, after), "smtp-sink": sampler.sink_cpu_s,
               **sampler.postgres},
        peak_rss_mb={name: round(taken.peak_rss_kb / 1024, 1) for name, taken in after.items()},
        machine_busy_percent=sampler.machine_busy_percent,
        detail=f"job {job['jobId']} {job['status']}: {json.dumps(job.get('counts', {}))}")
    counts = {key: int(value) for key, value in job.get("counts", {}).items()}
    outcomes = sum(counts.get(key, 0) for key in ("sent", "duplicate", "skipped", "failed"))
    # A job that sent nothing would pass every comparison below while checking nothing.
    result.exactly_once = (sent > 0 and job["status"] == "JOB_STATUS_COMPLETED"
                           and counts.get("failed", 0) == 0
                           and outcomes == counts.get("selected", -1) and received == sent)
    if sent == 0:
        logger.warning("exactly-once check failed: the job sent no email workload=%s run=%s "
                       "counts=%s", workload, run, counts)
    elif not result.exactly_once:
        logger.warning("exactly-once check failed workload=%s run=%s received=%d counts=%s",
                       workload, run, received, counts)
    result.latency_p50_s, result.latency_p99_s = _percentiles(lower)
    result.latency_upper_p50_s, result.latency_upper_p99_s = _percentiles(upper)
    if job["status"] != "JOB_STATUS_COMPLETED":
        logger.warning("heraldo run did not complete workload=%s run=%s status=%s message=%s",
                       workload, run, job["status"], job.get("exitMessage", ""))
    logger.info("heraldo run done workload=%s run=%s sent=%d elapsed_s=%.1f per_s=%.0f",
                workload, run, sent, elapsed_s, result.per_second)
    return result


def edge_headers(mesh: LocalMesh) -> dict[str, str]:
    """What the edge wants from a REST client (its bearer token); nothing when it wants none."""
    return dict(getattr(mesh, "auth_headers", None) or {})


async def _wait_for_job(session: aiohttp.ClientSession, edge_url: str, job_id: str) -> dict:
    """Raises Unavailable when the edge refuses the poll or the job outlives JOB_TIMEOUT_S."""
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while time.monotonic() < deadline:
        async with session.get(f"{edge_url}/v1/jobs/{job_id}") as response:
            job = await response.json(content_type=None)
            if response.status not in (200, *RETRIED_HTTP_STATUSES):
                raise Unavailable(f"GET /v1/jobs/{job_id} answered {response.status}: {job}")
        if job.get("status") in TERMINAL:
            return job
        await asyncio.sleep(JOB_POLL_S)
    raise Unavailable(f"job {job_id} did not end within {JOB_TIMEOUT_S:.0f} s")


async def _execution_times(database_url: str, job_id: str) -> dict:
    conn = await asyncpg.connect(database_url)
    try:
        return dict(await conn.fetchrow(
            "SELECT start_time, end_time FROM job_executions WHERE id = $1", job_id))
    finally:
        await conn.close()


# Chunk k of a step is rows [k * size, (k + 1) * size) of its selection in invoice id order, and
# every selected invoice gets an outcome, skipped ones too: the outcomes rebuild the chunks. A job
# split into partitions (steps) runs their chunks side by side, so chunks are counted per step.
CHUNK_DELIVERIES = """
    WITH chunks AS (
        SELECT notification_id, {step} AS step,
               (row_number() OVER (PARTITION BY {step} ORDER BY invoice_id) - 1) / $2 AS chunk
        FROM job_outcomes WHERE execution_id = $1
    )
    SELECT c.step, c.chunk, d.create_time, d.update_time
    FROM chunks c JOIN deliveries d USING (notification_id)
    WHERE d.status = 'sent'
"""
HAS_STEPS = """
    SELECT count(*) > 0 FROM information_schema.columns
    WHERE table_name = 'job_outcomes' AND column_name = 'step_id'
"""


async def chunk_latencies(database_url: str, job_id: str, chunk_size: int
                          ) -> tuple[list[float], list[float]]:
    """Per email, seconds from its chunk's start to the SMTP server's acceptance, two ways.

    Nothing records when the batch service read a chunk, so its start is bounded from the
    delivery log: no later than the first claim of the chunk by a notifier (the lower figure, which
    leaves out reading, processing and opening the streams), and no earlier than the last
    acceptance of the previous chunk of its step (the upper figure, which adds that chunk's
    commit). The end is the row's last update, written right after the server accepted the message.
    """
    conn = await asyncpg.connect(database_url)
    try:
        step = "step_id" if await conn.fetchval(HAS_STEPS) else "''"
        rows = await conn.fetch(CHUNK_DELIVERIES.format(step=step), job_id, chunk_size)
    finally:
        await conn.close()
    first_claim: dict[tuple[str, int], dt.datetime] = {}
    last_accept: dict[tuple[str, int], dt.datetime] = {}
    for step_id, chunk, created, updated in rows:
        key = (step_id, chunk)
        if key not in first_claim or created < first_claim[key]:
            first_claim[key] = created
        if key not in last_accept or updated > last_accept[key]:
            last_accept[key] = updated
    lower, upper = [], []
    for step_id, chunk, _created, updated in rows:
        claimed = first_claim[(step_id, chunk)]
        lower.append((updated - claimed).total_seconds())
        start = min(last_accept.get((step_id, chunk - 1), claimed), claimed)
        upper.append((updated - start).total_seconds())
    return lower, upper


def _percentiles(values: list[float]) -> tuple[float | None, float | None]:
    if len(values) < 2:
        return (round(values[0], 4), round(values[0], 4)) if values else (None, None)
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return round(cuts[49], 4), round(cuts[98], 4)


async def run_baseline(sink: SmtpSink, database: BenchDatabase, *, run: int, page_size: int,
                       builder: str = "stdlib", limit: int | None = None) -> RunResult:
    """Runs the baseline script in a process of its own, so its CPU and memory are its own.

    ``builder`` "heraldo" gives the lean baseline; ``limit`` stops it after that many emails.
    """
    system = "baseline" if builder == "stdlib" else "lean-baseline"
    sampler = Sampler(sink)
    sampler.start()
    extra = ["--limit", str(limit)] if limit is not None else []
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "heraldo.bench.baseline", database.url, str(sink.port),
        "--page-size", str(page_size), "--builder", builder, *extra,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    peak_kb = 0
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    waiter = asyncio.create_task(process.communicate())
    # VmHWM disappears with the process: the last reading before it exits is the one kept.
    while not waiter.done():
        taken = procstats.sample(process.pid)
        if taken is not None:
            peak_kb = max(peak_kb, taken.peak_rss_kb)
        await asyncio.wait({waiter}, timeout=SAMPLE_INTERVAL_S / 5)
    stdout, stderr = waiter.result()
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = (children_after.ru_utime - children_before.ru_utime
             + children_after.ru_stime - children_before.ru_stime)
    samples = await sampler.stop()
    if process.returncode != 0:
        raise RuntimeError(f"the {system} exited with code {process.returncode}: "
                           f"{stderr.decode(errors='replace')[-800:]}")
    report = json.loads(stdout)
    result = RunResult(
        system=system, run=run, sent=report["sent"], elapsed_s=round(report["elapsed_s"], 3),
        first_email_s=sampler.first_email_s, samples=samples,
        cpu_s={"baseline": round(cpu_s, 3), "smtp-sink": sampler.sink_cpu_s,
               **sampler.postgres},
        peak_rss_mb={"baseline": round(peak_kb / 1024, 1)},
        machine_busy_percent=sampler.machine_busy_percent,
        detail=f"skipped {report['skipped']}; times from the script's start, after imports")
    result.latency_p50_s, result.latency_p99_s = _percentiles(report["latencies_s"])
    logger.info("%s run done run=%d sent=%d elapsed_s=%.1f per_s=%.0f", system, run,
                result.sent, result.elapsed_s, result.per_second)
    return result


async def run_ceiling(sink: SmtpSink, *, run: int, messages: int, sessions: int,
                      message_file: Path) -> RunResult:
    """``smtp-source`` sends as many copies of a rendered notification as Heraldo sent."""
    sampler = Sampler(sink)
    sampler.start()
    source = await asyncio.to_thread(run_smtp_source, sink.port, messages=messages,
                                     sessions=sessions, message_file=message_file)
    samples = await sampler.stop()
    result = RunResult(
        system="ceiling", run=run, sent=messages, elapsed_s=round(source.elapsed_s, 3),
        first_email_s=sampler.first_email_s, samples=samples,
        cpu_s={"smtp-source": round(source.cpu_s, 3), "smtp-sink": sampler.sink_cpu_s},
        machine_busy_percent=sampler.machine_busy_percent,
        detail=f"smtp-source -d -s {sessions}: {sessions} reused connections")
    logger.info("ceiling run done run=%d sent=%d elapsed_s=%.1f per_s=%.0f", run, messages,
                result.elapsed_s, result.per_second)
    return result
