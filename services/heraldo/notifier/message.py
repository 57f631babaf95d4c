"""Builds the bytes of a notification email: headers plus a multipart/alternative body.

Building an ``email.message.EmailMessage`` and flattening it costs over 2 ms of CPU per email,
which caps a process near 400 emails per second before any network work. The layout here is
fixed (two UTF-8 text parts), so the bytes are assembled directly and only the parts that need
care (encoded words in headers, quoted-printable bodies, dates) use the stdlib's helpers.

The bytes are 7-bit clean, except for a recipient whose address has a non-ASCII local part: that
address can only be written in UTF-8 (RFC 6532), and the mailer sends such a message with
SMTPUTF8 or not at all.
"""

from __future__ import annotations

import binascii
import datetime as dt
import functools
import logging
import re
import time
from dataclasses import dataclass
from email.utils import format_datetime, parseaddr

from heraldo.notifier.render import RenderedEmail

logger = logging.getLogger(__name__)

MESSAGE_ID_DOMAIN = "heraldo"
CRLF = "\r\n"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
_BLANKS = re.compile(r"[ \t]+")
_SPECIALS = re.compile(r'[][\\()<>@,:;".]')
_DOT_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")


def message_id_for(notification_id: str) -> str:
    """The Message-ID of a notification, the same on every attempt so a resend is recognisable.

    ``notification_id`` uses ``[A-Za-z0-9._:-]`` (the servicer checks it). A colon is not allowed
    in a Message-ID, so it becomes ``=``; dots that would break the dot-atom (leading, trailing,
    doubled) become ``~``. Neither replacement occurs in an id, so distinct ids keep distinct
    Message-IDs.
    """
    local = notification_id.replace(":", "=")
    if not _DOT_ATOM.fullmatch(local):
        local = local.replace(".", "~")
    return f"<{local}@{MESSAGE_ID_DOMAIN}>"


def _header_text(name: str, value: str) -> str:
    """One header line's value: control characters (a CR/LF injection) collapse to a space."""
    # Only ASCII blanks collapse: str.split() would also eat the no-break space that keeps an
    # amount and its currency together.
    value = _BLANKS.sub(" ", _CONTROL.sub(" ", value)).strip(" ")
    if value.isascii():
        return value
    return encoded_words(value, first_line_used=len(name) + 2)


#: RFC 2047 Q encoding of each byte: the characters safe in any header context stay as they are,
#: a space becomes "_", everything else (UTF-8 bytes included) "=XX".
_Q_BYTE = [chr(byte) if chr(byte).isascii() and (chr(byte).isalnum() or chr(byte) in "!*+-/")
           else "_" if byte == 0x20 else f"={byte:02X}" for byte in range(256)]
#: An encoded word is at most 75 characters (RFC 2047), a header line at most 76 here.
MAX_ENCODED_WORD = 75
MAX_LINE = 76
_Q_PREFIX, _Q_SUFFIX = "=?utf-8?q?", "?="


@functools.lru_cache(maxsize=4096)
def _q_character(character: str) -> str:
    return "".join(_Q_BYTE[byte] for byte in character.encode("utf-8"))


def encoded_words(value: str, *, first_line_used: int = 0) -> str:
    """``value`` as RFC 2047 encoded words (UTF-8, Q encoding), folded onto lines of 76.

    Words break between characters, never inside one's UTF-8 bytes. ``first_line_used`` is what
    precedes the value on its first line (the header's name and ": "). The stdlib's
    ``email.header.Header`` does the same but tries both encodings first, at ten times the cost.
    """
    overhead = len(_Q_PREFIX) + len(_Q_SUFFIX)
    room = min(MAX_ENCODED_WORD, MAX_LINE - first_line_used) - overhead
    words, word, used = [], [], 0
    for character in value:
        encoded = _q_character(character)
        if used + len(encoded) > room and word:
            words.append(word)
            # Later lines start with the folding space.
            word, used, room = [], 0, min(MAX_ENCODED_WORD, MAX_LINE - 1) - overhead
        word.append(encoded)
        used += len(encoded)
    words.append(word)
    return (CRLF + " ").join(_Q_PREFIX + "".join(word) + _Q_SUFFIX for word in words)


def _mailbox(name: str, address: str) -> str:
    """``Name <address>``. A non-ASCII address (SMTPUTF8) is written as it is, while the name
    keeps the form every reader understands: encoded words, or a quoted string."""
    name = " ".join(_CONTROL.sub(" ", name).split())
    if not name:
        return address
    if not name.isascii():
        shown = encoded_words(name, first_line_used=len("To: "))
    elif _SPECIALS.search(name):
        shown = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
    else:
        shown = name
    return f"{shown} <{address}>"


@functools.lru_cache(maxsize=16)
def _address_header(value: str) -> str:
    """A configured ``Name <address>`` as a header value; the few configured ones are cached."""
    return _mailbox(*parseaddr(value))


def _quoted_printable(text: str) -> bytes:
    body = text.replace("\r\n", "\n").replace("\r", "\n").replace("\n", CRLF)
    if not body.endswith(CRLF):
        body += CRLF
    return binascii.b2a_qp(body.encode("utf-8"))


#: The second the Date header was last formatted for, and its text.
_date_cache: list = [None, ""]


def _date_now() -> str:
    """The Date header's value for now, formatted once per second rather than per email."""
    second = int(time.time())
    if _date_cache[0] != second:
        _date_cache[:] = [second, format_datetime(dt.datetime.fromtimestamp(second, dt.UTC))]
    return _date_cache[1]


@dataclass(frozen=True)
class Envelope:
    """Who a message goes to and the ids it carries, beside what was rendered."""

    notification_id: str
    invoice_number: str
    to_name: str
    to_address: str
    sender: str
    reply_to: str = ""


def compose(envelope: Envelope, rendered: RenderedEmail, *,
            date: dt.datetime | None = None) -> bytes:
    """The full message, CRLF line endings, ready for SMTP DATA.

    7-bit clean unless the recipient's address is not ASCII (see the module's docstring).
    """
    date_text = format_datetime(date) if date else _date_now()
    message_id = message_id_for(envelope.notification_id)
    # Quoted-printable writes every "=" as "=3D", so a boundary starting "=_" can never occur
    # inside a part; deriving the rest from the Message-ID keeps the bytes deterministic.
    boundary = f"=_heraldo_{message_id[1:-1].replace('@', '.')}"

    headers = [
        f"Date: {date_text}",
        f"Message-ID: {message_id}",
        f"From: {_address_header(envelope.sender)}",
    ]
    if envelope.reply_to:
        headers.append(f"Reply-To: {_address_header(envelope.reply_to)}")
    headers += [
        f"To: {_mailbox(envelope.to_name, envelope.to_address)}",
        f"Subject: {_header_text('Subject', rendered.subject)}",
        f"Content-Language: {rendered.language}",
        f"X-Heraldo-Notification-Id: {envelope.notification_id}",
        f"X-Heraldo-Invoice: {_header_text('X-Heraldo-Invoice', envelope.invoice_number)}",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/alternative; boundary="{boundary}"',
    ]
    part_headers = "Content-Type: text/{kind}; charset=utf-8" + CRLF \
        + "Content-Transfer-Encoding: quoted-printable" + CRLF + CRLF

    head = (CRLF.join(headers) + CRLF + CRLF).encode("utf-8")
    delimiter = f"--{boundary}{CRLF}".encode("ascii")
    return b"".join((
        head,
        delimiter, part_headers.format(kind="plain").encode("ascii"),
        _quoted_printable(rendered.text),
        delimiter, part_headers.format(kind="html").encode("ascii"),
        _quoted_printable(rendered.html),
        f"--{boundary}--{CRLF}".encode("ascii"),
    ))
