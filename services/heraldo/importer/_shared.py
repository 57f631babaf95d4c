"""What both loaders share: the locale table and the insert that skips rows already present."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from heraldo.db import dialect_insert

#: The locale of a customer whose country is not in the table below: the retailer is
#: British and writes in British English by default.
DEFAULT_LOCALE = "en-GB"

#: Country (as spelled in the Online Retail data) to the BCP 47 tag the notifier picks
#: templates and number formats by. Only countries with one clear language are listed:
#: multilingual ones (Belgium, Switzerland, Canada, ...) get the default, not a guess.
LOCALE_BY_COUNTRY = {
    "United Kingdom": "en-GB",
    "Channel Islands": "en-GB",
    "EIRE": "en-IE",
    "Australia": "en-AU",
    "USA": "en-US",
    "RSA": "en-ZA",
    "Spain": "es-ES",
    "France": "fr-FR",
    "Germany": "de-DE",
    "Austria": "de-AT",
    "Italy": "it-IT",
    "Portugal": "pt-PT",
    "Brazil": "pt-BR",
    "Netherlands": "nl-NL",
    "Poland": "pl-PL",
    "Denmark": "da-DK",
    "Sweden": "sv-SE",
    "Norway": "nb-NO",
    "Finland": "fi-FI",
    "Greece": "el-GR",
    "Czech Republic": "cs-CZ",
    "Lithuania": "lt-LT",
    "Iceland": "is-IS",
    "Japan": "ja-JP",
}

#: Keys per ``IN (...)`` lookup: far below SQLite's bound-parameter limit.
LOOKUP_BATCH_SIZE = 500


def locale_for(country: str | None) -> str:
    return LOCALE_BY_COUNTRY.get(country or "", DEFAULT_LOCALE)


async def insert_new_rows(
    conn: AsyncConnection, table: sa.Table, key: str, rows: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Inserts, in order, the rows whose ``key`` is new to ``table``; returns them.

    Rows already present are left as they are (a later change, such as an invoice marked
    paid, survives a reload). Looking the keys up first, rather than relying on ON
    CONFLICT alone, keeps PostgreSQL from drawing a sequence value for every row that
    turns out to exist already.
    """
    key_column = table.c[key]
    statement = dialect_insert(conn)(table).on_conflict_do_nothing(index_elements=[key_column])
    inserted: list[dict[str, Any]] = []
    for start in range(0, len(rows), LOOKUP_BATCH_SIZE):
        batch = rows[start:start + LOOKUP_BATCH_SIZE]
        keys = [row[key] for row in batch]
        found = await conn.execute(sa.select(key_column).where(key_column.in_(keys)))
        existing = set(found.scalars())
        fresh = [row for row in batch if row[key] not in existing]
        if fresh:
            await conn.execute(statement, fresh)
            inserted.extend(fresh)
    return inserted
