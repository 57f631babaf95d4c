"""The SMTP sink as a process: receives over SMTP, stores .eml files, reports over HTTP."""

from __future__ import annotations

import asyncio
import re
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

import aiosmtplib
import httpx
import pytest

START_TIMEOUT_S = 20


@dataclass
class Sink:
    process: asyncio.subprocess.Process
    smtp_port: int
    http: httpx.AsyncClient
    directory: Path


async def start_sink(directory: Path) -> tuple[asyncio.subprocess.Process, int, int]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "heraldo.sink", "--smtp-port", "0", "--http-port", "0",
        "--dir", str(directory), stderr=asyncio.subprocess.PIPE)
    line = (await asyncio.wait_for(process.stderr.readline(), START_TIMEOUT_S)).decode()
    match = re.search(r"listening smtp=127\.0\.0\.1:(\d+) http=http://127\.0\.0\.1:(\d+)/", line)
    assert match, line
    return process, int(match.group(1)), int(match.group(2))


async def stop_sink(process: asyncio.subprocess.Process) -> int:
    process.send_signal(signal.SIGTERM)
    await asyncio.wait_for(process.communicate(), START_TIMEOUT_S)
    return process.returncode


@pytest.fixture
async def sink(tmp_path) -> AsyncIterator[Sink]:
    process, smtp_port, http_port = await start_sink(tmp_path / "sink")
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{http_port}") as http:
        yield Sink(process, smtp_port, http, tmp_path / "sink")
    if process.returncode is None:
        await stop_sink(process)


def email(n: int, *, subject: str | None = None, notification_id: str | None = None,
          to: str = "Jane Doe <jane@example.com>") -> EmailMessage:
    message = EmailMessage()
    message["From"] = "billing@heraldo.invalid"
    message["To"] = to
    message["Subject"] = subject or f"Invoice {n}"
    message["Message-ID"] = f"<job-1={n}@heraldo>"
    message["X-Heraldo-Notification-Id"] = notification_id or f"job-1:{n}"
    message.set_content(f"Invoice {n}")
    return message


async def send_all(port: int, messages: list[EmailMessage], connections: int = 4) -> None:
    async def worker(share: list[EmailMessage]) -> None:
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False) as smtp:
            for message in share:
                await smtp.send_message(message)

    await asyncio.gather(*(worker(messages[i::connections]) for i in range(connections)))


async def test_stores_every_message_and_counts_unique_notification_ids(sink):
    messages = [email(n) for n in range(1, 1001)]
    messages.append(email(1001, notification_id="job-1:1"))

    await send_all(sink.smtp_port, messages)
    stats = (await sink.http.get("/api/stats")).json()
    listed = (await sink.http.get("/api/messages")).json()

    assert stats == {"count": 1001, "unique_notification_ids": 1000}
    assert len(list(sink.directory.glob("*.eml"))) == 1001
    assert [m["n"] for m in listed[:2]] == [1001, 1000]
    assert {"received_at", "to", "subject", "message_id", "notification_id"} <= set(listed[0])


async def test_lists_decoded_headers_and_serves_the_raw_message(sink):
    await send_all(sink.smtp_port, [email(1, subject="Factura 1: 1234,50 € <b>", to=(
        "José Ñúñez <jose@example.com>"))], connections=1)

    [listed] = (await sink.http.get("/api/messages")).json()
    raw = await sink.http.get("/messages/1")
    page = await sink.http.get("/")

    assert listed["subject"] == "Factura 1: 1234,50 € <b>"
    assert listed["to"] == "José Ñúñez <jose@example.com>"
    assert listed["message_id"] == "<job-1=1@heraldo>"
    assert listed["notification_id"] == "job-1:1"
    assert b"X-Heraldo-Notification-Id: job-1:1" in raw.content
    assert "Factura 1: 1234,50 € &lt;b&gt;" in page.text
    assert "<b>" not in page.text.split("<table>")[1]
    assert "&lt;job-1=1@heraldo&gt;" in page.text
    assert (await sink.http.get("/messages/2")).status_code == 404
    assert list(sink.directory.glob("*.eml"))[0].name == "00000001-job-1=1_heraldo.eml"


async def test_delete_clears_messages_and_files(sink):
    await send_all(sink.smtp_port, [email(n) for n in range(1, 6)], connections=1)

    deleted = await sink.http.delete("/api/messages")
    stats = (await sink.http.get("/api/stats")).json()

    assert deleted.json() == {"deleted": 5}
    assert stats == {"count": 0, "unique_notification_ids": 0}
    assert not list(sink.directory.glob("*.eml"))


async def test_sigterm_stops_it_cleanly_and_a_restart_keeps_what_was_stored(sink):
    await send_all(sink.smtp_port, [email(n) for n in range(1, 4)], connections=1)

    code = await stop_sink(sink.process)
    process, smtp_port, http_port = await start_sink(sink.directory)
    try:
        await send_all(smtp_port, [email(4)], connections=1)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{http_port}") as http:
            stats = (await http.get("/api/stats")).json()
            newest = (await http.get("/api/messages")).json()[0]
    finally:
        restarted_code = await stop_sink(process)

    assert (code, restarted_code) == (0, 0)
    assert stats == {"count": 4, "unique_notification_ids": 4}
    assert newest["n"] == 4


async def test_a_signal_while_kept_messages_are_read_stops_it_at_once(tmp_path):
    # Enough kept messages that reading them lasts far longer than a signal takes to arrive.
    directory = tmp_path / "sink"
    directory.mkdir()
    raw = email(1).as_bytes()
    for n in range(1, 30_001):
        (directory / f"{n:08d}-job-1={n}@heraldo.eml").write_bytes(raw)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "heraldo.sink", "--smtp-port", "0", "--http-port", "0",
        "--dir", str(directory), stderr=asyncio.subprocess.PIPE)
    try:
        line = (await asyncio.wait_for(process.stderr.readline(), START_TIMEOUT_S)).decode()
        assert "reading kept messages" in line, line
        process.send_signal(signal.SIGINT)
        _, stderr = await asyncio.wait_for(process.communicate(), START_TIMEOUT_S)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()

    assert process.returncode == 0, stderr.decode()
    assert "stopped while reading kept messages" in stderr.decode()
    assert "listening" not in stderr.decode()
    assert len(list(directory.glob("*.eml"))) == 30_000
