"""The demo data set: deterministic, idempotent, and showing every case the job handles."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from decimal import Decimal

import pytest
import sqlalchemy as sa
from email_validator import EmailNotValidError, validate_email

from heraldo import db
from heraldo.importer import load_demo


def is_valid(email: str | None) -> bool:
    try:
        validate_email(email or "", check_deliverability=False)
    except EmailNotValidError:
        return False
    return True


async def test_the_demo_set_is_the_same_every_time(pg_engine, snapshot):
    first_report = await load_demo(pg_engine)
    first = await snapshot(pg_engine)
    async with pg_engine.begin() as conn:
        await conn.run_sync(db.metadata.drop_all)
        await conn.run_sync(db.metadata.create_all)

    await load_demo(pg_engine)

    assert await snapshot(pg_engine) == first
    assert first_report.customers_inserted == len(first[0]) == 200
    assert first_report.invoices_inserted == len(first[1]) == 1200


async def test_loading_the_demo_again_changes_nothing(pg_engine, snapshot):
    first_report = await load_demo(pg_engine, invoices=300)
    before = await snapshot(pg_engine)

    again = await load_demo(pg_engine, invoices=300)

    assert await snapshot(pg_engine) == before
    assert (again.customers_inserted, again.invoices_inserted) == (0, 0)
    assert again.notifiable == first_report.notifiable
    async with pg_engine.connect() as conn:
        last_id = await conn.scalar(sa.text("SELECT last_value FROM invoices_id_seq"))
    assert last_id == 300


async def test_another_seed_gives_other_data(pg_engine, sqlite_engine, snapshot):
    await load_demo(pg_engine, invoices=100, seed=1)
    await load_demo(sqlite_engine, invoices=100, seed=2)

    assert await snapshot(pg_engine) != await snapshot(sqlite_engine)


async def test_the_report_matches_what_is_stored(engine):
    report = await load_demo(engine)

    async with engine.connect() as conn:
        customers = (await conn.execute(sa.select(db.customers))).mappings().all()
        invoices = (await conn.execute(sa.select(db.invoices))).mappings().all()
    valid = {c["id"] for c in customers if is_valid(c["email"])}
    notifiable = [
        i for i in invoices
        if i["status"] == "open" and i["kind"] == "invoice" and i["customer_id"] in valid
    ]

    assert report.notifiable == len(notifiable)
    assert report.customers_without_valid_email == len(customers) - len(valid) >= 3
    assert report.invoices_without_customer == sum(i["customer_id"] is None for i in invoices) >= 3
    assert report.invoices_open == sum(i["status"] == "open" for i in invoices)
    assert report.invoices_by_kind == {
        kind: sum(i["kind"] == kind for i in invoices) for kind in report.invoices_by_kind
    }


async def test_the_demo_set_has_the_variety_the_job_needs(engine):
    await load_demo(engine)

    async with engine.connect() as conn:
        customers = (await conn.execute(sa.select(db.customers))).mappings().all()
        invoices = (await conn.execute(sa.select(db.invoices))).mappings().all()

    assert any(not c["name"].isascii() for c in customers)
    assert sum(c["locale"] == "es-ES" for c in customers) >= 20
    assert {c["email"] is None for c in customers} == {True, False}
    # Valid addresses are ASCII, whatever the name, under domains kept for examples.
    for c in customers:
        if is_valid(c["email"]):
            assert c["email"].isascii()
            assert c["email"].rsplit("@", 1)[1].split(".")[-2:][0] == "example"
    credit_notes = [i for i in invoices if i["kind"] == "credit_note"]
    assert 10 <= len(credit_notes) < len(invoices) // 10
    assert all(i["amount"] < 0 for i in credit_notes)
    assert all(i["amount"] > 0 for i in invoices if i["kind"] == "invoice")
    assert all(i["amount"] == i["amount"].quantize(Decimal("0.01")) for i in invoices)
    assert all(i["due_date"] > i["issue_date"] for i in invoices)
    assert {i["status"] for i in invoices} == {"open", "paid"}
    numbers = [i["number"] for i in sorted(invoices, key=lambda i: i["id"])]
    assert numbers[:2] == ["DEMO-000001", "DEMO-000002"]


async def test_sqlite_and_postgres_get_the_same_demo_rows(pg_engine, sqlite_engine, snapshot):
    await load_demo(pg_engine, invoices=500)
    await load_demo(sqlite_engine, invoices=500)

    assert await snapshot(sqlite_engine) == await snapshot(pg_engine)


async def test_a_tiny_demo_still_shows_every_case(sqlite_engine):
    report = await load_demo(sqlite_engine, invoices=5)

    assert report.invoices == 5
    assert report.invoices_without_customer == 3
    assert report.customers_without_valid_email == 3


async def test_the_demo_needs_at_least_one_invoice(sqlite_engine):
    with pytest.raises(ValueError, match="at least 1"):
        await load_demo(sqlite_engine, invoices=0)


def test_the_command_loads_the_demo_into_sqlite(tmp_path):
    env = {**os.environ, "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'demo.db'}"}
    command = [sys.executable, "-m", "heraldo.importer", "demo", "--invoices", "120"]

    first = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    second = subprocess.run(command, env=env, capture_output=True, text=True, check=False)

    assert first.returncode == 0, first.stderr
    assert "documents: 120" in first.stdout and "120 new" in first.stdout
    assert "0 new" in second.stdout


@pytest.mark.parametrize("count", ["abc", "0", "-3"])
def test_a_bad_invoice_count_is_one_line_and_exit_2(tmp_path, count):
    env = {**os.environ, "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'demo.db'}"}

    result = subprocess.run([sys.executable, "-m", "heraldo.importer", "demo", "--invoices",
                             count], env=env, capture_output=True, text=True, check=False)

    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert f"argument --invoices: expected a positive number, got '{count}'" in result.stderr
    assert not (tmp_path / "demo.db").exists()


def test_a_database_that_cannot_be_reached_is_one_line_and_exit_2(tmp_path, postgres_server):
    missing = sa.engine.make_url(postgres_server).set(database=f"trial_{uuid.uuid4().hex[:8]}")
    env = {**os.environ, "DATABASE_URL": missing.render_as_string(hide_password=False)}

    result = subprocess.run([sys.executable, "-m", "heraldo.importer", "demo", "--invoices",
                             "10"], env=env, capture_output=True, text=True, check=False)

    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "does not exist" in result.stderr
