"""SMTP delivery: a small pool of reused aiosmtplib connections, and what each reply means.

A reply in the 2xx range is SENT; a 4xx reply, a network error or a timeout is a TEMPORARY_FAILURE
worth retrying later; a 5xx reply is a PERMANENT_FAILURE. A temporary failure is tried again here
a few times with a growing pause, but only when the server certainly did not take the message (a
4xx reply, or a failure before DATA began); after that it is reported, and the batch retries later.

A connection whose transaction failed is reset (RSET) or, when that is not certain to work,
dropped, so the next message starts clean; a dropped connection is opened again on its next use.
A connection carries at most ``max_messages_per_connection`` messages and is then closed politely
(QUIT) and opened again, because some providers answer "421 too many messages" past their limit.

An address with a non-ASCII local part (``josé@example.com``) can only travel with the SMTPUTF8
extension (RFC 6531): such a message is sent with ``MAIL FROM:<...> SMTPUTF8`` when the server
offers it, and is a permanent failure otherwise, as no ASCII spelling of the address exists.
Configuration faults of the link itself (STARTTLS required but not offered, AUTH refused) are
reported with a reason that names the setting, never worked around by sending in clear text.

When the server offers PIPELINING (RFC 2920), MAIL, RCPT and DATA go in one write and a message
costs two round trips (see ``pipelining``); otherwise four, one command at a time through
aiosmtplib. The replies mean the same either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import aiosmtplib
from aiosmtplib import (
    SMTPAuthenticationError,
    SMTPConnectResponseError,
    SMTPException,
    SMTPHeloError,
    SMTPRecipientsRefused,
    SMTPResponse,
    SMTPResponseException,
    SMTPServerDisconnected,
)
from prometheus_client import Histogram

from heraldo.notifier.pipelining import Transaction, command_line, data_payload
from heraldo.v1 import notification_pb2 as pb

logger = logging.getLogger(__name__)

SMTP_SECONDS = Histogram(
    "heraldo_notifier_smtp_seconds", "One SMTP transaction, MAIL to the reply to DATA",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))

#: 421 means the server is closing the connection: the reply is temporary and the link is gone.
SERVICE_CLOSING = 421

NO_SMTPUTF8 = "recipient needs SMTPUTF8, which the server does not offer"


@dataclass(frozen=True)
class Outcome:
    """What became of one message: a ``DeliveryStatus`` value, the SMTP code if any, and why."""

    status: int
    smtp_code: int = 0
    detail: str = ""


SHUTTING_DOWN = Outcome(pb.DELIVERY_STATUS_TEMPORARY_FAILURE, 0, "mailer is shutting down")


def classify(code: int, text: str) -> Outcome:
    """Maps an SMTP reply to an outcome: 2xx sent, 4xx temporary, 5xx (and nonsense) permanent."""
    detail = f"{code} {text}".strip()
    if 200 <= code < 300:
        return Outcome(pb.DELIVERY_STATUS_SENT, code, detail)
    if 400 <= code < 500:
        return Outcome(pb.DELIVERY_STATUS_TEMPORARY_FAILURE, code, detail)
    return Outcome(pb.DELIVERY_STATUS_PERMANENT_FAILURE, code, detail)


class _StaleConnection(SMTPServerDisconnected):
    """A reused connection turned out closed before anything of the message was sent."""


class _LinkMisconfigured(SMTPException):
    """The server cannot give the link the settings ask for (STARTTLS, AUTH): nothing was sent.

    Reported as a temporary failure without retrying here: the batch tries again later, which
    succeeds once the server or ``smtp_tls``/``smtp_username`` are put right.
    """


class _MaybeDelivered(SMTPException):
    """The link failed after DATA began: the server may have taken the message, so never resend."""


TLS_MODES = ("none", "starttls", "implicit")


@dataclass(frozen=True)
class SMTPTarget:
    """Where and how to connect: the parts of the settings a mailer is built from.

    Parameters:
        tls: ``none`` (plain), ``starttls`` (required upgrade) or ``implicit`` (TLS from the
            first byte, usually port 465).
        username, password: AUTH after connecting, when ``username`` is set.
        ca_file: a CA bundle to check the server's certificate with, instead of the system's.
    """

    host: str
    port: int
    tls: str = "none"
    username: str = ""
    password: str = ""
    ca_file: str = ""

    def __post_init__(self) -> None:
        if self.tls not in TLS_MODES:
            raise ValueError(f"smtp_tls must be one of {', '.join(TLS_MODES)}, got {self.tls!r}")

    def __repr__(self) -> str:
        # Never print the password, whoever logs a target.
        return (f"SMTPTarget(host={self.host!r}, port={self.port}, tls={self.tls!r}, "
                f"username={self.username!r})")


class Mailer:
    """Sends pre-built messages over at most ``connections`` reused SMTP connections.

    Parameters:
        host, port: the SMTP server (or ``target``, which also says TLS and AUTH).
        timeout_s: the limit for connecting and for each SMTP command.
        connections: how many connections are kept open and used at once.
        max_messages_per_connection: reconnect after this many messages; 0 means never.
        retries: how many more times a temporary failure that is safe to repeat is tried.
        retry_backoff_s: the pause before the first retry; it doubles for each further one.
    """

    def __init__(self, *, host: str = "", port: int = 0, timeout_s: float, connections: int,
                 target: SMTPTarget | None = None, max_messages_per_connection: int = 0,
                 retries: int = 0, retry_backoff_s: float = 0.5,
                 local_hostname: str | None = None) -> None:
        target = target or SMTPTarget(host=host, port=port)
        self.target = target
        self.host = target.host
        self.port = target.port
        self._timeout_s = timeout_s
        self._max_messages = max_messages_per_connection
        self._retries = retries
        self._retry_backoff_s = retry_backoff_s
        # Clients connect lazily, on first use, so a mailer can be built before the server is up.
        self._clients = [
            aiosmtplib.SMTP(
                hostname=target.host, port=target.port, timeout=timeout_s,
                local_hostname=local_hostname, use_tls=target.tls == "implicit",
                start_tls=target.tls == "starttls", username=target.username or None,
                password=target.password or None, cert_bundle=target.ca_file or None)
            for _ in range(connections)
        ]
        self._carried = {id(smtp): 0 for smtp in self._clients}
        self._idle: asyncio.Queue[aiosmtplib.SMTP] = asyncio.Queue()
        for smtp in self._clients:
            self._idle.put_nowait(smtp)
        #: Set while no send holds a connection: what a retiring mailer waits for.
        self._all_idle = asyncio.Event()
        self._all_idle.set()
        self._closed = False

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[tuple[aiosmtplib.SMTP, bool]]:
        """Lends an open connection and says whether it was reused (it may have gone stale)."""
        smtp = await self._idle.get()
        self._all_idle.clear()
        try:
            if smtp.is_connected and self._max_messages and \
                    self._carried[id(smtp)] >= self._max_messages:
                await self._quit(smtp)
            reused = smtp.is_connected
            if not reused:
                self._carried[id(smtp)] = 0
                try:
                    await smtp.connect()
                except SMTPException as exc:
                    smtp.close()
                    if isinstance(exc, SMTPResponseException) or "not supported" not in str(exc):
                        raise
                    # aiosmtplib says "STARTTLS extension not supported" or "AUTH extension
                    # not supported" with a bare SMTPException: name the setting behind it.
                    raise _LinkMisconfigured(
                        f"smtp_tls={self.target.tls} username={self.target.username!r} "
                        f"cannot be honoured: {exc}; nothing was sent") from exc
                except BaseException:
                    smtp.close()
                    raise
            yield smtp, reused
        except (SMTPResponseException, SMTPRecipientsRefused, _LinkMisconfigured):
            # A refused transaction (_attempt has already reset or dropped the session), or a
            # connection already closed above.
            raise
        except BaseException:
            # Whatever broke (or a cancellation mid-command) leaves the session in an unknown
            # state: drop it rather than let the next message inherit half a transaction.
            smtp.close()
            raise
        finally:
            self._idle.put_nowait(smtp)
            if self._idle.qsize() == len(self._clients):
                self._all_idle.set()

    async def send(self, sender: str, recipients: Sequence[str], message: bytes) -> Outcome:
        """Delivers ``message`` and classifies the result; never raises for SMTP or network errors.

        A temporary failure is tried again up to ``retries`` times, pausing ``retry_backoff_s``
        and then twice as long each time, unless the server may already have the message.
        """
        pause_s = self._retry_backoff_s
        for retry in range(self._retries + 1):
            outcome, repeatable = await self._send_once(sender, recipients, message)
            if outcome.status != pb.DELIVERY_STATUS_TEMPORARY_FAILURE or not repeatable:
                return outcome
            if retry == self._retries or self._closed:
                break
            logger.debug("temporary failure from %s:%d, retrying in %.2fs: %s",
                         self.host, self.port, pause_s, outcome.detail)
            await asyncio.sleep(pause_s)
            pause_s *= 2
        return outcome

    async def _send_once(self, sender: str, recipients: Sequence[str],
                         message: bytes) -> tuple[Outcome, bool]:
        """One delivery; says whether trying again could not send the message twice.

        A pooled connection that the server closed while idle (or closed with 421 at MAIL) fails
        before anything is transmitted; that one case is retried at once on a fresh connection.
        """
        if self._closed:
            return SHUTTING_DOWN, False
        try:
            try:
                return await self._attempt(sender, recipients, message), True
            except _StaleConnection:
                logger.debug("stale smtp connection to %s:%d, retrying", self.host, self.port)
                return await self._attempt(sender, recipients, message), True
        except SMTPRecipientsRefused as exc:
            refused = exc.recipients[0]
            return classify(refused.code, refused.message), True
        except SMTPAuthenticationError as exc:
            # Wrong credentials fail every message the same way; retrying here cannot help.
            return Outcome(pb.DELIVERY_STATUS_PERMANENT_FAILURE, exc.code,
                           f"smtp {self.host}:{self.port} refused AUTH for user "
                           f"{self.target.username!r}: {exc.code} {exc.message}"), True
        except _LinkMisconfigured as exc:
            return Outcome(pb.DELIVERY_STATUS_TEMPORARY_FAILURE, 0,
                           f"smtp {self.host}:{self.port}: {exc}"), False
        except SMTPConnectResponseError as exc:
            # A refusing greeting says the server is unwilling now, not that this mail is bad.
            return Outcome(pb.DELIVERY_STATUS_TEMPORARY_FAILURE, exc.code,
                           f"smtp {self.host}:{self.port} refused the connection: "
                           f"{exc.code} {exc.message}"), True
        except SMTPResponseException as exc:
            return classify(exc.code, exc.message), True
        except _MaybeDelivered as exc:
            return Outcome(pb.DELIVERY_STATUS_TEMPORARY_FAILURE, 0,
                           f"smtp {self.host}:{self.port}: {exc}"), False
        except (SMTPException, OSError, TimeoutError) as exc:
            # Connection refused, reset, or timed out: nothing says the server rejected the mail.
            reason = f"smtp {self.host}:{self.port}: {type(exc).__name__}: {exc}".rstrip(": ")
            return Outcome(pb.DELIVERY_STATUS_TEMPORARY_FAILURE, 0, reason), True

    async def _attempt(self, sender: str, recipients: Sequence[str], message: bytes) -> Outcome:
        """One transaction on a pooled connection. Raises the SMTP or network error as is."""
        data_started = False
        needs_smtputf8 = not sender.isascii() or not all(r.isascii() for r in recipients)
        async with self._connection() as (smtp, reused):
            mail_options: list[str] = []
            encoding = "ascii"
            if needs_smtputf8:
                if smtp.is_ehlo_or_helo_needed:
                    await smtp.ehlo()
                if not smtp.supports_extension("smtputf8"):
                    return Outcome(pb.DELIVERY_STATUS_PERMANENT_FAILURE, 0, NO_SMTPUTF8)
                # The headers carry the address in raw UTF-8, so the body is 8-bit (RFC 6532).
                mail_options = ["SMTPUTF8"]
                if smtp.supports_extension("8bitmime"):
                    mail_options.append("BODY=8BITMIME")
                encoding = "utf-8"
            if smtp.is_ehlo_or_helo_needed:
                # EHLO now, so even a fresh connection's first message knows about PIPELINING;
                # a server that refuses it gets HELO from aiosmtplib at MAIL.
                with contextlib.suppress(SMTPHeloError):
                    await smtp.ehlo()
            started = time.perf_counter()
            try:
                if smtp.supports_extension("pipelining"):
                    response = await self._pipelined(smtp, reused, sender, recipients, message,
                                                     mail_options, encoding)
                    self._carried[id(smtp)] += 1
                    return classify(response.code, response.message)
                try:
                    await smtp.mail(sender, options=mail_options, encoding=encoding)
                except SMTPResponseException as exc:
                    # 421 at MAIL on a reused link: the server hung up (a per-connection limit
                    # or an idle timeout) before anything of this message was taken.
                    if reused and exc.code == SERVICE_CLOSING:
                        smtp.close()
                        raise _StaleConnection(str(exc)) from exc
                    raise
                refused = []
                for recipient in recipients:
                    try:
                        await smtp.rcpt(recipient, encoding=encoding)
                    except aiosmtplib.SMTPRecipientRefused as exc:
                        refused.append(exc)
                if len(refused) == len(recipients):
                    raise SMTPRecipientsRefused(refused)
                data_started = True
                response = await smtp.data(message)
                self._carried[id(smtp)] += 1
            except _StaleConnection:
                raise
            except (SMTPResponseException, SMTPRecipientsRefused) as exc:
                await self._reset(smtp, exc)
                raise
            except (SMTPException, OSError, TimeoutError) as exc:
                # Once DATA has begun the server may have taken the message: never resend then.
                if data_started:
                    smtp.close()
                    raise _MaybeDelivered(
                        f"connection lost after DATA began: {type(exc).__name__}: {exc}"
                    ) from exc
                if reused and isinstance(exc, SMTPServerDisconnected):
                    raise _StaleConnection(str(exc)) from exc
                raise
            finally:
                SMTP_SECONDS.observe(time.perf_counter() - started)
        return classify(response.code, response.message)

    async def _pipelined(self, smtp: aiosmtplib.SMTP, reused: bool, sender: str,
                         recipients: Sequence[str], message: bytes, mail_options: list[str],
                         encoding: str) -> SMTPResponse:
        """MAIL, RCPT and DATA in one write, then the content: two round trips, not four.

        Raises what the one-command-at-a-time path raises for the same replies, so the caller
        resets, retries or reports alike; the transport is back with aiosmtplib by then.
        """
        commands = command_line(b"MAIL FROM:", sender, mail_options, encoding) + b"".join(
            command_line(b"RCPT TO:", recipient, (), encoding) for recipient in recipients)
        async with Transaction(smtp.protocol) as link:
            link.write(commands + b"DATA\r\n")
            mail_reply = await self._reply(smtp, link)
            if mail_reply.code == SERVICE_CLOSING:
                # The server hangs up (a per-connection limit or an idle timeout): no other
                # reply follows, and nothing of this message was taken.
                smtp.close()
                if reused:
                    raise _StaleConnection(f"{mail_reply.code} {mail_reply.message}")
                raise SMTPResponseException(mail_reply.code, mail_reply.message)
            recipient_replies = [await self._reply(smtp, link) for _ in recipients]
            data_reply = await self._reply(smtp, link)
            accepted = mail_reply.code == 250 and any(
                reply.code in (250, 251) for reply in recipient_replies)
            final = None
            if data_reply.code == 354:
                try:
                    # A server that opens DATA for a refused envelope gets an empty message,
                    # which it can only refuse: the transaction ends cleanly either way.
                    link.write(data_payload(message) if accepted else b".\r\n")
                    final = await link.exchange.reply(self._timeout_s)
                except (SMTPException, OSError, TimeoutError) as exc:
                    smtp.close()
                    if not accepted:
                        raise
                    raise _MaybeDelivered(f"connection lost after DATA began: "
                                          f"{type(exc).__name__}: {exc}") from exc
        if mail_reply.code != 250:
            raise SMTPResponseException(mail_reply.code, mail_reply.message)
        refused = [aiosmtplib.SMTPRecipientRefused(reply.code, reply.message, recipient)
                   for reply, recipient in zip(recipient_replies, recipients, strict=True)
                   if reply.code not in (250, 251)]
        if len(refused) == len(recipients):
            raise SMTPRecipientsRefused(refused)
        if final is None:
            raise SMTPResponseException(data_reply.code, data_reply.message)
        if final.code == SERVICE_CLOSING:
            smtp.close()
        return final

    async def _reply(self, smtp: aiosmtplib.SMTP, link: Transaction) -> SMTPResponse:
        """The next pipelined reply; a connection that sent nonsense is dropped, not reset."""
        try:
            return await link.exchange.reply(self._timeout_s)
        except SMTPResponseException:
            smtp.close()
            raise

    async def _reset(self, smtp: aiosmtplib.SMTP, exc: Exception) -> None:
        """After a refused transaction: RSET, or drop the connection if RSET is not clean."""
        if getattr(exc, "code", 0) == SERVICE_CLOSING:
            smtp.close()
            return
        try:
            response = await smtp.rset()
        except (SMTPException, OSError, TimeoutError):
            smtp.close()
            return
        if response.code != 250:
            smtp.close()

    @staticmethod
    async def _quit(smtp: aiosmtplib.SMTP) -> None:
        """Ends a session politely (best effort); the connection is closed either way."""
        try:
            await smtp.quit()
        except (SMTPException, OSError, TimeoutError):
            smtp.close()

    async def retire(self, timeout_s: float) -> None:
        """Closes the mailer once the sends still using it are done, or after ``timeout_s``.

        Used when the settings name another SMTP server: new sends go to a new mailer while this
        one finishes what it has.
        """
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._all_idle.wait()
        await self.close()

    async def close(self) -> None:
        """QUITs every open connection (best effort) and refuses further sends."""
        self._closed = True
        for smtp in self._clients:
            if smtp.is_connected:
                await self._quit(smtp)
