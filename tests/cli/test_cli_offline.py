"""The CLI's parts that need no mesh: credentials, progress lines, setting validation, errors."""

from __future__ import annotations

import json
import os
import socket

import pytest

import heraldo
from heraldo import cli
from heraldo.errors import ConfigError, InvalidArgument
from heraldo.notifier.render import PARTS, VARIANTS
from heraldo.settings import load_seed


def test_token_from_the_environment_wins_over_the_file(tmp_path, monkeypatch):
    credentials = tmp_path / "credentials.json"
    credentials.write_text(json.dumps({"version": 1, "token": "from-file"}))
    monkeypatch.setenv("HERALDO_API_KEY", "from-env")

    assert cli.read_token(str(credentials)) == "from-env"


def test_token_from_the_mesh_credentials_file(tmp_path, monkeypatch):
    monkeypatch.delenv("HERALDO_TOKEN", raising=False)
    monkeypatch.delenv("HERALDO_API_KEY", raising=False)
    credentials = tmp_path / "credentials.json"
    credentials.write_text(json.dumps({"authorization": "Bearer abc.def.ghi"}))
    plain = tmp_path / "token.txt"
    plain.write_text("Bearer xyz\n")

    assert cli.read_token(str(credentials)) == "abc.def.ghi"
    assert cli.read_token(str(plain)) == "xyz"


def test_a_named_credentials_file_must_exist(tmp_path, monkeypatch):
    monkeypatch.delenv("HERALDO_TOKEN", raising=False)
    monkeypatch.delenv("HERALDO_API_KEY", raising=False)
    monkeypatch.chdir(tmp_path)

    assert cli.read_token(None) == ""  # no var/credentials.json: no token, no error
    with pytest.raises(ConfigError, match="does not exist"):
        cli.read_token(str(tmp_path / "missing.json"))


def test_progress_line_shows_bar_counts_rate_and_time_left():
    job = {"status": "JOB_STATUS_STARTED", "ratePerSecond": 84.6, "secondsLeft": 75.2,
           "counts": {"selected": "1000", "processed": "250", "sent": "240", "skipped": "10"}}

    line = cli.job_progress_line(job)

    assert line.startswith("[" + "#" * 7 + "." * 23 + "]  25.0% 250/1000")
    assert "sent 240 skipped 10 failed 0" in line
    assert "85/s" in line and "left 1:15" in line and line.endswith("STARTED")


def test_an_ended_job_has_no_time_left_to_show():
    job = {"status": "JOB_STATUS_STOPPED", "ratePerSecond": 477, "secondsLeft": 0,
           "counts": {"selected": "23107", "processed": "5500"}}

    assert "left -  STOPPED" in cli.job_progress_line(job)


@pytest.mark.parametrize(("amount", "problem"), [
    ("nan", "is not a number"), ("inf", "is not a number"), ("twelve", "is not a number"),
    ("1.0000000001", "more than nine decimals"), ("1e30", "too large")])
def test_an_amount_money_cannot_hold_is_refused(amount, problem):
    with pytest.raises(InvalidArgument, match=problem):
        cli.money(amount, "GBP")


def test_money_is_exact():
    assert cli.money("12.50", "gbp") == {"currencyCode": "GBP", "units": "12",
                                         "nanos": 500_000_000}
    assert cli.money("-0.01", "EUR") == {"currencyCode": "EUR", "units": "0",
                                         "nanos": -10_000_000}


@pytest.mark.parametrize(("key", "value", "problem"), [
    ("config/batch/chunk_size", "0", "chunk_size must be positive"),
    ("config/batch/chunk_size", "many", "expected a whole number"),
    ("config/notifier/smtp_timeout_s", "nan", "expected a finite number"),
    ("config/batch/retry_backoff_s", "inf", "expected a finite number"),
    ("config/notifier/smtp_port", "70000", "smtp_port must be between"),
    ("config/application/log_level", "LOUD", "log_level must be one of"),
    ("config/controlplane/cluster_services", "notifier", "is not cluster=service"),
    ("config/mailer/sender", "x", "unknown service 'mailer'"),
    ("config/batch/no_such_setting", "1", "no service reads a setting named"),
    ("batch/chunk_size", "1", "a setting key is config/"),
    ("config/notifier/default_template", "nosuch", "unknown template set; known: invoice"),
    ("config/batch/partitions", "100000", "partitions must be at most 256"),
    ("config/batch/chunk_size", "100000000", "chunk_size must be at most 10000"),
    ("config/batch/templates", "invoice,nosuch", "unknown: nosuch"),
    ("config/batch/templates", " , ", "none given"),
])
def test_a_bad_setting_is_refused_with_its_reason(key, value, problem):
    with pytest.raises(ConfigError, match=problem):
        cli.validate_setting(key, value, load_seed())


def test_a_shared_setting_is_checked_against_every_service():
    readers = cli.validate_setting("config/application/shutdown_grace_s", "5", load_seed())

    assert sorted(readers) == ["batch", "controlplane", "notifier"]


def test_an_unreachable_edge_is_one_line_and_exit_2(capsys, monkeypatch):
    monkeypatch.delenv("HERALDO_TOKEN", raising=False)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]

    code = cli.main(["jobs", "list", "--edge", f"http://127.0.0.1:{closed_port}"])

    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1
    assert err.startswith(f"heraldo: cannot reach the edge at http://127.0.0.1:{closed_port}")


def test_the_original_commands_are_still_there(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])

    out = capsys.readouterr().out
    for command in ("jobs", "send", "mesh", "config", "import", "setup", "probe"):
        assert command in out


def test_version_is_printed_with_exit_0(capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main(["--version"])

    assert exited.value.code == 0
    assert capsys.readouterr().out == f"heraldo {heraldo.__version__}\n"


def test_start_options_become_the_rest_body_the_edge_expects():
    args = cli.build_parser().parse_args([
        "jobs", "start", "december", "--chunk-size", "100", "--skip-limit", "-1",
        "--partitions", "2", "--new-instance"])

    assert cli.start_body(args) == {
        "jobName": "december", "newInstance": True,
        "parameters": {"chunkSize": 100, "skipLimit": -1, "partitions": 2}}
    assert "newInstance" not in cli.start_body(
        cli.build_parser().parse_args(["jobs", "start", "december"]))


@pytest.mark.parametrize("option", [["--skip-limit", "-2"], ["--skip-limit", "x"],
                                    ["--partitions", "0"], ["--edge", "notaurl"],
                                    ["--edge", "ftp://127.0.0.1:8080"], ["--edge", "http://"],
                                    ["--edge", "http://127.0.0.1:abc"],
                                    ["--edge", "http://127.0.0.1:99999"],
                                    ["--edge", "http://[::1"],
                                    ["--edge", "http://user@127.0.0.1:8080"],
                                    ["--edge", "http://127.0.0.1:8080/?x=1"]])
def test_a_bad_start_option_is_one_line_and_exit_2(option, capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main(["jobs", "start", "december", *option])

    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert option[0] in err and "Traceback" not in err


@pytest.mark.parametrize("limit", ["0", "501", "x"])
def test_a_list_limit_the_edge_would_refuse_is_a_usage_error(limit, capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main(["jobs", "list", "--limit", limit])

    assert exited.value.code == 2
    assert "argument --limit: expected 1 to 500" in capsys.readouterr().err


@pytest.mark.parametrize(("content", "problem"), [
    (b"{}", "holds no 'token' or 'authorization'"),
    (b"[]", "is not a JSON object"),
    (b'{"token": 5}', "the token is not a string"),
    (b'{"token": ["a"]}', "the token is not a string"),
    (b"\xff\xfe", "cannot read credentials file"),
    (b"first line\nsecond line", "the token holds blanks"),
    ('{"token": "t\u00e9\u4e2d"}'.encode(), "other than printable ASCII"),
])
def test_a_credentials_file_without_a_usable_token_says_what_is_wrong(
        tmp_path, monkeypatch, content, problem):
    monkeypatch.delenv("HERALDO_TOKEN", raising=False)
    monkeypatch.delenv("HERALDO_API_KEY", raising=False)
    credentials = tmp_path / "credentials.json"
    credentials.write_bytes(content)

    with pytest.raises(ConfigError, match=problem):
        cli.read_token(str(credentials))


@pytest.mark.parametrize("argv", [["mesh", "status", "--consul", "127.0.0.1:abc"],
                                  ["config", "get", "--consul", "ftp://127.0.0.1:8500"]])
def test_a_bad_consul_address_is_one_line_and_exit_2(argv, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--consul=" in err and "is not host:port" in err


def test_a_bad_consul_address_in_the_environment_is_named(capsys, monkeypatch):
    monkeypatch.setenv("CONSUL_HTTP_ADDR", "127.0.0.1:abc")

    assert cli.main(["config", "get"]) == 2
    assert "CONSUL_HTTP_ADDR='127.0.0.1:abc' is not host:port" in capsys.readouterr().err


def test_the_local_meshs_addresses_are_defaults_the_environment_overrides(tmp_path, monkeypatch):
    mesh_file = tmp_path / "mesh.json"
    mesh_file.write_text(json.dumps({
        "edge_url": "http://127.0.0.1:8081", "consul_http_addr": "127.0.0.1:8501",
        "database_url": "postgresql://postgres@127.0.0.1:5432/heraldo_x"}))
    for variable in ("HERALDO_EDGE_URL", "CONSUL_HTTP_ADDR", "DATABASE_URL"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("CONSUL_HTTP_ADDR", "127.0.0.1:9999")

    cli.use_local_mesh_addresses(mesh_file)

    assert os.environ["HERALDO_EDGE_URL"] == "http://127.0.0.1:8081"
    assert os.environ["CONSUL_HTTP_ADDR"] == "127.0.0.1:9999"
    assert os.environ["DATABASE_URL"] == "postgresql://postgres@127.0.0.1:5432/heraldo_x"


def test_a_token_given_with_its_scheme_is_accepted(monkeypatch):
    monkeypatch.setenv("HERALDO_TOKEN", "Bearer abc.def.ghi")

    assert cli.read_token(None) == "abc.def.ghi"


def test_jobs_show_lists_reasons_notices_and_replicas():
    job = {"jobId": "job-1", "jobName": "monthly", "status": "JOB_STATUS_COMPLETED",
           "counts": {"selected": "10", "processed": "10", "sent": "8", "skipped": "2"},
           "reasons": {"no customer": "2"},
           "notices": {"sent again after a replica died mid-delivery": "1"},
           "sentByReplica": {"notifier-1": "8"}}

    shown = cli.job_details(job).splitlines()

    assert shown[shown.index("  not sent, by reason:") + 1].split() == ["2", "no", "customer"]
    notice = shown[shown.index("  sent, with a notice:") + 1]
    assert notice.split(maxsplit=1) == ["1", "sent again after a replica died mid-delivery"]
    assert "  sent, by notifier replica:" in shown


def test_a_default_template_may_name_a_set_the_kv_overrides_add():
    seed = load_seed()
    overrides = {f"config/notifier/templates/dunning/en/{variant}.{part}": "Pay {{ amount }}"
                 for variant in VARIANTS for part in PARTS}

    with pytest.raises(ConfigError, match="unknown template set"):
        cli.validate_setting("config/notifier/default_template", "dunning", seed)
    assert cli.validate_setting("config/notifier/default_template", "dunning",
                                {**seed, **overrides}) == ["notifier"]


def test_a_token_from_the_environment_that_no_header_can_carry_is_refused(monkeypatch):
    monkeypatch.setenv("HERALDO_TOKEN", "abc\ndef")

    with pytest.raises(ConfigError, match="HERALDO_TOKEN: the token holds blanks"):
        cli.read_token(None)


@pytest.mark.parametrize("argv", [["jobs", "show", ""], ["jobs", "watch", "  "],
                                  ["send", "--to", "ana@example.com", "--invoice", "INV-1",
                                   "--amount", "1", "--id", ""]])
def test_an_empty_id_is_a_usage_error(argv, capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)

    assert exited.value.code == 2
    assert "got an empty value" in capsys.readouterr().err
