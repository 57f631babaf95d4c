"""Where the sink keeps what it receives: one ``.eml`` file per message plus an in-memory index."""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from email.header import decode_header, make_header
from email.parser import BytesHeaderParser
from email.policy import compat32
from pathlib import Path

logger = logging.getLogger(__name__)

#: ``00000042-<message id>.eml``: arrival order first, so a directory listing sorts by it.
FILE_NAME = re.compile(r"(\d{8})-.*\.eml")
_UNSAFE = re.compile(r"[^A-Za-z0-9._=+-]+")
MAX_ID_CHARS_IN_NAME = 100


@dataclass(frozen=True)
class StoredMessage:
    """One received message as the index lists it."""

    n: int
    received_at: str
    mail_from: str
    to: str
    subject: str
    message_id: str
    notification_id: str
    size_bytes: int
    file: str

    def as_dict(self) -> dict:
        return asdict(self)


def _decoded(value: str | None) -> str:
    """A header's text with encoded words (``=?utf-8?...?=``) decoded; never raises."""
    if not value:
        return ""
    try:
        return str(make_header(decode_header(value)))
    except (ValueError, LookupError, UnicodeError):
        return value


def _head(data: bytes) -> bytes:
    # Only the header block is parsed: bodies can be large and the index needs none of them.
    for separator in (b"\r\n\r\n", b"\n\n"):
        end = data.find(separator)
        if end != -1:
            return data[:end + len(separator)]
    return data


class MessageStore:
    """Appends messages to ``directory`` and indexes them by arrival number (from 1).

    Messages already in the directory from an earlier run are indexed at start, and numbering
    continues after them.
    """

    def __init__(self, directory: Path, *, load: bool = True) -> None:
        """``load=False`` leaves the kept messages to ``loading()``, for a caller that must stay
        responsive while a large folder is read."""
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self._parser = BytesHeaderParser(policy=compat32)
        self._messages: dict[int, StoredMessage] = {}
        self._notification_ids: dict[str, int] = {}
        self._last_n = 0
        if load:
            for _ in self.loading():
                pass

    def loading(self, step: int = 1000) -> Iterator[int]:
        """Indexes the kept messages, yielding how many so far after every ``step`` of them."""
        for count, path in enumerate(sorted(self.directory.glob("*.eml")), start=1):
            match = FILE_NAME.fullmatch(path.name)
            if match:
                data = path.read_bytes()
                received = dt.datetime.fromtimestamp(path.stat().st_mtime, dt.UTC)
                self._index(int(match.group(1)), data, path.name, "", received)
            if count % step == 0:
                yield count

    def add(self, data: bytes, mail_from: str = "") -> StoredMessage:
        """Writes ``data`` to the next numbered file and indexes it."""
        n = self._last_n + 1
        head = self._parser.parsebytes(_head(data))
        message_id = (head.get("Message-ID") or "").strip()
        safe_id = _UNSAFE.sub("_", message_id.strip("<>"))[:MAX_ID_CHARS_IN_NAME] or "no-id"
        name = f"{n:08d}-{safe_id}.eml"
        # Small synchronous writes: a few kilobytes cost microseconds, far less than handing the
        # write to a thread, and keep arrival order and file numbering trivially consistent.
        (self.directory / name).write_bytes(data)
        return self._index(n, data, name, mail_from, dt.datetime.now(dt.UTC), head=head)

    def _index(self, n: int, data: bytes, name: str, mail_from: str, received: dt.datetime,
               head=None) -> StoredMessage:
        head = head if head is not None else self._parser.parsebytes(_head(data))
        notification_id = (head.get("X-Heraldo-Notification-Id") or "").strip()
        message = StoredMessage(
            n=n, received_at=received.isoformat(timespec="milliseconds"),
            mail_from=mail_from or _decoded(head.get("From")), to=_decoded(head.get("To")),
            subject=_decoded(head.get("Subject")),
            message_id=(head.get("Message-ID") or "").strip(), notification_id=notification_id,
            size_bytes=len(data), file=name)
        self._messages[n] = message
        if notification_id:
            self._notification_ids[notification_id] = self._notification_ids.get(
                notification_id, 0) + 1
        self._last_n = max(self._last_n, n)
        return message

    def get(self, n: int) -> StoredMessage | None:
        return self._messages.get(n)

    def raw(self, n: int) -> bytes | None:
        message = self._messages.get(n)
        if message is None:
            return None
        try:
            return (self.directory / message.file).read_bytes()
        except FileNotFoundError:
            return None

    def newest_first(self, limit: int | None = None) -> list[StoredMessage]:
        numbers = sorted(self._messages, reverse=True)
        if limit is not None:
            numbers = numbers[:limit]
        return [self._messages[n] for n in numbers]

    def stats(self) -> dict[str, int]:
        return {"count": len(self._messages),
                "unique_notification_ids": len(self._notification_ids)}

    def clear(self) -> int:
        """Deletes every stored message and file; numbering starts again from 1."""
        removed = len(self._messages)
        for message in self._messages.values():
            (self.directory / message.file).unlink(missing_ok=True)
        self._messages.clear()
        self._notification_ids.clear()
        self._last_n = 0
        return removed
