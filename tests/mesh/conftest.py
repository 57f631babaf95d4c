"""The whole local mesh as real processes: Consul (or the stand-in), Envoy, control plane, batch,
three notifiers and the SMTP sink, on free ports, against a fresh PostgreSQL database."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest
import sqlalchemy as sa

from heraldo.mesh.supervisor import LocalMesh, MeshPorts


@pytest.fixture(scope="module")
def mesh_database(postgres_server: str):
    name = f"heraldo_mesh_{uuid.uuid4().hex[:10]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(postgres_server)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    yield sa.engine.make_url(postgres_server).set(database=name).render_as_string(
        hide_password=False)
    asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="module")
def mesh(tmp_path_factory, mesh_database):
    local = LocalMesh(workdir=tmp_path_factory.mktemp("mesh"), ports=MeshPorts.free(),
                      database_url=mesh_database)
    # Consul is started by the mesh itself, on its own port, whatever the environment says.
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("CONSUL_HTTP_ADDR", raising=False)
        asyncio.run(local.start())
    yield local
    local.stop()
