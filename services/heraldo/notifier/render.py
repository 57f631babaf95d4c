"""Turns a notification into an email's subject, plain-text and HTML parts, per language.

Templates live in ``templates/<set>/<language>/<variant>.{subject.txt,txt,html}``: the set is the
request's ``template`` (``invoice`` by default), the variant follows the document kind
(``invoice`` or ``credit_note``), and the language is the primary subtag of the recipient's
locale. Amounts come from ``google.type.Money`` as a Decimal and are printed with every digit they
carry; dates come from ``google.type.Date``.

Any of those files can be overridden, or a whole set or language added, from Consul KV: the key
``config/notifier/templates/<set>/<language>/<file>`` holds the template's source. An override is
checked by rendering a sample document with it before it is used.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import jinja2
from google.type import date_pb2, money_pb2

logger = logging.getLogger(__name__)

TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"
VARIANTS = ("invoice", "credit_note")
PARTS = ("subject.txt", "txt", "html")
#: KV keys ``<prefix><set>/<language>/<variant>.<part>`` override or add template files.
OVERRIDE_PREFIX = "config/notifier/templates/"
_OVERRIDE_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}/[a-z]{2,3}/(?:"
                            + "|".join(VARIANTS) + r")\.(?:"
                            + "|".join(re.escape(part) for part in PARTS) + ")")
#: Languages with every variant; anything else falls back to the default locale, then to English.
FALLBACK_LANGUAGE = "en"

#: A subject is one header line; the no-break space inside amounts must survive, so only these go.
_LINE_BREAKS = re.compile(r"[ \t\r\n]+")

NANOS_PER_UNIT = 1_000_000_000
#: The ISO 4217 currencies an invoice can be paid in (the list of 2025, without the codes of
#: precious metals, bond-market units, the IMF's SDR and other units of account, testing and
#: "no currency"): an amount in any other code is refused.
CURRENCIES = frozenset("""
    AED AFN ALL AMD AOA ARS AUD AWG AZN BAM BBD BDT BGN BHD BIF BMD BND BOB BOV BRL BSD BTN BWP
    BYN BZD CAD CDF CHE CHF CHW CLF CLP CNY COP COU CRC CUP CVE CZK DJF DKK DOP DZD EGP ERN ETB
    EUR FJD FKP GBP GEL GHS GIP GMD GNF GTQ GYD HKD HNL HTG HUF IDR ILS INR IQD IRR ISK JMD JOD
    JPY KES KGS KHR KMF KPW KRW KWD KYD KZT LAK LBP LKR LRD LSL LYD MAD MDL MGA MKD MMK MNT MOP
    MRU MUR MVR MWK MXN MXV MYR MZN NAD NGN NIO NOK NPR NZD OMR PAB PEN PGK PHP PKR PLN PYG QAR
    RON RSD RUB RWF SAR SBD SCR SDG SEK SGD SHP SLE SOS SRD SSP STN SVC SYP SZL THB TJS TMT TND
    TOP TRY TTD TWD TZS UAH UGX USD USN UYI UYU UYW UZS VED VES VND VUV WST XAF XCD XCG XOF XPF
    YER ZAR ZMW ZWG
""".split())
#: ISO 4217 minor units where they differ from 2. An amount is refused with more decimals than
#: its currency has (nobody can pay £12.505) and shown with at least this many.
MINOR_UNITS = {
    **dict.fromkeys("BIF CLP DJF GNF ISK JPY KMF KRW PYG RWF UGX UYI VND VUV XAF XOF XPF".split(),
                    0),
    **dict.fromkeys("BHD IQD JOD KWD LYD OMR TND".split(), 3),
    **dict.fromkeys("CLF UYW".split(), 4),
}


class InvalidMoney(ValueError):
    """A ``google.type.Money`` that breaks the type's rules (sign, range, currency code)."""


class InvalidDate(ValueError):
    """A ``google.type.Date`` that is partial or not a day of the calendar."""


@dataclass(frozen=True)
class NumberStyle:
    """How one language writes an amount, after CLDR's conventions for it."""

    decimal: str
    group: str
    #: Spanish leaves 4-digit integers ungrouped (1234,50 but 12.345,67): CLDR's minimum grouping.
    min_grouping_digits: int
    #: ``{amount}`` and ``{symbol}``; a currency without a symbol here is shown by its ISO code.
    pattern: str
    symbols: dict[str, str]
    months: tuple[str, ...]
    date_pattern: str


NBSP = "\u00a0"
STYLES = {
    "en": NumberStyle(
        decimal=".", group=",", min_grouping_digits=1, pattern="{symbol}{amount}",
        symbols={"GBP": "£", "EUR": "€", "USD": "US$", "JPY": "JP¥"},
        months=("January", "February", "March", "April", "May", "June", "July", "August",
                "September", "October", "November", "December"),
        date_pattern="{day} {month} {year}"),
    "es": NumberStyle(
        decimal=",", group=".", min_grouping_digits=2, pattern="{amount}" + NBSP + "{symbol}",
        symbols={"GBP": "GBP", "EUR": "€", "USD": "US$", "JPY": "JPY"},
        months=("enero", "febrero", "marzo", "abril", "mayo", "junio", "julio", "agosto",
                "septiembre", "octubre", "noviembre", "diciembre"),
        date_pattern="{day} de {month} de {year}"),
}


def money_to_decimal(money: money_pb2.Money) -> Decimal:
    """The exact value of ``money``: units plus nanos, never through a float.

    Raises:
        InvalidMoney: not an ISO 4217 currency, nanos out of range, units and nanos of opposite
            sign, or more decimals than the currency has.
    """
    code = money.currency_code
    if code not in CURRENCIES:
        raise InvalidMoney(f"currency_code {code!r} is not an ISO 4217 currency like 'GBP'")
    if not -NANOS_PER_UNIT < money.nanos < NANOS_PER_UNIT:
        raise InvalidMoney(f"nanos must be within ±999,999,999, got {money.nanos}")
    if (money.units > 0 and money.nanos < 0) or (money.units < 0 and money.nanos > 0):
        raise InvalidMoney(f"units {money.units} and nanos {money.nanos} have opposite signs")
    value = Decimal(money.units) + Decimal(money.nanos).scaleb(-9)
    minor = MINOR_UNITS.get(code, 2)
    if value and -value.normalize().as_tuple().exponent > minor:
        raise InvalidMoney(f"{value.normalize():f} {code} has more decimal places than "
                           f"{code} has ({minor})")
    return value


def date_from_proto(date: date_pb2.Date) -> dt.date | None:
    """The calendar day of ``date``; None when the field was left empty (all zero).

    Raises:
        InvalidDate: a partial date (year, month or day missing) or a day that does not exist.
    """
    if not (date.year or date.month or date.day):
        return None
    try:
        return dt.date(date.year, date.month, date.day)
    except ValueError as exc:
        raise InvalidDate(f"{date.year:04d}-{date.month:02d}-{date.day:02d} is not a full, "
                          f"valid date: {exc}") from exc


def _group(digits: str, style: NumberStyle) -> str:
    if len(digits) < 4 + style.min_grouping_digits - 1:
        return digits
    head, tail = digits[:-3], digits[-3:]
    groups = [tail]
    while len(head) > 3:
        head, tail = head[:-3], head[-3:]
        groups.append(tail)
    groups.append(head)
    return style.group.join(reversed(groups))


def format_amount(value: Decimal, currency: str, language: str) -> str:
    """``value`` in ``currency`` as ``language`` writes it, keeping every significant digit.

    An amount shows at least the currency's minor units (1234.5 GBP is ``£1,234.50``) and more
    when it has them (0.005 GBP would stay ``£0.005``): an invoice must never round. Requests
    never carry such an amount: ``money_to_decimal`` refuses it first.
    """
    style = STYLES.get(language, STYLES[FALLBACK_LANGUAGE])
    minor = MINOR_UNITS.get(currency, 2)
    exponent = min(value.normalize().as_tuple().exponent, -minor) if value else -minor
    text = f"{abs(value):.{-exponent}f}" if exponent < 0 else f"{abs(value):.0f}"
    integer, _, fraction = text.partition(".")
    amount = _group(integer, style) + (style.decimal + fraction if fraction else "")
    symbol = style.symbols.get(currency, currency)
    if symbol == currency and style.pattern.startswith("{symbol}"):
        symbol += NBSP
    formatted = style.pattern.format(symbol=symbol, amount=amount)
    return f"-{formatted}" if value < 0 else formatted


def format_date(day: dt.date, language: str) -> str:
    style = STYLES.get(language, STYLES[FALLBACK_LANGUAGE])
    return style.date_pattern.format(day=day.day, month=style.months[day.month - 1],
                                     year=day.year)


@dataclass(frozen=True)
class RenderedEmail:
    subject: str
    text: str
    html: str
    language: str


@dataclass(frozen=True)
class Document:
    """What a template needs, already checked: built by the servicer from a request."""

    variant: str
    invoice_number: str
    customer_name: str
    amount: Decimal
    currency: str
    issue_date: dt.date | None
    due_date: dt.date | None


class UnknownTemplate(LookupError):
    """The requested template set does not exist."""


class InvalidTemplate(ValueError):
    """A template override that cannot be used; the message names its key."""


class IncompleteTemplates(InvalidTemplate):
    """Overrides that add a set or a language but lack some of its files, ``missing`` by name."""

    def __init__(self, message: str, missing: list[str]) -> None:
        super().__init__(message)
        self.missing = missing


class Renderer:
    """Renders documents with the Jinja2 templates of one directory; HTML parts are autoescaped."""

    def __init__(self, *, template_dir: Path = TEMPLATE_DIR, company: str = "",
                 default_locale: str = "en-GB", overrides: Mapping[str, str] | None = None) -> None:
        """``overrides`` maps ``<set>/<language>/<file>`` to template source, over the files.

        Raises:
            InvalidTemplate: an override has a bad name, does not compile or does not render,
                or a set or language that exists only in overrides lacks one of its files.
        """
        self._dir = template_dir
        self._company = company
        self.overrides = dict(overrides or {})
        self._env = jinja2.Environment(
            loader=jinja2.ChoiceLoader([jinja2.DictLoader(self.overrides),
                                        jinja2.FileSystemLoader(str(template_dir))]),
            autoescape=jinja2.select_autoescape(enabled_extensions=("html",),
                                                default_for_string=False, default=False),
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=True,
            # A template changes only with a release or a KV override, and an override builds a
            # new Renderer: no need to look at the files' modification times for every email.
            auto_reload=False,
        )
        # Templates change only with a release, so the sets and languages are listed once here
        # rather than probing the file system for every email.
        self._languages = {
            path.name: frozenset(p.name for p in path.iterdir() if p.is_dir())
            for path in template_dir.iterdir() if path.is_dir() and not path.name.startswith("_")
        }
        self._default_language = language_of(default_locale)
        self._loaded: dict[str, tuple[jinja2.Template, ...]] = {}
        self._check_overrides()

    def _check_overrides(self) -> None:
        added: dict[str, set[str]] = {}
        for name in sorted(self.overrides):
            key = OVERRIDE_PREFIX + name
            if not _OVERRIDE_NAME.fullmatch(name):
                raise InvalidTemplate(f"{key}: expected {OVERRIDE_PREFIX}<set>/<language>/"
                                      f"<variant>.<part> with a variant in {VARIANTS} and a "
                                      f"part in {PARTS}")
            template_set, language, _ = name.split("/")
            if language not in self._languages.get(template_set, ()):
                added.setdefault(template_set, set()).add(language)
        for template_set, languages in added.items():
            for language in languages:
                missing = [f"{template_set}/{language}/{variant}.{part}"
                           for variant in VARIANTS for part in PARTS
                           if f"{template_set}/{language}/{variant}.{part}" not in self.overrides]
                if missing:
                    raise IncompleteTemplates(f"{OVERRIDE_PREFIX}{missing[0]}: a new template "
                                              f"language needs every file; missing "
                                              f"{len(missing)}", missing)
            self._languages[template_set] = self._languages.get(
                template_set, frozenset()) | frozenset(languages)

        sample = Document(variant="invoice", invoice_number="INV0", customer_name="Sample",
                          amount=Decimal("1234.50"), currency="GBP",
                          issue_date=dt.date(2011, 12, 1), due_date=dt.date(2011, 12, 31))
        for name in sorted(self.overrides):
            template_set, language, file_name = name.split("/")
            variant = file_name.split(".")[0]
            try:
                self.render(template_set, language, dataclasses.replace(sample, variant=variant))
            except Exception as exc:  # noqa: BLE001 - an operator's template may raise anything
                raise InvalidTemplate(f"{OVERRIDE_PREFIX}{name}: {type(exc).__name__}: "
                                      f"{exc}") from exc

    @property
    def template_sets(self) -> frozenset[str]:
        return frozenset(self._languages)

    @property
    def set_languages(self) -> frozenset[str]:
        """Every ``<set>/<language>`` it can render."""
        return frozenset(f"{template_set}/{language}"
                         for template_set, languages in self._languages.items()
                         for language in languages)

    def language_for(self, template_set: str, locale: str) -> str:
        """The language the email will be written in: the recipient's, else the default, else en.

        Raises:
            UnknownTemplate: no such template set.
        """
        languages = self._languages.get(template_set)
        if languages is None:
            raise UnknownTemplate(f"unknown template set {template_set!r}; "
                                  f"known: {', '.join(sorted(self._languages))}")
        for language in (language_of(locale), self._default_language, FALLBACK_LANGUAGE):
            if language in languages:
                return language
        return min(languages)

    def render(self, template_set: str, locale: str, document: Document) -> RenderedEmail:
        """Raises UnknownTemplate when ``template_set`` does not exist."""
        language = self.language_for(template_set, locale)
        region = locale.partition("-")[2].upper()
        # A credit note is money owed to the customer: it is shown without a minus sign and the
        # wording never asks for payment.
        shown = abs(document.amount) if document.variant == "credit_note" else document.amount
        context = {
            "company": self._company,
            "invoice_number": document.invoice_number,
            "customer_name": document.customer_name,
            "amount": format_amount(shown, document.currency, language),
            "currency": document.currency,
            "issue_date": _date_text(document.issue_date, language, region),
            "due_date": _date_text(document.due_date, language, region),
            "language": language,
        }
        subject, text, html = self._templates(f"{template_set}/{language}/{document.variant}")
        return RenderedEmail(
            subject=_LINE_BREAKS.sub(" ", subject.render(context)).strip(),
            text=text.render(context),
            html=html.render(context),
            language=language,
        )

    def _templates(self, base: str) -> tuple[jinja2.Template, ...]:
        """The subject, text and HTML templates of ``base``, loaded once per renderer."""
        templates = self._loaded.get(base)
        if templates is None:
            templates = tuple(self._env.get_template(f"{base}.{part}") for part in PARTS)
            for template in templates:
                # Jinja keeps a template's globals as a ChainMap, which every render copies key
                # by key in Python: a third of the cost of a render. They never change here, so
                # a plain dict holds the same for a fraction of that.
                template.globals = dict(template.globals)
            self._loaded[base] = templates
        return templates


@functools.lru_cache(maxsize=4096)
def _date_text(day: dt.date | None, language: str, region: str) -> str:
    if day is None:
        return ""
    if language == "en" and region == "US":
        return f"{STYLES['en'].months[day.month - 1]} {day.day}, {day.year}"
    return format_date(day, language)


def overrides_from_kv(kv: Mapping[str, str]) -> dict[str, str]:
    """The template overrides among KV entries: ``<set>/<language>/<file>`` to source."""
    return {key.removeprefix(OVERRIDE_PREFIX): value for key, value in kv.items()
            if key.startswith(OVERRIDE_PREFIX) and value.strip()}


def language_of(locale: str) -> str:
    """The primary language subtag of a BCP 47 tag: ``es-MX`` gives ``es``; POSIX ``es_MX`` too."""
    return locale.replace("_", "-").partition("-")[0].strip().lower()
