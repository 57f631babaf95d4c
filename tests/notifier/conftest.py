"""Fixtures for the notifier: a real SMTP server with injectable faults, a delivery-log database
(SQLite, and PostgreSQL from the shared fixtures) and a real grpc.aio server running the servicer.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage

import grpc
import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session

from heraldo import db
from heraldo.notifier.render import PARTS, VARIANTS
from heraldo.notifier.servicer import NotifierServicer, build_mailer
from heraldo.notifier.settings import SERVICE_SCOPE, NotifierSettings
from heraldo.runtime import StatusInterceptor
from heraldo.settings import load_seed, resolve
from heraldo.v1 import notification_pb2 as pb
from heraldo.v1 import notification_pb2_grpc


class FaultyHandler:
    """An aiosmtpd handler that stores what it accepts and misbehaves on request.

    ``faults`` maps a recipient address to one of: ``rcpt-451``, ``rcpt-550`` (refuse at RCPT),
    ``data-451``, ``data-554`` (refuse after DATA), ``drop`` (close the connection during DATA),
    ``slow`` (answer DATA after ``slow_s``). ``gate``, when cleared, holds every DATA until set.
    """

    def __init__(self) -> None:
        self.faults: dict[str, str] = {}
        self.received: list[EmailMessage] = []
        self.mail_commands = 0
        self.in_data = 0
        self.peak_in_data = 0
        self.reached_data = asyncio.Condition()
        self.gate = asyncio.Event()
        self.gate.set()
        self.slow_s = 5.0
        self.sessions: list[SMTP] = []
        #: When set, a connection that already carried a message is closed at its next MAIL.
        self.close_reused_at_mail = False
        #: When set, MAIL on a connection that carried this many messages gets "421 too many
        #: messages" and the connection is closed, as some providers do.
        self.max_per_connection = 0
        self.carried: dict[int, int] = {}
        self.too_many_replies = 0
        #: Address to how many more times DATA is answered 451 before it is accepted.
        self.greylist: dict[str, int] = {}
        self.connections = 0
        #: Offer PIPELINING (RFC 2920). aiosmtpd reads commands one line at a time, so it
        #: serves a pipelining client correctly; it just does not say so by itself.
        self.pipelining = False

    async def handle_EHLO(self, server: SMTP, session: Session, envelope: Envelope,
                          hostname: str, responses: list[str]) -> list[str]:
        self.connections += 1
        session.host_name = hostname
        if self.pipelining:
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, mail_options: list[str]) -> str:
        self.mail_commands += 1
        if self.max_per_connection and self.carried.get(id(server), 0) >= self.max_per_connection:
            self.too_many_replies += 1
            # Closed once the reply is written, as a server does after a 421.
            asyncio.get_running_loop().call_soon(server.transport.close)
            return "421 4.7.0 Too many messages on this connection"
        if server in self.sessions and self.close_reused_at_mail:
            self.sessions.remove(server)
            server.transport.abort()
            return "421 4.4.2 Idle too long"
        if server not in self.sessions:
            self.sessions.append(server)
        envelope.mail_from = address
        return "250 OK"

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        fault = self.faults.get(address)
        if fault == "rcpt-451":
            return "451 4.3.0 Mailbox temporarily unavailable"
        if fault == "rcpt-550":
            return "550 5.1.1 No such user here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        fault = self.faults.get(envelope.rcpt_tos[0])
        self.in_data += 1
        self.peak_in_data = max(self.peak_in_data, self.in_data)
        async with self.reached_data:
            self.reached_data.notify_all()
        try:
            await self.gate.wait()
            if fault == "drop":
                server.transport.abort()
                return "421 4.4.2 Connection dropped"
            if fault == "slow":
                await asyncio.sleep(self.slow_s)
            if fault == "data-451":
                return "451 4.7.1 Greylisted, try again later"
            if fault == "data-554":
                return "554 5.7.1 Message rejected as spam"
            if self.greylist.get(envelope.rcpt_tos[0], 0) > 0:
                self.greylist[envelope.rcpt_tos[0]] -= 1
                return "451 4.7.1 Greylisted, try again later"
            self.carried[id(server)] = self.carried.get(id(server), 0) + 1
            self.received.append(message_from_bytes(envelope.original_content,
                                                    policy=policy.default))
            return "250 2.0.0 Ok: queued"
        finally:
            self.in_data -= 1

    def close_connections(self) -> None:
        """What a server does to idle clients after its timeout: closes their connections."""
        for session in self.sessions:
            if session.transport is not None:
                session.transport.close()
        self.sessions.clear()

    def received_ids(self) -> list[str]:
        return [m["X-Heraldo-Notification-Id"] for m in self.received]


@dataclass
class SMTPServer:
    handler: FaultyHandler
    port: int


@pytest.fixture(params=["lockstep", "pipelining"])
async def smtp_server(request) -> AsyncIterator[SMTPServer]:
    """A real aiosmtpd server on 127.0.0.1, on a free port, in the test's event loop: once
    without PIPELINING, so the mailer sends one command at a time, and once with it."""
    handler = FaultyHandler()
    handler.pipelining = request.param == "pipelining"
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(handler, hostname="test-smtp", decode_data=False), "127.0.0.1", 0)
    yield SMTPServer(handler=handler, port=server.sockets[0].getsockname()[1])
    server.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def delivery_url(request, tmp_path) -> str:
    """An SQLite file, then a fresh PostgreSQL database (dropped after the test)."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'heraldo.db'}"
    # Requested here, outside the event loop, because the shared fixtures run their own loop.
    make_database = request.getfixturevalue("make_database")
    url = asyncio.run(make_database())
    return url.replace("postgresql://", "postgresql+asyncpg://", 1)


@pytest.fixture
async def delivery_engine(delivery_url: str) -> AsyncIterator:
    """An engine on ``delivery_url`` with Heraldo's schema created."""
    engine = db.create_engine(delivery_url)
    await db.create_schema(engine)
    yield engine
    await engine.dispose()


@pytest.fixture
def settings(smtp_server: SMTPServer) -> NotifierSettings:
    """The seed's defaults, pointed at the test SMTP server."""
    defaults = resolve(NotifierSettings, SERVICE_SCOPE, load_seed(), env={})
    # No retries unless a test asks: each temporary failure is then seen as it happened.
    return dataclasses.replace(defaults, smtp_host="127.0.0.1", smtp_port=smtp_server.port,
                               smtp_timeout_s=5, smtp_connections=2, max_in_flight=8,
                               smtp_retries=0, smtp_retry_backoff_s=0.05,
                               smtp_max_messages_per_connection=0)


@dataclass
class RunningNotifier:
    stub: notification_pb2_grpc.NotifierServiceStub
    servicer: NotifierServicer
    settings: NotifierSettings

    async def deliver(self, requests: list[pb.NotificationRequest]) -> list[pb.DeliveryResult]:
        async def stream():
            for item in requests:
                yield item

        return [result async for result in self.stub.Deliver(stream())]


@dataclass
class NotifierFactory:
    """Starts notifiers (a grpc.aio server each, on a free port) and stops them all at the end."""

    engine: object
    settings: NotifierSettings
    _stops: list = field(default_factory=list)

    async def start(self, replica_id: str = "replica-a", **changes) -> RunningNotifier:
        settings = dataclasses.replace(self.settings, **changes)
        servicer = NotifierServicer(settings=settings, engine=self.engine,
                                    mailer=build_mailer(settings), replica_id=replica_id)
        server = grpc.aio.server(interceptors=[StatusInterceptor()])
        notification_pb2_grpc.add_NotifierServiceServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")

        async def stop() -> None:
            await channel.close()
            await server.stop(1)
            await servicer.close(5)

        self._stops.append(stop)
        return RunningNotifier(stub=notification_pb2_grpc.NotifierServiceStub(channel),
                               servicer=servicer, settings=settings)

    async def stop_all(self) -> None:
        for stop in reversed(self._stops):
            await stop()


@pytest.fixture
async def notifiers(delivery_engine, settings) -> AsyncIterator[NotifierFactory]:
    factory = NotifierFactory(engine=delivery_engine, settings=settings)
    yield factory
    await factory.stop_all()


@pytest.fixture
async def notifier(notifiers: NotifierFactory) -> RunningNotifier:
    return await notifiers.start()


def make_request(n: int | str, *, email: str | None = None, name: str = "Jane Doe",
                 locale: str = "en-GB", units: int = 1234, nanos: int = 500_000_000,
                 currency: str = "GBP", kind: int = pb.DOCUMENT_KIND_INVOICE,
                 **fields) -> pb.NotificationRequest:
    """A valid request for invoice ``n``; keyword arguments change single fields."""
    values = {"notification_id": f"job-1:{n}", "job_id": "job-1", "invoice_number": f"INV{n}",
              "kind": kind, **fields}
    request = pb.NotificationRequest(
        recipient=pb.Recipient(customer_id=f"C{n}", name=name,
                               email=email or f"customer{n}@example.com", locale=locale),
        **values)
    request.amount.units, request.amount.nanos = units, nanos
    request.amount.currency_code = currency
    request.issue_date.year, request.issue_date.month, request.issue_date.day = 2011, 12, 1
    request.due_date.year, request.due_date.month, request.due_date.day = 2011, 12, 31
    return request


def by_id(results: list[pb.DeliveryResult]) -> dict[str, pb.DeliveryResult]:
    return {r.notification_id: r for r in results}


def template_set(name: str) -> dict[str, str]:
    """KV overrides that make a whole template set of their own, in English."""
    return {f"config/notifier/templates/{name}/en/{variant}.{part}":
            f"{name}: {{{{ invoice_number }}}}" for variant in VARIANTS for part in PARTS}
