"""Small versions of benchmarks/chaos.py, against a real `runwatch serve`, broker and SMTP
server: SIGKILLs during a steady stream of failures, the SMTP server down, the broker
restarted, poison interleaved with valid events."""

from __future__ import annotations

import random
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from consumers.demo.broker import EmbeddedBroker, create_topics
from tests.chaoskit import (
    NEEDS_INGEST,
    NEEDS_KAFKA,
    NEEDS_RULES,
    OVERFLOW_RULE,
    RULES,
    MailTally,
    OutageBurst,
    PoisonKind,
    Serve,
    SteadyProducer,
    chaos_config,
    collect_refused_sockets,
    dead_letter_reasons,
    dead_letter_topic_count,
    outbox_states,
    poison_kinds,
    poison_schedule,
    sql_count,
    stored_keys,
    wait_until,
)
from tests.conftest import FULL, Topics
from tests.servers import SmtpServer

# 2,000 events/s, one in 40 Failed: 50 failure mails/s (issue 12 case 8) on a busy topic,
# where ingest batches hold SQLite's write lock long enough to show a slow mark.
KILL_RATE = 2000
KILL_FAILURE_EVERY = 40
KILLS = 5
# Before prompt marks: 22 and 17 duplicates over 5 kills here (issue 12 measured 25 over 6
# and 155 over 20, up to 16 in one kill); after: 1 and 3.
DUPLICATES_PER_KILL = 1.5


def _mails(smtp: SmtpServer) -> list[tuple[str, str]]:
    return [(str(m.message["Message-ID"]), str(m.message["Subject"])) for m in smtp.mails]


def test_sigkill_during_steady_failures_resends_about_one_mail_per_kill(
    topics: Topics, smtp: SmtpServer, tmp_path: Path
) -> None:
    """Every event stored once, every failure mailed, and a SIGKILL at a random moment
    re-sends (after the lease) only what the SMTP server accepted but the store had not yet
    marked sent: with prompt marks, about one mail per kill at 50 mails/s."""
    config = chaos_config(
        tmp_path,
        bootstrap=topics.bootstrap,
        topic=topics.topic,
        dead_letter_topic=topics.dead_letter_topic,
        group_id=topics.group_id,
        smtp_port=smtp.port,
        lease_s=2.0,  # the re-sends come within seconds of the restart, not a minute
    )
    db = tmp_path / "runwatch.db"
    rng = random.Random(12)
    serve = Serve(config).start()
    producer = SteadyProducer(
        topics.bootstrap,
        topics.topic,
        events=KILL_RATE * 120,
        rate=KILL_RATE,
        failure_every=KILL_FAILURE_EVERY,
    )
    producer.start()
    try:
        assert wait_until(lambda: len(smtp.mails) >= 10, 60, serve.check), serve.tail()
        while serve.kills < KILLS:
            # a random moment while the (restarted) process is mailing
            mailing = len(smtp.mails) + 5
            assert wait_until(lambda n=mailing: len(smtp.mails) > n, 60, serve.check), serve.tail()
            serve.wait(rng.uniform(0.3, 1.5))
            serve.kill()
        producer.stopping.set()
        producer.join(timeout=60)
        assert producer.error is None
        done = wait_until(
            lambda: (
                sql_count(db, "select count(*) from events") >= producer.produced
                and outbox_states(db).get("sent", 0) >= len(producer.failed)
            ),
            120,
            serve.check,
        )
        assert done, serve.tail()  # every row sent: the re-sends after the leases too
    finally:
        code = serve.stop()
    assert serve.crashes == 0, serve.tail()
    assert code == 0, serve.tail()
    keys = stored_keys(db)
    assert len(keys) == producer.produced and set(keys) == set(producer.keys)
    tally = MailTally.of(producer.failed, _mails(smtp))
    print(f"{producer.produced} events, {serve.kills} kills: {tally}")
    assert tally.missing == 0
    assert outbox_states(db) == {"sent": len(producer.failed)}
    assert tally.duplicates / serve.kills <= DUPLICATES_PER_KILL, tally


def test_smtp_down_mid_stream_then_up_mails_every_failure_once(
    topics: Topics, tmp_path: Path
) -> None:
    """The SMTP server goes away for 5 s in the middle of a steady stream: every failure
    is mailed once it is back (retried with backoff), none twice, none dead."""
    first = SmtpServer().start()
    config = chaos_config(
        tmp_path,
        bootstrap=topics.bootstrap,
        topic=topics.topic,
        dead_letter_topic=topics.dead_letter_topic,
        group_id=topics.group_id,
        smtp_port=first.port,
        backoff_max_s=1.0,
    )
    db = tmp_path / "runwatch.db"
    serve = Serve(config).start()
    producer = SteadyProducer(topics.bootstrap, topics.topic, events=4000, rate=400)
    second = SmtpServer(port=first.port)
    servers = [first]
    try:
        producer.start()
        serve.expect(lambda: len(first.mails) >= 10, 60, "first mails")
        servers.pop().stop()
        serve.wait(5.0)
        servers.append(second.start())
        back = time.monotonic()
        producer.join(timeout=60)
        assert producer.error is None
        serve.expect(
            lambda: outbox_states(db).get("sent", 0) >= len(producer.failed),
            60,
            "every failure mailed",
        )
        caught_up = time.monotonic() - back
    finally:
        producer.stopping.set()
        code = serve.stop()
        for server in servers:
            server.stop()
    mails = _mails(first) + _mails(second)
    tally = MailTally.of(producer.failed, mails)
    print(f"SMTP down 5 s: {tally}, all mailed {caught_up:.1f}s after it was back")
    assert code == 0 and serve.crashes == 0, serve.tail()
    assert tally.missing == 0 and tally.duplicates == 0, tally
    assert outbox_states(db) == {"sent": len(producer.failed)}
    keys = stored_keys(db)
    assert len(keys) == producer.produced and set(keys) == set(producer.keys)


def test_broker_restart_loses_nothing_and_ingest_resumes_within_2s(
    smtp: SmtpServer, tmp_path: Path
) -> None:
    """The broker is stopped for 4 s and started again while events and the odd dead letter
    keep coming: every event is stored once, every dead letter kept, and ingest resumes
    within 2 s of the broker answering again."""
    _broker_restart(smtp, tmp_path, down_s=4.0)


def test_broker_restart_loses_nothing_with_store_assignment(
    smtp: SmtpServer, tmp_path: Path
) -> None:
    """The same with the partitions leased in the store (kafka.assignment: store): no
    rebalance follows the broker's return, so the consumer itself must forget its positions
    and read on from the committed offsets; resuming from its old ones would skip the
    burst's first events on the new log."""
    _broker_restart(smtp, tmp_path, down_s=4.0, kafka={"assignment": "store"})


@pytest.mark.skipif(
    not FULL,
    reason="the 4 s outage above runs in `make test`; the 15 s one in `make soak` "
    "(and `benchmarks/chaos.py --part broker`)",
)
def test_dead_letter_first_after_15s_broker_outage_resumes_within_2s(
    smtp: SmtpServer, tmp_path: Path
) -> None:
    """The benchmark's outage (15 s), a dead letter first after it: the dead-letter producer
    meets a broker that forgot its producer id and is replaced at once. The 9-12 s the
    benchmark once reported were its source producer's reconnect backoff (kafka-python's
    default grows to 30 s): its buffered records reached the broker that late."""
    _broker_restart(smtp, tmp_path, down_s=15.0)


def _broker_restart(
    smtp: SmtpServer, tmp_path: Path, *, down_s: float, kafka: dict[str, Any] | None = None
) -> None:
    """The bundled broker's memory storage loses topics, records and offsets on a restart
    (its s3:// storage against moto_server would keep them, but Tansu 0.6 then stops serving
    a partition after about 200-250 records: measured, see benchmarks/chaos.py), so the
    stream is caught up before the stop, the topics are created again after it, and what
    the producer sends meanwhile waits in its buffer: all of it must be stored."""
    broker = EmbeddedBroker(log_path=tmp_path / "tansu.log").start()
    suffix = uuid.uuid4().hex[:6]
    topic, dead = f"runs-{suffix}", f"dead-{suffix}"
    create_topics(broker.bootstrap, {topic: 3, dead: 1})
    config = chaos_config(
        tmp_path,
        bootstrap=broker.bootstrap,
        topic=topic,
        dead_letter_topic=dead,
        group_id=f"group-{suffix}",
        smtp_port=smtp.port,
        kafka_settings=kafka,
    )
    db = tmp_path / "runwatch.db"
    serve = Serve(config).start()
    producer = SteadyProducer(
        broker.bootstrap,
        topic,
        events=4000,
        rate=400,
        poison=[b""] * 40,  # one dead letter every 100 events, before and after the outage
        poison_per_event=0.01,
    )
    stored = lambda: sql_count(db, "select count(*) from events")  # noqa: E731
    letters = lambda: sum(dead_letter_reasons(db).values())  # noqa: E731
    resumed = float("nan")
    try:
        producer.start()
        serve.expect(lambda: stored() >= 800, 60, "steady ingest")
        producer.paused.set()
        serve.expect(
            lambda: stored() >= producer.produced and letters() >= producer.poison_sent,
            30,
            "caught up before the stop",
        )
        broker.stop()
        poison_before = producer.poison_sent
        producer.paused.clear()  # sent into the producer's buffer while the broker is away
        time.sleep(down_s)
        broker.start()
        create_topics(broker.bootstrap, {topic: 3, dead: 1})
        back = time.monotonic()
        # more than each partition held before the stop: on the new log, past the offsets
        # `serve` had reached, so that resuming from those would skip the first ones
        burst = OutageBurst.send(broker.bootstrap, topic, events=1500)
        burst_stored = "select count(*) from events where \"RunId\" like 'burst-%'"
        serve.expect(
            lambda: sql_count(db, burst_stored) > 0, 60, "ingest after the broker came back"
        )
        resumed = time.monotonic() - back
        producer.join(timeout=60)
        assert producer.error is None
        serve.expect(
            lambda: (
                stored() >= producer.produced + len(burst.keys)
                and letters() >= len(producer.poison_places() | burst.poison_places)
            ),
            60,
            f"every event ({producer.produced}) and dead letter ({producer.poison_sent}) stored",
            progress=lambda: (stored(), letters(), len(producer.send_errors)),
        )
    finally:
        producer.stopping.set()
        producer.join(timeout=30)
        code = serve.stop()
        broker.stop()
        collect_refused_sockets()
    on_topic = producer.first_ack_after(back) - back
    print(
        f"broker down {down_s:.0f}s: ingest resumed {resumed:.1f}s after the broker answered "
        f"again (what the steady producer buffered was back on the topic after {on_topic:.1f}s)"
    )
    assert code == 0, serve.tail()
    assert producer.send_errors == []
    keys = stored_keys(db)
    expected = producer.keys + burst.keys
    assert len(keys) == len(expected) and set(keys) == set(expected)
    # offsets handed out again after the restart: one letter per (partition, offset)
    places = producer.poison_places() | burst.poison_places
    assert dead_letter_reasons(db) == {"empty": len(places)}
    assert len(producer.poison_places()) >= producer.poison_sent - 3
    assert producer.poison_sent > poison_before + 3  # poison buffered during the outage too
    # the goal is 2 s (benchmarks/chaos.py reports it); about 1 s of it is Tansu holding the
    # group's rejoin for half the session timeout, and this machine is shared: 2 s of slack
    assert resumed <= 4.0


def _poison_run(
    topics: Topics, smtp: SmtpServer, tmp_path: Path, kinds: Sequence[PoisonKind], count: int
) -> None:
    """`count` poison messages of `kinds` interleaved with 400 valid events against one
    `serve`: it never exits, every valid event is stored once, every poison message is
    dead-lettered with its reason (or, for a valid event that trips a rule, stored)."""
    schedule = poison_schedule(kinds, count)
    rules = RULES + OVERFLOW_RULE if any(kind.stored for kind in kinds) else RULES
    config = chaos_config(
        tmp_path,
        bootstrap=topics.bootstrap,
        topic=topics.topic,
        dead_letter_topic=topics.dead_letter_topic,
        group_id=topics.group_id,
        smtp_port=smtp.port,
        rules=rules,
    )
    db = tmp_path / "runwatch.db"
    events = 400
    producer = SteadyProducer(
        topics.bootstrap,
        topics.topic,
        events=events,
        rate=400,
        poison=[kinds[k].value for k in schedule],
        poison_per_event=len(schedule) / events,
    )
    sent = Counter(kinds[k].name for k in schedule)
    letters = sum(sent[kind.name] for kind in kinds if kind.reason != "")
    must_store = {run for kind in kinds for run in kind.stored}
    valid_stored = "select count(*) from events where \"RunId\" like 'chaos-%'"
    serve = Serve(config).start()
    try:
        producer.start()
        producer.join(timeout=60)
        assert producer.error is None and producer.poison_sent == len(schedule)
        serve.expect(
            lambda: (
                sum(dead_letter_reasons(db).values()) >= letters
                and sql_count(db, valid_stored) >= events
                and must_store <= {run for run, _ in stored_keys(db)}
            ),
            60,
            "every poison message dead-lettered and every valid event stored",
            progress=lambda: (
                sql_count(db, "select count(*) from events"),
                sum(dead_letter_reasons(db).values()),
            ),
            stall_s=8.0,
        )
    finally:
        code = serve.stop()
    print(
        f"{len(schedule)} poison messages of {len(kinds)} kinds; peak RSS "
        f"{serve.peak_rss_kib / 1024:.0f} MiB"
    )
    assert serve.crashes == 0 and code == 0, serve.tail()
    keys = stored_keys(db)
    valid = [key for key in keys if key[0].startswith("chaos-")]
    assert len(valid) == events and set(valid) == set(producer.keys)
    expected = Counter[str]()
    for kind in kinds:
        if kind.reason:
            expected[kind.reason] += sent[kind.name]
    reasons = dead_letter_reasons(db)
    assert all(reasons[reason] >= n for reason, n in expected.items()), (reasons, expected)
    assert sum(reasons.values()) == letters, (reasons, letters)
    assert dead_letter_topic_count(topics.bootstrap, topics.dead_letter_topic) >= letters


def _kinds(needs: str) -> list[PoisonKind]:
    return [kind for kind in poison_kinds() if kind.needs == needs]


def test_poison_of_every_kind_handled_today_never_stops_serve(
    topics: Topics, smtp: SmtpServer, tmp_path: Path
) -> None:
    kinds = _kinds("")
    assert len(kinds) >= 14
    _poison_run(topics, smtp, tmp_path, kinds, count=115)


def test_poison_times_and_nesting_never_stop_serve(
    topics: Topics, smtp: SmtpServer, tmp_path: Path
) -> None:
    _poison_run(topics, smtp, tmp_path, _kinds(NEEDS_INGEST), count=20)


def test_poison_where_overflow_never_stops_serve(
    topics: Topics, smtp: SmtpServer, tmp_path: Path
) -> None:
    _poison_run(topics, smtp, tmp_path, _kinds(NEEDS_RULES), count=5)


def test_poison_3mb_message_never_stalls_serve(
    topics: Topics, smtp: SmtpServer, tmp_path: Path
) -> None:
    _poison_run(topics, smtp, tmp_path, _kinds(NEEDS_KAFKA), count=3)
