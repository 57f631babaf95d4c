"""``python -m heraldo.bench``: Heraldo end to end against a plain script and the SMTP ceiling.

For each workload: a fresh PostgreSQL database is loaded, Postfix's ``smtp-sink`` is started, and
the local mesh (Consul, Envoy, control plane, batch, three notifiers) starts on free ports with its
notifiers pointed at that sink. Then, ``--runs`` times in turn: a job started over REST through
Envoy's edge; the baseline script, building messages with ``email.message`` as a developer
without Heraldo would (the first 25,000 only); the lean baseline, the same script with Heraldo's
message builder; and ``smtp-source`` sending as many messages. One more, profiled, Heraldo run
follows. Results, plots and profiles go to ``--out`` (var/bench/).

The mesh starts once per workload and serves all its runs (the job tables and delivery log are
emptied before each): its first run pays for cold connections and caches, which the median over
runs absorbs, and the peak memory reported is the highest of the whole workload, start-up
included. The mesh's own development SMTP sink still starts with it and idles, unused.

Every Heraldo run is also checked for exactly-once delivery: the job completed with an outcome
for every selected invoice and none failed, it sent at least one email (a run that sent none
checked nothing), and the sink received exactly as many messages as the job sent. Exits 0 when
every run completed and passed that check (targets missed are reported, not failures), 1 when one
did not, 2 on a usage error or when something the benchmark needs is missing (Postfix's tools, a
PostgreSQL server it can reach and create databases on), before any run starts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import logging
import os
import shutil
import sys
from dataclasses import asdict
from decimal import Decimal
from pathlib import Path

from heraldo import logs
from heraldo.argparsing import OneLineParser, whole_number
from heraldo.bench import report
from heraldo.bench.measure import RunResult, mesh_pids, run_baseline, run_ceiling, run_heraldo
from heraldo.bench.profile import Recording, top_costs
from heraldo.bench.sink import SmtpSink, postfix_tool
from heraldo.bench.workloads import (
    SYNTHETIC_INVOICES,
    WORKLOADS,
    BenchDatabase,
    check_server,
    load,
    server_admin_url,
)
from heraldo.cli import validate_setting
from heraldo.errors import ConfigError, HeraldoError
from heraldo.mesh.ports import free_port
from heraldo.mesh.supervisor import LOCAL_POSTGRES, PROJECT_ROOT, LocalMesh, MeshPorts
from heraldo.notifier.message import Envelope, compose
from heraldo.notifier.render import Document, Renderer
from heraldo.settings import load_seed

logger = logging.getLogger("heraldo.bench")

#: Real input lives beside the checkout, never inside it; ``HERALDO_DATA_DIR`` points elsewhere.
DATA_DIR = Path(os.environ.get("HERALDO_DATA_DIR", PROJECT_ROOT.parent / "shared" / "data"))
RETAIL_PATH = DATA_DIR / "online-retail" / "online_retail.csv.gz"
NOTIFIERS = 3
#: The plain baseline sends the first this many emails only: its rate is flat from the start, and
#: the whole synthetic set would take it about a quarter of an hour per run.
BASELINE_LIMIT = 25_000
#: The services profiled in the extra run.
PROFILED = ("batch", "notifier-1")


def sample_message(path: Path, sender: str) -> Path:
    """A rendered invoice email for smtp-source, the size of what the others send."""
    rendered = Renderer(company="Heraldo Billing").render("invoice", "en-GB", Document(
        variant="invoice", invoice_number="581587", customer_name="Customer 12680",
        amount=Decimal("249.30"), currency="GBP",
        issue_date=dt.date(2011, 12, 9), due_date=dt.date(2012, 1, 8)))
    message = compose(Envelope(notification_id="bench.581587", invoice_number="581587",
                               to_name="Customer 12680",
                               to_address="customer-12680@example.com", sender=sender), rendered)
    path.parent.mkdir(parents=True, exist_ok=True)
    # smtp-source ends each line of the file with CRLF itself.
    path.write_bytes(message.replace(b"\r\n", b"\n"))
    return path


async def bench_workload(workload: str, args: argparse.Namespace, settings: dict[str, str]
                         ) -> dict:
    chunk_size = int(settings["config/batch/chunk_size"])
    sessions = NOTIFIERS * int(settings["config/notifier/smtp_connections"])
    database = BenchDatabase(args.database_url, workload)
    await database.create()
    sink = SmtpSink(free_port())
    result: dict = {"database": database.name}
    try:
        loaded = await load(database, workload, retail_path=args.retail_path,
                            synthetic_invoices=args.synthetic_invoices)
        result["load"] = asdict(loaded)
        sink.start()
        overrides = {**args.kv, **sink_settings(sink.port)}
        workdir = args.out / f"mesh-{workload}"
        # A Consul data directory left by an earlier run would keep that run's --set values.
        shutil.rmtree(workdir, ignore_errors=True)
        mesh = LocalMesh(workdir=workdir, ports=MeshPorts.free(NOTIFIERS),
                         notifiers=NOTIFIERS, database_url=database.url, kv_overrides=overrides)
        message_file = sample_message(args.out / "sample-message.eml",
                                      settings["config/notifier/sender"])
        runs: list[RunResult] = []
        # The mesh starts only when Heraldo is measured: the baselines need the sink alone.
        async with mesh if "heraldo" in args.systems else contextlib.nullcontext():
            for run in range(1, args.runs + 1):
                if "heraldo" in args.systems:
                    heraldo = await run_heraldo(mesh, sink, database, run=run,
                                                chunk_size=chunk_size, workload=workload)
                    runs.append(heraldo)
                if "baseline" in args.systems:
                    runs.append(await run_baseline(sink, database, run=run, page_size=chunk_size,
                                                   limit=BASELINE_LIMIT))
                if "lean-baseline" in args.systems:
                    runs.append(await run_baseline(sink, database, run=run, page_size=chunk_size,
                                                   builder="heraldo"))
                if "ceiling" in args.systems:
                    runs.append(await run_ceiling(sink, run=run, messages=max(heraldo.sent, 1),
                                                  sessions=sessions, message_file=message_file))
            if args.profile and "heraldo" in args.systems:
                result["profile"] = await profiled_run(mesh, sink, database, workload,
                                                       chunk_size, args.out)
        result["runs"] = [run.to_json() for run in runs]
        result["summary"] = report.summarise(runs)
        plotted = report.plot(args.out / f"throughput-{workload}.png", workload, runs)
        result["plot"] = str(plotted) if plotted else None
        result["completed"] = all(
            run.system != "heraldo" or run.exactly_once for run in runs)
    finally:
        sink.stop()
        if args.keep_database:
            logger.info("database kept name=%s", database.name)
        else:
            await database.drop()
    return result


async def profiled_run(mesh: LocalMesh, sink: SmtpSink, database: BenchDatabase, workload: str,
                       chunk_size: int, out: Path) -> dict:
    """One more Heraldo run with py-spy on the batch service and one notifier."""
    pids = mesh_pids(mesh)
    recordings = [Recording(name, pids[name], out / f"profile-{workload}-{name}.svg",
                            out / f"profile-{workload}-{name}.folded").start()
                  for name in PROFILED]
    try:
        run = await run_heraldo(mesh, sink, database, run="profile", chunk_size=chunk_size,
                                workload=workload)
    finally:
        for recording in recordings:
            recording.stop()
    profile = {"run": {"per_second": round(run.per_second, 1), "sent": run.sent,
                       "note": "slower than the measured runs: py-spy shares the CPUs"}}
    for recording in recordings:
        costs = top_costs(recording.folded_path) if recording.folded_path.exists() else {}
        profile[recording.name] = {"svg": str(recording.svg_path),
                                   "folded": str(recording.folded_path), **costs}
    return profile


def sink_settings(port: int) -> dict[str, str]:
    """The KV settings that point the notifiers at the benchmark's smtp-sink."""
    return {"config/notifier/smtp_host": "127.0.0.1", "config/notifier/smtp_port": str(port)}


def checked_settings(items: list[str]) -> dict[str, str]:
    """The ``--set`` items as KV entries, each validated as ``heraldo config set`` validates it.

    They are validated in the order given, each over the seed and the ones before it, as the
    same ``heraldo config set`` commands run one after another would be.

    Raises:
        ConfigError: an item is not KEY=VALUE, names no setting, or has a value not valid for a
            service that reads it.
    """
    current = load_seed()
    kv: dict[str, str] = {}
    for item in items:
        key, separator, value = item.partition("=")
        key = key.strip()
        if not separator:
            raise ConfigError(f"{item!r}: expected KEY=VALUE")
        if key in sink_settings(0):
            raise ConfigError(f"{key}: the benchmark sets it to its own smtp-sink")
        # Stored as validated, without the blanks around it, as heraldo config set stores it.
        value = value.strip()
        validate_setting(key, value, current)
        current[key] = kv[key] = value
    return kv


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = OneLineParser(prog="python -m heraldo.bench", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", choices=(*WORKLOADS, "all"), default="retail",
                        help="retail (the Online Retail job; default), synthetic (250,000 "
                             "invoices) or all")
    at_least_one = whole_number(1, "a whole number, at least 1")
    parser.add_argument("--runs", type=at_least_one, default=3,
                        help="measured runs per system (3)")
    parser.add_argument("--out", type=Path, default=Path("var") / "bench",
                        help="where results, plots and profiles go (var/bench)")
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL", LOCAL_POSTGRES),
                        help="PostgreSQL server to create the benchmark databases on "
                             "(DATABASE_URL, else 127.0.0.1:5432)")
    parser.add_argument("--retail-path", type=Path, default=RETAIL_PATH,
                        help="the Online Retail CSV (../shared/data/online-retail/)")
    parser.add_argument("--synthetic-invoices", type=at_least_one, default=SYNTHETIC_INVOICES,
                        help=f"size of the synthetic set, at least 1 ({SYNTHETIC_INVOICES:,})")
    parser.add_argument("--no-profile", dest="profile", action="store_false",
                        help="skip the extra run profiled with py-spy")
    parser.add_argument("--keep-database", action="store_true",
                        help="keep the benchmark databases for a look afterwards")
    parser.add_argument("--set", dest="kv", action="append", default=[], metavar="KEY=VALUE",
                        help="a Consul KV setting for the mesh, e.g. "
                             "config/notifier/smtp_connections=8 (repeatable; each validated "
                             "as heraldo config set would, in the order given)")
    parser.add_argument("--systems", default=",".join(report.SYSTEMS),
                        help="which to measure, comma-separated (all of "
                             f"{','.join(report.SYSTEMS)}); the ceiling sends as many messages "
                             "as Heraldo did, so it needs heraldo")
    args = parser.parse_args(argv)
    args.systems = {name.strip() for name in args.systems.split(",") if name.strip()}
    unknown = sorted(args.systems - set(report.SYSTEMS))
    if unknown or not args.systems:
        parser.error(f"--systems takes names among {', '.join(report.SYSTEMS)}; "
                     f"got {', '.join(unknown) or 'none'}")
    if "ceiling" in args.systems and "heraldo" not in args.systems:
        parser.error("--systems: the ceiling needs heraldo, whose count it sends")
    try:
        args.kv = checked_settings(args.kv)
    except ConfigError as exc:
        parser.error(f"--set {exc}")
    try:
        server_admin_url(args.database_url)
    except ConfigError as exc:
        parser.error(f"--database-url {exc}")
    return args


def exactly_once_verdict(runs: list[dict]) -> str:
    """What the exactly-once check found over a workload's Heraldo runs, in a few words."""
    checked = [run for run in runs if run["system"] == "heraldo"]
    if not checked:
        return "Heraldo not run"
    failed = sum(1 for run in checked if not run["exactly_once"])
    verdict = (f"exactly once {'FAILED' if failed else 'passed'} in "
               f"{failed or len(checked)} of {len(checked)} Heraldo runs")
    empty = sum(1 for run in checked if not run["sent"])
    return f"{verdict} ({empty} sent no email)" if empty else verdict


async def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logs.configure("INFO")
    try:
        postfix_tool("smtp-sink")
        postfix_tool("smtp-source")
    except HeraldoError as exc:
        print(f"heraldo bench: {exc}", file=sys.stderr)
        return 2
    try:
        await check_server(args.database_url)
    except HeraldoError as exc:
        print(f"heraldo bench: --database-url: {exc}", file=sys.stderr)
        return 2
    if os.environ.pop("CONSUL_HTTP_ADDR", None):
        # The mesh gets its own Consul: the KV overrides must not reach anyone else's.
        logger.info("ignoring CONSUL_HTTP_ADDR: the benchmark starts its own Consul")
    settings = {**load_seed(), **args.kv}
    workloads = WORKLOADS if args.workload == "all" else (args.workload,)
    started = dt.datetime.now(dt.UTC)
    document = {
        "started": started.isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "load_average_at_start": os.getloadavg()},
        "settings": {"runs": args.runs, "notifiers": NOTIFIERS, "kv": args.kv,
                     "chunk_size": settings["config/batch/chunk_size"],
                     "smtp_connections_per_notifier":
                         settings["config/notifier/smtp_connections"]},
        "workloads": {},
    }
    try:
        for workload in workloads:
            document["workloads"][workload] = await bench_workload(workload, args, settings)
    except HeraldoError as exc:
        print(f"heraldo bench: {exc}", file=sys.stderr)
        return 2
    summaries = {name: result["summary"] for name, result in document["workloads"].items()}
    document["targets"] = report.targets(summaries)

    path = args.out / f"results-{started.strftime('%Y%m%d-%H%M%S')}.json"
    report.write_json(path, document)
    shutil.copyfile(path, args.out / "results.json")
    print(report.table(summaries))
    for check in document["targets"]:
        print(f"  {report.target_line(check)}")
    for name, result in document["workloads"].items():
        print(f"  {name}: {exactly_once_verdict(result['runs'])}; "
              f"plot {result.get('plot') or '-'}")
    print(f"results: {path}")
    completed = all(result.get("completed") for result in document["workloads"].values())
    return 0 if completed else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
