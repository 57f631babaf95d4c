"""Loads the UCI Online Retail data set (invoice lines) into customers and invoices.

An invoice is every line sharing an ``InvoiceNo``: its amount is the exact sum of
``Quantity * UnitPrice``, its issue date the day of its earliest ``InvoiceDate``. The
prefix gives the kind: ``C`` a credit note, ``A`` an adjustment, none an invoice.
Amounts keep their sign for every kind, so a credit note is stored negative: one rule
for all kinds (adjustments come with either sign) and the amounts of a customer add up
to what they owe.

The data has no names or addresses, so each customer gets a generated name and an
address under ``example.com``. A customer seen in several countries takes the one of
most invoices; a tie goes to the country of their latest invoice.

On PostgreSQL the valid lines stream through ``COPY FROM STDIN`` into a temporary table
and set-based SQL builds the invoices and customers from it; on SQLite the lines are
summed in Python and inserted in batches. Either way the load is one transaction, and
rows already present are left untouched, so a second import of the same file changes
nothing.

Parsing runs on the event loop (the COPY pulls lines from a plain generator): the full
data set holds the loop for about two seconds of CPU. That suits the command line and
the tests; a server that must stay responsive while importing would run the import in a
process of its own.
"""

from __future__ import annotations

import csv
import gzip
import io
import logging
import time
import zlib
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal, Inexact, InvalidOperation, localcontext
from pathlib import Path
from typing import TextIO

import grpc
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from heraldo import db
from heraldo.errors import HeraldoError
from heraldo.importer._shared import DEFAULT_LOCALE, LOCALE_BY_COUNTRY, insert_new_rows, locale_for

logger = logging.getLogger(__name__)

EXPECTED_HEADER = (
    "InvoiceNo", "StockCode", "Description", "Quantity", "InvoiceDate", "UnitPrice", "CustomerID",
    "Country",
)
#: The data carries no due dates. Thirty days net is the common UK trade term, and a
#: fixed term keeps a re-import identical to the first.
PAYMENT_TERM_DAYS = 30
CURRENCY = "GBP"
KINDS = ("invoice", "credit_note", "adjustment")
KIND_BY_PREFIX = {"C": "credit_note", "A": "adjustment"}

CUSTOMER_NAME_PREFIX = "Customer "
EMAIL_LOCAL_PREFIX = "customer-"
#: Reserved for examples (RFC 2606), so no mail reaches a real person, yet
#: email-validator accepts it without a DNS lookup, which it does not for special-use
#: names such as ``.invalid``.
EMAIL_DOMAIN = "example.com"

#: Rejected lines kept with their number and reason; the rest are only counted, so a
#: file of garbage cannot fill memory.
MAX_REJECTIONS_KEPT = 100
PROGRESS_EVERY_LINES = 50_000

# Bounds that keep each line's amount exact in Python and far inside Numeric(14, 2);
# the real data peaks at 80,995 units and 38,970 GBP, with 3 decimal places at most.
MAX_ABS_QUANTITY = 10**9
MAX_ABS_UNIT_PRICE = Decimal(10**9)
MAX_UNIT_PRICE_PLACES = 6
#: Digits for exact sums: Inexact is trapped, so a sum that does not fit fails loudly.
SUM_PRECISION_DIGITS = 60
CENT = Decimal("0.01")

_GZIP_MAGIC = b"\x1f\x8b"
# Column sizes of the tables: a longer value is a bad line, not a failed transaction.
_MAX_NUMBER_CHARS = db.invoices.c.number.type.length
_MAX_CUSTOMER_ID_CHARS = db.customers.c.id.type.length
_MAX_COUNTRY_CHARS = db.invoices.c.country.type.length

ProgressCallback = Callable[[int], object]
#: A valid line: number, quantity, invoice time, unit price, customer id, country.
Line = tuple[str, int, datetime, Decimal, str | None, str | None]


class SourceFileError(HeraldoError):
    """The input file is missing, unreadable or not an Online Retail CSV; nothing was written."""

    status_code = grpc.StatusCode.INVALID_ARGUMENT


@dataclass
class ImportReport:
    """What one import read, rejected and wrote."""

    source: str
    lines_read: int = 0
    lines_rejected: int = 0
    #: (line number, reason) of the first MAX_REJECTIONS_KEPT rejected lines; the
    #: header is line 1.
    rejections: list[tuple[int, str]] = field(default_factory=list)
    #: Distinct customers and documents in the file, whether new or already stored.
    customers: int = 0
    invoices_by_kind: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    #: What this import added; zero on a repeated import.
    customers_inserted: int = 0
    invoices_inserted_by_kind: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(KINDS, 0)
    )
    elapsed_s: float = 0.0

    @property
    def invoices(self) -> int:
        return sum(self.invoices_by_kind.values())

    @property
    def invoices_inserted(self) -> int:
        return sum(self.invoices_inserted_by_kind.values())

    def reject(self, line_no: int, reason: str) -> None:
        self.lines_rejected += 1
        if len(self.rejections) < MAX_REJECTIONS_KEPT:
            self.rejections.append((line_no, reason))

    def summary(self) -> str:
        """A few readable lines for a terminal."""
        kinds = ", ".join(f"{kind} {count:,}" for kind, count in self.invoices_by_kind.items())
        lines = [
            f"source: {self.source}",
            f"lines read: {self.lines_read:,}, rejected: {self.lines_rejected:,}",
            f"customers: {self.customers:,} ({self.customers_inserted:,} new)",
            f"documents: {self.invoices:,} ({kinds}; {self.invoices_inserted:,} new)",
            f"elapsed: {self.elapsed_s:.2f} s",
        ]
        lines += [f"rejected line {line_no}: {reason}" for line_no, reason in self.rejections[:10]]
        if self.lines_rejected > 10:
            lines.append(f"... and {self.lines_rejected - 10:,} more rejected lines")
        return "\n".join(lines)


def customer_name(customer_id: str) -> str:
    return CUSTOMER_NAME_PREFIX + customer_id


def customer_email(customer_id: str) -> str:
    return f"{EMAIL_LOCAL_PREFIX}{customer_id}@{EMAIL_DOMAIN}"


def kind_of(number: str) -> str:
    return KIND_BY_PREFIX.get(number[:1], "invoice")


def check_source(path: str | Path) -> None:
    """Opens the file and checks its header, writing nothing.

    Raises:
        SourceFileError: the file is missing, unreadable or has another header.
    """
    path = Path(path)
    with _open_text(path) as text:
        _read_header(csv.reader(text), path)


async def import_online_retail(
    engine: AsyncEngine, path: str | Path, *, progress: ProgressCallback | None = None
) -> ImportReport:
    """Loads an Online Retail CSV (plain or gzip) in one transaction.

    ``progress`` gets the number of lines read every PROGRESS_EVERY_LINES lines.

    Raises:
        SourceFileError: the file is missing, unreadable or not an Online Retail CSV;
            nothing was written.
    """
    path = Path(path)
    started = time.perf_counter()
    report = ImportReport(source=str(path))
    check_source(path)

    with _open_text(path) as text:
        lines = _read_lines(text, path, report, progress)
        async with engine.begin() as conn:
            if db.is_postgres(engine):
                await _load_postgres(conn, lines, report)
            else:
                await _load_portable(conn, lines, report)

    report.elapsed_s = time.perf_counter() - started
    logger.info(
        "online retail import done source=%s lines=%d rejected=%d customers=%d customers_new=%d "
        "documents=%d documents_new=%d elapsed_s=%.2f",
        path, report.lines_read, report.lines_rejected, report.customers,
        report.customers_inserted, report.invoices, report.invoices_inserted, report.elapsed_s,
    )
    if report.rejections:
        first_line, first_reason = report.rejections[0]
        logger.warning(
            "online retail import rejected=%d source=%s first_line=%d first_reason=%s",
            report.lines_rejected, path, first_line, first_reason,
        )
    return report


def _open_text(path: Path) -> TextIO:
    """The file as text, gunzipped when its first bytes say so (whatever its name)."""
    try:
        with path.open("rb") as probe:
            magic = probe.read(len(_GZIP_MAGIC))
        binary = gzip.open(path, "rb") if magic == _GZIP_MAGIC else path.open("rb")
    except OSError as exc:
        raise SourceFileError(f"cannot read {path}: {exc.strerror or exc}") from exc
    # surrogateescape: a stray non-UTF-8 byte spoils its own line (rejected below when
    # it lands in a stored field), not the whole import.
    return io.TextIOWrapper(binary, encoding="utf-8-sig", errors="surrogateescape", newline="")


def _read_header(reader: Iterator[list[str]], path: Path) -> None:
    expected = ",".join(EXPECTED_HEADER)
    try:
        header = next(reader, None)
    except (OSError, EOFError, zlib.error, csv.Error) as exc:
        raise SourceFileError(f"cannot read {path}: {exc}") from exc
    if header is None:
        raise SourceFileError(f"{path} is empty; expected a CSV with the header {expected}")
    if tuple(name.strip() for name in header) != EXPECTED_HEADER:
        found = ",".join(header)[:200]
        raise SourceFileError(
            f"{path} is not an Online Retail CSV: expected the header {expected}, found {found!r}"
        )


def _read_lines(
    text: TextIO, path: Path, report: ImportReport, progress: ProgressCallback | None
) -> Iterator[Line]:
    """Yields the valid lines; counts every line and records the rejected ones in ``report``."""
    reader = csv.reader(text)
    _read_header(reader, path)
    end_line = reader.line_num
    try:
        for row in reader:
            # A quoted field may span lines: a row starts after the previous one ends.
            line_no, end_line = end_line + 1, reader.line_num
            if not row:
                continue
            report.lines_read += 1
            if progress is not None and report.lines_read % PROGRESS_EVERY_LINES == 0:
                progress(report.lines_read)
            parsed = _parse(row)
            if isinstance(parsed, str):
                report.reject(line_no, parsed)
            else:
                yield parsed
    except (OSError, EOFError, zlib.error, csv.Error) as exc:
        raise SourceFileError(f"cannot read {path} after line {end_line}: {exc}") from exc
    if progress is not None and report.lines_read % PROGRESS_EVERY_LINES:
        progress(report.lines_read)


def _parse(row: list[str]) -> Line | str:
    """The line's values, or the reason it is rejected."""
    if len(row) != len(EXPECTED_HEADER):
        return f"expected {len(EXPECTED_HEADER)} fields, found {len(row)}"
    number, _stock_code, _description, quantity_text, time_text, price_text, customer, country = row

    if not number or len(number) > _MAX_NUMBER_CHARS or not number.isprintable():
        return f"bad InvoiceNo {number!r}"
    try:
        quantity = int(quantity_text)
    except ValueError:
        return f"bad Quantity {quantity_text!r}"
    if abs(quantity) > MAX_ABS_QUANTITY:
        return f"Quantity {quantity_text!r} out of range"
    try:
        invoice_time = datetime.fromisoformat(time_text)
    except ValueError:
        return f"bad InvoiceDate {time_text!r}"
    if invoice_time.tzinfo is not None:
        return f"InvoiceDate {time_text!r} has an offset; expected local time"

    try:
        unit_price = Decimal(price_text)
    except InvalidOperation:
        return f"bad UnitPrice {price_text!r}"
    if not unit_price.is_finite() or abs(unit_price) >= MAX_ABS_UNIT_PRICE:
        return f"UnitPrice {price_text!r} out of range"
    if unit_price.as_tuple().exponent < -MAX_UNIT_PRICE_PLACES:
        return f"UnitPrice {price_text!r} has more than {MAX_UNIT_PRICE_PLACES} decimal places"

    if customer and not (
        customer.isascii() and customer.isdigit() and len(customer) <= _MAX_CUSTOMER_ID_CHARS
    ):
        return f"bad CustomerID {customer!r}"
    if len(country) > _MAX_COUNTRY_CHARS or not country.isprintable():
        return f"bad Country {country!r}"
    # An empty CustomerID or Country is a missing one, as PostgreSQL's CSV COPY reads it.
    return number, quantity, invoice_time, unit_price, customer or None, country or None


# PostgreSQL path ---------------------------------------------------------------

_STAGED_COLUMNS = (
    "invoice_no", "quantity", "invoice_time", "unit_price_text", "customer_id", "country",
)

_CREATE_STAGING = """
CREATE TEMPORARY TABLE import_lines (
    invoice_no text NOT NULL,
    quantity bigint NOT NULL,
    invoice_time timestamp NOT NULL,
    unit_price_text text NOT NULL,
    customer_id text,
    country text
) ON COMMIT DROP
"""

# COLLATE "C" orders by code point, as Python does, so both paths pick the same values.
_AGGREGATE_INVOICES = """
CREATE TEMPORARY TABLE import_invoices ON COMMIT DROP AS
SELECT invoice_no AS number,
       CASE left(invoice_no, 1) WHEN 'C' THEN 'credit_note' WHEN 'A' THEN 'adjustment'
            ELSE 'invoice' END AS kind,
       min(customer_id COLLATE "C") AS customer_id,
       min(country COLLATE "C") AS country,
       min(invoice_time) AS first_time,
       round(sum(quantity * CAST(unit_price_text AS numeric)), 2) AS amount
FROM import_lines
GROUP BY invoice_no
"""

_COUNT_INVOICES = "SELECT kind, count(*) FROM import_invoices GROUP BY kind"

_INSERT_CUSTOMERS = """
WITH per_country AS (
    SELECT customer_id, country, count(*) AS documents, max(first_time) AS latest
    FROM import_invoices
    WHERE customer_id IS NOT NULL
    GROUP BY customer_id, country
), chosen AS (
    SELECT DISTINCT ON (customer_id) customer_id, country
    FROM per_country
    ORDER BY customer_id, documents DESC, latest DESC, country COLLATE "C" NULLS LAST
), inserted AS (
    INSERT INTO customers (id, name, email, locale, country)
    SELECT c.customer_id,
           CAST(:name_prefix AS text) || c.customer_id,
           CAST(:email_prefix AS text) || c.customer_id || CAST(:email_suffix AS text),
           coalesce(l.locale, CAST(:default_locale AS text)),
           c.country
    FROM chosen c
    LEFT JOIN unnest(CAST(:countries AS text[]), CAST(:locales AS text[])) AS l (country, locale)
        ON l.country = c.country
    WHERE NOT EXISTS (SELECT 1 FROM customers x WHERE x.id = c.customer_id)
    ON CONFLICT (id) DO NOTHING
    RETURNING 1
)
SELECT (SELECT count(*) FROM chosen), (SELECT count(*) FROM inserted)
"""

# NOT EXISTS before ON CONFLICT: rows already stored draw no sequence value, so a
# re-import leaves the id sequence where it was. Ids follow each document's first line.
_INSERT_INVOICES = """
WITH inserted AS (
    INSERT INTO invoices
        (number, kind, customer_id, country, issue_date, due_date, amount, currency, status)
    SELECT s.number, s.kind, s.customer_id, s.country,
           CAST(s.first_time AS date),
           CAST(s.first_time AS date) + CAST(:term_days AS integer),
           s.amount, CAST(:currency AS text), 'open'
    FROM import_invoices s
    WHERE NOT EXISTS (SELECT 1 FROM invoices i WHERE i.number = s.number)
    ORDER BY s.first_time, s.number COLLATE "C"
    ON CONFLICT (number) DO NOTHING
    RETURNING kind
)
SELECT kind, count(*) FROM inserted GROUP BY kind
"""


async def _load_postgres(
    conn: AsyncConnection, lines: Iterator[Line], report: ImportReport
) -> None:
    # This statement also opens the transaction, so the raw COPY below runs inside it.
    await conn.execute(sa.text(_CREATE_STAGING))
    raw = (await conn.get_raw_connection()).driver_connection
    # The price travels as text (Decimal's exact, normalised form): asyncpg's binary
    # encoding of Decimal doubled the time of the whole COPY.
    staged = (
        (number, quantity, invoice_time, str(unit_price), customer_id, country)
        for number, quantity, invoice_time, unit_price, customer_id, country in lines
    )
    await raw.copy_records_to_table("import_lines", records=staged, columns=_STAGED_COLUMNS)

    await conn.execute(sa.text(_AGGREGATE_INVOICES))
    for kind, count in await conn.execute(sa.text(_COUNT_INVOICES)):
        report.invoices_by_kind[kind] = count

    counts = await conn.execute(
        sa.text(_INSERT_CUSTOMERS),
        {
            "name_prefix": CUSTOMER_NAME_PREFIX,
            "email_prefix": EMAIL_LOCAL_PREFIX,
            "email_suffix": "@" + EMAIL_DOMAIN,
            "default_locale": DEFAULT_LOCALE,
            "countries": list(LOCALE_BY_COUNTRY),
            "locales": list(LOCALE_BY_COUNTRY.values()),
        },
    )
    report.customers, report.customers_inserted = counts.one()

    inserted = await conn.execute(
        sa.text(_INSERT_INVOICES), {"term_days": PAYMENT_TERM_DAYS, "currency": CURRENCY}
    )
    for kind, count in inserted:
        report.invoices_inserted_by_kind[kind] = count


# Portable path (SQLite) --------------------------------------------------------


@dataclass(slots=True)
class _Document:
    customer_id: str | None
    country: str | None
    first_time: datetime
    amount: Decimal


@dataclass(slots=True)
class _Presence:
    """How often, and how recently, a customer appears in one country."""

    documents: int
    latest: datetime


async def _load_portable(
    conn: AsyncConnection, lines: Iterator[Line], report: ImportReport
) -> None:
    documents = _sum_documents(lines)
    for number in documents:
        report.invoices_by_kind[kind_of(number)] += 1

    customer_rows = _customer_rows(documents)
    report.customers = len(customer_rows)
    inserted_customers = await insert_new_rows(conn, db.customers, "id", customer_rows)
    report.customers_inserted = len(inserted_customers)

    ordered = sorted(documents.items(), key=lambda item: (item[1].first_time, item[0]))
    invoice_rows = [_invoice_row(number, document) for number, document in ordered]
    for row in await insert_new_rows(conn, db.invoices, "number", invoice_rows):
        report.invoices_inserted_by_kind[row["kind"]] += 1


def _sum_documents(lines: Iterator[Line]) -> dict[str, _Document]:
    """The lines summed per invoice number, choosing values the way the PostgreSQL path does."""
    documents: dict[str, _Document] = {}
    with localcontext(prec=SUM_PRECISION_DIGITS) as context:
        context.traps[Inexact] = True
        for number, quantity, invoice_time, unit_price, customer_id, country in lines:
            document = documents.get(number)
            if document is None:
                documents[number] = _Document(customer_id, country, invoice_time,
                                              quantity * unit_price)
                continue
            document.amount += quantity * unit_price
            document.first_time = min(document.first_time, invoice_time)
            document.customer_id = _min_present(document.customer_id, customer_id)
            document.country = _min_present(document.country, country)
    return documents


def _min_present(current: str | None, candidate: str | None) -> str | None:
    """The smaller of two values, ignoring a missing one, as SQL's min() does."""
    if current is None or (candidate is not None and candidate < current):
        return candidate
    return current


def _customer_rows(documents: dict[str, _Document]) -> list[dict[str, str | None]]:
    presence: dict[str, dict[str | None, _Presence]] = defaultdict(dict)
    for document in documents.values():
        if document.customer_id is None:
            continue
        countries = presence[document.customer_id]
        seen = countries.get(document.country)
        if seen is None:
            countries[document.country] = _Presence(1, document.first_time)
        else:
            seen.documents += 1
            seen.latest = max(seen.latest, document.first_time)

    rows = []
    for customer_id in sorted(presence):
        country = _main_country(presence[customer_id])
        rows.append({
            "id": customer_id,
            "name": customer_name(customer_id),
            "email": customer_email(customer_id),
            "locale": locale_for(country),
            "country": country,
        })
    return rows


def _main_country(countries: dict[str | None, _Presence]) -> str | None:
    """Most documents first, then the latest document, then the name; a missing country last."""
    most = max(seen.documents for seen in countries.values())
    tied = {country: seen for country, seen in countries.items() if seen.documents == most}
    latest = max(seen.latest for seen in tied.values())
    candidates = [country for country, seen in tied.items() if seen.latest == latest]
    return min(candidates, key=lambda country: (country is None, country or ""))


def _invoice_row(number: str, document: _Document) -> dict[str, object]:
    issue_date: date = document.first_time.date()
    return {
        "number": number,
        "kind": kind_of(number),
        "customer_id": document.customer_id,
        "country": document.country,
        "issue_date": issue_date,
        "due_date": issue_date + timedelta(days=PAYMENT_TERM_DAYS),
        # Ties away from zero: Decimal's ROUND_HALF_UP, as PostgreSQL's round() does.
        "amount": document.amount.quantize(CENT, rounding=ROUND_HALF_UP),
        "currency": CURRENCY,
        "status": "open",
    }
