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

from consumers.model.errors import StoreError
from consumers.store.partition_leases import PartitionLeases

log = logging.getLogger(__name__)


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
        self._next_at = self._clock() + self._interval_s
        partitions = len(consumer.partitions_for_topic(self._topic))
        try:
            plan = self._leases.heartbeat(partitions)
        except StoreError as exc:
            log.warning("partition leases not renewed, keeping the partitions read: %s", exc)
            return
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

    def leave(self) -> None:
        """At stop, after the last commit: every lease back, so that the others take them
        at their next heartbeat instead of after session_timeout_ms."""
        try:
            self._leases.leave()
        except StoreError as exc:  # the store is away: the leases expire instead
            log.warning("partition leases not given back at stop: %s", exc)
