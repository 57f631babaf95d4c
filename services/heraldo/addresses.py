"""Which email addresses can be mailed, and in what form: shared by the batch and the notifier.

email_validator takes about 30 us to check an address: in a job where nearly every customer is
new, about a tenth of the notifier's CPU and a quarter of the batch's went to it. Most addresses
have a shape whose check can only pass and give them back unchanged; those skip it. The shape
follows the rules of email_validator 2 (the dependency is held below 3 for that), and a test
compares the two.
"""

from __future__ import annotations

import functools
import re

from email_validator import SPECIAL_USE_DOMAIN_NAMES, EmailNotValidError, validate_email
from email_validator.rfc_constants import CASE_INSENSITIVE_MAILBOX_NAMES

#: Recent addresses whose check is remembered: a few megabytes, flat however long the job.
ADDRESS_CACHE_SIZE = 8192
#: The common shape: an ASCII dot-atom local part, then a lower-case host name of two or more
#: labels under an alphabetic top-level one.
_PLAIN_ADDRESS = re.compile(r"(?P<local>[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]{1,64}"
                            r"(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*)"
                            r"@(?P<domain>(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+"
                            r"(?P<tld>[a-z]{2,63}))")
#: email_validator's own limits, which the pattern alone does not bound.
MAX_LOCAL_PART_CHARS = 64
MAX_ADDRESS_CHARS = 254


def plainly_valid(email: str) -> bool:
    """True when ``email`` has the common shape whose check by email_validator can only pass
    and give the address back unchanged; False sends it to the full check.

    Conservative on purpose: any doubled hyphen (the IDNA rules on ``xn--`` labels), special-use
    top-level name (``localhost``, ``test``...) or role mailbox (``Info@``, ``postmaster@``...,
    which email_validator writes in lower case, RFC 2142) goes to email_validator.
    """
    match = _PLAIN_ADDRESS.fullmatch(email)
    return (match is not None and len(email) <= MAX_ADDRESS_CHARS
            and len(match["local"]) <= MAX_LOCAL_PART_CHARS and "--" not in match["domain"]
            and match["tld"] not in SPECIAL_USE_DOMAIN_NAMES
            and match["local"].lower() not in CASE_INSENSITIVE_MAILBOX_NAMES)


@functools.lru_cache(maxsize=ADDRESS_CACHE_SIZE)
def sendable_address(email: str) -> tuple[str, str]:
    """The address to give SMTP for ``email``, or why it cannot be used: ``(address, problem)``.

    Syntax only: a DNS lookup per customer would cost more than sending the mail. An
    internationalised domain goes as its ASCII (IDNA) form; a non-ASCII local part has none, so
    it stays UTF-8 and the mailer needs the server's SMTPUTF8 for it. Cached: a customer with
    many invoices is checked once.
    """
    if plainly_valid(email):
        return email, ""
    try:
        valid = validate_email(email, check_deliverability=False, allow_smtputf8=True)
    except EmailNotValidError as exc:
        return "", str(exc)
    return valid.ascii_email or f"{valid.local_part}@{valid.ascii_domain}", ""
