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
Recording in groups (below) widens that window by the time a finished send waits for its group's
transaction, a few milliseconds under load; the result goes back to the caller only after that
transaction, so a caller never hears "sent" for a send the log could still forget.

Two short transactions per email (claim, record) cap a replica near 250-300 emails per second on
PostgreSQL. ``GroupedDeliveryLog`` gathers the claims and the records that arrive while a
transaction is running and writes each gathered group at once. Under no load a group is a single
item and nothing waits; under load the groups grow by themselves.

On PostgreSQL a group is one statement whatever its size: the values travel as arrays and are
spread into rows by ``unnest``, so the statement's text never changes and asyncpg prepares it once.
Each statement commits on its own (autocommit), one round trip per group. The two group writers
send their statements straight through asyncpg, on a connection each (``_DirectConnection``):
SQLAlchemy's execution costs about 300 microseconds of CPU per statement, asyncpg's about 50, and
at a few statements per ten emails that was a tenth of a notifier's CPU. SQLite, the
single-machine default, runs the same steps through SQLAlchemy.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import asyncpg
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from heraldo.db import (
    POSTGRES_SERVER_SETTINGS,
    asyncpg_dsn,
    deliveries,
    describe,
    dialect_insert,
)
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
#: A ``sending`` row of a replica Consul no longer lists as passing is taken over after this
#: long: more than a graceful drain (shutdown_grace_s) plus one SMTP command timeout.
DEFAULT_ORPHAN_AFTER_S = 25.0
#: Compare-and-set rounds before giving up on a row other replicas keep taking over.
MAX_CLAIM_ROUNDS = 3
#: The most claims or records written in one transaction: bounds the wait of a group's last
#: item, and on SQLite a statement's parameters (nine per claimed row, below its 32,766).
MAX_GROUP = 500

#: Connecting, and closing politely, may take this long before the database counts as down.
CONNECT_TIMEOUT_S = 10.0
#: A recorded SMTP reply is cut to this length.
MAX_DETAIL_CHARS = 2000

#: PostgreSQL: a whole claim group in one statement (see the module's docstring).
CLAIM_ARRAYS = """
    INSERT INTO deliveries (notification_id, status, smtp_code, detail, message_id, replica_id,
                            attempts, create_time, update_time)
    SELECT wanted.notification_id, 'sending', 0, '', wanted.message_id, $3, 1, $4, $4
    FROM unnest($1::varchar[], $2::varchar[]) AS wanted (notification_id, message_id)
    ON CONFLICT (notification_id) DO NOTHING
    RETURNING notification_id
"""
#: PostgreSQL: a whole record group in one statement; it returns the attempts it recorded.
RECORD_ARRAYS = """
    UPDATE deliveries
    SET status = final.status, smtp_code = final.smtp_code, detail = final.detail,
        update_time = $7
    FROM unnest($1::varchar[], $2::integer[], $3::varchar[], $4::integer[], $5::text[])
         AS final (notification_id, attempt, status, smtp_code, detail)
    WHERE deliveries.notification_id = final.notification_id
      AND deliveries.attempts = final.attempt
      AND deliveries.replica_id = $6
    RETURNING deliveries.notification_id, deliveries.attempts
"""
#: What asyncpg raises when the connection itself is gone (a restart, a terminated backend); a
#: backend terminated while the connection was idle can also leave it in a state asyncpg refuses.
CONNECTION_LOST = (asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
                   asyncpg.InternalClientError, asyncpg.exceptions.OperatorInterventionError,
                   OSError)


class _DirectConnection:
    """An asyncpg connection of the delivery log's own, for one group writer's statements.

    A group writer sends one statement at a time, so one connection is all it needs; the lock
    only guards against direct callers. It connects on first use. A connection found dead is
    replaced and the statement sent once more, which is safe for the reasons ``DeliveryLog._fetch``
    gives; a failure to connect is not retried.
    """

    def __init__(self, url: sa.engine.URL) -> None:
        self._dsn = asyncpg_dsn(url)
        self._where = describe(url.render_as_string(hide_password=False))
        self._connection: asyncpg.Connection | None = None
        self._lock = asyncio.Lock()

    async def fetch(self, sql: str, *arguments) -> list:
        async with self._lock:
            for attempt in (1, 2):
                reused = self._connection is not None and not self._connection.is_closed()
                try:
                    if not reused:
                        self._connection = await asyncpg.connect(
                            self._dsn, timeout=CONNECT_TIMEOUT_S,
                            server_settings=POSTGRES_SERVER_SETTINGS)
                    return await self._connection.fetch(sql, *arguments)
                except CONNECTION_LOST as exc:
                    await self.close()
                    if attempt == 1 and reused:
                        logger.info("delivery log connection was dead, retrying once on a new one")
                        continue
                    raise self._unavailable(exc) from exc
                except asyncpg.PostgresError as exc:
                    raise self._unavailable(exc) from exc
        raise AssertionError("unreachable")

    def _unavailable(self, exc: Exception) -> Unavailable:
        return Unavailable(f"delivery log in {self._where} failed: {type(exc).__name__}: {exc}")

    async def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None and not connection.is_closed():
            with contextlib.suppress(*CONNECTION_LOST, asyncpg.PostgresError):
                await connection.close(timeout=CONNECT_TIMEOUT_S)
            connection.terminate()


ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")


@dataclass(frozen=True)
class Claim:
    """The answer to a claim: ``claimed`` means send now; otherwise ``existing`` says why not."""

    claimed: bool
    attempt: int = 0
    existing: Record | None = None
    #: Taken over from an attempt still ``sending``, whose process died (now or at an earlier
    #: attempt): that attempt may have delivered the email before it could record it, or may
    #: never have reached the server.
    in_doubt: bool = False


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
    #: An attempt was taken over from a replica that died holding it (see ``Claim.in_doubt``).
    possible_copy: bool = False


@dataclass(frozen=True)
class Final:
    """The final status of one claimed attempt, as ``DeliveryLog.record_many`` stores it."""

    notification_id: str
    attempt: int
    status: str
    smtp_code: int = 0
    detail: str = ""


def _utc(moment: dt.datetime) -> dt.datetime:
    # SQLite hands back naive datetimes; every time written here is UTC.
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


class DeliveryLog:
    """Claims and records deliveries in the ``deliveries`` table (PostgreSQL or SQLite).

    Every method raises Unavailable, naming the database, when it cannot be reached.
    """

    def __init__(self, engine: AsyncEngine, *, replica_id: str,
                 stale_after_s: float = DEFAULT_STALE_AFTER_S,
                 orphan_after_s: float = DEFAULT_ORPHAN_AFTER_S) -> None:
        self._engine = engine
        self._replica_id = replica_id
        self._stale_after = dt.timedelta(seconds=stale_after_s)
        self._orphan_after = dt.timedelta(seconds=orphan_after_s)
        # Replicas Consul reports passing, with their process start; None until known.
        self._live_replicas: dict[str, dt.datetime | None] | None = None
        # Rows this replica claimed before this moment belong to an earlier, crashed process.
        self._started_at = dt.datetime.now(dt.UTC)
        self._postgres = engine.dialect.name == "postgresql"
        self._insert = dialect_insert(engine)
        # The rarer statements (reads, take-overs) are single statements too: no transaction.
        self._autocommit = engine.execution_options(isolation_level="AUTOCOMMIT") \
            if self._postgres else engine
        if self._postgres:
            self._claim_connection = _DirectConnection(engine.url)
            self._record_connection = _DirectConnection(engine.url)

    async def claim(self, notification_id: str, message_id: str) -> Claim:
        """Claims ``notification_id`` for this replica, or says who has it and in what state."""
        [claim] = await self.claim_many([(notification_id, message_id)])
        return claim

    async def claim_many(self, wanted: Sequence[tuple[str, str]]) -> list[Claim]:
        """Claims each ``(notification_id, message_id)``; one answer per item, in order.

        Fresh ids are claimed by one multi-row insert. An id given twice is claimed once: its
        later copies are answered like any request for an id being sent right now.
        """
        now = dt.datetime.now(dt.UTC)
        first: dict[str, str] = {}
        for notification_id, message_id in wanted:
            first.setdefault(notification_id, message_id)
        # Each statement runs in its own short transaction: SQLite in WAL mode fails a read
        # transaction that later tries to write, and PostgreSQL holds no lock across rounds.
        if self._postgres:
            rows = await self._claim_connection.fetch(
                CLAIM_ARRAYS, list(first), list(first.values()), self._replica_id, now)
        else:
            rows = await self._fetch(self._insert(deliveries).values([
                {"notification_id": notification_id, "status": SENDING, "smtp_code": 0,
                 "detail": "", "message_id": message_id, "replica_id": self._replica_id,
                 "attempts": 1, "create_time": now, "update_time": now}
                for notification_id, message_id in first.items()
            ]).on_conflict_do_nothing(index_elements=[deliveries.c.notification_id]).returning(
                deliveries.c.notification_id))
        inserted = {row[0] for row in rows}

        answers = {notification_id: Claim(claimed=True, attempt=1) for notification_id in inserted}
        taken = await self._get_many([i for i in first if i not in inserted])
        for notification_id, record in taken.items():
            answers[notification_id] = await self._claim_taken(record, first[notification_id], now)

        claims = []
        for notification_id, _ in wanted:
            claim = answers.pop(notification_id, None)
            if claim is None:
                # A later copy in the same group: the first copy holds the claim.
                claim = Claim(claimed=False, existing=await self.get(notification_id))
            claims.append(claim)
        return claims

    async def _claim_taken(self, record: Record | None, message_id: str,
                           now: dt.datetime) -> Claim:
        """An id that already has a row: take it over when that is safe, else say who has it."""
        for _ in range(MAX_CLAIM_ROUNDS):
            if record is None:
                # Deleted between our insert and read: only an operator does that; treat as busy.
                return Claim(claimed=False)
            if not self._may_retry(record, now):
                return Claim(claimed=False, existing=record)
            in_doubt = record.status == SENDING or record.possible_copy
            if await self._take_over(record, message_id, in_doubt=in_doubt):
                return Claim(claimed=True, attempt=record.attempts + 1, in_doubt=in_doubt)
            record = await self.get(record.notification_id)
        return Claim(claimed=False, existing=record)

    def set_live_replicas(self, replica_ids: dict[str, dt.datetime | None]) -> None:
        self._live_replicas = dict(replica_ids)

    def _may_retry(self, record: Record, now: dt.datetime) -> bool:
        if record.status == TEMPORARY_FAILURE:
            return True
        if record.status != SENDING:
            return False
        claimed_at = _utc(record.update_time)
        if record.replica_id == self._replica_id and claimed_at < self._started_at:
            return True
        if self._is_orphan(record.replica_id, claimed_at) and \
                now - claimed_at > self._orphan_after:
            return True
        return now - claimed_at > self._stale_after

    def _is_orphan(self, owner: str, claimed_at: dt.datetime) -> bool:
        """The process that made the claim is gone: its replica left Consul's passing set
        (killed, or cut off and failing), or came back as a process started after the claim.

        A draining replica leaves the set too while it finishes its sends, which is why an
        orphan's claim is only taken over once older than ``orphan_after_s`` (longer than a
        drain), not at once.
        """
        if self._live_replicas is None or owner == self._replica_id:
            return False
        if owner not in self._live_replicas:
            return True
        started_at = self._live_replicas[owner]
        return started_at is not None and claimed_at < started_at

    async def _take_over(self, record: Record, message_id: str, *, in_doubt: bool) -> bool:
        """Compare-and-set on ``attempts``: of several replicas taking over, exactly one wins.

        ``in_doubt`` stays on the row for good: a later retry (after a temporary failure) or a
        replay answered from the log still says a first copy may exist.
        """
        update = (
            sa.update(deliveries)
            .where(deliveries.c.notification_id == record.notification_id,
                   deliveries.c.attempts == record.attempts,
                   deliveries.c.status == record.status)
            .values(status=SENDING, smtp_code=0, detail="", message_id=message_id,
                    replica_id=self._replica_id, attempts=record.attempts + 1,
                    update_time=dt.datetime.now(dt.UTC), possible_copy=in_doubt)
            .returning(deliveries.c.notification_id)
        )
        return bool(await self._fetch(update))

    async def record(self, notification_id: str, attempt: int, status: str, *,
                     smtp_code: int = 0, detail: str = "") -> bool:
        """Stores the final status of the attempt this replica claimed.

        Returns False when the claim was lost meanwhile (it went stale and another replica took it
        over); that replica's outcome then stands.
        """
        [recorded] = await self.record_many([
            Final(notification_id, attempt, status, smtp_code, detail)])
        return recorded

    async def record_many(self, finals: Sequence[Final]) -> list[bool]:
        """Stores several final statuses in one transaction; one answer per item, as ``record``."""
        for final in finals:
            if final.status not in FINAL_STATUSES:
                raise ValueError(f"status must be one of {FINAL_STATUSES}, got {final.status!r}")
        now = dt.datetime.now(dt.UTC)
        if self._postgres:
            answers = await self._record_arrays(finals, now)
        else:
            answers = await self._record_each(finals, now)
        for final, recorded in zip(finals, answers, strict=True):
            if not recorded:
                logger.warning("claim lost before recording notification_id=%s attempt=%d "
                               "status=%s", final.notification_id, final.attempt, final.status)
        return answers

    async def _record_arrays(self, finals: Sequence[Final], now: dt.datetime) -> list[bool]:
        rows = await self._record_connection.fetch(
            RECORD_ARRAYS, [final.notification_id for final in finals],
            [final.attempt for final in finals], [final.status for final in finals],
            [final.smtp_code for final in finals],
            [final.detail[:MAX_DETAIL_CHARS] for final in finals], self._replica_id, now)
        updated = {tuple(row) for row in rows}
        return [(final.notification_id, final.attempt) in updated for final in finals]

    async def _record_each(self, finals: Sequence[Final], now: dt.datetime) -> list[bool]:
        answers = []
        async with self._begin() as conn:
            for final in finals:
                update = (
                    sa.update(deliveries)
                    .where(deliveries.c.notification_id == final.notification_id,
                           deliveries.c.attempts == final.attempt,
                           deliveries.c.replica_id == self._replica_id)
                    .values(status=final.status, smtp_code=final.smtp_code,
                            detail=final.detail[:MAX_DETAIL_CHARS], update_time=now)
                )
                answers.append((await conn.execute(update)).rowcount == 1)
        return answers

    async def get(self, notification_id: str) -> Record | None:
        query = sa.select(deliveries).where(deliveries.c.notification_id == notification_id)
        rows = await self._fetch(query)
        if not rows:
            return None
        return Record(**{name: rows[0]._mapping[name] for name in Record.__dataclass_fields__})

    async def _get_many(self, notification_ids: Sequence[str]) -> dict[str, Record | None]:
        if not notification_ids:
            return {}
        query = sa.select(deliveries).where(deliveries.c.notification_id.in_(notification_ids))
        rows = [row._mapping for row in await self._fetch(query)]
        found = {row["notification_id"]: Record(**{name: row[name]
                                                   for name in Record.__dataclass_fields__})
                 for row in rows}
        return {notification_id: found.get(notification_id) for notification_id in notification_ids}

    async def _fetch(self, statement: sa.Executable, parameters: dict | None = None
                     ) -> list[sa.Row]:
        """Runs one statement in its own transaction and returns its rows.

        The notifier's pool lends connections without pinging them first (a round trip per
        group). A connection that turns out dead, PostgreSQL having restarted, is dropped and the
        statement runs once more on a fresh one. Every statement here may run twice: a record
        writes the same values again, and a claim or take-over whose first run did commit, its
        reply lost, finds its own row and answers "being delivered": the notification waits for
        the claim to go stale, it is never sent twice.
        """
        for attempt in (1, 2):
            try:
                async with self._begin() as conn:
                    result = await conn.execute(statement, parameters)
                    return result.all() if result.returns_rows else []
            except Unavailable as exc:
                cause = exc.__cause__
                if attempt == 1 and isinstance(cause, sa.exc.DBAPIError) and \
                        cause.connection_invalidated:
                    logger.info("delivery log connection was dead, retrying once on a new one")
                    continue
                raise
        raise AssertionError("unreachable")

    async def close(self) -> None:
        """Closes the log's own PostgreSQL connections; the engine is the caller's to dispose."""
        if self._postgres:
            await self._claim_connection.close()
            await self._record_connection.close()

    @contextlib.asynccontextmanager
    async def _begin(self) -> AsyncIterator[AsyncConnection]:
        """A short transaction; connection and SQL errors become Unavailable naming the database."""
        try:
            async with self._autocommit.begin() as conn:
                yield conn
        except (OSError, sa.exc.SQLAlchemyError) as exc:
            raise Unavailable(f"delivery log in {describe(str(self._engine.url))} failed: "
                              f"{type(exc).__name__}: {exc}") from exc


class _Grouper(Generic[ItemT, ResultT]):
    """Hands items to ``write`` in groups: those that arrive while a group is being written form
    the next one. One group is written at a time, so a group never waits for a slow one twice.
    """

    def __init__(self, write: Callable[[list[ItemT]], Awaitable[list[ResultT]]], *,
                 max_group: int = MAX_GROUP) -> None:
        self._write = write
        self._max_group = max_group
        self._pending: list[tuple[ItemT, asyncio.Future[ResultT]]] = []
        self._flusher: asyncio.Task | None = None

    async def submit(self, item: ItemT) -> ResultT:
        future: asyncio.Future[ResultT] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        while self._pending:
            group = self._pending[:self._max_group]
            del self._pending[:self._max_group]
            try:
                results = await self._write([item for item, _ in group])
            except BaseException as exc:
                for _, future in group:
                    if not future.done():
                        future.set_exception(exc)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                continue
            for (_, future), result in zip(group, results, strict=True):
                if not future.done():
                    future.set_result(result)


class GroupedDeliveryLog:
    """``DeliveryLog.claim`` and ``record`` for many concurrent callers, written in groups.

    Each caller still gets its own answer, with the semantics of the single-item methods; only the
    number of transactions changes. Raises Unavailable as ``DeliveryLog`` does, to every caller of
    the group that failed.
    """

    def __init__(self, log: DeliveryLog, *, max_group: int = MAX_GROUP) -> None:
        self.log = log
        self._claims: _Grouper[tuple[str, str], Claim] = _Grouper(log.claim_many,
                                                                   max_group=max_group)
        self._records: _Grouper[Final, bool] = _Grouper(log.record_many, max_group=max_group)

    async def claim(self, notification_id: str, message_id: str) -> Claim:
        return await self._claims.submit((notification_id, message_id))

    async def record(self, notification_id: str, attempt: int, status: str, *,
                     smtp_code: int = 0, detail: str = "") -> bool:
        return await self._records.submit(Final(notification_id, attempt, status, smtp_code,
                                                detail))
