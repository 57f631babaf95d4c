"""``python -m heraldo.mesh run|up``: the local mesh, with the demo job (run) or kept running (up).

``run`` starts every component, loads the demo invoices, starts a job over REST through Envoy's
edge, shows its progress, prints a summary, checks that every sent notification arrived at the sink
exactly once, stops everything and exits 0 (1 when the job or that check failed, or a signal
stopped it first; 2 when the mesh did not start). ``up`` exits 0 when stopped by a signal.

Ctrl-C (SIGINT), SIGTERM and SIGHUP (the terminal closed) all stop the components in order:
services first, then the Consul they deregister from.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import signal
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import aiohttp

from heraldo import db, logs
from heraldo.argparsing import OneLineParser, whole_number
from heraldo.errors import HeraldoError
from heraldo.importer import load_demo
from heraldo.mesh.supervisor import LocalMesh, MeshPorts

logger = logging.getLogger("heraldo.mesh")

DEMO_INVOICES = 1200
TERMINAL = ("JOB_STATUS_COMPLETED", "JOB_STATUS_FAILED", "JOB_STATUS_STOPPED")
POLL_S = 0.5


class JobFailed(HeraldoError):
    pass


async def load_demo_data(mesh: LocalMesh, invoices: int) -> None:
    engine = db.create_engine(db.database_url(mesh.database_url))
    try:
        report = await load_demo(engine, invoices=invoices)
    finally:
        await engine.dispose()
    print(f"demo data: {report}")


async def start_job_over_rest(session: aiohttp.ClientSession, edge_url: str, job_name: str,
                              chunk_size: int = 0, *,
                              headers: Mapping[str, str] | None = None) -> dict:
    """POST /v1/jobs; ``headers`` carries the edge credentials (``LocalMesh.auth_headers``)."""
    body = {"jobName": job_name, "parameters": {"chunkSize": chunk_size}}
    async with session.post(f"{edge_url}/v1/jobs", json=body, headers=headers) as response:
        payload = await response.json(content_type=None)
        if response.status != 200:
            raise JobFailed(f"POST /v1/jobs answered {response.status}: {payload}")
        return payload


async def follow_job(session: aiohttp.ClientSession, edge_url: str, job_id: str,
                     show=print, *, headers: Mapping[str, str] | None = None) -> dict:
    """Polls GET /v1/jobs/{id} until the job ends, showing a progress line as it goes."""
    last_progress = None
    while True:
        async with session.get(f"{edge_url}/v1/jobs/{job_id}", headers=headers) as response:
            job = await response.json(content_type=None)
            if response.status != 200:
                raise JobFailed(f"GET /v1/jobs/{job_id} answered {response.status}: {job}")
        progress = (job.get("status"), job.get("counts", {}).get("processed"))
        if progress != last_progress:
            show(progress_line(job))
            last_progress = progress
        if job.get("status") in TERMINAL:
            return job
        await asyncio.sleep(POLL_S)


def progress_line(job: dict) -> str:
    counts = job.get("counts", {})
    selected = int(counts.get("selected", 0))
    processed = int(counts.get("processed", 0))
    percent = 100.0 * processed / selected if selected else 100.0
    filled = int(percent // 5)
    return (f"  [{'#' * filled}{'.' * (20 - filled)}] {percent:5.1f}% {processed}/{selected}"
            f"  sent={counts.get('sent', 0)} skipped={counts.get('skipped', 0)}"
            f" failed={counts.get('failed', 0)} rate={job.get('ratePerSecond', 0):.0f}/s")


async def sink_stats(session: aiohttp.ClientSession, sink_url: str) -> dict:
    async with session.get(f"{sink_url}/api/stats") as response:
        return await response.json(content_type=None)


def sink_delta(before: dict, after: dict) -> dict:
    """What reached the sink in between: it keeps the mail of earlier runs in the same checkout.
    """
    return {name: int(after.get(name, 0)) - int(before.get(name, 0))
            for name in ("count", "unique_notification_ids")}


def summary(job: dict, stats: dict, elapsed_s: float) -> str:
    counts = {key: int(value) for key, value in job.get("counts", {}).items()}
    lines = [
        f"job {job['jobId']} {job['status'].removeprefix('JOB_STATUS_')} in {elapsed_s:.1f} s",
        "  selected {selected}  sent {sent}  skipped {skipped}  failed {failed}"
        "  already sent earlier {duplicate}".format(**{
            name: counts.get(name, 0)
            for name in ("selected", "sent", "skipped", "failed", "duplicate")}),
    ]
    reasons = job.get("reasons", {})
    if reasons:
        lines.append("  not sent, by reason:")
        lines += [f"    {int(count):6d}  {reason}" for reason, count in sorted(
            reasons.items(), key=lambda item: -int(item[1]))]
    notices = job.get("notices", {})
    if notices:
        lines.append("  sent, with a notice:")
        lines += [f"    {int(count):6d}  {notice}" for notice, count in sorted(notices.items())]
    replicas = job.get("sentByReplica", {})
    sent = max(counts.get("sent", 0), 1)
    if replicas:
        lines.append("  sent, by notifier replica:")
        lines += [f"    {int(count):6d}  ({100 * int(count) / sent:4.1f}%)  {replica}"
                  for replica, count in sorted(replicas.items())]
    lines.append(f"  SMTP sink: {stats.get('count', 0)} new messages, "
                 f"{stats.get('unique_notification_ids', 0)} new distinct notification ids")
    return "\n".join(lines)


async def run_demo(mesh: LocalMesh, invoices: int) -> int:
    await load_demo_data(mesh, invoices)
    job_name = "demo-" + dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    async with aiohttp.ClientSession() as session:
        before = await sink_stats(session, mesh.sink_url)
        started = time.perf_counter()
        job = await start_job_over_rest(session, mesh.edge_url, job_name,
                                        headers=mesh.auth_headers)
        print(f"started job {job['jobId']} ({job_name}) with POST {mesh.edge_url}/v1/jobs")
        job = await follow_job(session, mesh.edge_url, job["jobId"], headers=mesh.auth_headers)
        elapsed_s = time.perf_counter() - started
        stats = sink_delta(before, await sink_stats(session, mesh.sink_url))
    print(summary(job, stats, elapsed_s))

    sent = int(job.get("counts", {}).get("sent", 0))
    if job["status"] != "JOB_STATUS_COMPLETED":
        print(f"job did not complete: {job.get('exitMessage', '')}", file=sys.stderr)
        return 1
    if stats.get("count") != sent or stats.get("unique_notification_ids") != sent:
        print(f"the sink received {stats.get('count')} messages for {sent} sent notifications",
              file=sys.stderr)
        return 1
    return 0


async def report_exits(mesh: LocalMesh, *, interval_s: float = 1.0) -> None:
    """Says once for each process of the mesh that exits on its own; returns when none is left.

    The rest keep running: two notifiers still deliver, for example, which is how the mesh
    behaves when a replica dies. Nothing is restarted behind the operator's back.
    """
    reported: set[str] = set()
    while True:
        exited = [child for child in mesh.children if child.name not in reported
                  and child.process is not None and child.process.poll() is not None]
        # A stop cancels this task while the components are stopping: waiting a moment first
        # keeps a shutdown from reading like a string of crashes.
        await asyncio.sleep(interval_s)
        for child in exited:
            reported.add(child.name)
            last_line = (child.log_tail().strip().splitlines() or [""])[-1]
            print(f"heraldo mesh: {child.name} {exit_description(child.process.returncode)}; the "
                  f"rest keep running (restart make up to bring it back). Last log line: "
                  f"{last_line}", file=sys.stderr, flush=True)
        if mesh.children and len(reported) == len(mesh.children):
            print("heraldo mesh: every process of the mesh has exited; stopping", file=sys.stderr)
            return


def exit_description(returncode: int) -> str:
    """``exited with code 3``, or ``was killed by SIGKILL`` for a negative code."""
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with code {returncode}"


def print_usage(mesh: LocalMesh) -> None:
    auth_command = ("AUTH=\"$(python3 -c 'import json; print(json.load(open("
                    f"\"{mesh.credentials.credentials_path}\"))[\"authorization\"])')\"")
    print(f"""
Heraldo is running (logs in {mesh.workdir / 'logs'}). Press Ctrl-C to stop.
  Credentials:        {mesh.credentials.credentials_path} (a bearer token, valid until
                      {mesh.credentials.expires_at:%Y-%m-%d %H:%M} UTC; every start makes a new one)
                      {auth_command}
  REST (Envoy edge):  curl -s -H "Authorization: $AUTH" -X POST {mesh.edge_url}/v1/jobs \\
                           -d '{{"jobName": "demo"}}'
                      curl -s -H "Authorization: $AUTH" {mesh.edge_url}/v1/jobs
  gRPC (reflection):  grpcurl -plaintext 127.0.0.1:{mesh.ports.edge} list   (no token needed)
                      grpcurl -plaintext -H "Authorization: $AUTH" 127.0.0.1:{mesh.ports.edge} \\
                           heraldo.v1.BatchService/ListJobs
  Console:            {mesh.console_url}#token=<the token in the credentials file>
  CLI:                .venv/bin/heraldo jobs list   (finds the mesh in {mesh.workdir}/mesh.json)
  Consul:             {mesh.consul_address.url}/ui  ({mesh.consul_description})
  SMTP sink:          {mesh.sink_url}
  Envoy admin:        http://127.0.0.1:{mesh.ports.envoy_admin}
  Database:           {mesh.database_description}
""")


async def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="python -m heraldo.mesh", description=__doc__)
    parser.add_argument("command", choices=("run", "up"))
    parser.add_argument("--workdir", type=Path, default=Path("var"),
                        help="where logs, the sink's mail and the Envoy bootstrap go (var/)")
    positive = whole_number(1, "a positive number")
    parser.add_argument("--notifiers", type=positive, default=3, help="notifier replicas (3)")
    parser.add_argument("--invoices", type=positive, default=DEMO_INVOICES,
                        help=f"demo invoices to load ({DEMO_INVOICES})")
    args = parser.parse_args(argv)
    logs.configure("INFO")

    # A stopping signal cancels the main task, and leaving the mesh's context stops the
    # components in order. Left to their default, SIGTERM and SIGHUP would end the supervisor at
    # once, and every component would get SIGTERM from the kernel together.
    main_task = asyncio.current_task()
    stopped_by: list[str] = []

    def stop(signum: signal.Signals) -> None:
        stopped_by.append(signum.name)
        main_task.cancel()

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        asyncio.get_running_loop().add_signal_handler(signum, stop, signum)
    try:
        mesh = LocalMesh(workdir=args.workdir, ports=MeshPorts.from_env(),
                         notifiers=args.notifiers)
        async with mesh:
            if args.command == "run":
                return await run_demo(mesh, args.invoices)
            await load_demo_data(mesh, args.invoices)
            print_usage(mesh)
            await report_exits(mesh)
    except HeraldoError as exc:
        print(f"heraldo mesh: {exc}", file=sys.stderr)
        return 2
    except asyncio.CancelledError:
        if not stopped_by:
            raise
        logger.info("mesh stopped signal=%s", stopped_by[0])
        if args.command == "run":
            print(f"heraldo mesh: stopped by {stopped_by[0]} before the demo job was checked",
                  file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    try:
        sys.exit(asyncio.run(main()))
    except KeyboardInterrupt:
        sys.exit(0)
