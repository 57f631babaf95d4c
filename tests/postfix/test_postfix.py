"""Notifications delivered through a real Postfix and read back from its maildir."""

from __future__ import annotations

import asyncio
import time

from heraldo.v1 import notification_pb2 as pb
from tests.notifier.conftest import make_request

from .conftest import Postfix

DELIVERY_TIMEOUT_S = 30.0


async def wait_delivered(postfix: Postfix, ids: set[str]) -> dict:
    deadline = time.monotonic() + DELIVERY_TIMEOUT_S
    while True:
        found = {m["X-Heraldo-Notification-Id"]: m for m in postfix.delivered()}
        if ids <= set(found):
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"not delivered: {sorted(ids - set(found))}\n{postfix.log}")
        await asyncio.sleep(0.1)


def count_of(postfix: Postfix, notification_id: str) -> int:
    return [m["X-Heraldo-Notification-Id"] for m in postfix.delivered()].count(notification_id)


async def test_invoices_arrive_through_postfix_with_headers_parts_and_amounts(
        notifiers, postfix):
    notifier = await notifiers.start(smtp_port=postfix.port,
                                     reply_to="Accounts <ar@heraldo.example>")
    requests = [
        make_request("pf-en", email="jane@heraldo.example", name="Jane Doe", units=1234,
                     nanos=500_000_000),
        make_request("pf-es", email="jose@heraldo.example", name="José Ñúñez", locale="es-ES",
                     units=98765, nanos=430_000_000, currency="EUR"),
        make_request("pf-cn", email="jane@heraldo.example", name="Jane Doe", units=-42,
                     nanos=-100_000_000, kind=pb.DOCUMENT_KIND_CREDIT_NOTE),
    ]

    results = await notifier.deliver(requests)
    assert {r.status for r in results} == {pb.DELIVERY_STATUS_SENT}, results
    mail = await wait_delivered(postfix, {r.notification_id for r in requests})

    assert {r.smtp_code for r in results} == {250}

    english = mail["job-1:pf-en"]
    assert english["Delivered-To"] == "jane@heraldo.example"
    assert english["Message-ID"] == "<job-1=pf-en@heraldo>"
    assert english["X-Heraldo-Invoice"] == "INVpf-en"
    assert english["From"].addresses[0].addr_spec == "billing@heraldo.invalid"
    assert english["Reply-To"].addresses[0].addr_spec == "ar@heraldo.example"
    assert english["To"].addresses[0].display_name == "Jane Doe"
    assert english["Date"].datetime is not None
    assert "£1,234.50" in english["Subject"]
    assert "£1,234.50" in english.get_body(("plain",)).get_content()
    assert "£1,234.50" in english.get_body(("html",)).get_content()

    spanish = mail["job-1:pf-es"]
    assert spanish["Delivered-To"] == "jose@heraldo.example"
    assert spanish["To"].addresses[0].display_name == "José Ñúñez"
    assert spanish["Content-Language"] == "es"
    assert spanish["Subject"].startswith("Factura INVpf-es: 98.765,43\u00a0€")
    plain = spanish.get_body(("plain",)).get_content()
    html = spanish.get_body(("html",)).get_content()
    assert "98.765,43\u00a0€" in plain and "31 de diciembre de 2011" in plain
    assert "José Ñúñez" in html and "98.765,43\u00a0€" in html
    # The name travels as an RFC 2047 encoded word: the raw header is 7-bit.
    assert spanish.get("To").isascii() is False and "=?utf-8?" in str(
        spanish.as_bytes()).lower()

    credit = mail["job-1:pf-cn"]
    assert "£42.10" in credit.get_body(("plain",)).get_content()
    assert "-£42.10" not in credit.get_body(("plain",)).get_content()


async def test_a_replayed_notification_sends_nothing_more_through_postfix(notifiers, postfix):
    notifier = await notifiers.start(smtp_port=postfix.port)
    request = make_request("pf-replay", email="replay@heraldo.example")
    [first] = await notifier.deliver([request])
    await wait_delivered(postfix, {"job-1:pf-replay"})
    # The maildir is shared by the module's tests, which run once per delivery-log database.
    copies_before = count_of(postfix, "job-1:pf-replay")

    [again] = await notifier.deliver([request])
    # Anything accepted is in the maildir within this time; a second copy would show by then.
    await asyncio.sleep(1.0)

    assert (first.status, again.status) == (pb.DELIVERY_STATUS_SENT, pb.DELIVERY_STATUS_DUPLICATE)
    assert again.message_id == first.message_id
    assert count_of(postfix, "job-1:pf-replay") == copies_before
