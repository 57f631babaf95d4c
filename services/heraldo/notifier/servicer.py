"""NotifierService: checks each notification, claims it, renders it, mails it and reports back."""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from email.utils import parseaddr

import grpc
from google.protobuf import timestamp_pb2
from prometheus_client import Counter, Gauge
from sqlalchemy.ext.asyncio import AsyncEngine

from heraldo.addresses import sendable_address
from heraldo.errors import ConfigError, InvalidArgument, Unavailable
from heraldo.logs import mask_email
from heraldo.notifier import delivery_log
from heraldo.notifier.delivery_log import DeliveryLog, GroupedDeliveryLog, Record
from heraldo.notifier.limits import DomainLimiter, RateLimiter, replica_share
from heraldo.notifier.mailer import Mailer, Outcome
from heraldo.notifier.message import Envelope, compose, message_id_for
from heraldo.notifier.render import (
    Document,
    InvalidDate,
    InvalidMoney,
    InvalidTemplate,
    Renderer,
    UnknownTemplate,
    date_from_proto,
    money_to_decimal,
)
from heraldo.notifier.settings import LOCALE_TAG, TEMPLATE_NAME, NotifierSettings
from heraldo.v1 import notification_pb2 as pb
from heraldo.v1 import notification_pb2_grpc

logger = logging.getLogger(__name__)

DELIVERIES = Counter("heraldo_notifier_deliveries_total", "Notifications handled, by outcome",
                     ["status"])
IN_FLIGHT = Gauge("heraldo_notifier_in_flight", "Notifications being processed now")

#: Matches the Message-ID derivation and the ``deliveries`` key (80 characters).
NOTIFICATION_ID = re.compile(r"[A-Za-z0-9._:-]{1,80}")
#: C0 and C1 controls and the Unicode line and paragraph separators.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
MAX_INVOICE_NUMBER_CHARS = 64
MAX_NAME_CHARS = 200
#: The most requests one DeliverBatches message may hold: bounds what a single message costs.
MAX_BATCH_REQUESTS = 1000

STATUS_NAMES = {value: name.removeprefix("DELIVERY_STATUS_").lower()
                for name, value in pb.DeliveryStatus.items()}
#: The counter of each status, looked up once rather than per delivery.
DELIVERIES_BY_STATUS = {value: DELIVERIES.labels(name) for value, name in STATUS_NAMES.items()}
#: Delivery-log status stored for each outcome of an SMTP attempt.
LOG_STATUS = {
    pb.DELIVERY_STATUS_SENT: delivery_log.SENT,
    pb.DELIVERY_STATUS_TEMPORARY_FAILURE: delivery_log.TEMPORARY_FAILURE,
    pb.DELIVERY_STATUS_PERMANENT_FAILURE: delivery_log.PERMANENT_FAILURE,
}
VARIANT_BY_KIND = {
    pb.DOCUMENT_KIND_UNSPECIFIED: "invoice",
    pb.DOCUMENT_KIND_INVOICE: "invoice",
    pb.DOCUMENT_KIND_CREDIT_NOTE: "credit_note",
}


@dataclass(frozen=True)
class Checked:
    """A request that passed every check, with its values in the form the next steps need."""

    request: pb.NotificationRequest
    address: str
    template_set: str
    locale: str
    document: Document


def build_mailer(settings: NotifierSettings) -> Mailer:
    """The mailer the SMTP settings describe."""
    return Mailer(target=settings.smtp_target, timeout_s=settings.smtp_timeout_s,
                  connections=settings.smtp_connections,
                  max_messages_per_connection=settings.smtp_max_messages_per_connection,
                  retries=settings.smtp_retries, retry_backoff_s=settings.smtp_retry_backoff_s)


#: The settings a mailer is built from: a change to any of them means a new mailer.
MAILER_FIELDS = ("smtp_host", "smtp_port", "smtp_timeout_s", "smtp_connections", "smtp_tls",
                 "smtp_username", "smtp_password", "smtp_ca_file",
                 "smtp_max_messages_per_connection", "smtp_retries", "smtp_retry_backoff_s")


class NotifierServicer(notification_pb2_grpc.NotifierServiceServicer):
    """Delivers notifications: ``DeliverBatches`` for the batch service's streams, ``Deliver`` for
    one notification per message, ``Send`` ad hoc.

    Deliveries outlive the stream that asked for them: when a client goes away mid-stream, the
    emails already handed to SMTP finish and their outcome is recorded, so a replay finds them as
    sent rather than as a stale claim to send again. ``close`` waits for them.

    Settings can change while it runs (``apply_settings``, ``set_templates``,
    ``set_live_replicas``): the rates apply to the next token, a new SMTP target to the next send.
    """

    def __init__(self, *, settings: NotifierSettings, engine: AsyncEngine, mailer: Mailer,
                 replica_id: str, renderer: Renderer | None = None,
                 stale_after_s: float = delivery_log.DEFAULT_STALE_AFTER_S) -> None:
        self._settings = settings
        self._mailer = mailer
        self._replica_id = replica_id
        # Concurrent deliveries share claim and record transactions (see delivery_log).
        self._log = GroupedDeliveryLog(DeliveryLog(engine, replica_id=replica_id,
                                                   stale_after_s=stale_after_s))
        company = parseaddr(settings.sender)[0]
        self._renderer = renderer or Renderer(company=company,
                                              default_locale=settings.default_locale)
        if settings.default_template not in self._renderer.template_sets:
            raise ConfigError(f"default_template {settings.default_template!r} does not exist; "
                             f"known: {', '.join(sorted(self._renderer.template_sets))}")
        self._tasks: set[asyncio.Task] = set()
        self._retiring: set[asyncio.Task] = set()
        self._retired: list[Mailer] = []
        self._live_replicas = 1
        self._rate = RateLimiter(settings.rate_per_s)
        self._domains = DomainLimiter(settings.domain_rate_per_s)

    @property
    def settings(self) -> NotifierSettings:
        return self._settings

    @property
    def template_overrides(self) -> dict[str, str]:
        """The KV template overrides in use, by ``<set>/<language>/<file>``."""
        return dict(self._renderer.overrides)

    @property
    def template_sets(self) -> frozenset[str]:
        """The template sets it can render now, its KV overrides included."""
        return self._renderer.template_sets

    @property
    def rate_per_s(self) -> float:
        """This replica's current send rate limit; 0 means unlimited."""
        return self._rate.rate_per_s

    def apply_settings(self, settings: NotifierSettings) -> None:
        """Switches to ``settings`` now: rates at once, a new mailer for the next sends."""
        old, self._settings = self._settings, settings
        self._rate.set_rate(replica_share(settings.rate_per_s, self._live_replicas))
        self._domains.set_rate(settings.domain_rate_per_s)
        if any(getattr(old, name) != getattr(settings, name) for name in MAILER_FIELDS):
            retired, self._mailer = self._mailer, build_mailer(settings)
            self._retired.append(retired)
            task = asyncio.create_task(retired.retire(settings.shutdown_grace_s
                                                      + settings.smtp_timeout_s))
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)
            logger.info("smtp target changed replica=%s smtp=%s:%d tls=%s",
                        self._replica_id, settings.smtp_host, settings.smtp_port,
                        settings.smtp_tls)
        if (old.sender, old.default_locale) != (settings.sender, settings.default_locale):
            self.set_templates(self._renderer.overrides)

    def renderer_for(self, overrides: dict[str, str]) -> Renderer:
        """A renderer with these KV template overrides, for this replica's sender and locale.

        Raises:
            InvalidTemplate: an override cannot be used.
        """
        return Renderer(company=parseaddr(self._settings.sender)[0],
                        default_locale=self._settings.default_locale, overrides=overrides)

    def use_renderer(self, renderer: Renderer, default_template: str) -> None:
        """Renders with ``renderer`` from now on, where ``default_template`` is to be the default.

        Raises:
            InvalidTemplate: ``renderer`` has no such template set; the templates in use stay.
        """
        if default_template not in renderer.template_sets:
            raise InvalidTemplate(f"the default template set {default_template!r} would no "
                                  "longer exist")
        self._renderer = renderer

    def set_templates(self, overrides: dict[str, str]) -> None:
        """Renders with these KV template overrides from now on.

        Raises:
            InvalidTemplate: an override cannot be used, or the default template set would be
                gone without it; the templates in use stay.
        """
        self.use_renderer(self.renderer_for(overrides), self._settings.default_template)

    def set_live_replicas(self, replica_ids: dict[str, dt.datetime | None]) -> None:
        """Takes this replica's share of the cluster-wide rate among the live replicas, and lets
        the delivery log take over claims left by replicas that are gone."""
        self._live_replicas = max(1, len(replica_ids))
        self._rate.set_rate(replica_share(self._settings.rate_per_s, self._live_replicas))
        self._log.log.set_live_replicas(replica_ids)

    async def Deliver(self, request_iterator: AsyncIterator[pb.NotificationRequest],
                      context: grpc.aio.ServicerContext) -> AsyncIterator[pb.DeliveryResult]:
        """One result per request, in completion order, with at most ``max_in_flight`` pending.

        A slot is taken before a request is read and given back only once its result is written,
        so a slow client or a slow SMTP server stops the reading: memory does not grow with the
        length of the stream, and gRPC flow control pushes back on the sender.
        """
        async for results in self._serve(request_iterator, "deliver"):
            for result in results:
                yield result

    async def DeliverBatches(self, request_iterator: AsyncIterator[pb.NotificationBatch],
                             context: grpc.aio.ServicerContext
                             ) -> AsyncIterator[pb.DeliveryResultBatch]:
        """``Deliver`` for groups of requests: each answer carries every result ready by then."""
        async for results in self._serve(_unpacked(request_iterator), "deliver_batches"):
            yield pb.DeliveryResultBatch(results=results)

    async def _serve(self, requests: AsyncIterator[pb.NotificationRequest], rpc: str
                     ) -> AsyncIterator[list[pb.DeliveryResult]]:
        """The results of ``requests`` as they complete, in lists of whatever is ready at once."""
        started = time.perf_counter()
        totals: collections.Counter[str] = collections.Counter()
        results: asyncio.Queue[pb.DeliveryResult | _ReadEnd] = asyncio.Queue()
        slots = asyncio.Semaphore(self._settings.max_in_flight)
        reader = asyncio.create_task(self._read(requests, slots, results))

        read_count = written = 0
        end: _ReadEnd | None = None
        try:
            while end is None or written < read_count:
                items = [await results.get()]
                while not results.empty():
                    items.append(results.get_nowait())
                ready = []
                for item in items:
                    if isinstance(item, _ReadEnd):
                        end, read_count = item, item.count
                    else:
                        ready.append(item)
                if not ready:
                    continue
                for result in ready:
                    totals[STATUS_NAMES[result.status]] += 1
                yield ready
                written += len(ready)
                for _ in ready:
                    slots.release()
            if end.error is not None:
                raise end.error
        finally:
            reader.cancel()
            logger.info(
                "%s stream replica=%s requests=%d written=%d %s elapsed_ms=%.1f",
                rpc, self._replica_id, read_count if end else written, written,
                " ".join(f"{name}={totals[name]}" for name in sorted(totals)) or "empty=1",
                (time.perf_counter() - started) * 1000)

    async def _read(self, request_iterator: AsyncIterator[pb.NotificationRequest],
                    slots: asyncio.Semaphore, results: asyncio.Queue) -> None:
        count = 0
        error: BaseException | None = None
        try:
            async for request in request_iterator:
                await slots.acquire()
                count += 1
                self._spawn(request, results.put_nowait)
        except Exception as exc:  # noqa: BLE001 - handed to the writer, which raises it
            error = exc
        finally:
            results.put_nowait(_ReadEnd(count, error))

    def _spawn(self, request: pb.NotificationRequest,
               deliver_result: Callable[[pb.DeliveryResult], None]) -> None:
        task = asyncio.create_task(self._deliver_one(request))
        self._tasks.add(task)

        def done(finished: asyncio.Task) -> None:
            self._tasks.discard(finished)
            if finished.cancelled():
                deliver_result(self._result(request.notification_id,
                                            Outcome(pb.DELIVERY_STATUS_TEMPORARY_FAILURE, 0,
                                                    "cancelled: the notifier is shutting down")))
            else:
                deliver_result(finished.result())

        task.add_done_callback(done)

    async def _deliver_one(self, request: pb.NotificationRequest) -> pb.DeliveryResult:
        """The stream's view of one request: every failure becomes a result, never an error."""
        try:
            checked = self._check(request)
        except InvalidArgument as exc:
            return self._count(self._result(request.notification_id,
                                            Outcome(pb.DELIVERY_STATUS_REJECTED, 0, str(exc))))
        try:
            return await self._deliver(checked)
        except Unavailable as exc:
            logger.warning("notification_id=%s not attempted: %s", request.notification_id, exc)
            return self._count(self._result(request.notification_id, Outcome(
                pb.DELIVERY_STATUS_TEMPORARY_FAILURE, 0, "delivery log unavailable")))
        except Exception:
            logger.exception("unexpected error delivering notification_id=%s",
                             request.notification_id)
            return self._count(self._result(request.notification_id, Outcome(
                pb.DELIVERY_STATUS_TEMPORARY_FAILURE, 0, "internal error in the notifier")))

    async def Send(self, request: pb.NotificationRequest,
                   context: grpc.aio.ServicerContext) -> pb.DeliveryResult:
        """Delivers one notification and waits for its outcome.

        Raises:
            InvalidArgument: the request is unusable; the message names the field.
            Unavailable: the delivery log cannot be reached; nothing was sent.
        """
        checked = self._check(request)
        result = await self._deliver(checked)
        logger.info("send notification_id=%s to=%s status=%s smtp_code=%d replica=%s",
                    request.notification_id, mask_email(checked.address),
                    STATUS_NAMES[result.status], result.smtp_code, self._replica_id)
        return result

    async def _deliver(self, checked: Checked) -> pb.DeliveryResult:
        """Claim, render, send, record. Raises Unavailable when the claim cannot be made."""
        request = checked.request
        notification_id = request.notification_id
        message_id = message_id_for(notification_id)
        IN_FLIGHT.inc()
        try:
            claim = await self._log.claim(notification_id, message_id)
            if not claim.claimed:
                return self._count(self._answer_existing(notification_id, claim.existing))

            envelope = Envelope(
                notification_id=notification_id, invoice_number=request.invoice_number,
                to_name=request.recipient.name, to_address=checked.address,
                sender=self._settings.sender, reply_to=self._settings.reply_to)
            try:
                rendered = self._renderer.render(checked.template_set, checked.locale,
                                                 checked.document)
                message = compose(envelope, rendered)
            except Exception:
                # A template bug, not the request's fault: recorded as temporary, so the
                # notification goes out once a fixed release renders it.
                logger.exception("rendering failed notification_id=%s", notification_id)
                outcome = Outcome(pb.DELIVERY_STATUS_TEMPORARY_FAILURE, 0, "rendering failed")
            else:
                # The domain's limit first: a token of the replica's rate is not spent while
                # this message still waits for its domain.
                await self._domains.acquire(checked.address)
                await self._rate.acquire()
                outcome = await self._mailer.send(self._settings.sender_address,
                                                  [checked.address], message)
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug("notification_id=%s to=%s attempt=%d status=%s detail=%s",
                             notification_id, mask_email(checked.address), claim.attempt,
                             STATUS_NAMES[outcome.status], outcome.detail)

            possible_copy = claim.in_doubt and outcome.status == pb.DELIVERY_STATUS_SENT
            if possible_copy:
                logger.warning("possible copy notification_id=%s attempt=%d: the replica of an "
                               "earlier attempt died before recording it and may have sent it",
                               notification_id, claim.attempt)
            try:
                await self._log.record(notification_id, claim.attempt, LOG_STATUS[outcome.status],
                                       smtp_code=outcome.smtp_code, detail=outcome.detail)
            except Unavailable as exc:
                # The email's fate is known and is what the caller needs; the row stays
                # "sending" and goes stale, the crash window described in delivery_log.
                logger.error("could not record notification_id=%s status=%s: %s",
                             notification_id, STATUS_NAMES[outcome.status], exc)
            return self._count(self._result(notification_id, outcome, message_id=message_id,
                                            possible_copy=possible_copy))
        finally:
            IN_FLIGHT.dec()

    def _answer_existing(self, notification_id: str, record: Record | None) -> pb.DeliveryResult:
        if record is None:
            return self._result(notification_id, Outcome(
                pb.DELIVERY_STATUS_TEMPORARY_FAILURE, 0, "claimed concurrently; try again"))
        if record.status == delivery_log.SENT:
            return self._result(
                notification_id,
                Outcome(pb.DELIVERY_STATUS_DUPLICATE, record.smtp_code,
                        f"already sent by {record.replica_id} (attempt {record.attempts})"),
                message_id=record.message_id, replica_id=record.replica_id,
                possible_copy=record.possible_copy)
        if record.status == delivery_log.PERMANENT_FAILURE:
            return self._result(
                notification_id,
                Outcome(pb.DELIVERY_STATUS_PERMANENT_FAILURE, record.smtp_code,
                        f"failed for good earlier: {record.detail}"),
                message_id=record.message_id, replica_id=record.replica_id)
        return self._result(notification_id, Outcome(
            pb.DELIVERY_STATUS_TEMPORARY_FAILURE, 0,
            f"being delivered by {record.replica_id} (attempt {record.attempts}); try again later"))

    def _result(self, notification_id: str, outcome: Outcome, *, message_id: str = "",
                replica_id: str = "", possible_copy: bool = False) -> pb.DeliveryResult:
        completed_at = timestamp_pb2.Timestamp()
        completed_at.GetCurrentTime()
        return pb.DeliveryResult(
            notification_id=notification_id, status=outcome.status, smtp_code=outcome.smtp_code,
            detail=outcome.detail, message_id=message_id, replica_id=replica_id or self._replica_id,
            completed_at=completed_at, possible_copy=possible_copy)

    @staticmethod
    def _count(result: pb.DeliveryResult) -> pb.DeliveryResult:
        DELIVERIES_BY_STATUS[result.status].inc()
        return result

    def _check(self, request: pb.NotificationRequest) -> Checked:
        """Raises InvalidArgument naming the first field that makes ``request`` unusable."""
        if not request.notification_id:
            raise InvalidArgument("notification_id", "is required")
        if not NOTIFICATION_ID.fullmatch(request.notification_id):
            raise InvalidArgument("notification_id",
                                  "must be 1 to 80 characters of A-Z a-z 0-9 . _ : -")
        if not request.invoice_number:
            raise InvalidArgument("invoice_number", "is required")
        if (len(request.invoice_number) > MAX_INVOICE_NUMBER_CHARS
                or _CONTROL.search(request.invoice_number)):
            raise InvalidArgument("invoice_number", f"must be at most {MAX_INVOICE_NUMBER_CHARS} "
                                  "characters without control characters")
        if request.kind not in VARIANT_BY_KIND:
            raise InvalidArgument("kind", f"unknown document kind {request.kind}")

        recipient = request.recipient
        if not request.HasField("recipient") or not recipient.email:
            raise InvalidArgument("recipient.email", "is required")
        address, problem = sendable_address(recipient.email)
        if problem:
            raise InvalidArgument("recipient.email", problem)
        if len(recipient.name) > MAX_NAME_CHARS or _CONTROL.search(recipient.name):
            raise InvalidArgument("recipient.name", f"must be at most {MAX_NAME_CHARS} characters "
                                  "without control characters")
        locale = recipient.locale or self._settings.default_locale
        if not LOCALE_TAG.fullmatch(locale.replace("_", "-")):
            raise InvalidArgument("recipient.locale", f"{locale!r} is not a language tag")

        if not request.HasField("amount"):
            raise InvalidArgument("amount", "is required")
        try:
            amount = money_to_decimal(request.amount)
        except InvalidMoney as exc:
            raise InvalidArgument("amount", str(exc)) from exc
        variant = VARIANT_BY_KIND[request.kind]
        if variant == "invoice" and amount < 0:
            raise InvalidArgument("amount", "an invoice cannot ask for a negative amount; "
                                  "money owed to the customer is a credit note")
        dates = {}
        for name in ("issue_date", "due_date"):
            try:
                dates[name] = date_from_proto(getattr(request, name))
            except InvalidDate as exc:
                raise InvalidArgument(name, str(exc)) from exc
        if dates["issue_date"] and dates["due_date"] and dates["due_date"] < dates["issue_date"]:
            raise InvalidArgument("due_date", f"{dates['due_date']} is before the issue date "
                                  f"{dates['issue_date']}")

        template_set = request.template or self._settings.default_template
        try:
            if not TEMPLATE_NAME.fullmatch(template_set):
                raise UnknownTemplate(f"{template_set!r} is not a template set name")
            self._renderer.language_for(template_set, locale)
        except UnknownTemplate as exc:
            raise InvalidArgument("template", str(exc)) from exc

        document = Document(
            variant=variant, invoice_number=request.invoice_number, customer_name=recipient.name,
            amount=amount, currency=request.amount.currency_code, **dates)
        return Checked(request=request, address=address, template_set=template_set,
                       locale=locale, document=document)

    async def close(self, timeout_s: float) -> None:
        """Waits up to ``timeout_s`` for deliveries still running, then closes the mailer."""
        pending = set(self._tasks)
        if pending:
            _, late = await asyncio.wait(pending, timeout=timeout_s)
            for task in late:
                task.cancel()
            if late:
                logger.warning("cancelled %d deliveries still running at shutdown", len(late))
                await asyncio.wait(late)
        for task in set(self._retiring):
            task.cancel()
        for mailer in [*self._retired, self._mailer]:
            await mailer.close()
        await self._log.log.close()


async def _unpacked(batches: AsyncIterator[pb.NotificationBatch]
                    ) -> AsyncIterator[pb.NotificationRequest]:
    """The requests of each group in turn; a group over the size limit ends the stream."""
    async for batch in batches:
        if len(batch.requests) > MAX_BATCH_REQUESTS:
            raise InvalidArgument("requests", f"a group holds at most {MAX_BATCH_REQUESTS} "
                                  f"requests, got {len(batch.requests)}")
        for request in batch.requests:
            yield request


@dataclass(frozen=True)
class _ReadEnd:
    """The request stream ended after ``count`` requests, cleanly or with ``error``."""

    count: int
    error: BaseException | None = None
