"""The whole local mesh (the mesh fixture of tests/conftest.py) with demo invoices, for the CLI."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from heraldo import db
from heraldo.importer import load_demo

#: Small enough to run in seconds, large enough to reach every replica and every skip reason.
DEMO_INVOICES = 300


def load_invoices(database_url: str, invoices: int = DEMO_INVOICES) -> None:
    async def load() -> None:
        engine = db.create_engine(db.database_url(database_url))
        try:
            await load_demo(engine, invoices=invoices)
        finally:
            await engine.dispose()

    asyncio.run(load())


def edge_credentials(workdir: Path) -> Path | None:
    """The token file the local mesh writes when its edge checks credentials, else None."""
    path = workdir / "credentials.json"
    return path if path.exists() else None


@pytest.fixture(scope="module")
def loaded_mesh(mesh):  # noqa: F811 - the imported fixture, requested by name
    load_invoices(mesh.database_url)
    return mesh


@pytest.fixture
def edge_args(loaded_mesh) -> list[str]:
    """``--edge URL [--credentials FILE]`` for the running mesh."""
    credentials = edge_credentials(loaded_mesh.workdir)
    return ["--edge", loaded_mesh.edge_url, *(
        ["--credentials", str(credentials)] if credentials else [])]
