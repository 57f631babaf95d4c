"""The SMTP side against a real aiosmtpd server that misbehaves: limits, retries, recovery."""

from __future__ import annotations

import collections

import pytest
import sqlalchemy as sa

from heraldo import db
from heraldo.v1 import notification_pb2 as pb

from .conftest import by_id, make_request

# The SMTP side does not depend on the delivery log's database: SQLite is enough here.
pytestmark = pytest.mark.parametrize("delivery_url", ["sqlite"], indirect=True)

SENT = pb.DELIVERY_STATUS_SENT
TEMPORARY = pb.DELIVERY_STATUS_TEMPORARY_FAILURE
PERMANENT = pb.DELIVERY_STATUS_PERMANENT_FAILURE


async def logged(engine) -> dict[str, tuple[str, int]]:
    async with engine.connect() as conn:
        rows = (await conn.execute(sa.select(db.deliveries))).mappings().all()
    return {row["notification_id"]: (row["status"], row["attempts"]) for row in rows}


async def test_a_server_that_says_421_too_many_messages_is_met_with_a_new_connection(
        notifiers, smtp_server):
    smtp_server.handler.max_per_connection = 3
    notifier = await notifiers.start(smtp_connections=1, max_in_flight=1)

    results = await notifier.deliver([make_request(n) for n in range(1, 11)])

    assert {r.status for r in results} == {SENT}
    assert sorted(smtp_server.handler.received_ids()) == sorted(f"job-1:{n}" for n in range(1, 11))
    assert smtp_server.handler.too_many_replies >= 1


async def test_the_per_connection_limit_reconnects_before_the_server_complains(
        notifiers, smtp_server):
    smtp_server.handler.max_per_connection = 3
    notifier = await notifiers.start(smtp_connections=1, max_in_flight=1,
                                     smtp_max_messages_per_connection=3)

    results = await notifier.deliver([make_request(n) for n in range(1, 11)])

    assert {r.status for r in results} == {SENT}
    assert smtp_server.handler.too_many_replies == 0
    assert smtp_server.handler.connections == 4
    assert len(smtp_server.handler.received) == 10


async def test_a_greylisted_message_is_retried_with_backoff_until_it_goes_through(
        notifiers, smtp_server, delivery_engine):
    smtp_server.handler.greylist["customer1@example.com"] = 2
    notifier = await notifiers.start(smtp_retries=2, smtp_retry_backoff_s=0.01)

    [result] = await notifier.deliver([make_request(1)])

    assert result.status == SENT
    assert smtp_server.handler.mail_commands == 3
    assert smtp_server.handler.received_ids() == ["job-1:1"]
    assert (await logged(delivery_engine))["job-1:1"] == ("sent", 1)


async def test_retries_run_out_and_the_failure_is_reported_as_temporary(
        notifiers, smtp_server, delivery_engine):
    smtp_server.handler.greylist["customer1@example.com"] = 10
    notifier = await notifiers.start(smtp_retries=2, smtp_retry_backoff_s=0.01)

    [result] = await notifier.deliver([make_request(1)])

    assert (result.status, result.smtp_code) == (TEMPORARY, 451)
    assert smtp_server.handler.mail_commands == 3
    assert (await logged(delivery_engine))["job-1:1"] == ("temporary_failure", 1)


async def test_faults_of_every_kind_with_retries_on_send_nothing_twice_and_the_pool_recovers(
        notifiers, smtp_server, delivery_engine):
    handler = smtp_server.handler
    handler.faults.update({"customer2@example.com": "rcpt-550",
                           "customer3@example.com": "data-554",
                           "customer4@example.com": "drop",
                           "customer5@example.com": "slow"})
    handler.greylist["customer6@example.com"] = 1
    handler.max_per_connection = 4
    handler.slow_s = 3.0
    notifier = await notifiers.start(smtp_connections=2, max_in_flight=4, smtp_timeout_s=0.5,
                                     smtp_retries=3, smtp_retry_backoff_s=0.01)

    results = by_id(await notifier.deliver([make_request(n) for n in range(1, 21)]))

    statuses = [results[f"job-1:{n}"].status for n in range(1, 21)]
    assert statuses[:6] == [SENT, PERMANENT, PERMANENT, TEMPORARY, TEMPORARY, SENT]
    assert set(statuses[6:]) == {SENT}
    received = collections.Counter(handler.received_ids())
    assert max(received.values()) == 1
    assert set(received) == {f"job-1:{n}" for n in (1, *range(6, 21))}
    # Every outcome is in the delivery log, one claim each.
    log = await logged(delivery_engine)
    assert [log[f"job-1:{n}"] for n in range(1, 7)] == [
        ("sent", 1), ("permanent_failure", 1), ("permanent_failure", 1),
        ("temporary_failure", 1), ("temporary_failure", 1), ("sent", 1)]
    assert len(log) == 20
