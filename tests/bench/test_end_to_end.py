"""The whole benchmark on a tiny synthetic workload: one run of each system, no profile."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import sqlalchemy as sa

from heraldo.bench.__main__ import main

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
