"""Logging set-up shared by every service, and masking of personal data."""

from __future__ import annotations

import logging
import sys

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def configure(level: str = "INFO", *, service: str | None = None) -> None:
    """One line per record on stderr, prefixed with the service name when given."""
    prefix = f"{service} " if service else ""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(prefix + LOG_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiosmtplib and asyncio are chatty at INFO about things we already log once per RPC.
    logging.getLogger("aiosmtplib").setLevel(logging.WARNING)
    # Alembic narrates every plugin it loads at INFO; a migration that runs is logged by us.
    logging.getLogger("alembic").setLevel(logging.WARNING)


def mask_email(address: str) -> str:
    """``jane.doe@example.com`` becomes ``j***@example.com``: enough to tell mails apart."""
    local, sep, domain = address.rpartition("@")
    if not sep:
        return "***"
    return f"{local[:1]}***@{domain}"
