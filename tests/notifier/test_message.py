"""Message bytes: parse back with the stdlib into the headers and parts we meant."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from email import message_from_bytes, policy

import pytest

from heraldo.notifier.message import Envelope, _header_text, compose, message_id_for
from heraldo.notifier.render import Document, Renderer

SENT_AT = dt.datetime(2011, 12, 1, 9, 30, tzinfo=dt.UTC)


def build(**changes) -> bytes:
    values = {"notification_id": "job-1:536365", "invoice_number": "536365",
              "to_name": "José Ñúñez", "to_address": "jose@example.com",
              "sender": "Heraldo Billing <billing@heraldo.invalid>", "reply_to": ""}
    envelope = Envelope(**{**values, **changes})
    document = Document(variant="invoice", invoice_number="536365", customer_name="José Ñúñez",
                        amount=Decimal("1234.50"), currency="GBP",
                        issue_date=dt.date(2011, 12, 1), due_date=dt.date(2011, 12, 31))
    rendered = Renderer(company="Heraldo Billing").render("invoice", "es", document)
    return compose(envelope, rendered, date=SENT_AT)


def test_headers_parse_back_exactly():
    message = message_from_bytes(build(reply_to="Help <help@example.com>"),
                                 policy=policy.default)

    assert message["Message-ID"] == "<job-1=536365@heraldo>"
    assert message["X-Heraldo-Notification-Id"] == "job-1:536365"
    assert message["X-Heraldo-Invoice"] == "536365"
    assert message["Date"].datetime == SENT_AT
    assert message["To"].addresses[0].display_name == "José Ñúñez"
    assert message["To"].addresses[0].addr_spec == "jose@example.com"
    assert message["From"].addresses[0].display_name == "Heraldo Billing"
    assert message["Reply-To"].addresses[0].addr_spec == "help@example.com"
    assert message["Subject"].startswith("Factura 536365: 1234,50")
    assert message.get_content_type() == "multipart/alternative"


def test_both_parts_decode_to_the_rendered_text():
    message = message_from_bytes(build(), policy=policy.default)

    assert "José Ñúñez" in message.get_body(("plain",)).get_content()
    assert "<strong>1234,50\u00a0GBP</strong>" in message.get_body(("html",)).get_content()


def test_bytes_are_7bit_with_crlf_lines_within_the_smtp_limit():
    data = build()

    assert data.isascii()
    assert b"\n" not in data.replace(b"\r\n", b"")
    assert max(len(line) for line in data.split(b"\r\n")) <= 78


def test_header_injection_through_a_name_is_neutralised():
    message = message_from_bytes(build(to_name="Eve\r\nBcc: victim@example.com"),
                                 policy=policy.default)

    assert message["Bcc"] is None
    assert message["To"].addresses[0].addr_spec == "jose@example.com"


def test_no_reply_to_header_unless_configured():
    assert message_from_bytes(build(), policy=policy.default)["Reply-To"] is None


def test_message_ids_are_deterministic_valid_and_distinct():
    assert message_id_for("job-1:42") == message_id_for("job-1:42") == "<job-1=42@heraldo>"
    assert message_id_for("a.b") == "<a.b@heraldo>"
    assert message_id_for(".a..b") == "<~a~~b@heraldo>"
    ids = ["a:b", "a.b", "a..b", ".ab", "ab.", "a-b", "a_b"]
    assert len({message_id_for(i) for i in ids}) == len(ids)


@pytest.mark.parametrize("subject", [
    "Invoice 536365 from Heraldo Billing: £139.12 due 31 December 2011",
    "Factura 536365: 1234,50\u00a0€ de José Ñúñez — " * 5 + "fin",
    "€" * 60,
    "日本語の請求書" * 12,
    "a_b=c?d é",
])
def test_a_non_ascii_subject_is_folded_into_encoded_words_that_decode_exactly(subject):
    encoded = _header_text("Subject", subject)
    lines = f"Subject: {encoded}".split("\r\n")

    assert encoded.isascii()
    assert all(len(line) <= 76 for line in lines)
    # A word cut inside a character's UTF-8 bytes would not decode back to the same text.
    message = message_from_bytes(f"Subject: {encoded}\r\n\r\nbody\r\n".encode(),
                                 policy=policy.default)
    assert message["Subject"] == subject
