"""The shortcut for common addresses gives exactly email_validator's answers."""

from __future__ import annotations

import random

import pytest
from email_validator import EmailNotValidError, validate_email

from heraldo.addresses import plainly_valid, sendable_address
from heraldo.bench.workloads import generate_synthetic

LOCAL_CHARACTERS = "abcXYZ019.-_+!#$%&'*/=?^`{|}~ é\"@"
DOMAIN_CHARACTERS = "abcxyzABC09-._"
TOP_LEVEL = ["com", "uk", "de", "io", "museum", "c", "x1", "123", "localhost", "test", "local",
             "invalid", "onion", "arpa", "xn--p1ai", "COM", "a" * 63, "a" * 64]


def _validator_answer(email: str) -> tuple[str, str]:
    try:
        valid = validate_email(email, check_deliverability=False, allow_smtputf8=True)
    except EmailNotValidError as exc:
        return "", str(exc)
    return valid.ascii_email or f"{valid.local_part}@{valid.ascii_domain}", ""


def _random_address(rng: random.Random) -> str:
    local = "".join(rng.choice(LOCAL_CHARACTERS) for _ in range(rng.choice((1, 5, 20, 64, 65))))
    if rng.random() < 0.6:
        # Mostly well-formed local parts, so the shortcut is exercised and not only refused.
        local = ".".join(rng.choice(("ann", "b0b", "o'neil", "x+tag", "a_b", "Z~", "Info", "SALES",
                                     "postMaster", "www")) for _ in range(rng.randint(1, 3)))
    labels = []
    for _ in range(rng.randint(0, 3)):
        length = rng.choice((1, 3, 10, 63, 64))
        labels.append("".join(rng.choice(DOMAIN_CHARACTERS) for _ in range(length))
                      if rng.random() < 0.3 else rng.choice(("mail", "a-b", "x9", "sub", "b--c"))
                      [:length])
    return f"{local}@{'.'.join([*labels, rng.choice(TOP_LEVEL)])}"


def test_the_shortcut_agrees_with_email_validator_on_random_addresses():
    rng = random.Random(20261204)
    addresses = {_random_address(rng) for _ in range(20000)}
    addresses |= {"a" * 64 + "@example.com", "a" * 65 + "@example.com",
                  "x@" + ".".join(["a" * 63] * 4) + ".com", "x@" + "a" * 63 + ".localhost",
                  "x@mail.test", "x@xn--bcher-kva.de", "x@b--c.de", ".x@example.com",
                  "x.@example.com", "x..y@example.com", "x@example..com", "x@-a.com", "x@a-.com",
                  "x@EXAMPLE.com", "x@example.c", "x@example.123", "x@localhost",
                  "Info@example.com", "POSTMASTER@mail.co.uk", "WebMaster@acme-ltd.com",
                  "info@example.com", "x@ab--c.com", "x@" + "a" * 63 + "." + "b" * 63 + "."
                  + "c" * 63 + "." + "d" * 56 + ".com", "x@" + "a" * 63 + "." + "b" * 63 + "."
                  + "c" * 63 + "." + "d" * 57 + ".com"}

    shortcut = [address for address in addresses if plainly_valid(address)]
    for address in shortcut:
        assert _validator_answer(address) == (address, ""), address
    # Both sides are exercised: many addresses take the shortcut, many the full check.
    assert 1000 < len(shortcut) < len(addresses) - 1000
    assert sum(1 for address in addresses if _validator_answer(address)[1]) > 1000


@pytest.mark.parametrize("address", [
    "maria.garcia@example.com", "accounts.12@acme-ltd.example.com", "o'neil+invoices@mail.co.uk",
])
def test_common_addresses_take_the_shortcut(address):
    assert plainly_valid(address)
    assert sendable_address(address) == (address, "")


@pytest.mark.parametrize("address", [
    "josé@example.com", "x@bücher.de", "x@Example.com", "x@mail.test", "x@xn--bcher-kva.de",
    "not an address", "x@localhost", "Info@example.com", "POSTMASTER@mail.co.uk",
])
def test_other_addresses_get_the_full_check(address):
    assert not plainly_valid(address)
    assert sendable_address(address) == _validator_answer(address)


def test_the_synthetic_customers_addresses_get_the_same_answers():
    emails = [email for _, _, email, _, _ in generate_synthetic(30000).customers if email]
    assert emails
    for email in emails:
        assert sendable_address(email) == _validator_answer(email), email


def test_a_role_mailbox_is_written_in_lower_case_as_email_validator_does():
    assert sendable_address("Info@example.com") == ("info@example.com", "")
