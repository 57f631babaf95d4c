"""The baseline: what a developer writes without Heraldo, as one plain Python process.

It reads the same open invoices from PostgreSQL in pages of the same size the batch service uses,
skips the ones Heraldo skips (no customer, no usable address, nothing to pay), renders each email
from Heraldo's templates, so both send the same text, and hands it to ``smtplib`` over one
connection kept open for the whole run. It records nothing in the database, retries nothing and
survives no restart: its speed is the bar, not its features.

The message is built the way the standard library teaches: an ``email.message.EmailMessage``
with a plain and an HTML alternative, sent with ``send_message``. ``--builder heraldo`` swaps in
Heraldo's own message builder, which assembles the same MIME layout directly and is many times
cheaper: the "lean" baseline, a harder bar that a developer would only have by borrowing it.

``python -m heraldo.bench.baseline DATABASE_URL SMTP_PORT`` prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import smtplib
import sys
import time
from email.message import EmailMessage
from email.utils import formataddr, formatdate, make_msgid, parseaddr

import asyncpg
from email_validator import EmailNotValidError, validate_email

from heraldo.notifier.message import Envelope, compose
from heraldo.notifier.render import Document, RenderedEmail, Renderer

logger = logging.getLogger(__name__)

PAGE_SIZE = 200
BUILDERS = ("stdlib", "heraldo")
SENDER = "Heraldo Billing <billing@heraldo.invalid>"
DEFAULT_LOCALE = "en-GB"

# The batch service's selection: open invoices, in id order, with their customer.
PAGE_QUERY = """
    SELECT i.id, i.number, i.issue_date, i.due_date, i.amount, i.currency,
           c.id AS customer_id, c.name, c.email, c.locale
    FROM invoices i LEFT JOIN customers c ON c.id = i.customer_id
    WHERE i.id > $1 AND i.status = 'open' AND i.kind = 'invoice'
    ORDER BY i.id LIMIT $2
"""


def usable_address(address: str | None) -> str | None:
    if not address:
        return None
    try:
        return validate_email(address, check_deliverability=False,
                              allow_smtputf8=False).ascii_email
    except EmailNotValidError:
        return None


def stdlib_message(*, sender: str, to_name: str, to_address: str,
                   rendered: RenderedEmail) -> EmailMessage:
    """The email as the standard library's documentation builds one."""
    message = EmailMessage()
    message["From"] = sender
    message["To"] = formataddr((to_name, to_address))
    message["Subject"] = rendered.subject
    message["Date"] = formatdate()
    message["Message-ID"] = make_msgid(domain="heraldo")
    message["Content-Language"] = rendered.language
    message.set_content(rendered.text)
    message.add_alternative(rendered.html, subtype="html")
    return message


async def run(database_url: str, smtp_port: int, *, page_size: int = PAGE_SIZE,
              sender: str = SENDER, builder: str = "stdlib", limit: int | None = None) -> dict:
    """Sends every notifiable invoice once, or the first ``limit``; returns counts and latencies.
    """
    renderer = Renderer(company=parseaddr(sender)[0], default_locale=DEFAULT_LOCALE)
    sender_address = parseaddr(sender)[1]
    started = time.perf_counter()
    conn = await asyncpg.connect(database_url)
    smtp = smtplib.SMTP("127.0.0.1", smtp_port)
    sent = skipped = 0
    latencies_s: list[float] = []
    first_email_s = None
    try:
        after_id = 0
        while limit is None or sent < limit:
            page_read_at = time.perf_counter()
            rows = await conn.fetch(PAGE_QUERY, after_id, page_size)
            if not rows:
                break
            after_id = rows[-1]["id"]
            for row in rows:
                address = usable_address(row["email"])
                if row["customer_id"] is None or address is None or row["amount"] <= 0:
                    skipped += 1
                    continue
                document = Document(variant="invoice", invoice_number=row["number"],
                                    customer_name=row["name"] or "", amount=row["amount"],
                                    currency=row["currency"], issue_date=row["issue_date"],
                                    due_date=row["due_date"])
                rendered = renderer.render("invoice", row["locale"] or DEFAULT_LOCALE, document)
                if builder == "stdlib":
                    smtp.send_message(stdlib_message(sender=sender, to_name=row["name"] or "",
                                                     to_address=address, rendered=rendered))
                else:
                    message = compose(Envelope(
                        notification_id=f"baseline.{row['number']}", invoice_number=row["number"],
                        to_name=row["name"] or "", to_address=address, sender=sender), rendered)
                    smtp.sendmail(sender_address, [address], message)
                sent += 1
                done = time.perf_counter()
                latencies_s.append(done - page_read_at)
                if first_email_s is None:
                    first_email_s = done - started
                if sent == limit:
                    break
    finally:
        smtp.quit()
        await conn.close()
    return {"sent": sent, "skipped": skipped, "elapsed_s": time.perf_counter() - started,
            "first_email_s": first_email_s, "latencies_s": latencies_s}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m heraldo.bench.baseline", description=__doc__)
    parser.add_argument("database_url", help="plain postgresql:// URL")
    parser.add_argument("smtp_port", type=int, help="SMTP server port on 127.0.0.1")
    parser.add_argument("--page-size", type=int, default=PAGE_SIZE)
    parser.add_argument("--builder", choices=BUILDERS, default="stdlib",
                        help="how each message is built: email.message (stdlib) or Heraldo's")
    parser.add_argument("--limit", type=int, help="stop after sending this many")
    args = parser.parse_args(argv)
    result = asyncio.run(run(args.database_url, args.smtp_port, page_size=args.page_size,
                             builder=args.builder, limit=args.limit))
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
