"""The supervisor's checks before it starts anything."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import socket
import subprocess
import sys
from types import SimpleNamespace

import pytest

from heraldo.mesh.__main__ import report_exits
from heraldo.mesh.processes import Child
from heraldo.mesh.supervisor import (
    LocalMesh,
    MeshError,
    MeshPorts,
    choose_database,
    database_name_for,
)


async def test_a_taken_port_stops_the_mesh_before_anything_starts(tmp_path):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        ports = dataclasses.replace(MeshPorts.free(), edge=taken)
        mesh = LocalMesh(workdir=tmp_path / "mesh", ports=ports)

        with pytest.raises(MeshError) as caught:
            await mesh.start()

    assert f"{taken} (HERALDO_EDGE_PORT)" in str(caught.value)
    assert mesh.children == []
    assert not (tmp_path / "mesh").exists()


async def test_two_mesh_ports_set_alike_stop_the_mesh_before_anything_starts(tmp_path):
    free = MeshPorts.free()
    ports = dataclasses.replace(free, edge=free.consul)
    mesh = LocalMesh(workdir=tmp_path / "mesh", ports=ports)

    with pytest.raises(MeshError) as caught:
        await mesh.start()

    assert (f"port {free.consul} is given to both HERALDO_CONSUL_PORT and HERALDO_EDGE_PORT"
            in str(caught.value))
    assert mesh.children == []


@pytest.mark.parametrize("value", ["abc", "0", "70000", "-1", "80.5", "\u00b2"])
def test_a_port_variable_that_is_no_port_is_one_line_naming_it(monkeypatch, value):
    monkeypatch.setenv("HERALDO_EDGE_PORT", value)

    with pytest.raises(MeshError, match=f"HERALDO_EDGE_PORT='{value}' is not a port number"):
        MeshPorts.from_env()


def test_make_run_with_a_bad_port_variable_exits_2_with_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "heraldo.mesh", "run", "--workdir", str(tmp_path / "var")],
        env={**os.environ, "HERALDO_EDGE_PORT": "abc"}, capture_output=True, text=True,
        timeout=60, check=False)

    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "heraldo mesh: HERALDO_EDGE_PORT='abc' is not a port number (1-65535)"]


def test_a_processs_last_lines_are_of_this_start_only(tmp_path):
    log_path = tmp_path / "envoy.log"
    log_path.write_text("an earlier run's last words\n")
    child = Child("envoy", [sys.executable, "-c", "print('this run')"], log_path)

    child.start(dict(os.environ))
    child.process.wait(30)

    assert child.log_tail() == "this run"
    assert log_path.read_text().startswith("an earlier run's last words\n")


def test_each_working_directory_gets_its_own_database(tmp_path):
    first = database_name_for(tmp_path / "a" / "var")
    second = database_name_for(tmp_path / "b" / "var")

    assert first != second
    assert first == database_name_for(tmp_path / "a" / "var")
    assert first.startswith("heraldo_")


@dataclasses.dataclass
class _ExitingChild:
    name: str
    process: subprocess.Popen

    def log_tail(self) -> str:
        return "starting\nlost the database\n"


def test_make_up_says_once_which_process_exited_and_keeps_the_rest(capsys):
    exiting = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    mesh = SimpleNamespace(children=[_ExitingChild("notifier-3", exiting),
                                     _ExitingChild("notifier-1", running)])

    async def watch_for_a_second() -> None:
        watcher = asyncio.create_task(report_exits(mesh, interval_s=0.05))
        await asyncio.sleep(1.0)
        watcher.cancel()

    try:
        asyncio.run(watch_for_a_second())
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 1
        assert err[0].startswith("heraldo mesh: notifier-3 exited with code 3; the rest keep")
        assert err[0].endswith("Last log line: lost the database")
        assert running.poll() is None
    finally:
        running.kill()
        running.wait()


def test_a_local_postgres_setting_that_is_not_a_url_is_one_clear_error(monkeypatch):
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("HERALDO_LOCAL_POSTGRES", "127.0.0.1:5432")

    with pytest.raises(MeshError, match="HERALDO_LOCAL_POSTGRES='127.0.0.1:5432' is not a "):
        asyncio.run(choose_database())


def test_no_postgres_at_the_local_address_means_the_embedded_database(monkeypatch):
    monkeypatch.delenv("DATABASE_URL", raising=False)
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    monkeypatch.setenv("HERALDO_LOCAL_POSTGRES", f"postgresql://postgres@127.0.0.1:{port}")

    assert asyncio.run(choose_database()) == ""


def test_a_killed_process_is_named_with_its_signal_and_an_empty_mesh_stops_watching(capsys):
    killed = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    killed.kill()
    killed.wait()
    mesh = SimpleNamespace(children=[_ExitingChild("notifier-2", killed)])

    asyncio.run(asyncio.wait_for(report_exits(mesh, interval_s=0.05), timeout=10))

    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("heraldo mesh: notifier-2 was killed by SIGKILL; the rest keep")
    assert err[1] == "heraldo mesh: every process of the mesh has exited; stopping"
