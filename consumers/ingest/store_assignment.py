"""`kafka.assignment: store`: the consumer reads the partitions whose leases this replica holds
in the store (consumer.assign()), not those a consumer-group rebalance hands it, so that a
replica leaving or joining moves only the partitions that change hands, within a heartbeat,
and pauses no other (docs/deploys.md).

Offsets stay in the broker: kafka-python commits manually assigned partitions under the
group_id (generation -1, accepted by Apache Kafka for a group without active members and by
the bundled broker), and a partition taken over starts at its committed offset. An owner that
has lost its lease may still be writing a batch of it meanwhile; the store's natural keys
make that a no-op, and an owner commits only offsets it stored, so the committed offset
never passes an event no one stored.
Only the consumer thread calls this (the KafkaConsumer is not thread-safe).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError

from consumers.model.errors import StoreError
from consumers.store.partition_leases import PartitionLeases

log = logging.getLogger(__name__)

# A replica short of its fair share heartbeats this many times as often until it has it.
_CATCH_UP = 5


class StoreAssignment:
    def __init__(
        self,
        leases: PartitionLeases,
        topic: str,
        interval_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._leases = leases
        self._topic = topic
        self._interval_s = interval_s
        self._clock = clock
        self._next_at = 0.0  # the first heartbeat at once
        self._partitions = 0  # the topic's partition count, as last known
        self._topic_id: object = None  # the broker's id of the topic, as last seen

    def due(self) -> bool:
        return self._clock() >= self._next_at

    def beat(
        self,
        consumer: KafkaConsumer,
        *,
        commit: Callable[[], None],
        forget: Callable[[TopicPartition], None],
        assigned: Callable[[], None],
    ) -> None:
        """Renew and rebalance through the store, then make the consumer read what is held:
        partitions above the fair share are committed (what is stored of them), dropped and
        released; newly taken ones start at their committed offsets."""
        began = self._clock()
        self._next_at = began + self._interval_s
        try:
            plan = self._leases.heartbeat(self._partition_count(consumer))
        except StoreError as exc:
            log.warning("partition leases not renewed, keeping the partitions read: %s", exc)
            return
        if len(plan.held) < plan.share:
            # Short of its share: another replica is giving some back, at its next
            # heartbeat. Asking again sooner takes them within a fraction of one.
            self._next_at = began + self._interval_s / _CATCH_UP
        current = {tp.partition for tp in consumer.assignment()}
        keep = plan.held - plan.give_back
        if plan.give_back & current:
            commit()  # while still assigned: commits are only made for owned partitions
        if keep != current:
            self.reassign(consumer, keep)
            for partition in current - keep:
                forget(TopicPartition(self._topic, partition))
            if keep - current:
                assigned()
            log.info(
                "store leases: %d members, share %d; took %s, gave back %s, lost %s; "
                "assigned partitions %s",  # last: the tests and benchmarks read this list
                plan.members,
                plan.share,
                sorted(plan.taken),
                sorted(plan.give_back),
                sorted(current - plan.held),
                sorted(keep),
            )
        if plan.give_back:
            try:
                self._leases.release(plan.give_back)
            except StoreError as exc:  # they expire instead, session_timeout_ms later
                log.warning("partition leases not given back: %s", exc)

    def _partition_count(self, consumer: KafkaConsumer) -> int:
        """The metadata's count; the last one known while the broker is away (an empty
        answer would give every lease up)."""
        try:
            count = len(consumer.partitions_for_topic(self._topic))
        except KafkaError as exc:
            log.debug("partitions of %s unknown: %s", self._topic, exc)
            count = 0
        self._partitions = count or self._partitions
        return self._partitions

    def reassign(self, consumer: KafkaConsumer, partitions: set[int] | frozenset[int]) -> None:
        """assign() keeps the position of a partition it keeps; an empty set unassigns all."""
        if partitions:
            consumer.assign([TopicPartition(self._topic, p) for p in sorted(partitions)])
        else:
            consumer.unsubscribe()

    def resync(self, consumer: KafkaConsumer) -> None:
        """Forget every position and read on from the committed offsets, as a rebalance does:
        after the broker was away it may have lost its log (the bundled broker's memory
        storage), and old positions would skip what its new log holds below them."""
        held = set(self._leases.held)
        consumer.unsubscribe()
        self.reassign(consumer, held)

    def recreated(self, consumer: KafkaConsumer) -> bool:
        """The topic's id changed since the last call: a broker that lost its state (the
        bundled one's memory storage) created it again, and positions on the old log mean
        nothing on the new one. kafka-python internal: `consumer._cluster.topic_id()`."""
        cluster = getattr(consumer, "_cluster", None)
        seen = cluster.topic_id(self._topic) if cluster is not None else None
        if seen is None:
            return False
        before, self._topic_id = self._topic_id, seen
        return before is not None and before != seen

    def leave(self) -> None:
        """At stop, after the last commit: every lease back, so that the others take them
        at their next heartbeat instead of after session_timeout_ms."""
        try:
            self._leases.leave()
        except StoreError as exc:  # the store is away: the leases expire instead
            log.warning("partition leases not given back at stop: %s", exc)
