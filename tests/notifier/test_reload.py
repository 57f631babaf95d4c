"""Hot reload from Consul KV (the development stand-in, in process): rates, SMTP target,
templates and the cluster-wide rate shared among live replicas, all without a restart.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Callable

import pytest
from aiosmtpd.smtp import SMTP

from heraldo.consul_dev.server import ConsulDevServer
from heraldo.notifier.reload import LiveConfig
from heraldo.registry import ConsulAddress
from heraldo.settings import load_seed
from heraldo.v1 import notification_pb2 as pb

from .conftest import FaultyHandler, make_request, template_set

# Reloading does not depend on the delivery log's database: SQLite is enough here.
pytestmark = pytest.mark.parametrize("delivery_url", ["sqlite"], indirect=True)

DEADLINE_S = 20.0
RATE_KEY = "config/notifier/rate_per_s"


@pytest.fixture
async def consul_kv() -> AsyncIterator:
    server = ConsulDevServer("127.0.0.1", 0)
    await server.start()
    client = ConsulAddress(host="127.0.0.1", port=server.port).client()
    yield client
    await client.close()
    await server.stop()


@pytest.fixture
async def live(consul_kv) -> AsyncIterator[Callable]:
    """Starts following KV for a notifier; every follower stops at the end of the test."""
    tasks = []

    def follow(servicer) -> LiveConfig:
        # The defaults are the settings the test started the notifier with, as they would be
        # when a replica reads its settings from the same KV it then follows.
        started = {f"config/notifier/{field.name}": str(getattr(servicer.settings, field.name))
                   for field in dataclasses.fields(servicer.settings)}
        config = LiveConfig(servicer=servicer, seed={**load_seed(), **started}, env={})
        tasks.append(asyncio.create_task(config.run(consul_kv, wait_s=5)))
        return config

    yield follow
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        await asyncio.sleep(0.05)


async def count_in_window(handler: FaultyHandler, window_s: float) -> float:
    """Messages the SMTP server took per second over about ``window_s``."""
    before, started = len(handler.received), time.monotonic()
    await asyncio.sleep(window_s)
    return (len(handler.received) - before) / (time.monotonic() - started)


async def test_changing_the_rate_in_kv_changes_the_send_rate_of_a_running_stream(
        notifiers, smtp_server, consul_kv, live):
    notifier = await notifiers.start(max_in_flight=8, smtp_connections=4)
    live(notifier.servicer)
    handler = smtp_server.handler
    call = asyncio.create_task(notifier.deliver([make_request(n) for n in range(1, 601)]))
    await until(lambda: len(handler.received) >= 20, "the stream to get going")

    unlimited_per_s = await count_in_window(handler, 1.0)
    await consul_kv.kv.put(RATE_KEY, "5")
    await until(lambda: notifier.servicer.rate_per_s == 5, "the new rate to apply")
    await count_in_window(handler, 0.3)  # messages that had their token already
    limited_per_s = await count_in_window(handler, 2.0)
    await consul_kv.kv.put(RATE_KEY, "0")
    results = await call

    # Loose on purpose, the machine is shared: the limit holds near 5/s, well under the pace
    # before the change.
    assert limited_per_s <= 5 * 1.5 + 3
    assert unlimited_per_s > 2 * limited_per_s
    assert len(results) == 600 and {r.status for r in results} == {pb.DELIVERY_STATUS_SENT}


async def test_the_cluster_rate_is_shared_among_the_passing_replicas(
        notifiers, consul_kv, live, caplog):
    caplog.set_level(logging.INFO, logger="heraldo.notifier.reload")
    notifier = await notifiers.start()
    live(notifier.servicer)
    await consul_kv.kv.put(RATE_KEY, "40")
    await until(lambda: notifier.servicer.rate_per_s == 40, "the rate for one replica")

    for n in (1, 2):
        await consul_kv.agent.service.register("heraldo-notifier", service_id=f"notifier-{n}",
                                               address="127.0.0.1", port=50060 + n)
    await until(lambda: notifier.servicer.rate_per_s == 20, "the share of two replicas")
    await consul_kv.agent.service.deregister("notifier-2")

    await until(lambda: notifier.servicer.rate_per_s == 40, "the share of one replica again")
    assert any("live replicas service=heraldo-notifier count=2 replica_rate_per_s=20"
               in r.getMessage() for r in caplog.records)


async def test_a_bad_value_in_kv_is_rejected_by_key_and_the_last_good_one_stays(
        notifiers, consul_kv, live, caplog):
    caplog.set_level(logging.INFO, logger="heraldo.notifier.reload")
    notifier = await notifiers.start()
    live(notifier.servicer)
    await consul_kv.kv.put(RATE_KEY, "12")
    await until(lambda: notifier.servicer.rate_per_s == 12, "the first rate")

    await consul_kv.kv.put(RATE_KEY, "-3")
    await consul_kv.kv.put("config/notifier/smtp_port", "smtp")
    # float() reads these; a timer built from one fails every send.
    await consul_kv.kv.put("config/notifier/smtp_timeout_s", "nan")
    await consul_kv.kv.put("config/notifier/smtp_retry_backoff_s", "inf")
    await consul_kv.kv.put("config/notifier/domain_rate_per_s", "2")
    await until(lambda: notifier.servicer.settings.domain_rate_per_s == 2, "the good change")

    rejected = [r.getMessage() for r in caplog.records if r.getMessage().startswith("rejected")]
    for key, value in ((RATE_KEY, "-3"), ("config/notifier/smtp_port", "smtp"),
                       ("config/notifier/smtp_timeout_s", "nan"),
                       ("config/notifier/smtp_retry_backoff_s", "inf")):
        assert any(f"key={key} value='{value}'" in line for line in rejected), key
    assert notifier.servicer.rate_per_s == 12
    assert notifier.servicer.settings.smtp_port == notifier.settings.smtp_port
    for name in ("smtp_timeout_s", "smtp_retry_backoff_s"):
        assert getattr(notifier.servicer.settings, name) == getattr(notifier.settings, name)


async def test_a_new_smtp_target_in_kv_takes_the_next_messages(
        notifiers, smtp_server, consul_kv, live):
    notifier = await notifiers.start()
    live(notifier.servicer)
    other = FaultyHandler()
    server = await asyncio.get_running_loop().create_server(
        lambda: SMTP(other, hostname="other-smtp", decode_data=False), "127.0.0.1", 0)
    other_port = server.sockets[0].getsockname()[1]
    try:
        [first] = await notifier.deliver([make_request(1)])
        await consul_kv.kv.put("config/notifier/smtp_port", str(other_port))
        await until(lambda: notifier.servicer.settings.smtp_port == other_port, "the new port")

        [second] = await notifier.deliver([make_request(2)])
    finally:
        server.close()

    assert (first.status, second.status) == (pb.DELIVERY_STATUS_SENT, pb.DELIVERY_STATUS_SENT)
    assert smtp_server.handler.received_ids() == ["job-1:1"]
    assert other.received_ids() == ["job-1:2"]


async def test_a_subject_overridden_in_kv_is_used_and_a_broken_one_is_refused(
        notifiers, smtp_server, consul_kv, live, caplog):
    caplog.set_level(logging.INFO, logger="heraldo.notifier.reload")
    notifier = await notifiers.start()
    live(notifier.servicer)
    key = "config/notifier/templates/invoice/es/invoice.subject.txt"
    await consul_kv.kv.put(key, "Recordatorio: factura {{ invoice_number }} ({{ amount }})")
    await until(lambda: notifier.servicer.template_overrides, "the override")

    await consul_kv.kv.put(key, "Factura {{ invoice_number ")
    await until(lambda: any("rejected template override" in r.getMessage()
                            for r in caplog.records), "the broken override to be refused")
    [result] = await notifier.deliver([make_request(1, locale="es-ES")])

    assert result.status == pb.DELIVERY_STATUS_SENT
    [message] = smtp_server.handler.received
    assert message["Subject"] == "Recordatorio: factura INV1 (1234,50\u00a0GBP)"
    refusal = next(r.getMessage() for r in caplog.records
                   if "rejected template override" in r.getMessage())
    assert key in refusal


async def test_a_default_template_that_does_not_exist_is_rejected_and_sending_goes_on(
        notifiers, smtp_server, consul_kv, live, caplog):
    caplog.set_level(logging.INFO, logger="heraldo.notifier.reload")
    notifier = await notifiers.start()
    live(notifier.servicer)

    await consul_kv.kv.put("config/notifier/default_template", "nosuch")
    await consul_kv.kv.put("config/notifier/domain_rate_per_s", "2")
    await until(lambda: notifier.servicer.settings.domain_rate_per_s == 2, "the good change")
    [result] = await notifier.deliver([make_request(1)])

    assert notifier.servicer.settings.default_template == "invoice"
    assert any("key=config/notifier/default_template value='nosuch': unknown template set "
               "'nosuch'; known: invoice" in r.getMessage() for r in caplog.records)
    assert result.status == pb.DELIVERY_STATUS_SENT


async def test_one_change_may_replace_the_default_template_set_with_a_new_one(notifiers):
    notifier = await notifiers.start()
    config = LiveConfig(servicer=notifier.servicer, seed=load_seed(), env={})
    config.on_kv({**template_set("acme"), "config/notifier/default_template": "acme"})
    assert notifier.servicer.settings.default_template == "acme"

    # acme's files go and acme2's come, with the default moved, in one snapshot
    config.on_kv({**template_set("acme2"), "config/notifier/default_template": "acme2"})

    assert notifier.servicer.settings.default_template == "acme2"
    assert "acme" not in notifier.servicer.template_sets
    assert "acme2" in notifier.servicer.template_sets


async def test_overrides_that_would_remove_the_default_set_are_refused(notifiers, caplog):
    caplog.set_level(logging.INFO, logger="heraldo.notifier.reload")
    notifier = await notifiers.start()
    config = LiveConfig(servicer=notifier.servicer, seed=load_seed(), env={})
    config.on_kv({**template_set("acme"), "config/notifier/default_template": "acme"})

    config.on_kv({"config/notifier/default_template": "acme"})

    assert "acme" in notifier.servicer.template_sets
    assert any("the default template set 'acme' would no longer exist" in r.getMessage()
               for r in caplog.records)


async def test_an_override_that_fails_to_render_is_refused_and_settings_still_apply(
        notifiers, caplog):
    caplog.set_level(logging.INFO, logger="heraldo.notifier.reload")
    notifier = await notifiers.start()
    config = LiveConfig(servicer=notifier.servicer, seed=load_seed(), env={})

    config.on_kv({"config/notifier/templates/invoice/en/invoice.subject.txt": "Z {{ 1/0 }}",
                  "config/notifier/reply_to": "replies@example.com"})

    assert notifier.servicer.settings.reply_to == "replies@example.com"
    assert notifier.servicer.template_overrides == {}
    assert any("rejected template override" in r.getMessage() and "ZeroDivisionError"
               in r.getMessage() for r in caplog.records)
