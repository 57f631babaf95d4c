"""The benchmark's command line: what it refuses, in one line and with status 2, before any run
(rather than running the whole benchmark on it, or ending in a traceback)."""

from __future__ import annotations

import os
import shutil
import uuid

import asyncpg
import pytest
import sqlalchemy as sa

from heraldo.bench.__main__ import main, parse_args
from heraldo.bench.workloads import check_server
from heraldo.errors import ConfigError
from heraldo.mesh.ports import free_port


@pytest.fixture
def postfix():
    if shutil.which("smtp-source") is None and not os.path.exists("/usr/sbin/smtp-source"):
        pytest.skip("smtp-sink and smtp-source are not installed (apt-get install postfix)")


def refusal(argv: list[str], capsys) -> str:
    """The one line ``parse_args`` prints on stderr as it exits with status 2."""
    with pytest.raises(SystemExit) as exited:
        parse_args(argv)

    assert exited.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize("count", ["-5", "0"])
def test_a_synthetic_set_of_no_invoices_is_refused(count, capsys):
    # Nothing loaded would be nothing measured, and an exactly-once check that checks nothing.
    line = refusal(["--workload", "synthetic", "--synthetic-invoices", count], capsys)

    assert ("argument --synthetic-invoices: expected a whole number, at least 1, "
            f"got {count!r}") in line


def test_a_setting_no_service_reads_is_refused(capsys):
    line = refusal(["--set", "config/notifier/bogus=1"], capsys)

    assert "--set config/notifier/bogus: no service reads a setting named 'bogus'" in line


@pytest.mark.parametrize(("item", "problem"), [
    ("config/notifier/smtp_connections=many", "expected a whole number"),
    ("notifier/smtp_connections=8", "config/<service>/<name>"),
    ("config/mailer/smtp_connections=8", "unknown service"),
    # The lease must outlive the heartbeat: a rule across two settings of the batch service.
    ("config/batch/stale_after_s=1", "stale_after_s must exceed heartbeat_interval_s"),
    ("config/notifier/smtp_connections", "KEY=VALUE"),
    ("config/notifier/smtp_port=2525", "the benchmark sets it to its own smtp-sink"),
])
def test_a_setting_heraldo_config_set_would_refuse_is_refused(item, problem, capsys):
    line = refusal(["--set", item], capsys)

    assert problem in line


def test_settings_are_validated_in_order_each_over_the_ones_before():
    # 40 s heartbeats need leases longer than the seed's 30 s: set the lease first, as with
    # heraldo config set, and both are accepted, with the blanks around a value dropped.
    args = parse_args(["--set", "config/batch/stale_after_s=50",
                       "--set", "config/batch/heartbeat_interval_s= 40 "])

    assert args.kv == {"config/batch/stale_after_s": "50",
                       "config/batch/heartbeat_interval_s": "40"}


@pytest.mark.parametrize("url", [
    "nonsense",
    "postgresql://bench:s3cret@127.0.0.1:notaport/x",
    "postgresql://bench:s3cret@127.0.0.1:99999/x",
    "mysql://bench:s3cret@127.0.0.1/x",
])
def test_a_malformed_database_url_is_refused_with_its_password_masked(url, capsys):
    line = refusal(["--database-url", url], capsys)

    assert "--database-url" in line
    assert "s3cret" not in line
    assert url.replace("s3cret", "***") in line


async def test_an_unreachable_database_is_refused_before_any_run(postfix, tmp_path, capsys,
                                                                  monkeypatch):
    # Nothing listens on a free port.
    monkeypatch.delenv("CONSUL_HTTP_ADDR", raising=False)
    port = free_port()

    code = await main(["--workload", "synthetic", "--synthetic-invoices", "60", "--runs", "1",
                       "--no-profile", "--out", str(tmp_path),
                       "--database-url", f"postgresql://postgres:s3cret@127.0.0.1:{port}/x"])

    assert code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1, lines
    assert f"postgresql://postgres:***@127.0.0.1:{port}/x" in lines[0]
    assert "Connect call failed" in lines[0]
    assert "s3cret" not in lines[0]
    assert not list(tmp_path.iterdir())


async def test_a_role_that_may_not_create_databases_is_refused(postgres_server):
    role = f"heraldo_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(postgres_server)
    try:
        await admin.execute(f'CREATE ROLE "{role}" LOGIN NOCREATEDB')
        url = sa.engine.make_url(postgres_server).set(username=role, password=None)

        with pytest.raises(ConfigError, match=f"role {role} may not create databases"):
            await check_server(url.render_as_string(hide_password=False))
    finally:
        await admin.execute(f'DROP ROLE IF EXISTS "{role}"')
        await admin.close()


async def test_a_server_that_lets_the_benchmark_create_databases_passes(postgres_server):
    await check_server(postgres_server)
