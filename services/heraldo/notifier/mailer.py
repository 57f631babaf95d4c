"""SMTP delivery: a small pool of reused aiosmtplib connections, and what each reply means.

A reply in the 2xx range is SENT; a 4xx reply, a network error or a timeout is a TEMPORARY_FAILURE
worth retrying later; a 5xx reply is a PERMANENT_FAILURE. A connection whose transaction failed is
reset (RSET) or, when that is not certain to work, dropped, so the next message starts clean; a
dropped connection is opened again on its next use.
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
    SMTPConnectResponseError,
    SMTPException,
    SMTPRecipientsRefused,
    SMTPResponseException,
    SMTPServerDisconnected,
)
from prometheus_client import Histogram

from heraldo.v1 import notification_pb2 as pb

logger = logging.getLogger(__name__)

SMTP_SECONDS = Histogram(
    "heraldo_notifier_smtp_seconds", "One SMTP transaction, MAIL to the reply to DATA",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))

#: 421 means the server is closing the connection: the reply is temporary and the link is gone.
SERVICE_CLOSING = 421


@dataclass(frozen=True)
class Outcome:
    """What became of one message: a ``DeliveryStatus`` value, the SMTP code if any, and why."""

    status: int
    smtp_code: int = 0
    detail: str = ""


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


class Mailer:
    """Sends pre-built messages over at most ``connections`` reused SMTP connections.

    Parameters:
        host, port: the SMTP server.
        timeout_s: the limit for connecting and for each SMTP command.
        connections: how many connections are kept open and used at once.
    """

    def __init__(self, *, host: str, port: int, timeout_s: float, connections: int,
                 local_hostname: str | None = None) -> None:
        self.host = host
        self.port = port
        self._timeout_s = timeout_s
        # Clients connect lazily, on first use, so a mailer can be built before the server is up.
        self._clients = [
            aiosmtplib.SMTP(hostname=host, port=port, timeout=timeout_s,
                            local_hostname=local_hostname, start_tls=False)
            for _ in range(connections)
        ]
        self._idle: asyncio.Queue[aiosmtplib.SMTP] = asyncio.Queue()
        for smtp in self._clients:
            self._idle.put_nowait(smtp)
        self._closed = False

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[tuple[aiosmtplib.SMTP, bool]]:
        """Lends an open connection and says whether it was reused (it may have gone stale)."""
        smtp = await self._idle.get()
        try:
            reused = smtp.is_connected
            if not reused:
                try:
                    await smtp.connect()
                except BaseException:
                    smtp.close()
                    raise
            yield smtp, reused
        except (SMTPResponseException, SMTPRecipientsRefused):
            # A refused transaction: _attempt has already reset or dropped the session.
            raise
        except BaseException:
            # Whatever broke (or a cancellation mid-command) leaves the session in an unknown
            # state: drop it rather than let the next message inherit half a transaction.
            smtp.close()
            raise
        finally:
            self._idle.put_nowait(smtp)

    async def send(self, sender: str, recipients: Sequence[str], message: bytes) -> Outcome:
        """Delivers ``message`` and classifies the result; never raises for SMTP or network errors.

        A pooled connection that the server closed while idle fails before anything is
        transmitted; that one case is retried at once on another connection.
        """
        if self._closed:
            return Outcome(pb.DELIVERY_STATUS_TEMPORARY_FAILURE, 0, "mailer is shutting down")
        try:
            try:
                return await self._attempt(sender, recipients, message)
            except _StaleConnection:
                logger.debug("stale smtp connection to %s:%d, retrying", self.host, self.port)
                return await self._attempt(sender, recipients, message)
        except SMTPRecipientsRefused as exc:
            refused = exc.recipients[0]
            return classify(refused.code, refused.message)
        except SMTPConnectResponseError as exc:
            # A refusing greeting says the server is unwilling now, not that this mail is bad.
            return Outcome(pb.DELIVERY_STATUS_TEMPORARY_FAILURE, exc.code,
                           f"smtp {self.host}:{self.port} refused the connection: "
                           f"{exc.code} {exc.message}")
        except SMTPResponseException as exc:
            return classify(exc.code, exc.message)
        except (SMTPException, OSError, TimeoutError) as exc:
            # Connection refused, reset, or timed out: nothing says the server rejected the mail.
            reason = f"smtp {self.host}:{self.port}: {type(exc).__name__}: {exc}".rstrip(": ")
            return Outcome(pb.DELIVERY_STATUS_TEMPORARY_FAILURE, 0, reason)

    async def _attempt(self, sender: str, recipients: Sequence[str], message: bytes) -> Outcome:
        """One transaction on a pooled connection. Raises the SMTP or network error as is."""
        data_started = False
        async with self._connection() as (smtp, reused):
            started = time.perf_counter()
            try:
                await smtp.mail(sender)
                refused = []
                for recipient in recipients:
                    try:
                        await smtp.rcpt(recipient)
                    except aiosmtplib.SMTPRecipientRefused as exc:
                        refused.append(exc)
                if len(refused) == len(recipients):
                    raise SMTPRecipientsRefused(refused)
                data_started = True
                response = await smtp.data(message)
            except (SMTPResponseException, SMTPRecipientsRefused) as exc:
                await self._reset(smtp, exc)
                raise
            except SMTPServerDisconnected as exc:
                # Once DATA has begun the server may have taken the message: never resend then.
                if reused and not data_started:
                    raise _StaleConnection(str(exc)) from exc
                raise
            finally:
                SMTP_SECONDS.observe(time.perf_counter() - started)
        return classify(response.code, response.message)

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

    async def close(self) -> None:
        """QUITs every open connection (best effort) and refuses further sends."""
        self._closed = True
        for smtp in self._clients:
            if not smtp.is_connected:
                continue
            try:
                await smtp.quit()
            except (SMTPException, OSError, TimeoutError):
                smtp.close()
