"""Composition root: builds the service from settings and runs it until told to stop.

The path of one event, in order: ingest.kafka_loop.KafkaLoop polls -> ingest.ingestor.Ingestor
.prepare decodes it (ingest.decoding.decode) and evaluates the rules (rules.engine.RuleSet
.evaluate) -> Ingestor.write stores event, run state and notifications in one transaction
(store.Store.write_batch, with the outbox's recorder) and wakes the dispatcher ->
ingest.producer.DeadLetterPublisher flushes what could not be decoded -> KafkaLoop commits
the offsets. Then dispatcher.Dispatcher claims the notification, renders it
(notify.templating.Renderer) and sends it (notify.email / notify.webhook).
"""

from __future__ import annotations

import gc
import logging
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector

from consumers.config.settings import Settings, shipped
from consumers.dispatch.dispatcher import Dispatcher
from consumers.ingest.ingestor import Ingestor
from consumers.ingest.kafka_loop import KafkaLoop
from consumers.ingest.producer import DeadLetterPublisher
from consumers.ingest.store_assignment import StoreAssignment
from consumers.model.alerts import Alert
from consumers.model.errors import RunwatchError
from consumers.model.events import RunStatusEvent
from consumers.model.receivers import OWNER
from consumers.noise.policy import NoisePolicy
from consumers.rules.evaluation import mark_stale
from consumers.rules.loader import load_rules
from consumers.service.reload import RuleWatcher
from consumers.service.scheduler import Scheduler
from consumers.store import Store, open_store
from consumers.store.lease import Lease
from consumers.store.partition_leases import PartitionLeases
from consumers.telemetry.metrics import Metrics

if TYPE_CHECKING:  # loaded when used: the ops port and HTTP ingest are aiohttp servers
    from consumers.ingest.http import HttpIngest
    from consumers.service.endpoints import Check, Extension, OpsServer

log = logging.getLogger(__name__)

_STORE_CHECK_TIMEOUT_S = 2.0
# kafka.assignment: store: a replica that missed this many heartbeats no longer counts
# towards the others' fair shares (its leases still run to their expiry).
_STALE_HEARTBEATS = 3


def new_registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


# How long a thread holding the GIL runs before a waiting one gets it (Python's default is
# 5 ms). serve's consumer thread decodes without pause while the store writer gives up the GIL
# for every SQLite step and every round trip to PostgreSQL; each time it wanted it back it
# waited up to a whole interval. With the other cuts of the same change, one run: PostgreSQL
# 6.6k -> 8.4k events/s, SQLite 4.7k -> 6.3k msg/s; alone on the code before it, no gain
# showed (docs/scaling.md, "Second pass").
SWITCH_INTERVAL_S = 0.0005


def tune_interpreter() -> None:
    """For a `serve` process, once everything is loaded: the collector (below) and the
    GIL's switch interval (SWITCH_INTERVAL_S).

    The cyclic collector's default (a young collection every 700 allocations, each one
    walking every live container of a batch in flight) doubled decoding time per message in
    the ingest benchmark. Start-up objects are frozen out of its view and young collections
    run every 50,000 allocations; runwatch's hot path makes almost no cycles, so this delays
    little real garbage."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    sys.setswitchinterval(SWITCH_INTERVAL_S)


class Service:
    """Everything `runwatch serve` runs; `run()` blocks until `stop` is set."""

    def __init__(self, settings: Settings, *, registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        settings.secret_values()  # secret files checked now; every secret masked in the logs
        self.registry = registry or new_registry()
        self.metrics = Metrics(
            self.registry,
            receivers=tuple(settings.receivers),
            experiment_label_limit=settings.metrics.experiment_label_limit,
        )
        self.store: Store = open_store(
            settings.store.url,
            migrate=settings.store.migrate_on_start,
            pool_size=settings.store.pool_size,
            dead_letter_payload_max_bytes=settings.store.dead_letter_payload_max_bytes,
        )
        self._ensure_partitions()
        # A bad rule file at start-up stops it (there are no old rules to keep running).
        load_rules(settings.rules_dir)
        self.rules = RuleWatcher(
            settings.rules_dir, self.metrics, causes_dir=shipped("alert_rules")
        )
        if not self.rules.reload() and self.rules.last_errors:
            raise self.rules.last_errors[0]  # a bad cause table stops it too
        self.noise = NoisePolicy(
            settings.noise, self.metrics.suppressed, unknown_owners=self.metrics.unknown_owners
        )
        self.noise.check_receivers(set(settings.receivers))
        self._warn_unknown_receivers()
        self.dispatcher = Dispatcher(self.store, settings, self.metrics)
        self.scheduler = self._scheduler()
        self.metrics.tracked_runs.set_function(self.scheduler.tracked_runs)
        self._http: OpsServer | None = None
        self._http_ingest: HttpIngest | None = None
        self._loop: KafkaLoop[Any] | None = None
        self._store_check = ThreadPoolExecutor(1, thread_name_prefix="store-check")
        self._store_probe: Future[None] | None = None
        self._failure: BaseException | None = None

    def _scheduler(self) -> Scheduler:
        """Scheduled rule kinds, on whichever replica holds the `rule-evaluation` lease."""
        evaluation = self.settings.evaluation
        holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        lease = Lease(self.store.engine, "rule-evaluation", holder, evaluation.lease_ttl_s)
        receivers = self.settings.receivers
        return Scheduler(
            self.store,
            lambda: self.rules.current,
            lease,
            receiver_kinds={name: r.kind for name, r in receivers.items()},
            resolved_receivers=frozenset(n for n, r in receivers.items() if r.send_resolved),
            horizon_s=evaluation.replay_horizon_s,
            on_notified=self.dispatcher.wake,
            on_alert=self._count_alert,
            max_tracked_runs=evaluation.max_tracked_runs,
            on_evict=lambda what: self.metrics.tracked_runs_evicted.labels(what=what).inc(),
            noise=self.noise,  # the same policy as ingest: silences, routing, grouping, ...
        )

    def _store_assignment(self) -> StoreAssignment | None:
        """`kafka.assignment: store`: partitions from leases in the store (docs/deploys.md)."""
        kafka = self.settings.kafka
        if kafka.assignment != "store":
            return None
        holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        leases = PartitionLeases(
            self.store.engine,
            kafka.group_id,
            kafka.topic,
            holder,
            kafka.session_timeout_ms / 1000,
            stale_after=_STALE_HEARTBEATS * kafka.heartbeat_interval_ms / 1000,
        )
        return StoreAssignment(leases, kafka.topic, kafka.heartbeat_interval_ms / 1000)

    def _count_alert(self, alert: Alert) -> None:
        self.metrics.alerts.labels(rule=alert.rule, severity=str(alert.severity)).inc()

    def _warn_unknown_receivers(self) -> None:
        unknown = sorted(self.rules.current.receivers_used - set(self.settings.receivers) - {OWNER})
        if unknown:
            log.warning(
                "rules notify receivers not in the config: %s (their notifications are "
                "recorded as dead with reason unknown_receiver)",
                ", ".join(unknown),
            )

    def _evaluate(self, event: RunStatusEvent) -> list[Alert]:
        alerts = self.rules.current.evaluate(event)  # the rules in force now (hot reload)
        if not alerts:
            return alerts
        horizon = self.settings.evaluation.replay_horizon_s
        return mark_stale(alerts, datetime.now(UTC), horizon)

    def _start_metrics(self) -> None:
        if not self.settings.metrics.enabled:
            return
        from consumers.service.endpoints import OpsServer

        host, port = self.settings.metrics.address
        extensions: tuple[Extension, ...] = ()
        if self.settings.console.enabled:
            from consumers.webconsole.routes import Console

            console = Console(self.store, self.settings, wake=self.dispatcher.wake)
            extensions = (console.install,)
        self._http = OpsServer(
            (host, port),
            self.registry,
            self.readiness,
            self.settings.metrics.auth,
            extensions=extensions,
        ).start()
        log.info(
            "metrics on http://%s:%d/metrics (and /healthz, /readyz)%s%s",
            host,
            self._http.port,
            "" if self.settings.metrics.auth is None else " with auth",
            ", console on /console/" if extensions else "",
        )

    @property
    def metrics_port(self) -> int | None:
        return None if self._http is None else self._http.port

    def _start_http_ingest(self) -> None:
        """Event Grid push (`http_ingest:`), published to the topic this service consumes."""
        settings = self.settings.http_ingest
        if not settings.enabled:
            return
        from consumers.ingest.http import HttpIngest

        self._http_ingest = HttpIngest(
            settings, self.settings.kafka, self.settings.ingest, self.metrics
        ).start()
        scheme = "http" if settings.tls_certfile is None else "https"
        host = settings.address[0]
        log.info("http ingest on %s://%s:%d%s", scheme, host, self._http_ingest.port, settings.path)

    @property
    def http_ingest_port(self) -> int | None:
        return None if self._http_ingest is None else self._http_ingest.port

    def readiness(self) -> Mapping[str, Check]:
        """Ready to do its work: consuming (broker connected), storing, and rules in force."""
        from consumers.service.endpoints import Check

        loop = self._loop
        if loop is None or not loop.connected.is_set():
            kafka = Check(False, "consumer not started")
        elif loop.broker_connected:
            kafka = Check(True, f"connected to {self.settings.kafka.bootstrap_servers}")
        else:
            kafka = Check(False, f"not connected to {self.settings.kafka.bootstrap_servers}")
        rules = self.rules.current
        return {
            "kafka": kafka,
            "store": self._check_store(),
            "rules": Check(True, f"{len(rules)} rules loaded from {self.settings.rules_dir}"),
        }

    def _check_store(self) -> Check:
        from consumers.service.endpoints import Check

        # One probe at a time, bounded: a hanging database must not pile up threads.
        probe = self._store_probe
        if probe is None or probe.done():
            probe = self._store_probe = self._store_check.submit(self.store.ping)
        try:
            probe.result(timeout=_STORE_CHECK_TIMEOUT_S)
        except FutureTimeout:
            return Check(False, f"store did not answer within {_STORE_CHECK_TIMEOUT_S:.0f}s")
        except RunwatchError as exc:
            return Check(False, str(exc))
        return Check(True, "reachable")

    def _ensure_partitions(self) -> None:
        store = self.settings.store
        try:
            created = self.store.ensure_partitions(
                datetime.now(UTC),
                interval_hours=store.partition_interval_hours,
                ahead=store.partitions_ahead,
            )
        except RunwatchError as exc:  # events still land in the default partition
            log.warning("creating partitions failed, will retry: %s", exc)
            return
        if created:
            log.info("created partitions %s", ", ".join(created))

    def _retention(self, stop: threading.Event) -> None:
        """Partitions ahead of time and retention, on one timer. Partitions are checked at
        least hourly, so `partitions_ahead` intervals are always far more than enough."""
        days = self.settings.store.retention_days
        interval = min(self.settings.store.retention_interval_s, 3600.0)
        last_retention = time.monotonic()
        while not stop.wait(interval):
            self._ensure_partitions()
            if days is None:
                continue
            if time.monotonic() - last_retention < self.settings.store.retention_interval_s:
                continue
            last_retention = time.monotonic()
            cutoff = datetime.now(UTC) - timedelta(days=days)
            try:
                deleted = self.store.delete_older_than(cutoff, self.settings.store.retention_batch)
            except RunwatchError as exc:
                log.warning("retention failed, will retry: %s", exc)
                continue
            if deleted:
                self.metrics.retention_deleted.inc(deleted)
                log.info("retention deleted %d rows older than %s", deleted, cutoff)

    def run(self, stop: threading.Event) -> None:
        kafka = self.settings.kafka
        dead_letters = DeadLetterPublisher(kafka, self.metrics, stop=stop)
        ingestor = Ingestor(
            self.store,
            dead_letters,
            self.metrics,
            max_bytes=kafka.max_message_bytes,
            evaluate=self._evaluate,
            receiver_kinds={name: r.kind for name, r in self.settings.receivers.items()},
            on_notified=self.dispatcher.wake,
            noise=self.noise,
            limits=self.settings.ingest,
            causes=lambda: self.rules.causes,
        )
        loop = self._loop = KafkaLoop(
            kafka,
            ingestor.prepare,
            ingestor.write,
            self.metrics,
            store_assignment=self._store_assignment(),
        )
        self._start_metrics()
        self._start_http_ingest()
        consumer = threading.Thread(
            target=self._consume, args=(loop, stop), name="kafka-loop", daemon=True
        )
        retention = threading.Thread(
            target=self._retention, args=(stop,), name="retention", daemon=True
        )
        consumer.start()
        retention.start()
        dispatcher = self.dispatcher.start(stop)
        self.rules.start(stop)
        scheduled: threading.Thread | None = None
        if self.settings.evaluation.enabled:
            scheduled = self.scheduler.start(stop, self.settings.evaluation.tick_s)
        log.info(
            "consuming %s as group %s from %s", kafka.topic, kafka.group_id, kafka.bootstrap_servers
        )
        try:
            while consumer.is_alive() and not stop.wait(0.5):
                if not dispatcher.is_alive():
                    # Consuming without sending would look healthy and tell nobody: stop,
                    # exit non-zero, and let the supervisor start a whole service again.
                    self._failure = self._failure or RunwatchError(
                        "the dispatcher stopped unexpectedly; stopping the service"
                    )
                    log.critical("%s", self._failure)
                    break
        finally:
            stop.set()
            if self._http_ingest is not None:
                self._http_ingest.stop()  # no more pushes accepted while draining
            consumer.join()
            dispatcher.join(timeout=60)
            retention.join(timeout=5)
            if scheduled is not None:
                scheduled.join(timeout=30)  # it releases the evaluation lease on its way out
            dead_letters.close()
            if self._http is not None:
                self._http.stop()
            self._store_check.shutdown(wait=False, cancel_futures=True)
            self.store.dispose()
        if self._failure is not None:
            raise self._failure
        log.info("stopped")

    def _consume(self, loop: KafkaLoop[Any], stop: threading.Event) -> None:
        try:
            loop.run(stop)
        except BaseException as exc:  # re-raised by run() in the main thread
            self._failure = exc
            stop.set()
