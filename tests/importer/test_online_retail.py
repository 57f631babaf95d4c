"""The Online Retail importer against real PostgreSQL (and the SQLite path beside it)."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import date, timedelta
from decimal import ROUND_HALF_UP, Decimal

import pytest
import sqlalchemy as sa
from email_validator import validate_email

from heraldo import db
from heraldo.importer import SourceFileError, import_online_retail
from heraldo.importer import online_retail as online_retail_module
from tests.datasets import ONLINE_RETAIL_MONTH

MONTH_CSV = ONLINE_RETAIL_MONTH
HEADER = "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country"


def write_csv(tmp_path, *lines: str, name: str = "lines.csv"):
    path = tmp_path / name
    path.write_text("\n".join((HEADER, *lines)) + "\n", encoding="utf-8")
    return path


async def count_rows(engine) -> tuple[int, int]:
    async with engine.connect() as conn:
        customers = await conn.scalar(sa.select(sa.func.count()).select_from(db.customers))
        invoices = await conn.scalar(sa.select(sa.func.count()).select_from(db.invoices))
        return customers, invoices


async def test_month_import_matches_figures_computed_from_the_csv(pg_engine, month_figures):
    report = await import_online_retail(pg_engine, MONTH_CSV)

    assert report.lines_read == month_figures.lines == 42_481
    assert report.lines_rejected == 0
    assert report.invoices_by_kind == {
        "invoice": len(month_figures.numbers_with_prefix("")),
        "credit_note": len(month_figures.numbers_with_prefix("C")),
        "adjustment": len(month_figures.numbers_with_prefix("A")),
    }
    assert report.invoices_inserted_by_kind == report.invoices_by_kind
    assert report.customers == report.customers_inserted == len(month_figures.customer_countries)

    async with pg_engine.connect() as conn:
        rows = (await conn.execute(sa.select(db.invoices))).mappings().all()
    stored = {row["number"]: row for row in rows}
    assert set(stored) == set(month_figures.amounts)
    for number, total in month_figures.amounts.items():
        row = stored[number]
        issue_date = month_figures.first_times[number].date()
        assert row["amount"] == total.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP), number
        assert row["issue_date"] == issue_date
        assert row["due_date"] == issue_date + timedelta(days=30)
        assert row["customer_id"] == month_figures.customer_of[number]
        assert row["country"] == month_figures.country_of[number]
        assert (row["currency"], row["status"]) == ("GBP", "open")
        assert row["kind"] == ("credit_note" if number.startswith("C") else "invoice")

    # A few totals worked out by hand from the file, as a check on the check above.
    assert stored["536365"]["amount"] == Decimal("139.12")
    assert stored["C536379"]["amount"] == Decimal("-27.50")
    assert stored["539750"]["amount"] == Decimal("18745.86")
    # 536591 has lines at 16:57 and 16:58; the earliest one dates it.
    assert stored["536591"]["issue_date"] == date(2010, 12, 1)


async def test_customers_get_generated_valid_addresses_and_a_locale(pg_engine):
    await import_online_retail(pg_engine, MONTH_CSV)

    async with pg_engine.connect() as conn:
        rows = (await conn.execute(sa.select(db.customers))).mappings().all()
    by_id = {row["id"]: row for row in rows}

    assert by_id["17850"]["name"] == "Customer 17850"
    assert by_id["17850"]["email"] == "customer-17850@example.com"
    assert (by_id["17850"]["country"], by_id["17850"]["locale"]) == ("United Kingdom", "en-GB")
    for row in rows:
        validate_email(row["email"], check_deliverability=False)
    locales = {row["country"]: row["locale"] for row in rows}
    assert locales["France"] == "fr-FR"
    assert locales["Germany"] == "de-DE"
    assert locales["Spain"] == "es-ES"
    assert locales["Belgium"] == "en-GB"


async def test_second_import_changes_nothing(pg_engine, snapshot):
    await import_online_retail(pg_engine, MONTH_CSV)
    async with pg_engine.begin() as conn:
        await conn.execute(
            db.invoices.update().where(db.invoices.c.number == "536365").values(status="paid")
        )
    before = await snapshot(pg_engine)

    report = await import_online_retail(pg_engine, MONTH_CSV)

    assert await snapshot(pg_engine) == before
    assert report.customers_inserted == 0
    assert report.invoices_inserted == 0
    assert report.invoices == len(before[1])
    # Rows already present draw no id: the next new invoice follows on without a gap.
    async with pg_engine.connect() as conn:
        last_id = await conn.scalar(sa.text("SELECT last_value FROM invoices_id_seq"))
    assert last_id == len(before[1])


async def test_bad_lines_are_reported_with_their_line_number_and_the_rest_imported(
    engine, tmp_path
):
    path = write_csv(
        tmp_path,
        "536365,85123A,WHITE HANGING HEART,6,2010-12-01 08:26:00,2.55,17850,United Kingdom",
        "536365,71053,WHITE METAL LANTERN,six,2010-12-01 08:26:00,3.39,17850,United Kingdom",
        "536365,71053,WHITE METAL LANTERN,2,2010-12-01 08:27:00,3.385,17850,United Kingdom",
        "536366,22633,HAND WARMER,1,2010-13-01 08:28:00,1.85,12345,Spain",
        '536366,22632,"HAND WARMER\nRED",1,2010-12-01 08:28:00,1.005,12345,Spain',
        "536366,22632,HAND WARMER,1,2010-12-01 08:29:00,abc,12345,Spain",
        "536366,22632,HAND WARMER,1,2010-12-01 08:29:00",
        "C536367,22632,HAND WARMER,-3,2010-12-02 09:00:00,0.335,12345,Spain",
        "536368,22632,HAND WARMER,1,2010-12-02 10:00:00,NaN,,France",
        "536369,POST,POSTAGE,1,2010-12-03 11:00:00,15,,France",
        "536370,POST,POSTAGE,1,2010-12-03 12:00:00,18,12345,France",
        "A536371,B,Adjust bad debt,1,2010-12-04 12:00:00,-11062.06,,United Kingdom",
    )

    report = await import_online_retail(engine, path)

    # Line 1 is the header; the quoted description spans lines 6 and 7.
    assert report.lines_read == 12
    assert [line_no for line_no, _ in report.rejections] == [3, 5, 8, 9, 11]
    assert report.lines_rejected == 5
    reasons = dict(report.rejections)
    assert "Quantity" in reasons[3] and "six" in reasons[3]
    assert "InvoiceDate" in reasons[5]
    assert "UnitPrice" in reasons[8]
    assert "fields" in reasons[9]
    assert "UnitPrice" in reasons[11]
    assert report.invoices_by_kind == {"invoice": 4, "credit_note": 1, "adjustment": 1}

    async with engine.connect() as conn:
        rows = (await conn.execute(sa.select(db.invoices))).mappings().all()
        customers = (await conn.execute(sa.select(db.customers))).mappings().all()
    stored = {row["number"]: row for row in rows}
    assert stored["536365"]["amount"] == Decimal("22.07")  # 6 * 2.55 + 2 * 3.385 = 22.070
    # Ties round away from zero, whatever the sign: 1.005 -> 1.01, -1.005 -> -1.01.
    assert stored["536366"]["amount"] == Decimal("1.01")
    assert stored["C536367"]["amount"] == Decimal("-1.01")
    assert stored["C536367"]["kind"] == "credit_note"
    assert stored["A536371"]["kind"] == "adjustment"
    assert stored["A536371"]["amount"] == Decimal("-11062.06")
    assert stored["536369"]["customer_id"] is None
    assert "536368" not in stored
    # 12345 has two invoices from Spain and one from France: Spain wins.
    assert [(c["id"], c["country"], c["locale"]) for c in customers] == [
        ("12345", "Spain", "es-ES"), ("17850", "United Kingdom", "en-GB"),
    ]


async def test_a_customer_tied_between_countries_takes_the_latest(engine, tmp_path):
    path = write_csv(
        tmp_path,
        "536001,X,Y,1,2010-12-01 09:00:00,1.00,12001,Germany",
        "536002,X,Y,1,2010-12-05 09:00:00,1.00,12001,France",
        "536003,X,Y,1,2010-12-06 09:00:00,1.00,12002,Germany",
        "536004,X,Y,1,2010-12-02 09:00:00,1.00,12002,France",
    )

    await import_online_retail(engine, path)

    async with engine.connect() as conn:
        rows = (await conn.execute(sa.select(db.customers.c.id, db.customers.c.country))).all()
    assert sorted(rows) == [("12001", "France"), ("12002", "Germany")]


async def test_rejections_kept_in_memory_are_capped(pg_engine, tmp_path):
    bad = [f"5{n:05d},X,Y,many,2010-12-01 09:00:00,1.00,12001,France" for n in range(150)]
    path = write_csv(tmp_path, *bad, "536001,X,Y,1,2010-12-01 09:00:00,1.00,12001,France")

    report = await import_online_retail(pg_engine, path)

    assert report.lines_rejected == 150
    assert len(report.rejections) == 100
    assert report.rejections[0][0] == 2
    assert report.invoices == 1


async def test_a_wrong_header_fails_clearly_and_writes_nothing(pg_engine, tmp_path):
    path = tmp_path / "orders.csv"
    path.write_text("order,amount\n1,2.50\n", encoding="utf-8")

    with pytest.raises(SourceFileError, match="expected the header InvoiceNo,StockCode"):
        await import_online_retail(pg_engine, path)

    assert await count_rows(pg_engine) == (0, 0)


async def test_a_missing_file_fails_clearly(pg_engine, tmp_path):
    with pytest.raises(SourceFileError, match="cannot read .*nothing.csv"):
        await import_online_retail(pg_engine, tmp_path / "nothing.csv")


async def test_a_truncated_file_fails_and_writes_nothing(engine, truncated_month_csv):
    with pytest.raises(SourceFileError, match="after line"):
        await import_online_retail(engine, truncated_month_csv)

    assert await count_rows(engine) == (0, 0)


async def test_a_failure_during_the_copy_rolls_everything_back(pg_engine, monkeypatch):
    monkeypatch.setattr(online_retail_module, "PROGRESS_EVERY_LINES", 10_000)
    seen = []

    def fail_midway(lines_read):
        seen.append(lines_read)
        if lines_read >= 20_000:
            raise RuntimeError("stopped by the test")

    with pytest.raises(RuntimeError, match="stopped by the test"):
        await import_online_retail(pg_engine, MONTH_CSV, progress=fail_midway)

    assert seen == [10_000, 20_000]
    assert await count_rows(pg_engine) == (0, 0)
    # The connection went back to the pool in a usable state.
    report = await import_online_retail(pg_engine, MONTH_CSV)
    assert report.invoices_inserted == 2_025


async def test_the_sqlite_path_stores_the_same_rows_as_postgres(
    pg_engine, sqlite_engine, plain_month_csv, snapshot
):
    await import_online_retail(pg_engine, MONTH_CSV)
    report = await import_online_retail(sqlite_engine, plain_month_csv)

    assert report.lines_read == 42_481
    assert await snapshot(sqlite_engine) == await snapshot(pg_engine)


def run_cli(*args: str, database_url: str):
    env = {**os.environ, "DATABASE_URL": database_url}
    return subprocess.run(
        [sys.executable, "-m", "heraldo.importer", *args],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )


@pytest.mark.parametrize("content", [None, "order,amount\n1,2.50\n", ""])
async def test_the_command_rejects_bad_input_with_one_line_and_exit_status_2(
    pg_engine, pg_url, tmp_path, content
):
    path = tmp_path / "input.csv"
    if content is not None:
        path.write_text(content, encoding="utf-8")

    result = run_cli("online-retail", str(path), database_url=pg_url)

    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert str(path) in result.stderr
    assert result.stdout == ""
    assert await count_rows(pg_engine) == (0, 0)


async def test_the_command_imports_and_prints_a_summary(pg_engine, pg_url):
    result = run_cli("online-retail", str(MONTH_CSV), database_url=pg_url)

    assert result.returncode == 0, result.stderr
    assert "42,481 lines read" in result.stderr
    assert "documents: 2,025" in result.stdout
    assert await count_rows(pg_engine) == (948, 2_025)


async def test_a_file_whose_every_line_is_rejected_exits_2_having_written_nothing(
    pg_engine, pg_url, tmp_path
):
    path = tmp_path / "bad-lines.csv"
    path.write_text(f"{HEADER}\nnot,a,valid,line,at,all,x,y\n,,,,,,,\n", encoding="utf-8")

    result = run_cli("online-retail", str(path), database_url=pg_url)

    assert result.returncode == 2
    assert f"every line of {path} was rejected; nothing was imported" in result.stderr
    assert "rejected: 2" in result.stdout
    assert await count_rows(pg_engine) == (0, 0)
