"""The chunk processor: invoice rows become notification requests, or are skipped with a reason."""

from __future__ import annotations

from dataclasses import dataclass

from heraldo.addresses import sendable_address
from heraldo.batch.params import KIND_VALUES
from heraldo.batch.repository import InvoiceRow, Outcome
from heraldo.convert import date_to_proto, money_from_decimal
from heraldo.v1 import notification_pb2

NO_CUSTOMER = "no customer"
NO_ADDRESS = "no email address"
INVALID_ADDRESS = "invalid email address"
NOT_POSITIVE = "zero or negative amount"


@dataclass(frozen=True)
class Processed:
    requests: list[tuple[InvoiceRow, notification_pb2.NotificationRequest]]
    skipped: list[Outcome]


def notification_id(instance_id: str, invoice_number: str) -> str:
    """Stable per job instance and invoice: every retry and restart sends the same id."""
    return f"{instance_id}.{invoice_number}"


def address_problem(address: str | None) -> str:
    if not address:
        return NO_ADDRESS
    sendable, _problem = sendable_address(address)
    return "" if sendable else INVALID_ADDRESS


def process_chunk(rows: list[InvoiceRow], *, instance_id: str, job_id: str,
                  template: str) -> Processed:
    requests, skipped = [], []
    for row in rows:
        nid = notification_id(instance_id, row.number)
        reason = ""
        if row.customer_id is None:
            reason = NO_CUSTOMER
        elif problem := address_problem(row.email):
            reason = problem
        elif row.amount == 0 or (row.kind == "invoice" and row.amount < 0):
            reason = NOT_POSITIVE
        if reason:
            skipped.append(Outcome(row.id, nid, "skipped", reason))
            continue
        requests.append((row, notification_pb2.NotificationRequest(
            notification_id=nid, job_id=job_id, invoice_number=row.number,
            kind=KIND_VALUES[row.kind],
            recipient=notification_pb2.Recipient(
                customer_id=row.customer_id, name=row.customer_name or "",
                email=row.email, locale=row.locale or ""),
            # A credit note tells the customer what is owed to them: always shown as positive.
            amount=money_from_decimal(abs(row.amount), row.currency),
            issue_date=date_to_proto(row.issue_date), due_date=date_to_proto(row.due_date),
            template=template)))
    return Processed(requests=requests, skipped=skipped)
