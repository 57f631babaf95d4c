"""One SMTP transaction with PIPELINING (RFC 2920), on a connection aiosmtplib opened.

aiosmtplib sends a command and waits for its reply before the next, so a message costs four round
trips: MAIL, RCPT, DATA and the content. A server that offers PIPELINING takes MAIL, RCPT and DATA
in one write and answers them together, which halves the round trips, the socket writes and the
wake-ups of the event loop per message.

aiosmtplib's protocol expects one reply per command it sent, and drops data that arrives while
it waits for none, so it cannot read several replies from one packet. For the length of one
transaction the connection's transport is handed to ``PipelinedExchange``, which reads every
reply, and then handed back. Everything else (connecting, STARTTLS, AUTH, EHLO, RSET, QUIT) stays
with aiosmtplib. A connection lost during the exchange is passed on to aiosmtplib's protocol, so
the client knows its link is gone and reconnects on next use.
"""

from __future__ import annotations

import asyncio
import collections
import re
from collections.abc import Sequence

from aiosmtplib import SMTPResponse, SMTPResponseException, SMTPServerDisconnected
from aiosmtplib.errors import SMTPReadTimeoutError

#: The limit RFC 5321 gives a reply line, with room to spare; a longer one is a broken server.
MAX_REPLY_LINE = 2048
_LEADING_PERIOD = re.compile(rb"(?m)^\.")
_LINE_END = re.compile(rb"\r\n|\n|\r")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class PipelinedExchange(asyncio.Protocol):
    """Reads the replies of pipelined commands on a transport borrowed from ``owner``."""

    def __init__(self, owner: asyncio.BaseProtocol) -> None:
        self._owner = owner
        self._buffer = bytearray()
        self._replies: collections.deque[SMTPResponse] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self._failure: Exception | None = None

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        try:
            while (reply := self._next_reply()) is not None:
                self._replies.append(reply)
        except SMTPResponseException as exc:
            self._fail(exc)
            return
        self._wake()

    def eof_received(self) -> bool:
        self._fail(SMTPServerDisconnected("the server closed the connection"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(SMTPServerDisconnected(f"connection lost: {exc}" if exc
                                          else "connection lost"))
        # aiosmtplib's protocol must learn it too, or the client would think the link open.
        self._owner.connection_lost(exc)

    def _fail(self, exc: Exception) -> None:
        if self._failure is None:
            self._failure = exc
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _next_reply(self) -> SMTPResponse | None:
        """Takes one complete (possibly multi-line) reply off the buffer, if there is one."""
        lines, offset = [], 0
        while (end := self._buffer.find(b"\n", offset)) != -1:
            line = bytes(self._buffer[offset:end + 1])
            if len(line) > MAX_REPLY_LINE or not line[:3].isdigit():
                raise SMTPResponseException(-1, f"malformed SMTP reply line {line[:80]!r}")
            offset = end + 1
            lines.append(line[4:].strip(b" \t\r\n"))
            if line[3:4] != b"-":
                del self._buffer[:offset]
                return SMTPResponse(int(line[:3]), b"\n".join(lines).decode("utf-8", "replace"))
        if len(self._buffer) - offset > MAX_REPLY_LINE:
            raise SMTPResponseException(-1, "SMTP reply line too long")
        return None

    async def reply(self, timeout_s: float) -> SMTPResponse:
        """The next reply, in the order the commands were sent."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not self._replies:
            if self._failure is not None:
                raise self._failure
            self._waiter = loop.create_future()
            try:
                async with asyncio.timeout_at(deadline):
                    await self._waiter
            except TimeoutError as exc:
                raise SMTPReadTimeoutError("timed out waiting for the server's reply") from exc
            finally:
                self._waiter = None
        return self._replies.popleft()


def command_line(verb: bytes, address: str, options: Sequence[str], encoding: str) -> bytes:
    """``MAIL FROM:<address>`` or ``RCPT TO:<address>`` with its options, CRLF included.

    Raises:
        ValueError: a control character in the address or an option, which could smuggle in a
            command of its own.
    """
    if _CONTROL.search(address) or any(_CONTROL.search(option) for option in options):
        raise ValueError("an SMTP address or option contains a control character")
    return b" ".join([verb + b"<" + address.encode(encoding) + b">",
                      *(option.encode("ascii") for option in options)]) + b"\r\n"


def data_payload(message: bytes) -> bytes:
    """``message`` as DATA content: CRLF line endings, leading periods doubled, the final dot."""
    if message.count(b"\n") != message.count(b"\r\n") or \
            message.count(b"\r") != message.count(b"\r\n"):
        message = _LINE_END.sub(b"\r\n", message)
    if not message.endswith(b"\r\n"):
        message += b"\r\n"
    if b"\n." in message or message.startswith(b"."):
        message = _LEADING_PERIOD.sub(b"..", message)
    return message + b".\r\n"


class Transaction:
    """The transport of ``owner`` lent to a ``PipelinedExchange`` for one transaction.

    Use as ``async with Transaction(protocol) as exchange``; the transport goes back to
    aiosmtplib's protocol on the way out, unless the connection is gone by then.
    """

    def __init__(self, owner: asyncio.BaseProtocol) -> None:
        transport = getattr(owner, "transport", None)
        if transport is None or transport.is_closing():
            raise SMTPServerDisconnected("connection lost")
        self._owner = owner
        self.transport: asyncio.Transport = transport
        self.exchange = PipelinedExchange(owner)

    async def __aenter__(self) -> Transaction:
        self.transport.set_protocol(self.exchange)
        return self

    async def __aexit__(self, *exc_info) -> None:
        if not self.transport.is_closing():
            self.transport.set_protocol(self._owner)

    def write(self, data: bytes) -> None:
        if self.transport.is_closing():
            raise SMTPServerDisconnected("connection lost")
        self.transport.write(data)
