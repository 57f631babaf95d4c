"""The supervisor's checks before it starts anything."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import subprocess
import sys
from types import SimpleNamespace

import pytest

from heraldo.mesh.__main__ import report_exits
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
