"""Alembic's environment: migrates the connection it is handed, or ``DATABASE_URL``'s database."""

from __future__ import annotations

import asyncio

from alembic import context

from heraldo import db


def run_on(connection) -> None:
    # Batch mode lets the same revision alter tables on SQLite, which cannot drop constraints.
    context.configure(connection=connection, target_metadata=db.metadata,
                      render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()


async def run_from_url() -> None:
    engine = db.create_engine(db.database_url())
    try:
        async with engine.begin() as conn:
            await conn.run_sync(run_on)
    finally:
        await engine.dispose()


if context.is_offline_mode():
    raise SystemExit("Heraldo's migrations run against a database, not in --sql mode")
connection = context.config.attributes.get("connection")
if connection is not None:
    run_on(connection)
else:
    asyncio.run(run_from_url())
