"""NotifierService over a real grpc.aio server, delivering to a real SMTP server."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging

import grpc
import pytest
import sqlalchemy as sa
from prometheus_client import REGISTRY

from heraldo import db
from heraldo.v1 import notification_pb2 as pb

from .conftest import by_id, make_request

SENT = pb.DELIVERY_STATUS_SENT
DUPLICATE = pb.DELIVERY_STATUS_DUPLICATE
TEMPORARY = pb.DELIVERY_STATUS_TEMPORARY_FAILURE
PERMANENT = pb.DELIVERY_STATUS_PERMANENT_FAILURE
REJECTED = pb.DELIVERY_STATUS_REJECTED


async def test_deliver_classifies_every_outcome_with_one_result_per_request(
        notifier, smtp_server, caplog):
    faults = {"customer2@example.com": "rcpt-451", "customer3@example.com": "rcpt-550",
              "customer4@example.com": "data-554", "customer5@example.com": "drop",
              "customer6@example.com": "data-451"}
    smtp_server.handler.faults.update(faults)
    requests = [make_request(n) for n in range(1, 11)]
    requests.append(make_request(11, email="not-an-address"))
    requests.append(make_request(12, invoice_number=""))
    requests.append(make_request(13, units=5, nanos=-1))
    requests.append(make_request(14, template="no_such_set"))
    caplog.set_level(logging.INFO)

    results = await notifier.deliver(requests)

    assert sorted(r.notification_id for r in results) == sorted(
        r.notification_id for r in requests)
    outcome = by_id(results)
    assert [outcome[f"job-1:{n}"].status for n in range(1, 15)] == [
        SENT, TEMPORARY, PERMANENT, PERMANENT, TEMPORARY, TEMPORARY, SENT, SENT, SENT, SENT,
        REJECTED, REJECTED, REJECTED, REJECTED]
    assert (outcome["job-1:2"].smtp_code, outcome["job-1:3"].smtp_code) == (451, 550)
    assert outcome["job-1:4"].smtp_code == 554
    assert "spam" in outcome["job-1:4"].detail
    assert "recipient.email" in outcome["job-1:11"].detail
    assert "invoice_number" in outcome["job-1:12"].detail
    assert "amount" in outcome["job-1:13"].detail
    assert "template" in outcome["job-1:14"].detail
    assert {r.replica_id for r in results} == {"replica-a"}
    assert outcome["job-1:1"].message_id == "<job-1=1@heraldo>"
    assert sorted(smtp_server.handler.received_ids()) == sorted(
        f"job-1:{n}" for n in (1, 7, 8, 9, 10))

    stream_lines = [r.getMessage() for r in caplog.records
                    if r.getMessage().startswith("deliver stream")]
    assert len(stream_lines) == 1
    assert "requests=14" in stream_lines[0] and "sent=5" in stream_lines[0]
    assert "rejected=4" in stream_lines[0] and "replica=replica-a" in stream_lines[0]
    ours = [r.getMessage() for r in caplog.records if r.name.startswith("heraldo")]
    assert not [line for line in ours if "customer" in line and "@example.com" in line]


async def test_sent_message_carries_headers_and_both_parts(notifier, smtp_server):
    request = make_request(1, name="José Ñúñez", locale="es-ES", email="jose@example.com")

    [result] = await notifier.deliver([request])

    assert result.status == SENT
    [message] = smtp_server.handler.received
    assert message["Message-ID"] == "<job-1=1@heraldo>"
    assert message["X-Heraldo-Notification-Id"] == "job-1:1"
    assert message["X-Heraldo-Invoice"] == "INV1"
    assert message["To"].addresses[0].display_name == "José Ñúñez"
    assert message["To"].addresses[0].addr_spec == "jose@example.com"
    assert message["From"].addresses[0].addr_spec == "billing@heraldo.invalid"
    assert message["Reply-To"] is None
    assert message["Date"].datetime is not None
    assert message["Subject"].startswith("Factura INV1: 1234,50")
    assert "1234,50" in message.get_body(("plain",)).get_content()
    assert "José Ñúñez" in message.get_body(("html",)).get_content()


async def test_replayed_ids_are_duplicates_and_nothing_is_resent(notifiers, smtp_server):
    first = await notifiers.start("replica-a")
    other = await notifiers.start("replica-b")
    requests = [make_request(n) for n in range(1, 6)]
    await first.deliver(requests)
    mails_before = smtp_server.handler.mail_commands

    again_same = await first.deliver(requests)
    again_other = await other.deliver(requests)

    for result in [*again_same, *again_other]:
        assert result.status == DUPLICATE
        assert result.replica_id == "replica-a"
        assert result.message_id == f"<{result.notification_id.replace(':', '=')}@heraldo>"
    assert smtp_server.handler.mail_commands == mails_before
    assert len(smtp_server.handler.received) == 5


async def test_temporary_failure_is_attempted_again_on_replay(notifier, smtp_server,
                                                              delivery_engine):
    smtp_server.handler.faults["customer1@example.com"] = "data-451"
    [first] = await notifier.deliver([make_request(1)])
    smtp_server.handler.faults.clear()

    [second] = await notifier.deliver([make_request(1)])

    assert (first.status, second.status) == (TEMPORARY, SENT)
    async with delivery_engine.connect() as conn:
        row = (await conn.execute(sa.select(db.deliveries))).mappings().one()
    assert (row["status"], row["attempts"]) == ("sent", 2)


async def test_permanent_failure_is_reported_again_without_sending(notifier, smtp_server):
    smtp_server.handler.faults["customer1@example.com"] = "rcpt-550"
    [first] = await notifier.deliver([make_request(1)])
    mails_before = smtp_server.handler.mail_commands

    [second] = await notifier.deliver([make_request(1)])

    assert (first.status, second.status) == (PERMANENT, PERMANENT)
    assert second.smtp_code == 550
    assert smtp_server.handler.mail_commands == mails_before


async def test_connection_dropped_or_timed_out_then_next_messages_go_through(
        notifiers, smtp_server):
    notifier = await notifiers.start(smtp_connections=1, smtp_timeout_s=0.5, max_in_flight=1)
    smtp_server.handler.faults.update({"customer2@example.com": "drop",
                                       "customer4@example.com": "slow"})

    results = by_id(await notifier.deliver([make_request(n) for n in range(1, 7)]))

    assert [results[f"job-1:{n}"].status for n in range(1, 7)] == [
        SENT, TEMPORARY, SENT, TEMPORARY, SENT, SENT]
    assert smtp_server.handler.received_ids() == ["job-1:1", "job-1:3", "job-1:5", "job-1:6"]


async def test_connections_the_server_closed_while_idle_are_reopened(notifiers, smtp_server):
    notifier = await notifiers.start(smtp_connections=2)
    await notifier.deliver([make_request(n) for n in range(1, 5)])
    smtp_server.handler.close_connections()
    await asyncio.sleep(0)

    results = await notifier.deliver([make_request(n) for n in range(5, 9)])

    assert {r.status for r in results} == {SENT}
    assert len(smtp_server.handler.received) == 8


async def test_a_connection_closed_just_as_it_is_reused_is_retried_once(
        notifiers, smtp_server, caplog):
    notifier = await notifiers.start(smtp_connections=1)
    await notifier.deliver([make_request(1)])
    smtp_server.handler.close_reused_at_mail = True
    caplog.set_level(logging.DEBUG, logger="heraldo.notifier.mailer")

    [result] = await notifier.deliver([make_request(2)])

    assert result.status == SENT
    assert smtp_server.handler.received_ids() == ["job-1:1", "job-1:2"]
    assert any("stale smtp connection" in r.getMessage() for r in caplog.records)


async def test_outcomes_are_counted_in_prometheus_metrics(notifier, smtp_server):
    def sample(status: str) -> float:
        return REGISTRY.get_sample_value("heraldo_notifier_deliveries_total",
                                         {"status": status}) or 0.0

    before = {status: sample(status) for status in ("sent", "duplicate", "rejected")}
    transactions_before = REGISTRY.get_sample_value("heraldo_notifier_smtp_seconds_count") or 0

    await notifier.deliver([make_request(1), make_request(2, email="bad")])
    await notifier.deliver([make_request(1)])

    assert sample("sent") - before["sent"] == 1
    assert sample("rejected") - before["rejected"] == 1
    assert sample("duplicate") - before["duplicate"] == 1
    assert REGISTRY.get_sample_value("heraldo_notifier_smtp_seconds_count") == (
        transactions_before + 1)
    assert REGISTRY.get_sample_value("heraldo_notifier_in_flight") == 0


async def test_deliver_reads_no_further_than_max_in_flight(notifiers, smtp_server):
    notifier = await notifiers.start(max_in_flight=3, smtp_connections=5)
    handler = smtp_server.handler
    handler.gate.clear()
    call = notifier.stub.Deliver(make_request(n) for n in range(1, 21))
    results = []

    async def collect() -> None:
        async for result in call:
            results.append(result)

    collecting = asyncio.create_task(collect())
    async with handler.reached_data:
        await handler.reached_data.wait_for(lambda: handler.in_data >= 3)
    # Held at DATA, three requests fill every slot: however long we wait, no fourth is read.
    await asyncio.sleep(0.3)
    held = handler.in_data
    handler.gate.set()
    await collecting

    assert held == 3
    assert handler.peak_in_data == 3
    assert len(results) == 20 and {r.status for r in results} == {SENT}


async def test_long_stream_gets_exactly_one_result_per_request(notifiers, smtp_server):
    notifier = await notifiers.start(max_in_flight=16, smtp_connections=4)
    requests = [make_request(n) for n in range(1, 301)]

    results = await notifier.deliver(requests)

    assert len(results) == 300
    assert len({r.notification_id for r in results}) == 300
    assert {r.status for r in results} == {SENT}
    assert len(smtp_server.handler.received) == 300
    assert smtp_server.handler.peak_in_data <= 4


async def test_deliver_batches_answers_every_request_of_every_group_once(notifiers,
                                                                         smtp_server):
    notifier = await notifiers.start(max_in_flight=16, smtp_connections=4)
    requests = [make_request(n) for n in range(1, 121)] + [make_request(121, email="bad")]
    groups = [pb.NotificationBatch(requests=requests[start:start + 50])
              for start in range(0, len(requests), 50)]

    answers = [answer async for answer in notifier.stub.DeliverBatches(iter(groups))]
    results = by_id([result for answer in answers for result in answer.results])

    assert len(results) == 121 == sum(len(answer.results) for answer in answers)
    assert {results[r.notification_id].status for r in requests[:120]} == {SENT}
    assert results[requests[120].notification_id].status == REJECTED
    assert sorted(smtp_server.handler.received_ids()) == sorted(
        r.notification_id for r in requests[:120])
    # A replayed group is answered from the delivery log: nothing is mailed twice.
    replayed = [answer async for answer in notifier.stub.DeliverBatches(iter(groups[:1]))]
    assert {result.status for answer in replayed for result in answer.results} == {DUPLICATE}
    assert len(smtp_server.handler.received) == 120


async def test_deliver_batches_refuses_an_oversized_group_after_answering_the_rest(
        notifier, smtp_server):
    groups = [pb.NotificationBatch(requests=[make_request(1)]),
              pb.NotificationBatch(requests=[make_request(2)] * 1001)]

    answers = []
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        async for answer in notifier.stub.DeliverBatches(iter(groups)):
            answers.append(answer)

    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "requests" in refused.value.details() and "1001" in refused.value.details()
    assert [result.status for answer in answers for result in answer.results] == [SENT]
    assert smtp_server.handler.received_ids() == [make_request(1).notification_id]


async def test_one_id_in_two_concurrent_streams_is_sent_once(notifiers, smtp_server):
    first = await notifiers.start("replica-a")
    second = await notifiers.start("replica-b")
    requests = [make_request(n) for n in range(1, 21)]

    results_a, results_b = await asyncio.gather(first.deliver(requests),
                                                second.deliver(requests))

    assert len(results_a) == len(results_b) == 20
    assert sorted(smtp_server.handler.received_ids()) == sorted(
        r.notification_id for r in requests)
    for a, b in zip(sorted(results_a, key=lambda r: r.notification_id),
                    sorted(results_b, key=lambda r: r.notification_id), strict=True):
        assert sorted([a.status, b.status]) in ([SENT, DUPLICATE], [SENT, TEMPORARY])


async def test_send_delivers_once_and_rejects_bad_requests(notifier, smtp_server, caplog):
    caplog.set_level(logging.INFO)

    sent = await notifier.stub.Send(make_request(1, email="jane.doe@example.com"))
    again = await notifier.stub.Send(make_request(1, email="jane.doe@example.com"))
    with pytest.raises(grpc.aio.AioRpcError) as bad_address:
        await notifier.stub.Send(make_request(2, email="jane.doe@@example.com"))
    with pytest.raises(grpc.aio.AioRpcError) as no_id:
        await notifier.stub.Send(make_request(3, notification_id=""))

    assert (sent.status, again.status) == (SENT, DUPLICATE)
    assert len(smtp_server.handler.received) == 1
    assert bad_address.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_address.value.details().startswith("recipient.email:")
    assert no_id.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert no_id.value.details() == "notification_id: is required"
    send_lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("send ")]
    assert send_lines[0] == ("send notification_id=job-1:1 to=j***@example.com status=sent "
                             "smtp_code=250 replica=replica-a")


async def test_unreachable_smtp_server_is_a_temporary_failure(notifiers):
    with socket_closed_port() as port:
        notifier = await notifiers.start(smtp_port=port, smtp_timeout_s=1)

        result = await notifier.stub.Send(make_request(1))

    assert result.status == TEMPORARY
    assert "127.0.0.1" in result.detail


class socket_closed_port:
    """A port on 127.0.0.1 that nothing listens on, for as long as the block runs."""

    def __enter__(self) -> int:
        import socket

        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        # Bound but not listening: connections are refused, and no other process can take it.
        return self._sock.getsockname()[1]

    def __exit__(self, *exc) -> None:
        self._sock.close()


@pytest.mark.parametrize(("changes", "field", "problem"), [
    ({"nanos": 505_000_000}, "amount", "12.505 GBP has more decimal places than GBP has (2)"),
    ({"currency": "ZZZ"}, "amount", "currency_code 'ZZZ' is not an ISO 4217 currency"),
    ({"name": "Ana <x>\r\nBcc: someone@example.com"}, "recipient.name",
     "without control characters"),
    ({"name": "Ana\u2028Bcc: someone@example.com"}, "recipient.name",
     "without control characters"),
])
async def test_send_refuses_what_no_customer_should_receive(notifier, smtp_server, changes,
                                                           field, problem):
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await notifier.stub.Send(make_request(1, units=12, **changes))

    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details().startswith(f"{field}: ")
    assert problem in refused.value.details()
    assert smtp_server.handler.received == []


async def test_send_refuses_a_due_date_before_the_issue_date(notifier, smtp_server):
    request = make_request(1)
    request.due_date.year = 2010

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await notifier.stub.Send(request)

    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details() == ("due_date: 2010-12-31 is before the issue date "
                                       "2011-12-01")
    assert smtp_server.handler.received == []


async def test_a_send_cut_off_by_a_crash_is_sent_again_and_flagged_as_a_possible_copy(
        notifier, smtp_server, delivery_engine):
    # Given a replica that died after handing job-1:1 to the SMTP server, before recording it
    long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
    async with delivery_engine.begin() as conn:
        await conn.execute(sa.insert(db.deliveries).values(
            notification_id="job-1:1", status="sending", smtp_code=0, detail="",
            message_id="<job-1=1@heraldo>", replica_id="replica-gone", attempts=1,
            create_time=long_ago, update_time=long_ago))

    resent = await notifier.stub.Send(make_request(1))
    replayed = await notifier.stub.Send(make_request(1))
    fresh = await notifier.stub.Send(make_request(2))

    # Then it goes out again, same Message-ID, and the result says a copy may exist; so does
    # a replay's, in case the first result was lost on its way
    assert (resent.status, resent.possible_copy) == (SENT, True)
    assert resent.message_id == "<job-1=1@heraldo>"
    assert (replayed.status, replayed.possible_copy) == (DUPLICATE, True)
    assert (fresh.status, fresh.possible_copy) == (SENT, False)
    assert len(smtp_server.handler.received) == 2
