"""The notifier's settings: built once from the KV seed, Consul KV and the environment."""

from __future__ import annotations

import dataclasses
import functools
import logging
import re
from dataclasses import dataclass
from email.utils import parseaddr

from heraldo.notifier.mailer import TLS_MODES, SMTPTarget
from heraldo.settings import not_negative, positive

logger = logging.getLogger(__name__)

#: The KV scope of the notifier's own keys: ``config/notifier/<name>``.
SERVICE_SCOPE = "notifier"

TEMPLATE_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
LOCALE_TAG = re.compile(r"[A-Za-z]{2,3}(-[A-Za-z0-9]{1,8})*")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _mailbox(name: str, value: str) -> None:
    _, address = parseaddr(value)
    if "@" not in address:
        raise ValueError(f"{name} must be an address like 'Billing <billing@example.com>', "
                         f"got {value!r}")


@dataclass(frozen=True, repr=False)
class NotifierSettings:
    """Everything the notifier reads from ``config/notifier/*`` and ``config/application/*``.

    Raises:
        ValueError: a field has a bad value; the message names the field.
    """

    smtp_host: str
    smtp_port: int
    smtp_timeout_s: float
    smtp_connections: int
    max_in_flight: int
    sender: str
    reply_to: str
    default_template: str
    default_locale: str
    log_level: str
    check_interval_s: float
    deregister_critical_after_s: float
    shutdown_grace_s: float
    #: ``none``, ``starttls`` (required) or ``implicit`` TLS; AUTH when a username is set.
    smtp_tls: str = "none"
    smtp_username: str = ""
    #: Better given as HERALDO_SMTP_PASSWORD than in KV, which every service can read.
    smtp_password: str = ""
    smtp_ca_file: str = ""
    #: Reconnect after this many messages on one connection; 0 means never.
    smtp_max_messages_per_connection: int = 0
    #: Further tries of a temporary failure that cannot have been delivered, with doubling pauses.
    smtp_retries: int = 2
    smtp_retry_backoff_s: float = 0.5
    #: Messages per second for the whole cluster, shared among the live replicas; 0 = unlimited.
    rate_per_s: float = 0.0
    #: Messages per second to one recipient domain, from this replica; 0 = unlimited.
    domain_rate_per_s: float = 0.0

    def __post_init__(self) -> None:
        if not self.smtp_host.strip():
            raise ValueError("smtp_host must not be empty")
        if not 0 < self.smtp_port < 65536:
            raise ValueError(f"smtp_port must be between 1 and 65535, got {self.smtp_port}")
        for name in ("smtp_timeout_s", "smtp_connections", "max_in_flight", "check_interval_s",
                     "deregister_critical_after_s"):
            positive(name, getattr(self, name))
        for name in ("shutdown_grace_s", "smtp_max_messages_per_connection", "smtp_retries",
                     "smtp_retry_backoff_s", "rate_per_s", "domain_rate_per_s"):
            not_negative(name, getattr(self, name))
        if self.smtp_tls not in TLS_MODES:
            raise ValueError(f"smtp_tls must be one of {', '.join(TLS_MODES)}, "
                             f"got {self.smtp_tls!r}")

        _mailbox("sender", self.sender)
        if self.reply_to:
            _mailbox("reply_to", self.reply_to)
        if not TEMPLATE_NAME.fullmatch(self.default_template):
            raise ValueError(f"default_template must be a template set name like 'invoice', "
                             f"got {self.default_template!r}")
        if not LOCALE_TAG.fullmatch(self.default_locale):
            raise ValueError(f"default_locale must be a language tag like 'en-GB', "
                             f"got {self.default_locale!r}")
        if self.log_level.upper() not in LOG_LEVELS:
            raise ValueError(f"log_level must be one of {', '.join(LOG_LEVELS)}, "
                             f"got {self.log_level!r}")

    @property
    def smtp_target(self) -> SMTPTarget:
        return SMTPTarget(host=self.smtp_host, port=self.smtp_port, tls=self.smtp_tls,
                          username=self.smtp_username, password=self.smtp_password,
                          ca_file=self.smtp_ca_file)

    def __repr__(self) -> str:
        # The password never reaches a log line, whoever prints the settings.
        fields = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self)
                           if f.name != "smtp_password")
        return f"NotifierSettings({fields})"

    @functools.cached_property
    def sender_address(self) -> str:
        """The bare address of ``sender``, used as the SMTP envelope sender (parsed once)."""
        return parseaddr(self.sender)[1]
