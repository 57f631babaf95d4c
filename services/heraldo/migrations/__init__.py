"""Schema migrations (Alembic), run in-process by ``db.create_schema`` and ``heraldo db upgrade``.

The revisions live in ``versions/``; ``0001`` is the schema as ``metadata.create_all`` built it
before migrations existed, so such a database is stamped at ``0001`` and upgraded from there.
Alembic's own command line works too, from the project root:
``alembic -c services/heraldo/migrations/alembic.ini upgrade head`` (it reads ``DATABASE_URL``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.ext.asyncio import AsyncEngine

logger = logging.getLogger(__name__)

SCRIPT_LOCATION = Path(__file__).resolve().parent
#: The revision equal to the schema that ``create_all`` made before migrations existed.
BASELINE_REVISION = "0001"
#: Any key will do as long as every Heraldo process uses the same one.
POSTGRES_LOCK_KEY = 0x4845524C


def alembic_config(connection: sa.Connection | None = None) -> Config:
    """An Alembic configuration without an ini file; ``connection`` is used by ``env.py``."""
    config = Config()
    config.set_main_option("script_location", str(SCRIPT_LOCATION))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(connection: sa.Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def _upgrade(connection: sa.Connection, revision: str) -> tuple[str | None, str | None]:
    config = alembic_config(connection)
    before = current_revision(connection)
    inspector = sa.inspect(connection)
    tables = set(inspector.get_table_names())
    if before is None and "invoices" in tables:
        # Made by create_all, before migrations: stamp what it holds, then upgrade the rest.
        execution_columns = {column["name"] for column in inspector.get_columns("job_executions")}
        if "carried_processed" in execution_columns:
            stamped = "0005"
        elif "possible_copy" in {column["name"]
                                 for column in inspector.get_columns("deliveries")}:
            stamped = "0004"
        elif "job_breakdown" in tables:
            stamped = "0003"
        elif "step_executions" in tables:
            stamped = "0002"
        else:
            stamped = BASELINE_REVISION
        command.stamp(config, stamped)
        logger.info("schema stamped revision=%s (tables predate migrations)", stamped)
        before = stamped
    command.upgrade(config, revision)
    return before, current_revision(connection)


async def upgrade(engine: AsyncEngine, revision: str = "head") -> str | None:
    """Upgrades the database to ``revision`` in one transaction; returns the revision reached.

    Services start side by side and each calls this: on PostgreSQL a transaction-scoped advisory
    lock makes them take turns, and the later ones find nothing left to do. SQLite's single writer
    lock does the same for the embedded database.
    """
    async with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            await conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"),
                               {"key": POSTGRES_LOCK_KEY})
        before, after = await conn.run_sync(_upgrade, revision)
    if before != after:
        logger.info("schema upgraded from=%s to=%s", before or "empty", after)
    return after
