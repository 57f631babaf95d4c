"""The delivery log: claims a notification id before its email is sent, so it is sent only once.

Each notification id owns one row of ``deliveries``. A replica claims the id with an insert that
cannot race (``INSERT ... ON CONFLICT DO NOTHING``: of two replicas claiming at once, exactly one
inserts), sends, then records the final status. A later request for the same id finds the row:

    sent                  DUPLICATE, with the original Message-ID and replica; nothing is sent
    permanent_failure     the recorded failure is returned again; resending would fail the same way
    temporary_failure     re-attempted: the row is taken over with a compare-and-set on ``attempts``
    sending, recent       another stream is sending it now: a temporary failure, try again later
    sending, stale        left by a crash (older than ``stale_after_s``, or claimed by this very
                          replica before it restarted): re-attempted like a temporary failure

One crash window remains and cannot be closed from this side: if the process dies after the SMTP
server accepted the message but before ``sent`` is recorded, the row stays ``sending``, goes stale
and the email is sent again. The resend carries the same Message-ID (derived from the
notification id), so receivers and mail clients that deduplicate by Message-ID recognise it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from heraldo.db import deliveries, describe
from heraldo.errors import Unavailable

logger = logging.getLogger(__name__)

SENDING = "sending"
SENT = "sent"
TEMPORARY_FAILURE = "temporary_failure"
PERMANENT_FAILURE = "permanent_failure"
FINAL_STATUSES = (SENT, TEMPORARY_FAILURE, PERMANENT_FAILURE)

#: A ``sending`` row older than this was left by a crash. It must exceed the longest send: the
#: wait for a pooled connection plus five SMTP commands at their timeout each.
DEFAULT_STALE_AFTER_S = 300.0
#: Compare-and-set rounds before giving up on a row other replicas keep taking over.
MAX_CLAIM_ROUNDS = 3


@dataclass(frozen=True)
class Claim:
    """The answer to a claim: ``claimed`` means send now; otherwise ``existing`` says why not."""

    claimed: bool
    attempt: int = 0
    existing: Record | None = None


@dataclass(frozen=True)
class Record:
    notification_id: str
    status: str
    smtp_code: int
    detail: str
    message_id: str
    replica_id: str
    attempts: int
    update_time: dt.datetime


def _utc(moment: dt.datetime) -> dt.datetime:
    # SQLite hands back naive datetimes; every time written here is UTC.
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


class DeliveryLog:
    """Claims and records deliveries in the ``deliveries`` table (PostgreSQL or SQLite).

    Every method raises Unavailable, naming the database, when it cannot be reached.
    """

    def __init__(self, engine: AsyncEngine, *, replica_id: str,
                 stale_after_s: float = DEFAULT_STALE_AFTER_S) -> None:
        self._engine = engine
        self._replica_id = replica_id
        self._stale_after = dt.timedelta(seconds=stale_after_s)
        # Rows this replica claimed before this moment belong to an earlier, crashed process.
        self._started_at = dt.datetime.now(dt.UTC)
        dialect = postgresql if engine.dialect.name == "postgresql" else sqlite
        self._insert = dialect.insert

    async def claim(self, notification_id: str, message_id: str) -> Claim:
        """Claims ``notification_id`` for this replica, or says who has it and in what state."""
        now = dt.datetime.now(dt.UTC)
        insert = self._insert(deliveries).values(
            notification_id=notification_id, status=SENDING, smtp_code=0, detail="",
            message_id=message_id, replica_id=self._replica_id, attempts=1,
            create_time=now, update_time=now,
        ).on_conflict_do_nothing(index_elements=[deliveries.c.notification_id])
        # Each statement runs in its own short transaction: SQLite in WAL mode fails a read
        # transaction that later tries to write, and PostgreSQL holds no lock across rounds.
        async with self._begin() as conn:
            if (await conn.execute(insert)).rowcount == 1:
                return Claim(claimed=True, attempt=1)

        for _ in range(MAX_CLAIM_ROUNDS):
            record = await self.get(notification_id)
            if record is None:
                # Deleted between our insert and read: only an operator does that; treat as busy.
                break
            if not self._may_retry(record, now):
                return Claim(claimed=False, existing=record)
            if await self._take_over(record, message_id):
                return Claim(claimed=True, attempt=record.attempts + 1)
        return Claim(claimed=False, existing=await self.get(notification_id))

    def _may_retry(self, record: Record, now: dt.datetime) -> bool:
        if record.status == TEMPORARY_FAILURE:
            return True
        if record.status != SENDING:
            return False
        claimed_at = _utc(record.update_time)
        if record.replica_id == self._replica_id and claimed_at < self._started_at:
            return True
        return now - claimed_at > self._stale_after

    async def _take_over(self, record: Record, message_id: str) -> bool:
        """Compare-and-set on ``attempts``: of several replicas taking over, exactly one wins."""
        update = (
            sa.update(deliveries)
            .where(deliveries.c.notification_id == record.notification_id,
                   deliveries.c.attempts == record.attempts,
                   deliveries.c.status == record.status)
            .values(status=SENDING, smtp_code=0, detail="", message_id=message_id,
                    replica_id=self._replica_id, attempts=record.attempts + 1,
                    update_time=dt.datetime.now(dt.UTC))
        )
        async with self._begin() as conn:
            return (await conn.execute(update)).rowcount == 1

    async def record(self, notification_id: str, attempt: int, status: str, *,
                     smtp_code: int = 0, detail: str = "") -> bool:
        """Stores the final status of the attempt this replica claimed.

        Returns False when the claim was lost meanwhile (it went stale and another replica took it
        over); that replica's outcome then stands.
        """
        if status not in FINAL_STATUSES:
            raise ValueError(f"status must be one of {FINAL_STATUSES}, got {status!r}")
        update = (
            sa.update(deliveries)
            .where(deliveries.c.notification_id == notification_id,
                   deliveries.c.attempts == attempt,
                   deliveries.c.replica_id == self._replica_id)
            .values(status=status, smtp_code=smtp_code, detail=detail[:2000],
                    update_time=dt.datetime.now(dt.UTC))
        )
        async with self._begin() as conn:
            recorded = (await conn.execute(update)).rowcount == 1
        if not recorded:
            logger.warning("claim lost before recording notification_id=%s attempt=%d status=%s",
                           notification_id, attempt, status)
        return recorded

    async def get(self, notification_id: str) -> Record | None:
        query = sa.select(deliveries).where(deliveries.c.notification_id == notification_id)
        async with self._begin() as conn:
            row = (await conn.execute(query)).mappings().first()
        if row is None:
            return None
        return Record(**{name: row[name] for name in Record.__dataclass_fields__})

    @contextlib.asynccontextmanager
    async def _begin(self) -> AsyncIterator[AsyncConnection]:
        """A short transaction; connection and SQL errors become Unavailable naming the database."""
        try:
            async with self._engine.begin() as conn:
                yield conn
        except (OSError, sa.exc.SQLAlchemyError) as exc:
            raise Unavailable(f"delivery log in {describe(str(self._engine.url))} failed: "
                              f"{type(exc).__name__}: {exc}") from exc
