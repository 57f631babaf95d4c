"""NotifierSettings: built from the seed, checked field by field."""

from __future__ import annotations

import dataclasses

import pytest

from heraldo.errors import ConfigError
from heraldo.notifier.settings import SERVICE_SCOPE, NotifierSettings
from heraldo.settings import load_seed, resolve


def test_the_seed_gives_every_field():
    settings = resolve(NotifierSettings, SERVICE_SCOPE, load_seed(), env={})

    assert (settings.smtp_host, settings.smtp_port, settings.smtp_connections) == (
        "127.0.0.1", 1025, 8)
    assert settings.sender_address == "billing@heraldo.invalid"
    assert settings.shutdown_grace_s == 10.0


def test_environment_wins_over_kv():
    kv = {**load_seed(), "config/notifier/max_in_flight": "32"}

    settings = resolve(NotifierSettings, SERVICE_SCOPE, kv, env={"HERALDO_MAX_IN_FLIGHT": "8"})

    assert settings.max_in_flight == 8


@pytest.mark.parametrize(("field", "value"), [
    ("smtp_host", " "), ("smtp_port", 0), ("smtp_port", 70000), ("smtp_timeout_s", 0),
    ("smtp_connections", 0), ("max_in_flight", -1), ("sender", "nobody"),
    ("reply_to", "not an address"), ("default_template", "../etc"), ("default_locale", "e"),
    ("log_level", "LOUD"), ("check_interval_s", 0), ("shutdown_grace_s", -1),
    ("smtp_timeout_s", float("nan")), ("rate_per_s", float("inf")),
    ("smtp_retry_backoff_s", float("nan")),
])
def test_a_bad_value_is_refused_naming_its_field(field, value):
    good = resolve(NotifierSettings, SERVICE_SCOPE, load_seed(), env={})

    with pytest.raises(ValueError, match=field):
        dataclasses.replace(good, **{field: value})


def test_a_bad_kv_value_keeps_the_last_good_settings():
    good = resolve(NotifierSettings, SERVICE_SCOPE, load_seed(), env={})
    kv = {**load_seed(), "config/notifier/smtp_connections": "0"}

    assert resolve(NotifierSettings, SERVICE_SCOPE, kv, env={}, fallback=good) == good


def test_a_bad_environment_value_is_an_error():
    with pytest.raises(ConfigError):
        resolve(NotifierSettings, SERVICE_SCOPE, load_seed(), env={"HERALDO_SMTP_PORT": "x"})


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e400"])
def test_a_duration_that_is_not_a_finite_number_is_refused(value):
    # float() reads all of these; a timer built from one fails every send.
    good = resolve(NotifierSettings, SERVICE_SCOPE, load_seed(), env={})
    kv = {**load_seed(), "config/notifier/smtp_timeout_s": value}

    assert resolve(NotifierSettings, SERVICE_SCOPE, kv, env={}, fallback=good) == good
    with pytest.raises(ConfigError, match="SMTP_TIMEOUT_S.*finite number"):
        resolve(NotifierSettings, SERVICE_SCOPE, load_seed(),
                env={"HERALDO_SMTP_TIMEOUT_S": value})
