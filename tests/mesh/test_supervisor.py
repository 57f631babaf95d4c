"""The supervisor's checks before it starts anything."""

from __future__ import annotations

import dataclasses
import socket

import pytest

from heraldo.mesh.supervisor import LocalMesh, MeshError, MeshPorts, database_name_for


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
