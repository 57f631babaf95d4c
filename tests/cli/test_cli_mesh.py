"""The CLI against the whole local mesh: jobs through the edge, send, mesh status and config."""

from __future__ import annotations

import uuid

import httpx
import pytest

from heraldo import cli
from tests.cli.conftest import edge_credentials

pytestmark = pytest.mark.mesh


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def job_id_from(out: str) -> str:
    # "job job-… (name) STARTED" is the first line of start and restart.
    return out.split()[1]


def test_start_and_watch_a_job_to_the_end(capsys, edge_args):
    code, out, err = run(capsys, "jobs", "start", f"cli-{uuid.uuid4().hex[:6]}", "--watch",
                         *edge_args)

    assert code == 0, err
    assert "100.0%" in out
    assert "COMPLETED" in out
    assert "sent, by notifier replica:" in out
    assert "notifier-1" in out and "notifier-3" in out

    job_id = job_id_from(out)
    code, listing, _ = run(capsys, "jobs", "list", *edge_args)
    assert code == 0 and job_id in listing
    code, shown, _ = run(capsys, "jobs", "show", job_id, *edge_args)
    assert code == 0 and "not sent, by reason:" in shown


def test_stop_then_restart_finishes_the_job(capsys, edge_args):
    # Small chunks keep the job running long enough to be stopped in flight.
    code, out, err = run(capsys, "jobs", "start", f"stoppable-{uuid.uuid4().hex[:6]}",
                         "--chunk-size", "10", *edge_args)
    assert code == 0, err
    job_id = job_id_from(out)

    code, _, err = run(capsys, "jobs", "stop", job_id, *edge_args)
    assert code == 0, err
    code, out, _ = run(capsys, "jobs", "watch", job_id, *edge_args)
    if code == 0:
        pytest.skip("the job completed before the stop arrived; nothing to restart")
    assert "STOPPED" in out

    code, out, err = run(capsys, "jobs", "restart", job_id, "--watch", *edge_args)
    assert code == 0, err
    assert "COMPLETED" in out


def test_errors_are_one_line_with_the_server_message(capsys, edge_args):
    code, _, err = run(capsys, "jobs", "show", "job-does-not-exist", *edge_args)
    assert code == 2
    assert err.count("\n") == 1 and "not found" in err

    code, _, err = run(capsys, "jobs", "start", "bad-template", "--template", "nope",
                       *edge_args)
    assert code == 2
    assert err.count("\n") == 1 and "unknown template 'nope'" in err


def test_without_credentials_the_edge_says_why(capsys, loaded_mesh, monkeypatch, tmp_path):
    if edge_credentials(loaded_mesh.workdir) is None:
        pytest.skip("this mesh's edge asks for no credentials")
    monkeypatch.delenv("HERALDO_TOKEN", raising=False)
    monkeypatch.delenv("HERALDO_API_KEY", raising=False)
    monkeypatch.chdir(tmp_path)  # no var/credentials.json here

    code, _, err = run(capsys, "jobs", "list", "--edge", loaded_mesh.edge_url)

    assert code == 2
    assert "asks for a token and none was found (Jwt is missing)" in err
    assert "HERALDO_TOKEN" in err and "--credentials" in err


def test_consul_pointed_at_the_edge_asks_whether_it_is_consul(capsys, loaded_mesh, monkeypatch):
    if edge_credentials(loaded_mesh.workdir) is None:
        pytest.skip("this mesh's edge asks for no credentials")
    monkeypatch.delenv("CONSUL_HTTP_TOKEN", raising=False)

    code, _, err = run(capsys, "mesh", "status", "--consul", f"127.0.0.1:{loaded_mesh.ports.edge}")

    assert code == 2
    assert err.count("\n") == 1
    assert "CONSUL_HTTP_TOKEN (is that address Consul's HTTP API?)" in err
    assert "HERALDO_TOKEN" not in err


def test_send_once_then_duplicate(capsys, edge_args):
    notification_id = f"cli-send-{uuid.uuid4().hex[:8]}"
    argv = ["send", "--to", "ana@example.com", "--name", "Ana", "--invoice", "INV-CLI-1",
            "--amount", "12.50", "--id", notification_id, *edge_args]

    first = run(capsys, *argv)
    second = run(capsys, *argv)

    assert first[0] == 0 and f"notification {notification_id} SENT" in first[1]
    assert second[0] == 0 and f"notification {notification_id} DUPLICATE" in second[1]


def test_mesh_status_lists_every_replica(capsys, loaded_mesh):
    code, out, err = run(capsys, "mesh", "status", "--consul",
                         f"127.0.0.1:{loaded_mesh.ports.consul}")

    assert code == 0, err
    rows = [line.split() for line in out.splitlines()[1:]]
    assert sorted(row[1] for row in rows if row[0] == "heraldo-notifier") == [
        "notifier-1", "notifier-2", "notifier-3"]
    assert {row[4] for row in rows} == {"passing"}
    # Each replica's pid is the process the supervisor started for it.
    pids = {row[1]: int(row[3]) for row in rows if row[0] == "heraldo-notifier"}
    assert pids == {replica: loaded_mesh.child(replica).process.pid
                    for replica in loaded_mesh.notifier_ids()}


def test_config_set_validates_before_writing(capsys, loaded_mesh):
    consul = ["--consul", f"127.0.0.1:{loaded_mesh.ports.consul}"]

    code, _, err = run(capsys, "config", "set", "config/batch/streams_per_chunk", "0", *consul)
    assert code == 2 and "streams_per_chunk must be positive" in err
    code, out, _ = run(capsys, "config", "get", "config/batch/streams_per_chunk", *consul)
    assert out.strip() == "6"

    code, out, err = run(capsys, "config", "set", "config/batch/streams_per_chunk", " 8 ", *consul)
    assert code == 0, err
    assert "read by batch at its next start" in out
    code, out, _ = run(capsys, "config", "get", "config/batch/streams_per_chunk", *consul)
    assert out == "8\n"


def test_config_set_writes_a_template_file_once_it_compiles(capsys, loaded_mesh, tmp_path):
    consul = ["--consul", f"127.0.0.1:{loaded_mesh.ports.consul}"]
    key = "config/notifier/templates/trial/en/invoice.subject.txt"
    source = tmp_path / "subject.txt"
    source.write_text("Reminder: {{ invoice_number }}\n")
    try:
        code, out, err = run(capsys, "config", "set", key, f"@{source}", *consul)
        assert code == 0, err
        assert "once the 5 other files of its set and language are in KV too" in out
        code, out, _ = run(capsys, "config", "get", key, *consul)
        assert out == "Reminder: {{ invoice_number }}\n\n"

        code, _, err = run(capsys, "config", "set", key, "Reminder {{ invoice_number ", *consul)
        assert code == 2 and "TemplateSyntaxError" in err
        # A file of a complete set is rendered as the notifiers would: an unknown name fails
        code, _, err = run(capsys, "config", "set",
                           "config/notifier/templates/invoice/en/invoice.subject.txt",
                           "Invoice {{ no_such_value }}", *consul)
        assert code == 2 and "no_such_value" in err
    finally:
        httpx.delete(f"http://127.0.0.1:{loaded_mesh.ports.consul}/v1/kv/{key}")
