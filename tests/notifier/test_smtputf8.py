"""A non-ASCII local part: sent with SMTPUTF8 where the server offers it, refused cleanly if not.

Real aiosmtpd servers on free ports, with and without ``enable_SMTPUTF8``; the notifier tests run
the whole servicer (validation, claim, compose, send, record) against them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from email import message_from_bytes, policy

import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session

from heraldo.batch.processor import address_problem
from heraldo.notifier.mailer import NO_SMTPUTF8, Mailer
from heraldo.v1 import notification_pb2 as pb
from tests.notifier.conftest import FaultyHandler, by_id, make_request
from tests.notifier.test_message import build

ADDRESS = "josé@example.com"


class RecordingHandler(FaultyHandler):
    """Also keeps each transaction's MAIL options and the raw bytes of each accepted message."""

    def __init__(self) -> None:
        super().__init__()
        self.mail_options: list[list[str]] = []
        self.raw: list[bytes] = []
        self.recipients: list[str] = []

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, mail_options: list[str]) -> str:
        self.mail_options.append(list(mail_options))
        envelope.mail_options = list(mail_options)
        return await super().handle_MAIL(server, session, envelope, address, mail_options)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        reply = await super().handle_DATA(server, session, envelope)
        if reply.startswith("250"):
            self.raw.append(envelope.original_content)
            self.recipients.extend(envelope.rcpt_tos)
        return reply


@dataclass
class Server:
    handler: RecordingHandler
    port: int


@pytest.fixture
async def start_server() -> AsyncIterator[Callable[..., Awaitable[Server]]]:
    servers: list[asyncio.Server] = []

    async def start(*, smtputf8: bool) -> Server:
        handler = RecordingHandler()
        server = await asyncio.get_running_loop().create_server(
            lambda: SMTP(handler, hostname="test-smtp", decode_data=False,
                         enable_SMTPUTF8=smtputf8), "127.0.0.1", 0)
        servers.append(server)
        return Server(handler=handler, port=server.sockets[0].getsockname()[1])

    yield start
    for server in servers:
        server.close()


def test_compose_writes_a_non_ascii_address_in_utf8_and_keeps_the_name_encoded():
    data = build(to_address=ADDRESS)

    to_line = next(line for line in data.split(b"\r\n") if line.startswith(b"To: "))
    # The address in plain UTF-8; the name as an encoded word, as for any other recipient.
    assert to_line.startswith(b"To: =?utf-8?")
    assert to_line.endswith(f" <{ADDRESS}>".encode())
    message = message_from_bytes(data, policy=policy.SMTPUTF8)
    assert message["To"].addresses[0].display_name == "José Ñúñez"
    # An ASCII address keeps the message 7-bit, byte for byte as before.
    assert build().isascii()


def test_the_batch_does_not_skip_a_non_ascii_local_part():
    assert address_problem(ADDRESS) == ""
    assert address_problem("ñandú@correo.example.es") == ""


async def test_a_server_with_smtputf8_gets_the_mail_option_and_the_address_as_utf8(start_server):
    server = await start_server(smtputf8=True)
    mailer = Mailer(host="127.0.0.1", port=server.port, timeout_s=10, connections=1)
    try:
        outcome = await mailer.send("billing@heraldo.test", [ADDRESS], build(to_address=ADDRESS))
        plain = await mailer.send("billing@heraldo.test", ["jane@example.com"], build())
    finally:
        await mailer.close()

    assert outcome.status == pb.DELIVERY_STATUS_SENT, outcome.detail
    assert plain.status == pb.DELIVERY_STATUS_SENT, plain.detail
    assert "SMTPUTF8" in server.handler.mail_options[0]
    # Only the message that needs it asks for SMTPUTF8.
    assert "SMTPUTF8" not in server.handler.mail_options[1]
    assert server.handler.recipients == [ADDRESS, "jane@example.com"]
    assert f"<{ADDRESS}>".encode() in server.handler.raw[0]


async def test_a_server_without_smtputf8_is_a_permanent_failure_and_sees_no_mail(start_server):
    server = await start_server(smtputf8=False)
    mailer = Mailer(host="127.0.0.1", port=server.port, timeout_s=10, connections=1, retries=2,
                    retry_backoff_s=0.01)
    try:
        outcome = await mailer.send("billing@heraldo.test", [ADDRESS], build(to_address=ADDRESS))
        after = await mailer.send("billing@heraldo.test", ["jane@example.com"], build())
    finally:
        await mailer.close()

    assert outcome.status == pb.DELIVERY_STATUS_PERMANENT_FAILURE
    assert outcome.detail == NO_SMTPUTF8
    # Nothing was tried in a mangled form; the connection stays good for the next message.
    assert server.handler.mail_commands == 1
    assert after.status == pb.DELIVERY_STATUS_SENT
    assert server.handler.recipients == ["jane@example.com"]


async def test_the_notifier_accepts_the_address_and_sends_or_refuses_by_server(start_server,
                                                                               notifiers):
    with_utf8 = await start_server(smtputf8=True)
    without = await start_server(smtputf8=False)
    able = await notifiers.start("replica-a", smtp_port=with_utf8.port)
    unable = await notifiers.start("replica-b", smtp_port=without.port)

    sent = by_id(await able.deliver([make_request(1, email=ADDRESS)]))["job-1:1"]
    refused = by_id(await unable.deliver([make_request(2, email=ADDRESS)]))["job-1:2"]

    assert sent.status == pb.DELIVERY_STATUS_SENT, sent.detail
    assert with_utf8.handler.recipients == [ADDRESS]
    raw = with_utf8.handler.raw[0]
    assert f"<{ADDRESS}>".encode() in raw
    assert message_from_bytes(raw, policy=policy.SMTPUTF8)["X-Heraldo-Notification-Id"] \
        == "job-1:1"
    assert refused.status == pb.DELIVERY_STATUS_PERMANENT_FAILURE
    assert refused.detail == NO_SMTPUTF8
    assert without.handler.received == []
