"""Rendering: templates per language and document kind, exact amounts, dates, escaping."""

from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal

import pytest
from google.type import date_pb2, money_pb2

from heraldo.notifier.render import (
    Document,
    InvalidDate,
    InvalidMoney,
    InvalidTemplate,
    Renderer,
    UnknownTemplate,
    date_from_proto,
    format_amount,
    money_to_decimal,
)


def invoice(**changes) -> Document:
    values = {"variant": "invoice", "invoice_number": "536365", "customer_name": "Jane Doe",
              "amount": Decimal("1234.50"), "currency": "GBP",
              "issue_date": dt.date(2011, 12, 1), "due_date": dt.date(2011, 12, 31)}
    return Document(**{**values, **changes})


@pytest.fixture
def renderer() -> Renderer:
    return Renderer(company="Heraldo Billing", default_locale="en-GB")


def test_money_converts_exactly_from_units_and_nanos():
    assert money_to_decimal(money_pb2.Money(currency_code="GBP", units=1234,
                                            nanos=500_000_000)) == Decimal("1234.5")
    assert money_to_decimal(money_pb2.Money(currency_code="GBP", units=0,
                                            nanos=10_000_000)) == Decimal("0.01")
    assert money_to_decimal(money_pb2.Money(currency_code="EUR", units=-1,
                                            nanos=-750_000_000)) == Decimal("-1.75")
    # A float would make this 0.30000000000000004-ish; the Decimal stays exact.
    assert money_to_decimal(money_pb2.Money(currency_code="GBP", units=0,
                                            nanos=300_000_000)) == Decimal("0.3")


@pytest.mark.parametrize("money", [
    money_pb2.Money(currency_code="GBP", units=1, nanos=-1),
    money_pb2.Money(currency_code="GBP", units=0, nanos=1_000_000_000),
    money_pb2.Money(currency_code="gbp", units=1),
    money_pb2.Money(units=1),
])
def test_bad_money_is_refused(money):
    with pytest.raises(InvalidMoney):
        money_to_decimal(money)


@pytest.mark.parametrize(("money", "problem"), [
    (money_pb2.Money(currency_code="GBP", units=12, nanos=505_000_000),
     "12.505 GBP has more decimal places than GBP has (2)"),
    (money_pb2.Money(currency_code="GBP", units=12, nanos=1),
     "12.000000001 GBP has more decimal places than GBP has (2)"),
    (money_pb2.Money(currency_code="JPY", units=1200, nanos=500_000_000),
     "1200.5 JPY has more decimal places than JPY has (0)"),
    (money_pb2.Money(currency_code="ZZZ", units=12),
     "currency_code 'ZZZ' is not an ISO 4217 currency"),
])
def test_an_amount_nobody_could_pay_is_refused_with_the_reason(money, problem):
    with pytest.raises(InvalidMoney, match=re.escape(problem)):
        money_to_decimal(money)


@pytest.mark.parametrize(("money", "value"), [
    (money_pb2.Money(currency_code="JPY", units=1200), Decimal("1200")),
    (money_pb2.Money(currency_code="KWD", units=1, nanos=5_000_000), Decimal("1.005")),
    (money_pb2.Money(currency_code="GBP", units=-3, nanos=-10_000_000), Decimal("-3.01")),
])
def test_amounts_within_their_currencys_decimals_are_kept(money, value):
    assert money_to_decimal(money) == value


def test_dates_come_from_google_type_date():
    assert date_from_proto(date_pb2.Date(year=2011, month=12, day=31)) == dt.date(2011, 12, 31)
    assert date_from_proto(date_pb2.Date()) is None
    with pytest.raises(InvalidDate):
        date_from_proto(date_pb2.Date(year=2011, month=2, day=30))
    with pytest.raises(InvalidDate):
        date_from_proto(date_pb2.Date(year=2011, month=12))


@pytest.mark.parametrize(("amount", "currency", "language", "expected"), [
    ("1234.50", "GBP", "en", "£1,234.50"),
    ("1234.5", "GBP", "es", "1234,50\u00a0GBP"),
    ("12345.67", "EUR", "es", "12.345,67\u00a0€"),
    ("1234567.8", "EUR", "en", "€1,234,567.80"),
    ("0.005", "GBP", "en", "£0.005"),
    ("1234", "JPY", "en", "JP¥1,234"),
    ("99", "AUD", "en", "AUD\u00a099.00"),
    ("-5.5", "GBP", "en", "-£5.50"),
])
def test_amounts_keep_every_digit_in_the_language_s_style(amount, currency, language, expected):
    assert format_amount(Decimal(amount), currency, language) == expected


def test_english_invoice_states_amount_and_due_date(renderer):
    email = renderer.render("invoice", "en-GB", invoice())

    assert email.subject == "Invoice 536365: £1,234.50 due 31 December 2011"
    assert "Dear Jane Doe," in email.text
    assert "Amount due: £1,234.50" in email.text
    assert "<strong>£1,234.50</strong>" in email.html
    assert email.language == "en"


@pytest.mark.parametrize(("locale", "with_due_date", "without_due_date"), [
    ("en-GB", "by the due date", "at your earliest convenience"),
    ("es-ES", "antes de la fecha de vencimiento", "a la mayor brevedad"),
])
def test_an_invoice_without_a_due_date_does_not_mention_one(renderer, locale, with_due_date,
                                                            without_due_date):
    dated = renderer.render("invoice", locale, invoice())
    undated = renderer.render("invoice", locale, invoice(due_date=None))

    for body in (dated.text, dated.html):
        assert with_due_date in body
    for body in (undated.text, undated.html):
        assert with_due_date not in body
        assert without_due_date in body
    # The phrase ends where a word does: a block tag at a line's end must not glue the next on.
    for phrase, body in ((with_due_date, dated.text), (without_due_date, undated.text)):
        assert re.search(re.escape(phrase) + r"\W", body), body


def test_spanish_invoice_uses_spanish_words_numbers_and_dates(renderer):
    email = renderer.render("invoice", "es-ES", invoice(amount=Decimal("12345.6")))

    assert email.subject == "Factura 536365: 12.345,60\u00a0GBP, vence el 31 de diciembre de 2011"
    assert "Estimado/a Jane Doe:" in email.text
    assert "1 de diciembre de 2011" in email.text
    assert '<html lang="es">' in email.html


def test_credit_note_never_asks_for_payment(renderer):
    english = renderer.render("invoice", "en", invoice(variant="credit_note",
                                                       amount=Decimal("-27.50")))
    spanish = renderer.render("invoice", "es", invoice(variant="credit_note",
                                                       amount=Decimal("-27.50")))

    assert english.subject == "Credit note 536365: £27.50 credited to your account"
    assert "Amount credited: £27.50" in english.text
    assert "pay" not in english.text.lower() and "due" not in english.text.lower()
    assert spanish.subject.startswith("Nota de crédito 536365: 27,50\u00a0GBP")
    assert "vencimiento" not in spanish.text


def test_non_ascii_names_are_kept_and_html_is_escaped(renderer):
    email = renderer.render("invoice", "es", invoice(customer_name="José Ñúñez <b>&</b>"))

    assert "Estimado/a José Ñúñez <b>&</b>:" in email.text
    assert "José Ñúñez &lt;b&gt;&amp;&lt;/b&gt;" in email.html
    assert "<b>&</b>" not in email.html


def test_unknown_language_falls_back_to_the_default_locale(renderer):
    assert renderer.render("invoice", "fr-FR", invoice()).language == "en"
    assert Renderer(default_locale="es-ES").render("invoice", "de", invoice()).language == "es"
    assert renderer.render("invoice", "es_MX", invoice()).language == "es"


def test_us_english_writes_the_month_first(renderer):
    assert "due December 31, 2011" in renderer.render("invoice", "en-US", invoice()).subject


def test_unknown_template_set_is_refused(renderer):
    with pytest.raises(UnknownTemplate):
        renderer.render("reminder", "en", invoice())


def test_an_override_can_use_jinja_globals_and_replaces_only_its_file():
    source = "{% for n in range(2) %}{{ n }}{% endfor %} {{ invoice_number }}"
    renderer = Renderer(company="Heraldo Billing", overrides={"invoice/en/invoice.txt": source})

    first = renderer.render("invoice", "en-GB", invoice())
    again = renderer.render("invoice", "en-GB", invoice(invoice_number="581587"))

    assert first.text == "01 536365" and again.text == "01 581587"
    assert "536365" in first.subject and "581587" in again.html


@pytest.mark.parametrize(("source", "problem"), [
    ("Invoice {{ invoice_number ", "TemplateSyntaxError"),
    ("Invoice {{ no_such_value }}", "UndefinedError"),
    ("Invoice {{ 1/0 }}", "ZeroDivisionError"),
    ("Invoice {{ invoice_number | no_such_filter }}", "TemplateAssertionError"),
])
def test_an_override_that_cannot_render_is_refused_naming_its_key(source, problem):
    with pytest.raises(InvalidTemplate) as refused:
        Renderer(overrides={"invoice/en/invoice.subject.txt": source})

    assert str(refused.value).startswith(
        f"config/notifier/templates/invoice/en/invoice.subject.txt: {problem}")
