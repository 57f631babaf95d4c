"""SMTP PIPELINING (RFC 2920) on the wire, against a scripted server that only answers once it
holds MAIL, RCPT and DATA together: a client sending one command at a time would wait forever.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from heraldo.notifier.mailer import Mailer
from heraldo.notifier.pipelining import data_payload
from heraldo.v1 import notification_pb2 as pb

MESSAGE = (b"From: billing@heraldo.test\r\nTo: jane@example.com\r\nSubject: Invoice\r\n"
           b"\r\n.leading period\r\nlast line")


@dataclass
class ScriptedServer:
    """Offers PIPELINING and answers each envelope in one packet with the replies given."""

    envelope_replies: list[bytes]
    final_reply: bytes = b"250 2.0.0 queued as 1\r\n"
    port: int = 0
    #: What arrived in each envelope, and each message's content up to its final dot.
    envelopes: list[bytes] = field(default_factory=list)
    contents: list[bytes] = field(default_factory=list)
    resets: int = 0
    connections: int = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        writer.write(b"220 scripted ESMTP\r\n")
        await reader.readline()
        # A multi-line EHLO reply, as real servers send it.
        writer.write(b"250-scripted\r\n250-PIPELINING\r\n250 8BITMIME\r\n")
        try:
            while True:
                envelope = b""
                while (line := await reader.readline()) != b"DATA\r\n":
                    if line == b"RSET\r\n":
                        self.resets += 1
                        writer.write(b"250 2.0.0 reset\r\n")
                        continue
                    if line in (b"QUIT\r\n", b""):
                        writer.write(b"221 bye\r\n")
                        writer.close()
                        return
                    envelope += line
                self.envelopes.append(envelope + line)
                writer.write(b"".join(self.envelope_replies))
                if not self.envelope_replies[-1].startswith(b"354"):
                    continue
                content = b""
                while (line := await reader.readline()) != b".\r\n":
                    if not line:
                        raise ConnectionError("the client went away during the content")
                    content += line
                self.contents.append(content + line)
                writer.write(self.final_reply)
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()


@pytest.fixture
async def scripted() -> AsyncIterator:
    servers: list[asyncio.Server] = []

    async def start(*replies: bytes, final: bytes = b"250 2.0.0 queued as 1\r\n"
                    ) -> ScriptedServer:
        script = ScriptedServer(envelope_replies=list(replies), final_reply=final)
        server = await asyncio.start_server(script.serve, "127.0.0.1", 0)
        servers.append(server)
        script.port = server.sockets[0].getsockname()[1]
        return script

    yield start
    for server in servers:
        server.close()


def mailer(port: int) -> Mailer:
    return Mailer(host="127.0.0.1", port=port, timeout_s=5, connections=1)


async def test_mail_rcpt_and_data_travel_together_and_the_content_is_dot_stuffed(scripted):
    server = await scripted(b"250 2.1.0 sender ok\r\n", b"250 2.1.5 recipient ok\r\n",
                            b"354 go ahead\r\n")
    sending = mailer(server.port)

    first = await sending.send("billing@heraldo.test", ["jane@example.com"], MESSAGE)
    second = await sending.send("billing@heraldo.test", ["joe@example.com"], MESSAGE)
    await sending.close()

    assert first.status == second.status == pb.DELIVERY_STATUS_SENT
    assert first.smtp_code == 250 and "queued as 1" in first.detail
    assert server.envelopes[0] == (b"MAIL FROM:<billing@heraldo.test>\r\n"
                                   b"RCPT TO:<jane@example.com>\r\n"
                                   b"DATA\r\n")
    assert server.envelopes[1].endswith(b"RCPT TO:<joe@example.com>\r\nDATA\r\n")
    assert server.contents[0].endswith(b"\r\n\r\n..leading period\r\nlast line\r\n.\r\n")


@pytest.mark.parametrize(("replies", "status", "code"), [
    ((b"550 5.7.1 sender refused\r\n", b"503 5.5.1 need MAIL\r\n", b"503 5.5.1 need RCPT\r\n"),
     pb.DELIVERY_STATUS_PERMANENT_FAILURE, 550),
    ((b"250 ok\r\n", b"450 4.2.0 mailbox busy\r\n", b"554 5.5.1 no valid recipients\r\n"),
     pb.DELIVERY_STATUS_TEMPORARY_FAILURE, 450),
    ((b"250 ok\r\n", b"250 ok\r\n", b"451 4.3.0 try later\r\n"),
     pb.DELIVERY_STATUS_TEMPORARY_FAILURE, 451),
])
async def test_a_refused_envelope_sends_no_content_and_reports_the_first_refusal(
        scripted, replies, status, code):
    server = await scripted(*replies)
    sending = mailer(server.port)

    outcome = await sending.send("billing@heraldo.test", ["jane@example.com"], MESSAGE)
    await sending.close()

    assert (outcome.status, outcome.smtp_code) == (status, code)
    assert server.contents == []
    # The session is reset for the next message, with the transport back in aiosmtplib's hands.
    assert server.resets == 1


async def test_data_opened_for_a_refused_recipient_gets_an_empty_message(scripted):
    # A careless server opens DATA although it refused the only recipient: the mailer ends the
    # transaction with a bare dot rather than hand over the message.
    server = await scripted(b"250 ok\r\n", b"550 5.1.1 no such user\r\n", b"354 go ahead\r\n",
                            final=b"554 5.5.1 no valid recipients\r\n")
    sending = mailer(server.port)

    outcome = await sending.send("billing@heraldo.test", ["ghost@example.com"], MESSAGE)
    await sending.close()

    assert (outcome.status, outcome.smtp_code) == (pb.DELIVERY_STATUS_PERMANENT_FAILURE, 550)
    assert server.contents == [b".\r\n"]


async def test_a_reply_that_never_comes_is_a_timeout_and_nothing_is_sent(scripted):
    server = await scripted(b"250 ok\r\n", b"250 ok\r\n")  # no answer to DATA
    sending = Mailer(host="127.0.0.1", port=server.port, timeout_s=0.5, connections=1)

    outcome = await sending.send("billing@heraldo.test", ["jane@example.com"], MESSAGE)
    await sending.close()

    assert outcome.status == pb.DELIVERY_STATUS_TEMPORARY_FAILURE
    assert "Timeout" in outcome.detail or "timed out" in outcome.detail
    assert server.contents == []


@pytest.mark.parametrize(("message", "expected"), [
    (b"a\r\nb", b"a\r\nb\r\n.\r\n"),
    (b"a\nb\rc\r\n", b"a\r\nb\r\nc\r\n.\r\n"),
    (b".a\r\n..b\r\nc.\r\n", b"..a\r\n...b\r\nc.\r\n.\r\n"),
])
def test_data_payload_ends_lines_with_crlf_doubles_leading_periods_and_ends_with_a_dot(
        message, expected):
    assert data_payload(message) == expected


async def test_a_connection_that_answers_nonsense_is_dropped_not_reused(scripted):
    server = await scripted(b"hello there\r\n")
    sending = mailer(server.port)

    first = await sending.send("billing@heraldo.test", ["jane@example.com"], MESSAGE)
    second = await sending.send("billing@heraldo.test", ["jane@example.com"], MESSAGE)
    await sending.close()

    assert first.status == second.status == pb.DELIVERY_STATUS_PERMANENT_FAILURE
    assert "malformed" in first.detail
    assert server.connections == 2 and server.resets == 0 and server.contents == []
