"""Fixtures for the importer tests: databases, table snapshots and figures read from the
CSV.

PostgreSQL (on 127.0.0.1) gets one throwaway database per session, with fresh tables for
each test; SQLite gets a file per test. The expected figures come from the CSV through
the csv module alone, independently of the importer's own parsing.
"""

from __future__ import annotations

import asyncio
import csv
import gzip
import secrets
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path

import asyncpg
import pytest
import sqlalchemy as sa

from heraldo import db
from tests.datasets import ONLINE_RETAIL_MONTH

PG_HOST = "127.0.0.1"
PG_PORT = 5432
PG_ADMIN_DSN = f"postgresql://postgres@{PG_HOST}:{PG_PORT}/postgres"
MONTH_CSV = ONLINE_RETAIL_MONTH


@dataclass
class CsvFigures:
    """What the CSV holds, worked out line by line with the csv module alone."""

    lines: int = 0
    #: number -> summed amount (unrounded), earliest time, customer id, country
    amounts: dict[str, Decimal] = field(default_factory=lambda: defaultdict(Decimal))
    first_times: dict[str, datetime] = field(default_factory=dict)
    customer_of: dict[str, str | None] = field(default_factory=dict)
    country_of: dict[str, str] = field(default_factory=dict)
    #: customer id -> Counter of countries over their invoices
    customer_countries: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))

    def numbers_with_prefix(self, prefix: str) -> set[str]:
        if prefix:
            return {number for number in self.amounts if number.startswith(prefix)}
        return {number for number in self.amounts if number[:1].isdigit()}


def read_figures(path: Path) -> CsvFigures:
    figures = CsvFigures()
    with gzip.open(path, "rt", encoding="utf-8", newline="") as text:
        for row in csv.DictReader(text):
            figures.lines += 1
            number = row["InvoiceNo"]
            time = datetime.strptime(row["InvoiceDate"], "%Y-%m-%d %H:%M:%S")
            figures.amounts[number] += int(row["Quantity"]) * Decimal(row["UnitPrice"])
            if number not in figures.first_times or time < figures.first_times[number]:
                figures.first_times[number] = time
            figures.customer_of[number] = row["CustomerID"] or None
            figures.country_of[number] = row["Country"]
    for number, customer in figures.customer_of.items():
        if customer:
            figures.customer_countries[customer][figures.country_of[number]] += 1
    return figures


@pytest.fixture
def truncated_month_csv(tmp_path) -> Path:
    """The first part of the gzipped month file: the stream ends mid-way."""
    path = tmp_path / "truncated.csv.gz"
    path.write_bytes(MONTH_CSV.read_bytes()[:200_000])
    return path


@pytest.fixture
def plain_month_csv(tmp_path) -> Path:
    """The month file uncompressed."""
    path = tmp_path / "month.csv"
    path.write_bytes(gzip.decompress(MONTH_CSV.read_bytes()))
    return path


@pytest.fixture(scope="session")
def month_figures() -> CsvFigures:
    return read_figures(MONTH_CSV)


async def _admin(statement: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A database of its own for this test session, dropped at the end."""
    name = f"heraldo_imp_{secrets.token_hex(6)}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    yield f"postgresql+asyncpg://postgres@{PG_HOST}:{PG_PORT}/{name}"
    asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
async def pg_engine(pg_url):
    """An engine on freshly created (empty) tables."""
    engine = db.create_engine(pg_url)
    async with engine.begin() as conn:
        await conn.run_sync(db.metadata.drop_all)
        await conn.run_sync(db.metadata.create_all)
    yield engine
    await engine.dispose()


@pytest.fixture
async def sqlite_engine(tmp_path):
    engine = db.create_engine(f"sqlite+aiosqlite:///{tmp_path / 'heraldo.db'}")
    await db.create_schema(engine)
    yield engine
    await engine.dispose()


@pytest.fixture(params=["postgresql", "sqlite"])
def engine(request):
    """Each database the importer supports, in turn."""
    name = "pg_engine" if request.param == "postgresql" else "sqlite_engine"
    return request.getfixturevalue(name)


async def take_snapshot(engine) -> tuple[list[tuple], list[tuple]]:
    """Every customer and invoice row, in key order."""
    async with engine.connect() as conn:
        customers = await conn.execute(sa.select(db.customers).order_by(db.customers.c.id))
        invoices = await conn.execute(sa.select(db.invoices).order_by(db.invoices.c.id))
        return [tuple(row) for row in customers], [tuple(row) for row in invoices]


@pytest.fixture
def snapshot():
    return take_snapshot
