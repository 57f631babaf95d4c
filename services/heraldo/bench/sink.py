"""Postfix's ``smtp-sink`` as the target server, and ``smtp-source`` as the machine's ceiling.

``smtp-sink -c`` writes a running counter (``sess=N quit=N mesg=N`` and a carriage return) to its
standard output every time a message ends; a reader thread keeps the latest count, so the benchmark
sees each run's progress, and the moment of its first email, without touching the mail itself.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from heraldo.errors import ConfigError, Unavailable

logger = logging.getLogger(__name__)

#: How many connections the sink keeps queued: it must exceed every client's pool together.
SINK_BACKLOG = 1000
#: ``smtp-sink`` must be started as root and told which account to drop to.
SINK_USER = "nobody"
STARTUP_TIMEOUT_S = 10.0
_COUNTER = re.compile(rb"mesg=(\d+)")


def postfix_tool(name: str) -> str:
    """The path of ``smtp-sink`` or ``smtp-source``.

    Raises:
        ConfigError: Postfix's tools are not installed; the message says how to get them.
    """
    found = shutil.which(name) or (f"/usr/sbin/{name}" if Path(f"/usr/sbin/{name}").exists()
                                   else None)
    if found is None:
        raise ConfigError(f"{name} is missing: install Debian's postfix package "
                          "(apt-get install postfix), which ships smtp-sink and smtp-source")
    return found


class SmtpSink:
    """A running ``smtp-sink`` on 127.0.0.1:``port`` whose message count is read as it grows."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._process: subprocess.Popen | None = None
        self._reader: threading.Thread | None = None
        self._count = 0
        self._lock = threading.Lock()
        self._first_after: int | None = None
        self._first_at: float | None = None

    def start(self) -> SmtpSink:
        """Raises ConfigError when smtp-sink is missing, Unavailable when it does not listen."""
        argv = [postfix_tool("smtp-sink"), "-c"]
        if os.geteuid() == 0:
            argv += ["-u", SINK_USER]
        argv += [f"127.0.0.1:{self.port}", str(SINK_BACKLOG)]
        self._process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                         stdin=subprocess.DEVNULL)
        self._reader = threading.Thread(target=self._read, name="smtp-sink-counter", daemon=True)
        self._reader.start()
        self._wait_listening()
        logger.info("smtp-sink started port=%d pid=%d", self.port, self._process.pid)
        return self

    def _wait_listening(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise Unavailable(f"smtp-sink exited with code {self._process.returncode}: "
                                  f"{self._process.stderr.read().decode(errors='replace')}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.05)
        raise Unavailable(f"smtp-sink did not listen on 127.0.0.1:{self.port} "
                          f"within {STARTUP_TIMEOUT_S:.0f} s")

    def _read(self) -> None:
        # Large reads and only the last counter of each: the sink prints one line per message,
        # and this thread shares the machine with what is being measured.
        stream = self._process.stdout.fileno()
        tail = b""
        while True:
            data = os.read(stream, 1 << 16)
            if not data:
                return
            tail = (tail + data)[-64:]
            found = _COUNTER.findall(tail)
            if not found:
                continue
            now = time.perf_counter()
            with self._lock:
                self._count = int(found[-1])
                if (self._first_after is not None and self._first_at is None
                        and self._count > self._first_after):
                    self._first_at = now

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def count(self) -> int:
        """Messages the sink has accepted since it started."""
        with self._lock:
            return self._count

    def watch_first(self) -> int:
        """Starts watching for the next message; returns the count now."""
        with self._lock:
            self._first_after, self._first_at = self._count, None
            return self._count

    @property
    def first_at(self) -> float | None:
        """``time.perf_counter()`` when the first message after ``watch_first`` arrived."""
        with self._lock:
            return self._first_at

    def stop(self) -> None:
        if self._process is None or self._process.poll() is not None:
            return
        self._process.terminate()
        try:
            self._process.wait(5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


@dataclass(frozen=True)
class SourceRun:
    messages: int
    sessions: int
    elapsed_s: float
    cpu_s: float


def run_smtp_source(port: int, *, messages: int, sessions: int, message_file: Path,
                    timeout_s: float = 600.0) -> SourceRun:
    """Sends ``messages`` copies of ``message_file`` with ``sessions`` reused connections.

    Raises:
        Unavailable: smtp-source failed; the message carries its output.
    """
    argv = [postfix_tool("smtp-source"), "-d", "-s", str(sessions), "-m", str(messages),
            "-F", str(message_file), "-f", "billing@heraldo.invalid", "-t", "bench@example.com",
            f"127.0.0.1:{port}"]
    started = time.perf_counter()
    before = os.times()
    completed = subprocess.run(argv, capture_output=True, timeout=timeout_s, check=False)
    elapsed_s = time.perf_counter() - started
    after = os.times()
    if completed.returncode != 0:
        raise Unavailable(f"smtp-source exited with code {completed.returncode}: "
                          f"{completed.stderr.decode(errors='replace')[-500:]}")
    cpu_s = (after.children_user - before.children_user) + (
        after.children_system - before.children_system)
    return SourceRun(messages=messages, sessions=sessions, elapsed_s=elapsed_s, cpu_s=cpu_s)
