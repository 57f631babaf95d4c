"""A deterministic demo data set for ``make run``: varied customers, a year of invoices.

The same size and seed always give the same rows: names and amounts come from one seeded
random generator and the dates from a fixed calendar, never from the clock. Most
documents are open invoices; a few are credit notes (stored negative, as the Online
Retail importer does), some are paid, a few have no customer and a few customers have no
usable address, so that every skip reason of the notification job shows up. Invoice
numbers (``DEMO-000001``) and customer ids (``demo-0001``) are fixed and rows already
stored are left alone, so loading again changes nothing.
"""

from __future__ import annotations

import logging
import random
import time
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal

from email_validator import EmailNotValidError, validate_email
from sqlalchemy.ext.asyncio import AsyncEngine

from heraldo import db
from heraldo.importer._shared import insert_new_rows, locale_for

logger = logging.getLogger(__name__)

DEFAULT_INVOICES = 1200
DEFAULT_SEED = 7
#: One customer per this many invoices, so a customer receives several documents.
INVOICES_PER_CUSTOMER = 6
MIN_CUSTOMERS = 20
#: Issue dates spread over one fixed calendar year, never relative to today.
FIRST_ISSUE_DATE = date(2025, 1, 2)
ISSUE_SPAN_DAYS = 364
PAYMENT_TERMS_DAYS = (14, 30, 30, 30, 60)

CREDIT_NOTE_SHARE = 0.04
PAID_SHARE = 0.10
#: At least this many invoices without customer, and customers without an address.
MIN_ODD_CASES = 3
INVOICE_AMOUNT_PENCE = (1_000, 750_000)
CREDIT_NOTE_AMOUNT_PENCE = (500, 60_000)

# Domains reserved for examples (RFC 2606) that email-validator accepts without DNS.
PERSON_DOMAINS = ("example.com", "example.org", "example.net")

#: Country (as spelled in the Online Retail data): share of customers, currency, names.
_PEOPLE = {
    "United Kingdom": (0.45, "GBP", (
        "Oliver", "Amelia", "Harry", "Isla", "George", "Ava", "Jack", "Emily",
        "Charlotte", "Thomas", "Sophie", "William", "Grace", "Priya", "Mohammed",
    ), (
        "Smith", "Jones", "Taylor", "Brown", "Williams", "Wilson", "Davies",
        "Patel", "Robinson", "Wright", "Thompson", "Evans", "Walker", "Khan",
        "Hughes",
    )),
    "Spain": (0.22, "EUR", (
        "José", "María", "Lucía", "Álvaro", "Begoña", "Íñigo", "Nuria", "Javier",
        "Carmen", "Raúl", "Inés", "Martín",
    ), (
        "García", "Fernández", "Núñez", "Peña", "Muñoz", "Ibáñez", "López",
        "Martínez", "Gómez", "Jiménez", "Castaño", "Echeverría",
    )),
    "France": (0.10, "EUR", (
        "François", "Hélène", "Amélie", "Théo", "Léa", "Jérôme", "Chloé", "Benoît",
        "Zoé",
    ), (
        "Lefèvre", "Dubois", "Gauthier", "Moreau", "Girard", "Bézier", "Laurent",
        "Chevalier",
    )),
    "Germany": (0.10, "EUR", (
        "Jürgen", "Jörg", "Anja", "Lukas", "Sönke", "Käthe", "Maximilian", "Lea",
        "Björn",
    ), (
        "Müller", "Schröder", "Weiß", "Fischer", "Köhler", "Groß", "Becker",
        "Schäfer",
    )),
    "EIRE": (0.07, "EUR", (
        "Siobhán", "Aoife", "Seán", "Niamh", "Pádraig", "Róisín", "Ciarán",
    ), (
        "Ó Briain", "Murphy", "Kelly", "O'Sullivan", "Byrne", "Ní Dhomhnaill",
    )),
    "Poland": (0.06, "PLN", (
        "Łukasz", "Małgorzata", "Zofia", "Paweł", "Agnieszka", "Michał",
    ), (
        "Wróbel", "Kowalski", "Wiśniewska", "Dąbrowski", "Zieliński", "Łuczak",
    )),
}

#: Business names around a surname; a quarter of the customers are businesses.
_COMPANY_PATTERNS = {
    "United Kingdom": ("{} & Sons Ltd", "{} Joinery Ltd", "{} Tea Rooms"),
    "Spain": ("Papelería {} S.L.", "Talleres {} S.A.", "Cafetería {}"),
    "France": ("Boulangerie {}", "Éditions {}", "Hôtel {} SARL"),
    "Germany": ("Bäckerei {} GmbH", "{} & Söhne KG", "{} Optik"),
    "EIRE": ("{} Crafts Ltd", "{}'s Bookshop"),
    "Poland": ("{} Sp. z o.o.", "Księgarnia {}"),
}
COMPANY_SHARE = 0.25

#: Letters NFKD does not split into a base letter and an accent.
_ASCII_LETTERS = str.maketrans({
    "ł": "l", "Ł": "L", "ø": "o", "Ø": "O", "æ": "ae", "Æ": "AE", "ß": "ss", "đ": "d", "œ": "oe",
})


@dataclass(frozen=True)
class DemoReport:
    """What the demo set holds, and what this load added."""

    customers: int
    #: Customers whose address is missing or does not validate.
    customers_without_valid_email: int
    invoices_by_kind: dict[str, int] = field(default_factory=dict)
    invoices_open: int = 0
    invoices_without_customer: int = 0
    #: Open invoices (kind ``invoice``, what a job with no kinds selects) whose customer
    #: has a valid address: the ones the notification job would send.
    notifiable: int = 0
    customers_inserted: int = 0
    invoices_inserted: int = 0
    elapsed_s: float = 0.0

    @property
    def invoices(self) -> int:
        return sum(self.invoices_by_kind.values())

    def __str__(self) -> str:
        return (
            f"{self.customers:,} customers ({self.customers_without_valid_email:,} without a valid "
            f"address), {self.invoices:,} documents ({self.invoices_inserted:,} new), "
            f"{self.invoices_without_customer:,} of them (credit notes too) without customer, "
            f"{self.notifiable:,} notifiable"
        )

    def summary(self) -> str:
        """A few readable lines for a terminal."""
        kinds = ", ".join(f"{kind} {count:,}" for kind, count in self.invoices_by_kind.items())
        return "\n".join([
            f"customers: {self.customers:,} ({self.customers_inserted:,} new, "
            f"{self.customers_without_valid_email:,} without a valid address)",
            f"documents: {self.invoices:,} ({kinds}; {self.invoices_inserted:,} new)",
            f"open: {self.invoices_open:,}, without customer: {self.invoices_without_customer:,}, "
            f"notifiable: {self.notifiable:,}",
            f"elapsed: {self.elapsed_s:.2f} s",
        ])


async def load_demo(
    engine: AsyncEngine, *, invoices: int = DEFAULT_INVOICES, seed: int = DEFAULT_SEED
) -> DemoReport:
    """Writes the demo customers and ``invoices`` documents in one transaction.

    Raises:
        ValueError: ``invoices`` is less than 1.
    """
    if invoices < 1:
        raise ValueError(f"invoices must be at least 1, got {invoices}")
    started = time.perf_counter()
    rng = random.Random(seed)
    customer_rows = _customers(rng, max(MIN_CUSTOMERS, invoices // INVOICES_PER_CUSTOMER))
    invoice_rows = _invoices(rng, invoices, customer_rows)

    async with engine.begin() as conn:
        inserted_customers = await insert_new_rows(conn, db.customers, "id", customer_rows)
        inserted_invoices = await insert_new_rows(conn, db.invoices, "number", invoice_rows)

    reachable = {row["id"] for row in customer_rows if _is_valid_email(row["email"])}
    open_rows = [row for row in invoice_rows if row["status"] == "open"]
    report = DemoReport(
        customers=len(customer_rows),
        customers_without_valid_email=len(customer_rows) - len(reachable),
        invoices_by_kind=dict(Counter(row["kind"] for row in invoice_rows)),
        invoices_open=len(open_rows),
        invoices_without_customer=sum(row["customer_id"] is None for row in invoice_rows),
        notifiable=sum(
            row["kind"] == "invoice" and row["customer_id"] in reachable for row in open_rows
        ),
        customers_inserted=len(inserted_customers),
        invoices_inserted=len(inserted_invoices),
        elapsed_s=time.perf_counter() - started,
    )
    logger.info(
        "demo load done seed=%d customers=%d customers_new=%d documents=%d documents_new=%d "
        "notifiable=%d elapsed_s=%.2f",
        seed, report.customers, report.customers_inserted, report.invoices,
        report.invoices_inserted, report.notifiable, report.elapsed_s,
    )
    return report


def _customers(rng: random.Random, count: int) -> list[dict[str, str | None]]:
    countries = list(_PEOPLE)
    weights = [share for share, _currency, _first, _last in _PEOPLE.values()]
    # Picked up front, so even a small set shows each skip reason.
    unreachable = set(rng.sample(range(count), max(MIN_ODD_CASES, count // 40)))
    used_emails: set[str] = set()
    spoiled = 0

    rows = []
    for index in range(count):
        country = rng.choices(countries, weights)[0]
        _share, _currency, first_names, last_names = _PEOPLE[country]
        first, last = rng.choice(first_names), rng.choice(last_names)
        if rng.random() < COMPANY_SHARE:
            name = rng.choice(_COMPANY_PATTERNS[country]).format(last)
            email = _unique(f"accounts@{_ascii_slug(name, '-')}.example.com", used_emails)
        else:
            name = f"{first} {last}"
            local = f"{_ascii_slug(first, '')}.{_ascii_slug(last, '')}"
            email = _unique(f"{local}@{rng.choice(PERSON_DOMAINS)}", used_emails)
        if index in unreachable:
            email = _spoil(email, spoiled)
            spoiled += 1
        rows.append({
            "id": f"demo-{index + 1:04d}",
            "name": name,
            "email": email,
            "locale": locale_for(country),
            "country": country,
        })
    return rows


def _invoices(
    rng: random.Random, count: int, customer_rows: list[dict[str, str | None]]
) -> list[dict[str, object]]:
    # Numbers follow the issue date, as a real ledger's do.
    issue_dates = sorted(
        FIRST_ISSUE_DATE + timedelta(days=rng.randint(0, ISSUE_SPAN_DAYS)) for _ in range(count)
    )
    without_customer = set(rng.sample(range(count), min(count, max(MIN_ODD_CASES, count // 100))))

    rows = []
    for index, issue_date in enumerate(issue_dates):
        customer = None if index in without_customer else rng.choice(customer_rows)
        country = customer["country"] if customer else "United Kingdom"
        if rng.random() < CREDIT_NOTE_SHARE:
            kind, amount = "credit_note", -_pounds(rng, CREDIT_NOTE_AMOUNT_PENCE)
        else:
            kind, amount = "invoice", _pounds(rng, INVOICE_AMOUNT_PENCE)
        rows.append({
            "number": f"DEMO-{index + 1:06d}",
            "kind": kind,
            "customer_id": customer["id"] if customer else None,
            "country": country,
            "issue_date": issue_date,
            "due_date": issue_date + timedelta(days=rng.choice(PAYMENT_TERMS_DAYS)),
            "amount": amount,
            "currency": _PEOPLE[country][1],
            "status": "paid" if rng.random() < PAID_SHARE else "open",
        })
    return rows


def _pounds(rng: random.Random, pence_range: tuple[int, int]) -> Decimal:
    """An exact amount with two decimal places, drawn in whole pence (or cents)."""
    return Decimal(rng.randint(*pence_range)).scaleb(-2)


def _ascii_slug(text: str, separator: str) -> str:
    """``Ó Briain`` becomes ``obriain`` (or ``o-briain``): the part of an address made of a name."""
    decomposed = unicodedata.normalize("NFKD", text.translate(_ASCII_LETTERS))
    ascii_text = decomposed.encode("ascii", "ignore").decode().lower()
    words = ["".join(ch for ch in word if ch.isalnum()) for word in ascii_text.split()]
    return separator.join(word for word in words if word)


def _unique(email: str, used: set[str]) -> str:
    """The address, numbered when another customer already has it."""
    local, _, domain = email.partition("@")
    candidate, number = email, 1
    while candidate in used:
        number += 1
        candidate = f"{local}{number}@{domain}"
    used.add(candidate)
    return candidate


def _spoil(email: str, nth: int) -> str | None:
    """The ``nth`` of the ways addresses go wrong in a customer file, taken in turn."""
    local, _, domain = email.partition("@")
    ways = (
        None,
        f"{local}@",
        f"{local}.{domain}",
        f"{local}..x@{domain}",
        f"{local}@{domain.split('.')[0]}",
    )
    return ways[nth % len(ways)]


def _is_valid_email(email: str | None) -> bool:
    if not email:
        return False
    try:
        validate_email(email, check_deliverability=False)
    except EmailNotValidError:
        return False
    return True
