"""Fixtures shared by every test: a real PostgreSQL server, and databases created per test module.

The server is ``DATABASE_URL``'s, else the one on 127.0.0.1:5432, else a throwaway cluster started
from the PostgreSQL binaries (``initdb``/``pg_ctl``) when they are installed. Without any of those
the run stops with one line saying what is missing.
"""

from __future__ import annotations

import asyncio
import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
import sqlalchemy as sa

from heraldo import db
from heraldo.mesh.ports import free_port
from heraldo.mesh.supervisor import LocalMesh, MeshPorts

LOCAL_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"


def _reachable(url: str) -> bool:
    async def probe() -> bool:
        try:
            conn = await asyncpg.connect(url, timeout=3)
        except (TimeoutError, OSError, asyncpg.PostgresError):
            return False
        await conn.close()
        return True

    return asyncio.run(probe())


def _pg_binaries() -> Path | None:
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).resolve().parent
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """An admin URL (database ``postgres``) of a PostgreSQL server the tests may create DBs on."""
    configured = os.environ.get("DATABASE_URL")
    if configured:
        url = sa.engine.make_url(configured).set(drivername="postgresql", database="postgres")
        yield url.render_as_string(hide_password=False)
        return
    if _reachable(LOCAL_SERVER):
        yield LOCAL_SERVER
        return
    binaries = _pg_binaries()
    if binaries is None:
        pytest.exit("PostgreSQL is missing: set DATABASE_URL, run a server on 127.0.0.1:5432, "
                    "or install the server binaries (apt-get install postgresql)", returncode=3)
    data_dir = Path(tempfile.mkdtemp(prefix="heraldo-pg-"))
    port = free_port()
    run_as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if run_as:
        shutil.chown(data_dir, "postgres")
    subprocess.run([*run_as, str(binaries / "initdb"), "-D", str(data_dir), "-U", "postgres",
                    "--auth=trust", "-E", "UTF8"], check=True, capture_output=True)
    subprocess.run([*run_as, str(binaries / "pg_ctl"), "-D", str(data_dir), "-w", "-l",
                    str(data_dir / "server.log"), "-o", f"-p {port} -k {data_dir} -h 127.0.0.1",
                    "start"], check=True, capture_output=True)
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*run_as, str(binaries / "pg_ctl"), "-D", str(data_dir), "-m", "fast",
                        "stop"], capture_output=True)
        shutil.rmtree(data_dir, ignore_errors=True)


async def _admin(server_url: str, sql: str) -> None:
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def _database_url(server_url: str, name: str) -> str:
    return sa.engine.make_url(server_url).set(database=name).render_as_string(hide_password=False)


@pytest.fixture
def make_database(postgres_server: str) -> Iterator:
    """Creates throwaway databases; each is dropped when the test ends. Returns its plain URL."""
    created: list[str] = []

    async def create() -> str:
        name = f"heraldo_test_{uuid.uuid4().hex[:10]}"
        await _admin(postgres_server, f'CREATE DATABASE "{name}"')
        created.append(name)
        return _database_url(postgres_server, name)

    yield create
    for name in created:
        asyncio.run(_admin(postgres_server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="module")
def mesh_database(postgres_server: str) -> Iterator[str]:
    """An empty database for one test module's mesh, dropped after the module."""
    name = f"heraldo_mesh_{uuid.uuid4().hex[:10]}"
    asyncio.run(_admin(postgres_server, f'CREATE DATABASE "{name}"'))
    yield _database_url(postgres_server, name)
    asyncio.run(_admin(postgres_server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="module")
def mesh(tmp_path_factory, mesh_database) -> Iterator[LocalMesh]:
    """The whole local mesh as real processes (Consul stand-in, Envoy, control plane, batch,
    three notifiers, SMTP sink, console) on free ports, one per test module."""
    local = LocalMesh(workdir=tmp_path_factory.mktemp("mesh"), ports=MeshPorts.free(),
                      database_url=mesh_database)
    # Consul is started by the mesh itself, on its own port, whatever the environment says.
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("CONSUL_HTTP_ADDR", raising=False)
        asyncio.run(local.start())
    yield local
    local.stop()


@pytest.fixture
async def database_url(make_database) -> str:
    """A fresh database with Heraldo's schema."""
    url = await make_database()
    engine = db.create_engine(db.database_url(url))
    try:
        await db.create_schema(engine)
    finally:
        await engine.dispose()
    return url


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator:
    engine = db.create_engine(db.database_url(database_url))
    yield engine
    await engine.dispose()
