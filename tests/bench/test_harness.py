"""The benchmark's pieces on tiny inputs: data generation and COPY, the sink's counter and
smtp-source, the baseline script, the latency reconstruction, profiles and the report.

Full benchmarks never run here: ``make bench`` does that.
"""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import os
import shutil
import time
from decimal import Decimal

import asyncpg
import pytest

from heraldo.bench import baseline, procstats, report
from heraldo.bench.__main__ import sample_message
from heraldo.bench.measure import RunResult, chunk_latencies
from heraldo.bench.profile import top_costs
from heraldo.bench.sink import SmtpSink, run_smtp_source
from heraldo.bench.workloads import copy_synthetic, generate_synthetic, plain_url
from heraldo.mesh.ports import free_port
from heraldo.notifier.render import Document, Renderer


def wait_for(predicate, timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


@pytest.fixture
def sink():
    if shutil.which("smtp-sink") is None and not os.path.exists("/usr/sbin/smtp-sink"):
        pytest.skip("Postfix's smtp-sink is not installed (apt-get install postfix)")
    running = SmtpSink(free_port()).start()
    yield running
    running.stop()


def test_synthetic_data_is_deterministic_and_varied():
    first = generate_synthetic(600, seed=3)
    second = generate_synthetic(600, seed=3)

    assert first == second
    assert len(first.invoices) == 600
    assert len(first.customers) == 100
    locales = {customer[3] for customer in first.customers}
    assert {"en-GB", "es-ES"} <= locales
    assert all(isinstance(row[6], Decimal) and row[6].as_tuple().exponent == -2
               for row in first.invoices)
    assert {row[1] for row in first.invoices} == {"invoice", "credit_note"}
    assert generate_synthetic(600, seed=4) != first


async def test_synthetic_rows_load_with_copy(database_url):
    data = generate_synthetic(300, seed=1)

    await copy_synthetic(database_url, data)

    conn = await asyncpg.connect(plain_url(database_url))
    try:
        assert await conn.fetchval("SELECT count(*) FROM invoices") == 300
        assert await conn.fetchval("SELECT count(*) FROM customers") == 50
        assert await conn.fetchval("SELECT min(id) FROM invoices") == 1
    finally:
        await conn.close()


def test_process_figures_come_from_proc():
    own = procstats.sample(os.getpid())

    assert own is not None and own.peak_rss_kb > 0 and own.cpu_s > 0
    assert procstats.sample(2 ** 22 + 1) is None


def test_machine_busy_share_follows_work_done_between_two_samples():
    before = procstats.sample_machine()
    deadline = time.process_time() + 0.3
    while time.process_time() < deadline:
        pass
    busy = procstats.busy_percent(before, procstats.sample_machine())

    # At least this process's spin, spread over every CPU; never more than all of them.
    assert 100 / os.cpu_count() * 0.5 <= busy <= 100


def test_processes_are_found_by_command_name():
    with open(f"/proc/{os.getpid()}/comm", encoding="ascii") as comm:
        command = comm.read().strip()

    found = procstats.pids_named(command)

    assert found[f"{command}-{os.getpid()}"] == os.getpid()
    assert procstats.pids_named("no-such-command-here") == {}


def test_sink_counts_what_smtp_source_sends(sink, tmp_path):
    message = sample_message(tmp_path / "message.eml", "Billing <billing@heraldo.invalid>")
    sink.watch_first()

    run = run_smtp_source(sink.port, messages=25, sessions=2, message_file=message)

    assert run.messages == 25
    assert wait_for(lambda: sink.count == 25)
    assert sink.first_at is not None


@pytest.mark.parametrize("builder", baseline.BUILDERS)
async def test_baseline_sends_each_notifiable_invoice_once(sink, database_url, builder):
    data = generate_synthetic(120, seed=5)
    await copy_synthetic(database_url, data)
    usable = {customer[0] for customer in data.customers
              if baseline.usable_address(customer[2]) is not None}
    expected = sum(1 for row in data.invoices
                   if row[8] == "open" and row[1] == "invoice" and row[2] in usable)

    result = await baseline.run(plain_url(database_url), sink.port, page_size=7,
                                builder=builder)

    assert result["sent"] == expected
    assert len(result["latencies_s"]) == expected
    assert wait_for(lambda: sink.count == expected)


async def test_baseline_stops_at_its_limit(sink, database_url):
    await copy_synthetic(database_url, generate_synthetic(120, seed=5))

    result = await baseline.run(plain_url(database_url), sink.port, page_size=7, limit=10)

    assert result["sent"] == 10
    assert wait_for(lambda: sink.count == 10)


def test_stdlib_baseline_message_carries_both_parts_and_the_names():
    rendered = Renderer(company="Heraldo Billing").render("invoice", "es-ES", Document(
        variant="invoice", invoice_number="581587", customer_name="José Ñúñez",
        amount=Decimal("1234.50"), currency="EUR",
        issue_date=dt.date(2011, 12, 9), due_date=dt.date(2012, 1, 8)))

    message = baseline.stdlib_message(sender="Billing <billing@heraldo.invalid>",
                                      to_name="José Ñúñez", to_address="jose@example.com",
                                      rendered=rendered)
    parsed = email.message_from_bytes(message.as_bytes(), policy=email.policy.default)

    assert str(parsed["To"]) == "José Ñúñez <jose@example.com>"
    assert parsed.get_body(("plain",)).get_content() == rendered.text
    assert parsed.get_body(("html",)).get_content() == rendered.html


async def test_chunk_latencies_rebuild_chunks_from_outcomes(database_url):
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    conn = await asyncpg.connect(plain_url(database_url))
    try:
        # Two chunks of two: invoice 1 skipped, 2 in chunk 0; 3 and 4 in chunk 1.
        outcomes = [(1, "n1", "skipped"), (2, "n2", "sent"), (3, "n3", "sent"), (4, "n4", "sent")]
        await conn.executemany(
            "INSERT INTO job_outcomes (instance_id, invoice_id, execution_id, notification_id,"
            " outcome) VALUES ('ji', $1, 'job-x', $2, $3)", outcomes)
        claims = {"n2": (0.0, 0.5), "n3": (1.0, 1.2), "n4": (1.1, 1.6)}
        await conn.executemany(
            "INSERT INTO deliveries (notification_id, status, message_id, replica_id,"
            " create_time, update_time) VALUES ($1, 'sent', $1, 'r', $2, $3)",
            [(name, start + dt.timedelta(seconds=claimed), start + dt.timedelta(seconds=done))
             for name, (claimed, done) in claims.items()])
    finally:
        await conn.close()

    lower, upper = await chunk_latencies(plain_url(database_url), "job-x", 2)

    assert sorted(lower) == pytest.approx([0.2, 0.5, 0.6])
    # Chunk 1 starts no earlier than chunk 0's last acceptance, at 0.5 s.
    assert sorted(upper) == pytest.approx([0.5, 0.7, 1.1])


def test_top_costs_split_own_and_total_samples(tmp_path):
    folded = tmp_path / "profile.folded"
    folded.write_text(
        "process 1:\"python\";main (app.py:3);render (heraldo/notifier/render.py:10) 30\n"
        "process 1:\"python\";main (app.py:3);send (aiosmtplib/smtp.py:99) 10\n")

    costs = top_costs(folded)

    assert costs["samples"] == 40
    assert costs["self"][0] == {"function": "render (heraldo/notifier/render.py)",
                                "samples": 30, "percent": 75.0}
    assert costs["total"][0]["function"] == "main (app.py)"


def three_runs() -> list[RunResult]:
    return [
        RunResult("heraldo", run, sent=1000, elapsed_s=seconds, first_email_s=0.4,
                  cpu_s={"batch": 1.0, "notifier-1": 2.0, "consul": 5.0},
                  peak_rss_mb={"batch": 90.0, "notifier-1": 95.0},
                  samples=[(0.0, 0), (0.5, 400), (1.0, 1000)])
        for run, seconds in ((1, 1.0), (2, 2.0), (3, 4.0))
    ] + [RunResult("baseline", 1, sent=1000, elapsed_s=2.0, samples=[(0.0, 0), (2.0, 1000)]),
         RunResult("lean-baseline", 1, sent=1000, elapsed_s=1.0,
                   samples=[(0.0, 0), (1.0, 1000)])]


def test_report_summarises_and_checks_targets():
    summary = report.summarise(three_runs())
    checks = report.targets({"retail": summary})

    assert summary["heraldo"]["per_second"] == 500.0
    # Consul is not on the data path: 3 CPU seconds per 1,000 emails, not 8.
    assert summary["heraldo"]["cpu_s_per_1000"] == 3.0
    assert summary["heraldo_over_baseline"] == 1.0
    assert summary["heraldo_over_lean_baseline"] == 0.5
    assert {check["target"]: check["met"] for check in checks}[
        "time to first email < 1 s (retail)"] is True


def test_a_target_whose_system_was_not_measured_is_neither_met_nor_missed():
    heraldo_only = [run for run in three_runs() if run.system == "heraldo"]

    checks = {check["target"]: check for check in
              report.targets({"retail": report.summarise(heraldo_only)})}

    assert checks[">= 3x the baseline (retail)"]["measured"] is None
    assert checks[">= 3x the baseline (retail)"]["met"] is None
    assert report.target_line(checks[">= 3x the baseline (retail)"]) == (
        "target n/a    >= 3x the baseline (retail): not measured")
    assert checks["time to first email < 1 s (retail)"]["met"] is True


def test_report_plots_throughput_over_time(tmp_path):
    # matplotlib comes with the bench extra, which make bench installs and CI does not.
    pytest.importorskip("matplotlib")

    path = report.plot(tmp_path / "plot.png", "retail", three_runs())

    assert path is not None and path.stat().st_size > 0


def test_a_median_and_its_runs_print_from_the_same_figures():
    # Rounding the run to 500.5 first would print "501/s (runs 500)" for one run at 500.54/s.
    runs = [RunResult("baseline", 1, sent=50_054, elapsed_s=100.0)]

    line = report.table({"retail": report.summarise(runs)}).splitlines()[1]

    assert "501/s (runs 501)" in line


def test_targets_print_their_figures_rounded_to_their_kind():
    summaries = {"retail": {"heraldo": {"per_second": 3383.6042, "first_email_s": 0.41236,
                                        "peak_rss_mb": {"batch": 95.94}},
                            "heraldo_over_baseline": 2.4137},
                 "synthetic": {"heraldo": {"peak_rss_mb": {"batch": 99.1}}}}

    lines = [report.target_line(check) for check in report.targets(summaries)]

    assert "target met    >= 2,500 notifications/s end to end on the Online Retail job: " \
        "3,384/s" in lines
    assert "target MISSED >= 3x the baseline (retail): 2.41x" in lines
    assert "target met    time to first email < 1 s (retail): 0.412 s" in lines
    assert "target met    peak RSS of batch < 200 MB (retail): 95.9 MB" in lines
    assert "target met    peak RSS of batch within 10% between the 22k and 250k runs: " \
        "+3.3%" in lines


def test_postgres_cpu_is_printed_beside_the_systems_where_it_was_measured():
    runs = [RunResult("heraldo", 1, sent=1000, elapsed_s=1.0,
                      cpu_s={"batch": 0.2, "notifier-1": 0.194, "postgres": 0.1}),
            RunResult("ceiling", 1, sent=1000, elapsed_s=0.5, cpu_s={"smtp-source": 0.05})]

    lines = report.table({"retail": report.summarise(runs)}).splitlines()

    heraldo = next(line for line in lines if line.startswith("  heraldo"))
    ceiling = next(line for line in lines if line.startswith("  ceiling"))
    assert "CPU ms/email 0.394 (+ PostgreSQL 0.100)" in heraldo
    assert "CPU ms/email 0.050  " in ceiling
    assert "PostgreSQL" not in ceiling
