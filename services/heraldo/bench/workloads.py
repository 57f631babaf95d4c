"""The benchmark's data: a fresh PostgreSQL database per workload, loaded with real or made-up
invoices.

``retail`` is the UCI Online Retail data set through Heraldo's own importer. ``synthetic`` is
generated here: the same size and seed always give the same rows (names, locales, currencies and
amounts from one seeded generator, dates from a fixed calendar), streamed into the tables with
``COPY``.
"""

from __future__ import annotations

import logging
import math
import random
import re
import time
import unicodedata
import uuid
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path

import asyncpg
import sqlalchemy as sa

from heraldo import db
from heraldo.errors import ConfigError, Unavailable
from heraldo.importer import import_online_retail

logger = logging.getLogger(__name__)

WORKLOADS = ("retail", "synthetic")
SYNTHETIC_INVOICES = 250_000
SYNTHETIC_SEED = 11
INVOICES_PER_CUSTOMER = 6
FIRST_ISSUE_DATE = date(2024, 1, 2)
ISSUE_SPAN_DAYS = 364
PAYMENT_TERMS_DAYS = (14, 30, 30, 30, 45, 60)
CREDIT_NOTE_SHARE = 0.04
PAID_SHARE = 0.10
WITHOUT_CUSTOMER_SHARE = 0.005
UNREACHABLE_CUSTOMER_SHARE = 0.01
#: Invoice amounts are log-normal around this median, as order values tend to be.
MEDIAN_AMOUNT_PENCE = 18_000
AMOUNT_SPREAD = 1.1
AMOUNT_PENCE_BOUNDS = (250, 5_000_000)
COMPANY_SHARE = 0.3
EMAIL_DOMAINS = ("example.com", "example.org", "example.net")

#: Country: (share of customers, locale, currency, given names, family names, company patterns).
_MARKETS = {
    "United Kingdom": (0.38, "en-GB", "GBP",
                       ("Oliver", "Amelia", "Harry", "Isla", "Noah", "Freya", "Arjun", "Aisha",
                        "Callum", "Megan", "Rhys", "Siobhan", "Tomasz", "Chloe"),
                       ("Smith", "Jones", "Patel", "Evans", "Ahmed", "Campbell", "Hughes",
                        "O'Neill", "Murray", "Clarke", "Nowak", "Begum"),
                       ("{} & Daughters Ltd", "{} Hardware", "{} Florists Ltd")),
    "EIRE": (0.06, "en-IE", "EUR",
             ("Aoife", "Cian", "Saoirse", "Oisín", "Éabha", "Darragh"),
             ("Ó Súilleabháin", "Byrne", "Ní Bhriain", "Doyle", "MacCarthy"),
             ("{} Pharmacy", "{}'s Bar")),
    "USA": (0.10, "en-US", "USD",
            ("James", "Maria", "DeShawn", "Mei", "Santiago", "Emily", "Hannah", "Kwame"),
            ("Johnson", "García", "Nguyen", "Williams", "Rodríguez", "Kim", "Okafor"),
            ("{} Supply Co.", "{} & Partners LLC")),
    "Spain": (0.18, "es-ES", "EUR",
              ("Lucía", "Hugo", "Martina", "Íker", "Begoña", "Jordi", "Ainhoa", "Álvaro"),
              ("García", "Martínez", "Núñez", "Ibáñez", "Puig", "Etxeberria", "Peña"),
              ("Ferretería {} S.L.", "Bodegas {} S.A.")),
    "Mexico": (0.10, "es-MX", "MXN",
               ("Ximena", "Juan Pablo", "Guadalupe", "Emiliano", "Renata", "Cuauhtémoc"),
               ("Hernández", "López", "Xochitl", "Ramírez", "Cruz", "Zúñiga"),
               ("Abarrotes {}", "Grupo {} S.A. de C.V.")),
    "Argentina": (0.05, "es-AR", "ARS",
                  ("Valentina", "Thiago", "Agustina", "Facundo"),
                  ("González", "Fernández", "Romero", "Sosa"),
                  ("Librería {}",)),
    "France": (0.08, "fr-FR", "EUR",
               ("Léa", "Gabriel", "Inès", "Raphaël", "Zoé"),
               ("Martin", "Lefèvre", "Girard", "Rousseau", "Faure"),
               ("Boulangerie {}", "{} et Fils")),
    "Germany": (0.05, "de-DE", "EUR",
                ("Jürgen", "Leonie", "Maximilian", "Anja", "Björn"),
                ("Müller", "Schröder", "Weiß", "Köhler", "Groß"),
                ("{} GmbH", "Bäckerei {}")),
}
_ASCII = str.maketrans({"ß": "ss", "ł": "l", "ø": "o", "æ": "ae", "œ": "oe"})


@dataclass(frozen=True)
class LoadReport:
    workload: str
    customers: int
    invoices: int
    elapsed_s: float


@dataclass(frozen=True)
class SyntheticData:
    customers: list[tuple]
    invoices: list[tuple]


def _slug(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text.lower().translate(_ASCII))
    return "".join(ch for ch in decomposed.encode("ascii", "ignore").decode() if ch.isalnum())


def generate_synthetic(invoices: int = SYNTHETIC_INVOICES, *,
                       seed: int = SYNTHETIC_SEED) -> SyntheticData:
    """Customer and invoice rows, in the column order of CUSTOMER_COLUMNS and INVOICE_COLUMNS."""
    rng = random.Random(seed)
    countries = list(_MARKETS)
    weights = [market[0] for market in _MARKETS.values()]
    customer_count = max(1, invoices // INVOICES_PER_CUSTOMER)

    customers = []
    for index in range(customer_count):
        country = rng.choices(countries, weights)[0]
        _share, locale, _currency, given, family, companies = _MARKETS[country]
        last = rng.choice(family)
        if rng.random() < COMPANY_SHARE:
            name = rng.choice(companies).format(last)
            email = f"accounts.{index + 1}@{_slug(name)}.example.com"
        else:
            first = rng.choice(given)
            name = f"{first} {last}"
            email = f"{_slug(first)}.{_slug(last)}.{index + 1}@{rng.choice(EMAIL_DOMAINS)}"
        if rng.random() < UNREACHABLE_CUSTOMER_SHARE:
            # Missing, or broken the way typed-in addresses break.
            email = rng.choice((None, email.replace("@", " at "), email.rpartition(".")[0]))
        customers.append((f"syn-{index + 1:06d}", name, email, locale, country))

    # Numbers follow the issue date, as a real ledger's do.
    issue_days = sorted(rng.randrange(ISSUE_SPAN_DAYS + 1) for _ in range(invoices))
    rows = []
    for index, day in enumerate(issue_days):
        customer = None if rng.random() < WITHOUT_CUSTOMER_SHARE else rng.choice(customers)
        country = customer[4] if customer else "United Kingdom"
        currency = _MARKETS[country][2]
        pence = int(MEDIAN_AMOUNT_PENCE * math.exp(rng.gauss(0, AMOUNT_SPREAD)))
        pence = min(max(pence, AMOUNT_PENCE_BOUNDS[0]), AMOUNT_PENCE_BOUNDS[1])
        kind = "credit_note" if rng.random() < CREDIT_NOTE_SHARE else "invoice"
        amount = Decimal(-pence if kind == "credit_note" else pence).scaleb(-2)
        issued = FIRST_ISSUE_DATE + timedelta(days=day)
        rows.append((f"SYN-{index + 1:07d}", kind, customer[0] if customer else None, country,
                     issued, issued + timedelta(days=rng.choice(PAYMENT_TERMS_DAYS)), amount,
                     currency, "paid" if rng.random() < PAID_SHARE else "open"))
    return SyntheticData(customers=customers, invoices=rows)


CUSTOMER_COLUMNS = ("id", "name", "email", "locale", "country")
INVOICE_COLUMNS = ("number", "kind", "customer_id", "country", "issue_date", "due_date", "amount",
                   "currency", "status")


async def copy_synthetic(database_url: str, data: SyntheticData) -> None:
    """Streams the rows into empty tables with COPY, in one transaction."""
    conn = await asyncpg.connect(plain_url(database_url))
    try:
        async with conn.transaction():
            await conn.copy_records_to_table("customers", records=data.customers,
                                             columns=CUSTOMER_COLUMNS)
            await conn.copy_records_to_table("invoices", records=data.invoices,
                                             columns=INVOICE_COLUMNS)
        await conn.execute("ANALYZE customers; ANALYZE invoices")
    finally:
        await conn.close()


def plain_url(url: str) -> str:
    """A URL asyncpg itself accepts (no SQLAlchemy driver suffix)."""
    return sa.engine.make_url(url).set(drivername="postgresql").render_as_string(
        hide_password=False)


#: How long the PostgreSQL server gets to answer the check made before any run.
CONNECT_TIMEOUT_S = 10.0
SERVER_URL_FORM = "postgresql://USER[:PASSWORD]@HOST[:PORT]"
CAN_CREATE_DATABASES = """
    SELECT rolname, rolsuper OR rolcreatedb FROM pg_roles WHERE rolname = current_user
"""


def masked(url: str) -> str:
    """``url`` for a message, its password hidden even when the URL does not parse."""
    try:
        return db.describe(url)
    except (sa.exc.ArgumentError, ValueError):
        return re.sub(r"(://[^:/@]*:).*@", r"\1***@", url)


def server_admin_url(server_url: str) -> str:
    """The plain URL of the ``postgres`` database on the server at ``server_url``, where the
    benchmark creates and drops its own databases.

    Raises:
        ConfigError: ``server_url`` is not a PostgreSQL URL (the message masks its password).
    """
    try:
        url = sa.engine.make_url(server_url)
    except (sa.exc.ArgumentError, ValueError) as exc:
        raise ConfigError(f"{masked(server_url)}: not a database URL; expected "
                          f"{SERVER_URL_FORM}") from exc
    if url.get_backend_name() not in ("postgresql", "postgres"):
        raise ConfigError(f"{masked(server_url)}: not a PostgreSQL URL; expected "
                          f"{SERVER_URL_FORM}")
    if url.port is not None and not 0 < url.port < 65536:
        raise ConfigError(f"{masked(server_url)}: port {url.port} is not 1-65535")
    return plain_url(url.set(database="postgres").render_as_string(hide_password=False))


async def check_server(server_url: str) -> None:
    """Connects once to the server at ``server_url``, so that one the benchmark cannot use
    stops it before any run rather than in the middle of one.

    Raises:
        ConfigError: the URL is not a PostgreSQL one, or its role may not create databases.
        Unavailable: the server cannot be reached in CONNECT_TIMEOUT_S or refuses the login.
    """
    admin_url = server_admin_url(server_url)
    try:
        conn = await asyncpg.connect(admin_url, timeout=CONNECT_TIMEOUT_S)
    except TimeoutError as exc:
        raise Unavailable(f"PostgreSQL at {masked(server_url)} did not answer within "
                          f"{CONNECT_TIMEOUT_S:.0f} s") from exc
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, ValueError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise Unavailable(f"cannot connect to PostgreSQL at {masked(server_url)}: "
                          f"{reason}") from exc
    try:
        role, may_create = await conn.fetchrow(CAN_CREATE_DATABASES)
    finally:
        await conn.close()
    if not may_create:
        raise ConfigError(f"role {role} may not create databases on PostgreSQL at "
                          f"{masked(server_url)}; give it CREATEDB or use another role")


class BenchDatabase:
    """A database of its own on the PostgreSQL server at ``server_url``, dropped on ``drop``."""

    def __init__(self, server_url: str, workload: str) -> None:
        self.admin_url = server_admin_url(server_url)
        self.name = f"heraldo_bench_{workload}_{uuid.uuid4().hex[:8]}"
        self.url = sa.engine.make_url(self.admin_url).set(database=self.name).render_as_string(
            hide_password=False)

    async def create(self) -> None:
        await self._admin(f'CREATE DATABASE "{self.name}"')
        engine = db.create_engine(db.database_url(self.url))
        try:
            await db.create_schema(engine)
        finally:
            await engine.dispose()

    async def drop(self) -> None:
        await self._admin(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')

    async def _admin(self, sql: str) -> None:
        conn = await asyncpg.connect(self.admin_url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    async def forget_jobs(self) -> None:
        """Empties the job repository and delivery log, so every run starts from the same state."""
        conn = await asyncpg.connect(self.url)
        try:
            # CASCADE takes along whatever else hangs off the job tables (step executions).
            await conn.execute("TRUNCATE job_outcomes, job_executions, job_instances, deliveries "
                               "CASCADE")
        finally:
            await conn.close()


async def load(database: BenchDatabase, workload: str, *, retail_path: Path,
               synthetic_invoices: int = SYNTHETIC_INVOICES) -> LoadReport:
    started = time.perf_counter()
    if workload == "retail":
        engine = db.create_engine(db.database_url(database.url))
        try:
            report = await import_online_retail(engine, retail_path)
        finally:
            await engine.dispose()
        customers, invoices = report.customers, report.invoices
        conn = await asyncpg.connect(database.url)
        try:
            await conn.execute("ANALYZE customers; ANALYZE invoices")
        finally:
            await conn.close()
    elif workload == "synthetic":
        data = generate_synthetic(synthetic_invoices)
        await copy_synthetic(database.url, data)
        customers, invoices = len(data.customers), len(data.invoices)
    else:
        raise ValueError(f"workload must be one of {', '.join(WORKLOADS)}, got {workload!r}")
    elapsed_s = time.perf_counter() - started
    logger.info("workload loaded workload=%s database=%s customers=%d invoices=%d elapsed_s=%.1f",
                workload, database.name, customers, invoices, elapsed_s)
    return LoadReport(workload=workload, customers=customers, invoices=invoices,
                      elapsed_s=elapsed_s)

