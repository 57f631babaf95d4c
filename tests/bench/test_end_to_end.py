"""The whole benchmark on a tiny synthetic workload: one run of each system, no profile; and a
Heraldo run with nothing to send."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import sqlalchemy as sa

from heraldo.bench.__main__ import exactly_once_verdict, main
from heraldo.bench.measure import run_heraldo
from heraldo.bench.sink import SmtpSink
from heraldo.bench.workloads import BenchDatabase
from heraldo.mesh.ports import free_port
from heraldo.mesh.supervisor import LocalMesh, MeshPorts

pytestmark = pytest.mark.mesh


@pytest.fixture
def postfix():
    if shutil.which("smtp-source") is None and not os.path.exists("/usr/sbin/smtp-source"):
        pytest.skip("smtp-sink and smtp-source are not installed (apt-get install postfix)")


async def test_tiny_benchmark_measures_every_system(postfix, postgres_server, tmp_path,
                                                         monkeypatch):
    # The benchmark starts its own Consul; a developer's must not receive its settings.
    monkeypatch.delenv("CONSUL_HTTP_ADDR", raising=False)
    server = sa.engine.make_url(postgres_server).render_as_string(hide_password=False)

    code = await main(["--workload", "synthetic", "--synthetic-invoices", "60", "--runs", "1",
                       "--no-profile", "--out", str(tmp_path), "--database-url", server])

    assert code == 0
    results = json.loads((tmp_path / "results.json").read_text())
    runs = {run["system"]: run for run in results["workloads"]["synthetic"]["runs"]}
    assert set(runs) == {"heraldo", "baseline", "lean-baseline", "ceiling"}
    assert runs["heraldo"]["sent"] > 0
    assert runs["heraldo"]["sent"] == runs["baseline"]["sent"] == runs["lean-baseline"]["sent"] \
        == runs["ceiling"]["sent"]
    assert runs["heraldo"]["first_email_s"] is not None
    assert runs["heraldo"]["peak_rss_mb"]["batch"] > 0
    assert runs["heraldo"]["latency_p50_s"] is not None


async def test_a_heraldo_run_that_sends_nothing_fails_the_exactly_once_check(
        postfix, postgres_server, tmp_path, monkeypatch):
    # An empty workload must not report "exactly once passed" having checked nothing.
    monkeypatch.delenv("CONSUL_HTTP_ADDR", raising=False)
    database = BenchDatabase(postgres_server, "empty")
    await database.create()
    sink = SmtpSink(free_port()).start()
    mesh = LocalMesh(workdir=tmp_path / "mesh", ports=MeshPorts.free(1), notifiers=1,
                     database_url=database.url,
                     kv_overrides={"config/notifier/smtp_host": "127.0.0.1",
                                   "config/notifier/smtp_port": str(sink.port)})
    try:
        async with mesh:
            result = await run_heraldo(mesh, sink, database, run=1, chunk_size=500,
                                       workload="empty")
    finally:
        sink.stop()
        await database.drop()

    assert result.sent == 0
    assert result.exactly_once is False
    assert exactly_once_verdict([result.to_json()]) == (
        "exactly once FAILED in 1 of 1 Heraldo runs (1 sent no email)")
