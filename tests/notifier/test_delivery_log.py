"""The delivery log's claims on SQLite and PostgreSQL: one sender per id, replays recognised."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest
import sqlalchemy as sa

from heraldo import db
from heraldo.notifier.delivery_log import DeliveryLog, Final, GroupedDeliveryLog


@pytest.fixture
async def open_log(delivery_engine):
    """Opens delivery logs on the test's database and closes their connections afterwards."""
    opened: list[DeliveryLog] = []

    def open_log(replica_id: str, **options) -> DeliveryLog:
        opened.append(DeliveryLog(delivery_engine, replica_id=replica_id, **options))
        return opened[-1]

    yield open_log
    for log in opened:
        await log.close()


async def test_a_fresh_id_is_claimed_once_and_then_reported_as_in_progress(open_log):
    log = open_log("replica-a")

    first = await log.claim("job-1:1", "<job-1=1@heraldo>")
    second = await log.claim("job-1:1", "<job-1=1@heraldo>")

    assert (first.claimed, first.attempt) == (True, 1)
    assert not second.claimed
    assert second.existing.status == "sending"
    assert second.existing.replica_id == "replica-a"


async def test_a_sent_id_is_reported_with_its_original_message_id_and_replica(open_log):
    original = open_log("replica-a")
    other = open_log("replica-b")
    claim = await original.claim("job-1:1", "<job-1=1@heraldo>")
    await original.record("job-1:1", claim.attempt, "sent", smtp_code=250, detail="250 ok")

    replay = await other.claim("job-1:1", "<job-1=1@heraldo>")

    assert not replay.claimed
    assert (replay.existing.status, replay.existing.replica_id) == ("sent", "replica-a")
    assert replay.existing.message_id == "<job-1=1@heraldo>"


async def test_a_temporary_failure_may_be_attempted_again(open_log):
    log = open_log("replica-a")
    claim = await log.claim("job-1:1", "<job-1=1@heraldo>")
    await log.record("job-1:1", claim.attempt, "temporary_failure", smtp_code=451)

    retry = await log.claim("job-1:1", "<job-1=1@heraldo>")

    assert (retry.claimed, retry.attempt) == (True, 2)
    # Nothing was handed over the first time: the retry cannot make a copy.
    assert not retry.in_doubt


async def test_a_permanent_failure_is_not_attempted_again(open_log):
    log = open_log("replica-a")
    claim = await log.claim("job-1:1", "<job-1=1@heraldo>")
    await log.record("job-1:1", claim.attempt, "permanent_failure", smtp_code=550)

    retry = await log.claim("job-1:1", "<job-1=1@heraldo>")

    assert not retry.claimed
    assert retry.existing.status == "permanent_failure"


async def test_a_stale_claim_left_by_a_crash_is_taken_over(delivery_engine, open_log):
    crashed = open_log("replica-a", stale_after_s=60)
    await crashed.claim("job-1:1", "<job-1=1@heraldo>")
    await crashed.claim("job-1:2", "<job-1=2@heraldo>")
    long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    async with delivery_engine.begin() as conn:
        await conn.execute(sa.update(db.deliveries)
                           .where(db.deliveries.c.notification_id == "job-1:1")
                           .values(update_time=long_ago))
    other = open_log("replica-b", stale_after_s=60)

    stale = await other.claim("job-1:1", "<job-1=1@heraldo>")
    recent = await other.claim("job-1:2", "<job-1=2@heraldo>")
    lost = await crashed.record("job-1:1", 1, "sent")

    assert (stale.claimed, stale.attempt, stale.in_doubt) == (True, 2, True)
    assert not recent.claimed
    assert lost is False


async def test_a_claim_of_a_replica_that_left_consul_is_taken_over_once_old_enough(
        delivery_engine, open_log):
    # Given replica-a claimed two ids and was then killed (Consul no longer lists it)
    killed = open_log("replica-a")
    await killed.claim("job-1:1", "<job-1=1@heraldo>")
    await killed.claim("job-1:2", "<job-1=2@heraldo>")
    a_while_ago = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=40)
    async with delivery_engine.begin() as conn:
        await conn.execute(sa.update(db.deliveries)
                           .where(db.deliveries.c.notification_id == "job-1:1")
                           .values(update_time=a_while_ago))
    survivor = open_log("replica-b", orphan_after_s=25)
    still_live = open_log("replica-c", orphan_after_s=25)
    survivor.set_live_replicas({"replica-b": None, "replica-c": None})
    still_live.set_live_replicas({"replica-a": None, "replica-b": None, "replica-c": None})

    # When the others see those ids again
    seen_as_live = await still_live.claim("job-1:1", "<job-1=1@heraldo>")
    orphaned = await survivor.claim("job-1:1", "<job-1=1@heraldo>")
    too_recent = await survivor.claim("job-1:2", "<job-1=2@heraldo>")

    # Then only the old claim of the replica that is gone is taken over
    assert not seen_as_live.claimed
    assert (orphaned.claimed, orphaned.attempt) == (True, 2)
    assert not too_recent.claimed


async def test_a_claim_older_than_its_replicas_restart_is_taken_over_by_others(
        delivery_engine, open_log):
    # Given replica-a claimed an id, was killed, and came back as a new process
    killed = open_log("replica-a")
    await killed.claim("job-1:1", "<job-1=1@heraldo>")
    a_while_ago = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=40)
    async with delivery_engine.begin() as conn:
        await conn.execute(sa.update(db.deliveries).values(update_time=a_while_ago))
    other = open_log("replica-b", orphan_after_s=25)
    other.set_live_replicas({"replica-a": dt.datetime.now(dt.UTC), "replica-b": None})

    claim = await other.claim("job-1:1", "<job-1=1@heraldo>")

    assert (claim.claimed, claim.attempt) == (True, 2)


async def test_a_restarted_replica_takes_back_its_own_unfinished_claims(open_log):
    before_crash = open_log("replica-a")
    await before_crash.claim("job-1:1", "<job-1=1@heraldo>")
    await asyncio.sleep(0.01)
    after_restart = open_log("replica-a")

    claim = await after_restart.claim("job-1:1", "<job-1=1@heraldo>")

    assert (claim.claimed, claim.attempt) == (True, 2)


async def test_concurrent_claims_of_one_id_have_exactly_one_winner(open_log):
    logs = [open_log(f"replica-{n}") for n in range(8)]

    claims = await asyncio.gather(*(log.claim("job-1:1", "<job-1=1@heraldo>") for log in logs))

    assert sum(claim.claimed for claim in claims) == 1


async def test_concurrent_take_overs_of_a_temporary_failure_have_exactly_one_winner(
        open_log):
    logs = [open_log(f"replica-{n}") for n in range(8)]
    first = await logs[0].claim("job-1:1", "<job-1=1@heraldo>")
    await logs[0].record("job-1:1", first.attempt, "temporary_failure")

    claims = await asyncio.gather(*(log.claim("job-1:1", "<job-1=1@heraldo>") for log in logs))

    assert sum(claim.claimed for claim in claims) == 1


async def test_claim_many_answers_each_item_in_order_with_one_claim_per_id(open_log):
    log = open_log("replica-a")
    sent = await log.claim("job-1:1", "<job-1=1@heraldo>")
    await log.record("job-1:1", sent.attempt, "sent", smtp_code=250)
    retry = await log.claim("job-1:2", "<job-1=2@heraldo>")
    await log.record("job-1:2", retry.attempt, "temporary_failure", smtp_code=451)
    wanted = [(f"job-1:{n}", f"<job-1={n}@heraldo>") for n in (1, 2, 3, 3, 4)]

    claims = await log.claim_many(wanted)

    assert [(c.claimed, c.attempt) for c in claims] == [
        (False, 0), (True, 2), (True, 1), (False, 0), (True, 1)]
    assert claims[0].existing.status == "sent"
    # The second copy of job-1:3 in the same group sees the first copy's claim.
    assert (claims[3].existing.status, claims[3].existing.replica_id) == ("sending", "replica-a")


async def test_record_many_stores_each_outcome_and_reports_lost_claims(open_log):
    log = open_log("replica-a")
    await log.claim_many([("job-1:1", "<job-1=1@heraldo>"), ("job-1:2", "<job-1=2@heraldo>")])

    recorded = await log.record_many([Final("job-1:1", 1, "sent", 250, "250 ok"),
                                      Final("job-1:2", 7, "sent", 250, "250 ok")])

    assert recorded == [True, False]
    assert (await log.get("job-1:1")).status == "sent"
    assert (await log.get("job-1:2")).status == "sending"


async def test_concurrent_callers_share_transactions_and_keep_their_own_answers(
        delivery_engine, open_log):
    # Regression guard for throughput: two transactions per email capped a replica near
    # 250-300 emails per second; concurrent claims and records must share transactions.
    transactions = []
    sa.event.listen(delivery_engine.sync_engine, "begin", transactions.append)
    grouped = GroupedDeliveryLog(open_log("replica-a"))
    ids = [f"job-1:{n}" for n in range(100)]

    claims = await asyncio.gather(*(grouped.claim(i, f"<{i}@heraldo>") for i in [*ids, ids[0]]))
    recorded = await asyncio.gather(*(grouped.record(i, 1, "sent", smtp_code=250) for i in ids))

    assert sum(claim.claimed for claim in claims) == 100
    assert not claims[-1].claimed
    assert all(recorded)
    assert len(transactions) < 20
    assert {(await grouped.log.get(i)).status for i in ids} == {"sent"}


async def test_postgres_connections_plan_each_statement_for_the_table_as_it_is_now(
        delivery_engine):
    # A generic plan cached while ``deliveries`` was empty would scan the whole table forever.
    if delivery_engine.dialect.name != "postgresql":
        return
    async with delivery_engine.connect() as conn:
        assert await conn.scalar(sa.text("SHOW plan_cache_mode")) == "force_custom_plan"


async def test_a_large_group_on_a_large_table_records_only_the_attempts_it_holds(open_log):
    log = open_log("r1")
    ids = [f"job-1.{number}" for number in range(1200)]
    claims = await log.claim_many([(i, f"<{i}@heraldo>") for i in ids])
    assert all(claim.claimed and claim.attempt == 1 for claim in claims)

    finals = [Final(i, 1, "sent", 250, "250 ok") for i in ids[:600]]
    # A wrong attempt and an id never claimed are not recorded; the rest are.
    finals += [Final(ids[600], 2, "sent", 250), Final("job-1.unknown", 1, "sent", 250)]
    answers = await log.record_many(finals)

    assert answers == [True] * 600 + [False, False]
    assert (await log.get(ids[0])).status == "sent"
    assert (await log.get(ids[600])).status == "sending"


async def test_a_pooled_connection_killed_by_a_database_restart_is_replaced_without_an_error(
        delivery_url, delivery_engine):
    # The notifier's pool does not ping connections before lending them; the log retries instead.
    if delivery_engine.dialect.name != "postgresql":
        return
    engine = db.create_engine(delivery_url, pre_ping=False)
    try:
        log = DeliveryLog(engine, replica_id="r1")
        assert (await log.claim("job-1.1", "<job-1.1@heraldo>")).claimed
        assert not await log.record("job-1.0", 1, "sent")
        assert (await log.get("job-1.1")).status == "sending"
        # What a PostgreSQL restart does to every open connection.
        async with delivery_engine.connect() as admin:
            killed = await admin.scalar(sa.text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"))
        assert killed >= 1

        assert await log.record("job-1.1", 1, "sent", smtp_code=250)
        assert (await log.claim("job-1.2", "<job-1.2@heraldo>")).claimed
        assert (await log.get("job-1.1")).status == "sent"
    finally:
        await log.close()
        await engine.dispose()


async def test_a_possible_copy_stays_flagged_through_later_attempts(delivery_engine, open_log):
    # Given replica-a died holding job-1:1, and replica-b's take-over failed for a while
    crashed = open_log("replica-a", stale_after_s=60)
    await crashed.claim("job-1:1", "<job-1=1@heraldo>")
    long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    async with delivery_engine.begin() as conn:
        await conn.execute(sa.update(db.deliveries).values(update_time=long_ago))
    other = open_log("replica-b", stale_after_s=60)
    taken = await other.claim("job-1:1", "<job-1=1@heraldo>")
    await other.record("job-1:1", taken.attempt, "temporary_failure", smtp_code=451)

    # When it is attempted again, and then asked for once sent
    retried = await other.claim("job-1:1", "<job-1=1@heraldo>")
    await other.record("job-1:1", retried.attempt, "sent", smtp_code=250)
    replay = await other.claim("job-1:1", "<job-1=1@heraldo>")

    # Then every step still says a first copy may have gone out
    assert (taken.in_doubt, retried.in_doubt) == (True, True)
    assert not replay.claimed
    assert (replay.existing.status, replay.existing.possible_copy) == ("sent", True)
