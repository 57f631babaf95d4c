"""Schema migrations on real PostgreSQL and on the embedded SQLite file: a fresh database, one
made by ``create_all`` before migrations existed, and the baseline upgraded with data in it."""

from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from heraldo import db
from heraldo.migrations import (
    BASELINE_REVISION,
    alembic_config,
    current_revision,
    head_revision,
    upgrade,
)


@pytest.fixture(params=["postgresql", "sqlite"])
async def blank_engine(request, make_database, tmp_path):
    if request.param == "postgresql":
        url = db.database_url(await make_database())
    else:
        url = f"sqlite+aiosqlite:///{tmp_path / 'heraldo.db'}"
    engine = db.create_engine(url)
    yield engine
    await engine.dispose()


async def differences(engine) -> list:
    async with engine.connect() as conn:
        return await conn.run_sync(
            lambda sync: compare_metadata(MigrationContext.configure(sync), db.metadata))


async def revision(engine) -> str | None:
    async with engine.connect() as conn:
        return await conn.run_sync(current_revision)


async def test_a_fresh_database_is_migrated_to_exactly_the_models(blank_engine):
    await db.create_schema(blank_engine)
    await db.create_schema(blank_engine)  # a second service starting finds nothing to do

    assert await revision(blank_engine) == head_revision()
    assert await differences(blank_engine) == []


async def test_a_database_made_before_migrations_is_stamped_and_upgraded(blank_engine):
    # Given the tables as create_all made them before migrations existed (the baseline)
    await upgrade(blank_engine, "0001")
    async with blank_engine.begin() as conn:
        await conn.execute(sa.text("DROP TABLE alembic_version"))
        await conn.execute(sa.text(
            "INSERT INTO job_instances (id, job_name, parameters_key, create_time) "
            "VALUES ('ji-old', 'old', '{}', :now)"), {"now": dt.datetime.now(dt.UTC)})

    # When a service starts with the new code
    await db.create_schema(blank_engine)

    # Then the schema matches the models and the old rows are still there
    assert await revision(blank_engine) == head_revision()
    assert await differences(blank_engine) == []
    async with blank_engine.connect() as conn:
        row = (await conn.execute(sa.select(db.job_instances.c.job_name,
                                            db.job_instances.c.run_number))).one()
    assert tuple(row) == ("old", 1)


async def test_tables_made_by_create_all_from_the_current_models_are_stamped_at_head(
        blank_engine):
    async with blank_engine.begin() as conn:
        await conn.run_sync(db.metadata.create_all)

    await db.create_schema(blank_engine)

    assert await revision(blank_engine) == head_revision()


async def test_the_breakdown_is_filled_from_the_outcomes_already_recorded(blank_engine):
    # Given a database at 0002 that holds a job's outcomes
    await upgrade(blank_engine, "0002")
    now = dt.datetime.now(dt.UTC)
    async with blank_engine.begin() as conn:
        await conn.execute(sa.text(
            "INSERT INTO job_instances (id, job_name, parameters_key, create_time) "
            "VALUES ('ji-1', 'notify', '{}', :now)"), {"now": now})
        await conn.execute(sa.text(
            "INSERT INTO job_executions (id, instance_id, status, parameters, create_time) "
            "VALUES ('job-1', 'ji-1', 'COMPLETED', '{}', :now)"), {"now": now})
        outcomes = [("sent", "", "notifier-a"), ("sent", "", "notifier-a"),
                    ("sent", "", "notifier-b"), ("skipped", "no email", ""),
                    ("failed", "550 no such user", "notifier-b"), ("duplicate", "", "notifier-a")]
        for invoice_id, (outcome, reason, replica) in enumerate(outcomes, start=1):
            await conn.execute(sa.text(
                "INSERT INTO job_outcomes (instance_id, invoice_id, execution_id, "
                "notification_id, outcome, reason, replica_id) VALUES ('ji-1', :invoice, "
                "'job-1', :notification, :outcome, :reason, :replica)"),
                {"invoice": invoice_id, "notification": f"n{invoice_id}", "outcome": outcome,
                 "reason": reason, "replica": replica})

    # When the schema is upgraded
    await db.create_schema(blank_engine)

    # Then the breakdown holds what GetJob counted from the outcomes before
    async with blank_engine.connect() as conn:
        rows = (await conn.execute(sa.select(db.job_breakdown.c.kind, db.job_breakdown.c.name,
                                             db.job_breakdown.c.count))).all()
    assert sorted(tuple(row) for row in rows) == [
        ("reason", "550 no such user", 1), ("reason", "no email", 1),
        ("replica", "notifier-a", 2), ("replica", "notifier-b", 1)]


def _revisions_between_baseline_and_head() -> list[str]:
    revisions = [script.revision for script in
                 ScriptDirectory.from_config(alembic_config()).walk_revisions()]
    return sorted(set(revisions) - {BASELINE_REVISION, head_revision()})


@pytest.mark.parametrize("made_at", _revisions_between_baseline_and_head())
async def test_tables_made_by_create_all_at_a_revision_are_stamped_there_and_upgraded(
        blank_engine, made_at):
    # Stamped too low, an upgrade would add a column that exists; too high, one would be missing.
    await upgrade(blank_engine, made_at)
    async with blank_engine.begin() as conn:
        await conn.execute(sa.text("DROP TABLE alembic_version"))

    await db.create_schema(blank_engine)

    assert await revision(blank_engine) == head_revision()
    assert await differences(blank_engine) == []


async def test_instances_that_differed_only_by_template_become_runs_of_one(blank_engine):
    # Given instances keyed, as before 0006, with the template in their key
    await upgrade(blank_engine, "0005")
    old_key = '{{"countries":["France"],"issued_from":null,"issued_to":null,"kinds":["invoice"],' \
              '"template":"{}"}}'
    async with blank_engine.begin() as conn:
        for instance_id, template, minute in (("ji-default", "", 1), ("ji-named", "invoice", 2),
                                              ("ji-other", "", 3)):
            await conn.execute(db.job_instances.insert().values(
                id=instance_id, job_name="other" if instance_id == "ji-other" else "monthly",
                parameters_key=old_key.format(template), run_number=1,
                create_time=dt.datetime(2026, 12, 1, 9, minute, tzinfo=dt.UTC)))

    await db.create_schema(blank_engine)

    # Then the keys leave the template out, and the newer of the two is the later run
    async with blank_engine.connect() as conn:
        rows = (await conn.execute(sa.select(
            db.job_instances.c.id, db.job_instances.c.parameters_key,
            db.job_instances.c.run_number).order_by(db.job_instances.c.id))).all()
    new_key = '{"countries":["France"],"issued_from":null,"issued_to":null,"kinds":["invoice"]}'
    assert [tuple(row) for row in rows] == [
        ("ji-default", new_key, 1), ("ji-named", new_key, 2), ("ji-other", new_key, 1)]
