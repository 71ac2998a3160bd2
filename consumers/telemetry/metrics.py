"""Prometheus metrics. One object, built on a registry it is given, so tests and several
services in one process never share (or double-register) global state.

Label values are always bounded: formats, statuses, reasons, partitions, configured receivers
— never a run id; experiments are capped (`metrics.experiment_label_limit`). The catalogue is
docs/metrics.md (tests/test_metrics_doc.py keeps the two in step). Label values known in
advance are created at zero, so that `increase()` sees the first occurrence and every
dashboard query has a series from the first scrape.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections import Counter as Tally
from collections.abc import Iterable
from math import isnan

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from consumers.model.notifications import NotificationState

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_DELAY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600)
_BATCH_BUCKETS = (1, 5, 10, 50, 100, 500, 1000, 2500, 5000, 10000)

RECEIVER_TYPES = ("email", "webhook", "alertmanager")
NOTIFICATION_RESULTS = ("sent", "retry", "dead")
DEAD_LETTER_REASONS = (
    "empty",
    "too_large",
    "not_utf8",
    "not_json",
    "unknown_shape",
    "schema",
    "no_valid_records",
    "time_out_of_range",
    "too_deep",
    "too_long",
    "too_many_labels",
    "too_many_records",
    "internal",
    "store_rejected",
)
# Why a dead letter was given up on the dead-letter topic (consumers.ingest.kafka_clients).
UNPUBLISHED_ERRORS = ("too_large", "topic", "producer", "other")
KAFKA_CLIENTS = ("consumer", "producer")
OUTBOX_STATES = tuple(state.value for state in NotificationState)
# consumers.ingest.http: what became of each request to POST/OPTIONS <http_ingest.path>
HTTP_INGEST_RESULTS = (
    "accepted",
    "validation",
    "handshake",
    "bad_request",
    "unauthorized",
    "forbidden",
    "too_large",
    "timeout",
    "unavailable",
)
OTHER_EXPERIMENTS = "_other"


def observe_many(histogram: Histogram, amounts: Iterable[float]) -> None:
    """`histogram.observe(a)` for each of `amounts` (`histogram` unlabelled, or a child), with
    one locked increment per bucket hit instead of two per value: the ingest delay is observed
    for every event, and one `observe` cost ~1-2 us of the writer's GIL time per event.
    Relies on prometheus_client's Histogram holding `_upper_bounds` (ascending, +Inf last),
    `_buckets` and `_sum` (tests/test_metrics_bulk.py checks it against `observe`)."""
    bounds: list[float] = histogram._upper_bounds
    total = 0.0
    hits: Tally[int] = Tally()
    for amount in amounts:
        total += amount
        if not isnan(amount):  # NaN goes into the sum and no bucket, as with observe()
            hits[bisect_left(bounds, amount)] += 1  # the first bound >= amount, as observe()
    histogram._sum.inc(total)
    buckets = histogram._buckets
    for index, count in hits.items():
        buckets[index].inc(count)


class Metrics:
    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        receivers: tuple[str, ...] = (),
        experiment_label_limit: int = 200,
    ) -> None:
        self.registry = registry
        self._experiments: set[str] = set()
        self._experiment_limit = experiment_label_limit
        self._experiments_lock = threading.Lock()
        self.events = Counter(
            "runwatch_events_total",
            "Run-status events decoded, by input format and status.",
            ["format", "status"],
            registry=registry,
        )
        self.duplicates = Counter(
            "runwatch_events_duplicate_total",
            "Events already in the store (Kafka redelivery or a producer publishing twice).",
            registry=registry,
        )
        self.run_updates = Counter(
            "runwatch_run_updates_total",
            "Run updates (tags, properties, description) applied; they never trigger rules.",
            registry=registry,
        )
        self.skipped = Counter(
            "runwatch_records_skipped_total",
            "Well-formed records that are not run-status events (other categories or types).",
            ["format"],
            registry=registry,
        )
        self.dead_letters = Counter(
            "runwatch_dead_letters_total",
            "Messages sent to the dead-letter topic, by reason.",
            ["reason"],
            registry=registry,
        )
        self.dead_letters_unpublished = Counter(
            "runwatch_dead_letters_unpublished_total",
            "Dead letters given up on the dead-letter topic after repeated refusals, by error "
            "(too_large, topic, producer, other); they stay in the store.",
            ["error"],
            registry=registry,
        )
        self.dead_letters_truncated = Counter(
            "runwatch_dead_letters_truncated_total",
            "Dead letters published truncated to kafka.dead_letter_max_bytes.",
            registry=registry,
        )
        self.kafka_clients_recreated = Counter(
            "runwatch_kafka_clients_recreated_total",
            "Kafka clients closed and created again because they were stuck, by client.",
            ["client"],
            registry=registry,
        )
        self.batch_size = Histogram(
            "runwatch_batch_messages",
            "Kafka messages per ingest batch.",
            buckets=_BATCH_BUCKETS,
            registry=registry,
        )
        self.store_write = Histogram(
            "runwatch_store_write_seconds",
            "Time to write one batch (events, run states, dead letters) in one transaction.",
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.store_errors = Counter(
            "runwatch_store_errors_total",
            "Batch writes that failed and were retried.",
            registry=registry,
        )
        self.ingest_delay = Histogram(
            "runwatch_ingest_delay_seconds",
            "From an event's TimeGenerated to its batch being committed to the store.",
            buckets=_DELAY_BUCKETS,
            registry=registry,
        )
        self.consumer_lag = Gauge(
            "runwatch_consumer_lag_messages",
            "Messages on the broker not yet consumed, per assigned partition.",
            ["partition"],
            registry=registry,
        )
        self.commits = Counter(
            "runwatch_offset_commits_total",
            "Offset commits, by result.",
            ["result"],
            registry=registry,
        )
        self.alerts = Counter(
            "runwatch_alerts_total",
            "Alerts raised by rules (before throttling), by rule and severity.",
            ["rule", "severity"],
            registry=registry,
        )
        self.rule_evaluation = Histogram(
            "runwatch_rule_evaluation_seconds",
            "Time to evaluate the rules over one ingest batch.",
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.notifications = Counter(
            "runwatch_notifications_total",
            "Notification outcomes: sent, retry (transient failure), dead, throttled.",
            ["receiver_type", "result"],
            registry=registry,
        )
        self.suppressed = Counter(
            "runwatch_notifications_suppressed_total",
            "Notifications recorded but not sent by noise control, by reason: silenced, "
            "inhibited, muted, repeat (already in a digest), storm.",
            ["reason"],
            registry=registry,
        )
        self.unknown_owners = Counter(
            "runwatch_owner_unknown_total",
            "Notifications to the owner receiver for a run whose user is not mapped or allowed "
            "in noise.owners, by outcome: fallback (sent to noise.owners.fallback) or dead "
            "(unknown_owner).",
            ["outcome"],
            registry=registry,
        )
        self.notification_failures = Counter(
            "runwatch_notification_failures_total",
            "Failed delivery attempts, by receiver type and reason (smtp_4xx, http_503, ...).",
            ["receiver_type", "reason"],
            registry=registry,
        )
        self.delivery_attempts = Counter(
            "runwatch_delivery_attempts_total",
            "Delivery attempts (each send to an SMTP server or webhook endpoint).",
            ["receiver_type"],
            registry=registry,
        )
        self.outbox = Gauge(
            "runwatch_outbox_notifications",
            "Notifications in the outbox, by state.",
            ["state"],
            registry=registry,
        )
        self.notification_latency = Histogram(
            "runwatch_notification_latency_seconds",
            "From the event's TimeGenerated to the notification being accepted by the receiver.",
            ["receiver_type"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.retention_deleted = Counter(
            "runwatch_retention_deleted_total",
            "Rows deleted by retention.",
            registry=registry,
        )
        self.rules_reloads = Counter(
            "runwatch_rules_reload_total",
            "Alert rule reloads, by result (error: the previous rules stay in force).",
            ["result"],
            registry=registry,
        )
        self.rule_errors = Counter(
            "runwatch_rule_errors_total",
            "Rule evaluations that raised (a where: overflowing on a value, a bug): the rule is "
            "skipped for that event or tick, the event is stored and other rules go on.",
            ["rule"],
            registry=registry,
        )
        self.tracked_runs = Gauge(
            "runwatch_rule_tracked_runs",
            "Runs the scheduled evaluation keeps in memory for absence, duration and tree rules "
            "(active runs and tree children), capped by evaluation.max_tracked_runs each.",
            registry=registry,
        )
        self.tracked_runs_evicted = Counter(
            "runwatch_rule_tracked_runs_evicted_total",
            "Runs (what=run) and run trees (what=tree) evicted from the run tracker at its cap, "
            "least recently changed first; not judged until their next event.",
            ["what"],
            registry=registry,
        )
        self.rules_loaded = Gauge(
            "runwatch_rules_loaded",
            "Alert rules in force (disabled ones included).",
            registry=registry,
        )
        self.run_failures = Counter(
            "runwatch_run_failures_total",
            "Failed run-status events, by experiment (capped; the rest count as _other).",
            ["experiment"],
            registry=registry,
        )
        self.run_failure_causes = Counter(
            "runwatch_run_failures_by_cause_total",
            "Failed run-status events, by cause (the names of the cause table, unknown when "
            "none matched).",
            ["cause"],
            registry=registry,
        )
        self.receiver_notifications = Counter(
            "runwatch_receiver_notifications_total",
            "Notification outcomes by configured receiver: sent, retry, dead.",
            ["receiver", "result"],
            registry=registry,
        )
        self.http_ingest_requests = Counter(
            "runwatch_http_ingest_requests_total",
            "Requests to the HTTP ingest (Event Grid push), by result: accepted (published and "
            "acknowledged), validation and handshake (subscription checks answered), "
            "bad_request, unauthorized, forbidden, too_large, timeout, unavailable (broker).",
            ["result"],
            registry=registry,
        )
        self._create_known_series(receivers)

    def _create_known_series(self, receivers: tuple[str, ...]) -> None:
        for kind in RECEIVER_TYPES:
            self.delivery_attempts.labels(receiver_type=kind)
            self.notification_latency.labels(receiver_type=kind)
            for result in NOTIFICATION_RESULTS:
                self.notifications.labels(receiver_type=kind, result=result)
        for receiver in receivers:
            for result in NOTIFICATION_RESULTS:
                self.receiver_notifications.labels(receiver=receiver, result=result)
        for reason in DEAD_LETTER_REASONS:
            self.dead_letters.labels(reason=reason)
        for error in UNPUBLISHED_ERRORS:
            self.dead_letters_unpublished.labels(error=error)
        for client in KAFKA_CLIENTS:
            self.kafka_clients_recreated.labels(client=client)
        for state in OUTBOX_STATES:
            self.outbox.labels(state=state)
        for result in ("ok", "failed"):
            self.commits.labels(result=result)
        for result in ("ok", "error"):
            self.rules_reloads.labels(result=result)
        for what in ("run", "tree"):
            self.tracked_runs_evicted.labels(what=what)
        for outcome in ("fallback", "dead"):
            self.unknown_owners.labels(outcome=outcome)
        for result in HTTP_INGEST_RESULTS:
            self.http_ingest_requests.labels(result=result)

    def experiment_label(self, experiment: str) -> str:
        """The experiment itself while fewer than the limit have been seen, else _other."""
        with self._experiments_lock:
            if experiment in self._experiments:
                return experiment
            if len(self._experiments) < self._experiment_limit:
                self._experiments.add(experiment)
                return experiment
        return OTHER_EXPERIMENTS
