"""Exact conversions between Python values and the google.type messages on the wire."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from google.protobuf.timestamp_pb2 import Timestamp
from google.type.date_pb2 import Date
from google.type.money_pb2 import Money

NANOS_PER_UNIT = 1_000_000_000


def money_from_decimal(amount: Decimal, currency: str) -> Money:
    """Splits an exact amount into units and nanos of one sign, as google.type.Money wants."""
    amount = Decimal(amount)
    units = int(amount)  # truncates toward zero, so the nanos keep the sign of the amount
    nanos = int((amount - units) * NANOS_PER_UNIT)
    return Money(currency_code=currency, units=units, nanos=nanos)


def decimal_from_money(money: Money) -> Decimal:
    """Raises ValueError when units and nanos disagree in sign or nanos are out of range."""
    if abs(money.nanos) >= NANOS_PER_UNIT:
        raise ValueError(f"nanos out of range: {money.nanos}")
    if (money.units > 0 and money.nanos < 0) or (money.units < 0 and money.nanos > 0):
        raise ValueError("units and nanos must have the same sign")
    return Decimal(money.units) + Decimal(money.nanos).scaleb(-9)


def date_to_proto(value: dt.date | None) -> Date | None:
    if value is None:
        return None
    return Date(year=value.year, month=value.month, day=value.day)


def date_from_proto(value: Date, field: str) -> dt.date | None:
    """An unset Date (all zero) is None. Raises ValueError naming ``field`` for impossible dates."""
    if value.year == 0 and value.month == 0 and value.day == 0:
        return None
    try:
        return dt.date(value.year, value.month, value.day)
    except ValueError as exc:
        raise ValueError(f"{field}: not a calendar date ({exc})") from exc


def timestamp(value: dt.datetime | None) -> Timestamp | None:
    if value is None:
        return None
    if value.tzinfo is None:
        # SQLite hands timestamps back naive; we only ever store UTC.
        value = value.replace(tzinfo=dt.UTC)
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
